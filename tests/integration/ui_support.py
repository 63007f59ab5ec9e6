"""Shared set-up of the browser tests: the real stack (embedded chain, city server over HTTP, demo citizens
enrolled through the counter flow) with kiosk/counter apps whose cards go through pcscd + vpcd.

Fixtures (import them into a test module, ``from tests.integration.ui_support import world, slot``):

* ``world`` (module): the demo environment; a module may set ``WORLD_CITIZENS`` (default: every demo
  citizen) to enroll fewer.
* ``slot``: the test's own vpcd reader (``vpcd_slot``) as a :class:`Slot`.
* ``kiosk``: the kiosk app on that reader, its idle screen open in ``page``; a module may set
  ``KIOSK_PRINTING = True`` for the demo's virtual receipt printer.

Helpers: :func:`tap`, :func:`to_pin`, :func:`type_pin`, :func:`sign_in` (the demo clerk),
:func:`fill_enrollment`, :func:`axe_serious` (axe-core: serious or critical violations).
"""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from citydemo import demo
from emulators.card.citizen_card import make_citizen_card
from emulators.card.transport import VpcdCard

from terminal.config import Mode
from terminal.flows.kiosk import SERVICES
from terminal.web import create_app
from terminal.web.server import ServerThread
from terminal.web.stack import CardCounterBackend, PcscKioskBackend
from tests.fixtures.pcsc import VirtualCardHandle


@dataclass
class World:
    env: demo.DemoEnvironment

    def kiosk_app(
        self, reader: str, language: str = "en", idle_timeout: float = 30.0, printing: bool = False
    ) -> Any:
        """``printing``: with the demo's virtual receipt printer ("print my certificate")."""
        backend = PcscKioskBackend(
            self.env.kiosk_backend.verifier, list(SERVICES.values()), reader,
            authorization=self.env.kiosk_backend.flow.authorization,  # the demo kiosk's certificate
        )  # fmt: skip
        config = replace(self.env.config, language=language, idle_timeout=idle_timeout)
        return create_app(config, kiosk=backend, printing=self.env.printing if printing else None)

    def counter_app(self, reader: str = "Virtual PCD", language: str = "en", **peripherals: Any) -> Any:
        """``peripherals``: ``counter_printing`` / ``scanning`` (terminal.web.printing) for create_app."""
        counter = self.env.counter_backend
        backend = CardCounterBackend(
            counter.server, counter.enrollment.verifier, reader_filter=reader,
            authorization=counter.enrollment.authorization,  # the demo counter's certificate
        )  # fmt: skip
        config = replace(self.env.config, mode=Mode.COUNTER, language=language, terminal_id="demo-counter")
        return create_app(config, counter=backend, **peripherals)

    def card_copy(self, citizen: str, folder: Path) -> Callable[[], Any]:
        """A factory for a private copy of the citizen's enrolled card (its PIN counter is the test's own)."""
        path = folder / f"{citizen}.json"
        if citizen in self.env.keys:
            from emulators.fido.card import make_fido_card

            shutil.copyfile(self.env.keys[citizen], path)
            return lambda: make_fido_card(path)[0]
        shutil.copyfile(self.env.cards[citizen], path)
        return lambda: make_citizen_card(path)


def citizen(cid: str) -> demo.Citizen:
    return next(c for c in demo.CITIZENS if c.id == cid)


def type_pin(page: Any, pin: str) -> None:
    """Enter the PIN on the on-screen keypad (as a citizen would)."""
    for digit in pin:
        page.click(f'.keypad .key[data-key="{digit}"]')


def shows_none_of(page: Any, *secrets: str) -> bool:
    """No secret (PIN, PUK) in the page's HTML as a token of its own: a random hex address or base64url
    credential id on the page may contain the same digits inside it (seen: "8642" in a DID's address)."""
    html = page.content()
    return not any(re.search(rf"(?<![0-9A-Za-z_-]){re.escape(x)}(?![0-9A-Za-z_-])", html) for x in secrets)


def visible_text(page: Any) -> str:
    return re.sub(r"\s+", " ", page.inner_text("main"))


class Slot:
    """A vpcd reader locked for the test (``vpcd_slot``); cards go in and out like a citizen's."""

    def __init__(self, port: int, reader: str) -> None:
        self.port, self.reader = port, reader
        self.handles: list[VirtualCardHandle] = []

    def insert(self, factory: Callable[[], Any]) -> VirtualCardHandle:
        card = factory()
        handle = VirtualCardHandle(card, VpcdCard(card, port=self.port), None, self.reader, factory)
        self.handles.append(handle)
        handle.insert()
        return handle

    def clear(self) -> None:
        for handle in self.handles:
            handle.vpcd.stop()


