"""Shared set-up of the browser tests: the real stack (embedded chain, city server over HTTP, demo citizens
enrolled through the counter flow) with kiosk/counter apps whose cards go through pcscd + vpcd."""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

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