@contextlib.contextmanager
def serving(app: Any, page: Any) -> Iterator[str]:
    """Serve ``app`` on a free localhost port; on exit the page leaves it before the server stops.

    A kiosk app's screen is bound to ``page``'s browser context first (it opens the one-time launch URL, as
    the kiosk's own browser does at boot).
    """
    server = ServerThread(app, "127.0.0.1", 0).start()
    try:
        if "cityid.screen" in app.extensions:
            page.goto(server.url + app.extensions["cityid.screen"].launch_path())
            page.wait_for_url(server.url + "/")
        yield server.url
    finally:
        with contextlib.suppress(Exception):
            page.goto("about:blank", wait_until="commit", timeout=5000)
        server.stop()


# --- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The demo environment (in-process cards for its own readers); ``WORLD_CITIZENS`` in the module."""
    citizens: Sequence[demo.Citizen] = getattr(request.module, "WORLD_CITIZENS", demo.CITIZENS)
    env = demo.build(use_pcsc=False, citizens=citizens, workdir=tmp_path_factory.mktemp("demo"))
    try:
        yield World(env)
    finally:
        env.close()


@pytest.fixture
def slot(vpcd_slot: tuple[int, str]) -> Iterator[Slot]:
    s = Slot(*vpcd_slot)
    try:
        yield s
    finally:
        s.clear()


@pytest.fixture
def kiosk(request: pytest.FixtureRequest, world: World, slot: Slot, page: Any) -> Iterator[str]:
    """The kiosk app serving on the test's own vpcd reader, its idle screen open in the browser.

    Torn down first: the page leaves, then the server stops, before the reader is released.
    """
    printing = bool(getattr(request.module, "KIOSK_PRINTING", False))
    with serving(world.kiosk_app(slot.reader, language="en", printing=printing), page) as url:
        page.goto(url + "/")
        page.wait_for_selector("#idle-title")
        page.wait_for_function("() => document.readyState === 'complete'")
        yield url


# --- steps -----------------------------------------------------------------------------------------


def tap(world: World, slot: Slot, tmp_path: Path, who: str) -> Any:
    """A private copy of ``who``'s card (or key) put on the test's reader."""
    return slot.insert(world.card_copy(who, tmp_path))


def to_pin(page: Any, service: str) -> None:
    """From the services screen to the PIN screen of ``service`` (consent given)."""
    page.wait_for_url("**/services")
    page.click(f"#service-{service}")
    page.wait_for_url("**/consent")
    page.click("#agree")
    page.wait_for_url("**/pin")


def sign_in(page: Any, url: str, password: str = demo.DEMO_CLERK_PASSWORD) -> None:
    """The demo clerk signs in at the counter ``url`` (waits for the menu unless the password is wrong)."""
    page.goto(url + "/counter/login")
    page.fill("#clerk", demo.DEMO_CLERK)
    page.fill("#password", password)
    page.click("#login")
    if password == demo.DEMO_CLERK_PASSWORD:
        page.wait_for_url("**/counter/")


def fill_enrollment(
    page: Any,
    reader: str,
    family: str,
    given: str,
    pin: str,
    puk: str,
    born: str = "1950-03-01",
    district: str = "Saha-gu",
    **more: str,
) -> None:
    """Fill the open enrollment form (resident of Busan; PIN and PUK typed twice; ``more``: other fields)."""
    page.select_option("#f-reader", reader)
    page.fill("#f-family_name", family)
    page.fill("#f-given_name", given)
    page.fill("#f-birthdate", born)
    page.select_option("#f-district", district)
    page.check("#f-resident")
    for name, value in {"pin": pin, "pin2": pin, "puk": puk, "puk2": puk, **more}.items():
        page.fill(f"#f-{name}", value)


AXE = Path(__file__).resolve().parents[2] / "node_modules" / "axe-core" / "axe.min.js"
_AXE_RUN = """() => axe.run(document, {resultTypes: ['violations']}).then(r => r.violations
    .filter(v => v.impact === 'serious' || v.impact === 'critical')
    .map(v => v.id + ': ' + v.nodes.map(n => n.target.join(' ')).join(', ')))"""


def axe_serious(page: Any, where: str, checked: list[str]) -> None:
    """axe-core on the page as it is now: no serious or critical violation (``where`` names the screen)."""
    assert AXE.exists(), "npm install (package.json pins axe-core)"
    if not page.evaluate("() => !!window.axe"):
        page.evaluate("() => { " + AXE.read_text("utf-8") + "\n}")  # devtools evaluation: not subject to CSP
    found = page.evaluate(_AXE_RUN)
    checked.append(where)
    assert found == [], f"axe on {where}: {found}"
