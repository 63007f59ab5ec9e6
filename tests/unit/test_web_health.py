"""Out of service, visibly (issue 10 item 4): the health monitor's rules, the screen in Korean and English,
one log line per change, recovery by itself, ``/health``, and "cannot check" vs "not valid" (no daemons)."""

from __future__ import annotations

import logging
import queue
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from terminal.config import parse_config
from terminal.web import create_app, shutdown
from terminal.web.app import announce
from terminal.web.backend import BackendHealth, ChainHealth
from terminal.web.controller import Screen
from terminal.web.health import HealthMonitor, Problem, chain_health
from terminal.web.verdicts import view_for
from tests.doubles.fake_backends import FakeKioskBackend, FakeToken, screen_client

UP = BackendHealth(pcscd=True, readers=("Reader 0",), chain=ChainHealth(head_block=7, head_age=3.0))


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def monitor(backend: FakeKioskBackend, clock: Clock, **kw: Any) -> tuple[HealthMonitor, list[frozenset]]:
    seen: list[frozenset] = []
    kw.setdefault("clock_probe", None)
    return HealthMonitor(backend, seen.append, max_staleness=300, clock=clock, **kw), seen


# --- the rules ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("health", "problems"),
    [
        (UP, set()),
        (BackendHealth(False, (), UP.chain), {Problem.PCSCD}),
        (BackendHealth(True, (), UP.chain), {Problem.READER}),
        (BackendHealth(None, (), UP.chain), set()),  # in-process cards: no reader to watch
        (BackendHealth(True, ("R",), ChainHealth(head_block=7, head_age=301.0)), {Problem.CHAIN}),
        (
            BackendHealth(True, ("R",), ChainHealth(head_block=7, head_age=1.0, cache_lag=400.0)),
            {Problem.CHAIN},
        ),
        (
            BackendHealth(True, ("R",), ChainHealth(error="ChainError: refused")),
            {Problem.CHAIN},
        ),  # never seen
        (BackendHealth(False, (), ChainHealth(error="x")), {Problem.PCSCD, Problem.CHAIN}),
        # terminal authentication on, no valid certificate: cards would refuse this kiosk
        (BackendHealth(True, ("R",), UP.chain, authorized=False), {Problem.AUTHORIZATION}),
        (BackendHealth(True, ("R",), UP.chain, authorized=True), set()),
    ],
)
def test_problems_from_health(health: BackendHealth, problems: set[Problem]) -> None:
    backend = FakeKioskBackend()
    backend.health_state = health
    mon, _ = monitor(backend, Clock())
    assert mon.check().problems == problems


def test_chain_outage_is_tolerated_up_to_the_staleness_bound() -> None:
    backend, clock = FakeKioskBackend(), Clock()
    backend.health_state = UP
    mon, seen = monitor(backend, clock)
    assert not mon.check().problems
    backend.health_state = BackendHealth(True, ("R",), ChainHealth(error="ChainError: timeout"))
    clock.now += 299
    assert not mon.check().problems  # facts were current 299 s ago: within the bound
    clock.now += 2
    assert mon.check().problems == {Problem.CHAIN}
    backend.health_state = UP
    assert not mon.check().problems
    assert seen == [frozenset(), frozenset({Problem.CHAIN}), frozenset()]


def test_head_age_is_not_checked_on_the_embedded_demo_chain() -> None:
    backend = FakeKioskBackend()
    backend.health_state = BackendHealth(None, (), ChainHealth(head_block=3, head_age=90_000.0))
    mon, _ = monitor(backend, Clock(), check_head_age=False)
    assert not mon.check().problems


def test_clock_probe() -> None:
    backend = FakeKioskBackend()
    backend.health_state = UP
    synced = [False]
    mon, _ = monitor(backend, Clock(), clock_probe=lambda: synced[0])
    assert mon.check().problems == {Problem.CLOCK}
    synced[0] = True
    assert not mon.check().problems


def test_one_log_line_per_change(caplog: pytest.LogCaptureFixture) -> None:
    backend, clock = FakeKioskBackend(), Clock()
    backend.health_state = UP
    mon, _ = monitor(backend, clock)
    caplog.set_level(logging.INFO, "terminal.web.health")
    mon.check()
    backend.health_state = BackendHealth(False, (), UP.chain)
    for _ in range(5):
        mon.check()
    backend.health_state = UP
    for _ in range(3):
        mon.check()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["kiosk in service", "kiosk out of service: pcscd", "kiosk back in service"]


def test_chain_health_from_a_live_view_reads_the_head_block_on_its_own_client() -> None:
    from web3.providers.base import BaseProvider

    from cityid.chain.rpc import RpcClient

    class Transport(BaseProvider):  # a web3 provider, as the chain clients are built on
        url = "fake://"

        def __init__(self, reply: Any) -> None:
            super().__init__()
            self.reply, self.sent = reply, []

        def make_request(self, method: str, params: Any) -> Any:
            self.sent.append({"method": method, "params": params})
            return {"jsonrpc": "2.0", "id": 1, "result": self.reply}

    class View:
        def __init__(self, transport: Transport) -> None:
            self.client = RpcClient(transport)

    clock = Clock()
    t = Transport({"number": "0x10", "timestamp": hex(int(clock.now) - 42)})
    view = View(t)
    got = chain_health(view, clock)
    assert (got.head_block, got.head_age, got.error) == (16, 42.0, None)
    assert t.sent[0]["method"] == "eth_getBlockByNumber" and view.client.round_trips == 0
    bad = chain_health(View(Transport({"number": [1]})), clock)  # malformed: a typed error, no crash
    assert bad.error and bad.head_age is None
    deep = chain_health(View(Transport("0x1")), clock)
    assert deep.error


def test_chain_health_prefers_the_views_own_answer() -> None:
    class View:
        def chain_health(self) -> ChainHealth:
            return ChainHealth(head_block=9, head_age=1.0, cache_lag=2.0)

        def staleness(self) -> float:
            raise AssertionError("not asked")

    assert chain_health(View()).cache_lag == 2.0


# --- the screen --------------------------------------------------------------------------------------


@pytest.fixture
def backend() -> FakeKioskBackend:
    b = FakeKioskBackend()
    b.health_state = UP
    return b


@pytest.fixture
def app(backend: FakeKioskBackend) -> Iterator[Flask]:
    config = parse_config({"terminal": {"language": "en", "require_clock_sync": False}})
    app = create_app(config, kiosk=backend)
    backend.start(app.extensions["cityid.kiosk"].on_event)
    yield app
    shutdown(app)


def test_out_of_service_screen_and_recovery(app: Flask, backend: FakeKioskBackend) -> None:
    ctl, mon = app.extensions["cityid.kiosk"], app.extensions["cityid.health"]
    hub = app.extensions["cityid.hub"]
    client = screen_client(app)
    q = hub.subscribe()
    tok = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/").get_data(as_text=True))[1]
    backend.insert(FakeToken(claims={"busan_resident": True}))
    client.post("/services", data={"service": "residence", "csrf_token": tok})
    assert ctl.screen is Screen.CONSENT

    backend.health_state = BackendHealth(False, (), UP.chain)
    mon.check()
    assert ctl.screen is Screen.OUT_OF_SERVICE and backend.ended >= 1  # the citizen's session is wiped
    events = [q.get_nowait() for _ in range(q.qsize())]
    assert any("event: service" in e and '"go":"/out-of-service?problems=pcscd"' in e for e in events)
    for path in ("/", "/services", "/consent", "/pin", "/verdict"):
        assert client.get(path).headers["Location"] == "/out-of-service?problems=pcscd", path
    html = client.get("/out-of-service").get_data(as_text=True)
    assert "This kiosk is out of service" in html and "이 키오스크는 현재 사용할 수 없습니다" in html
    assert "pcscd" in html and 'data-problem="pcscd"' in html  # what staff should check, both languages
    assert html.count('data-problem="pcscd"') == 2
    health = client.get("/health")
    assert health.status_code == 503
    body = health.get_json()
    assert body["status"] == "out_of_service" and body["problems"] == ["pcscd"] and body["pcscd"] is False
    assert set(body) >= {"readers", "pcscd", "chain", "clock_synced", "version"}

    backend.health_state = BackendHealth(False, (), ChainHealth(error="ChainError: refused"))
    seen_at = mon._chain_seen_at
    mon._chain_seen_at = None  # as if the chain had never answered: a second problem
    mon.check()
    events = [q.get_nowait() for _ in range(q.qsize())]
    assert any('"go":"/out-of-service?problems=chain,pcscd"' in e for e in events)  # the page reloads
    html = client.get("/out-of-service").get_data(as_text=True)
    assert html.count('data-problem="chain"') == 2 and html.count('data-problem="pcscd"') == 2
    mon._chain_seen_at = seen_at
    backend.health_state = BackendHealth(False, (), UP.chain)
    mon.check()
    backend.insert(FakeToken(), "Reader 1")  # a card tapped while out of service is ignored...
    assert ctl.screen is Screen.OUT_OF_SERVICE
    backend.health_state = UP
    mon.check()
    deadline = time.monotonic() + 5
    while ctl.screen is not Screen.SERVICES and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ctl.screen is Screen.SERVICES  # ...and served once the kiosk is back (the card is still there)
    events = [q.get(timeout=1) for _ in range(2)]
    assert any("event: service" in e and '"go":"/"' in e for e in events)
    assert client.get("/health").status_code == 200
    assert client.get("/out-of-service").headers["Location"] == "/services"


def test_health_endpoint_fields(app: Flask) -> None:
    body = app.test_client().get("/health").get_json()
    assert body["status"] == "ok" and body["readers"] == ["Reader 0"] and body["pcscd"] is True
    assert body["chain"] == {"head_block": 7, "head_age_s": 3.0, "cache_lag_s": None, "error": None}
    assert re.fullmatch(r"\d+\.\d+\.\d+.*|unknown", body["version"])


def test_announce_says_what_is_missing(app: Flask, backend: FakeKioskBackend) -> None:
    backend.health_state = BackendHealth(True, (), ChainHealth(error="ChainError: connection refused"))
    app.extensions["cityid.health"].check()
    lines = announce(app, "http://127.0.0.1:8080")
    assert lines[0].startswith("open the kiosk screen") and "http://127.0.0.1:8080/screen/" in lines[0]
    assert any("no card reader" in line for line in lines)
    assert any("chain" in line and "connection refused" in line for line in lines)


# --- "not valid" vs "cannot check" -------------------------------------------------------------------


def test_cannot_check_is_not_invalid() -> None:
    cannot = view_for("benefit-check", False, "verdict.reason.chain", {})
    assert (cannot.ok, cannot.outcome, cannot.reason) == (
        False,
        "verdict.cannot_check",
        "reason.cannot_check",
    )
    revoked = view_for("benefit-check", False, "verdict.reason.revoked", {})
    assert (revoked.outcome, revoked.reason) == ("verdict.failed", "verdict.reason.revoked")


def test_verdict_screen_tells_the_citizen_whose_problem_it_is(app: Flask, backend: FakeKioskBackend) -> None:
    client = screen_client(app)
    tok = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/").get_data(as_text=True))[1]
    texts = {}
    for reason in ("verdict.reason.chain", "verdict.reason.revoked"):
        backend.insert(FakeToken(reject_reason=reason))
        client.post("/services", data={"service": "benefit-check", "csrf_token": tok})
        client.post("/consent", data={"decision": "agree", "csrf_token": tok})
        assert (
            client.post("/pin", data={"pin": "123456", "csrf_token": tok}).headers["Location"] == "/verdict"
        )
        texts[reason] = client.get("/verdict").get_data(as_text=True)
        backend.remove()
    assert "cannot check your card right now" in texts["verdict.reason.chain"]
    assert "not of your card" in texts["verdict.reason.chain"]
    assert "not valid" not in texts["verdict.reason.chain"]
    assert "This card has been cancelled" in texts["verdict.reason.revoked"]  # the card's problem, plainly
    assert "cannot check your card" not in texts["verdict.reason.revoked"]
    assert "cannot check" not in texts["verdict.reason.revoked"]


def test_sse_pushes_every_flow_change(app: Flask, backend: FakeKioskBackend) -> None:
    ctl = app.extensions["cityid.kiosk"]
    q: queue.SimpleQueue = app.extensions["cityid.hub"].subscribe()
    backend.insert(FakeToken())
    ctl.choose("residence")
    ctl.consent(True)
    ctl.back_to_services()
    ctl.choose("benefit-check")
    ctl.consent(True)
    ctl.submit_pin("123456")
    ctl.finish()
    gos = [re.search(r'"go":"([^"]+)"', q.get_nowait())[1] for _ in range(q.qsize())]
    # "Done" with the card still in the reader: the idle screen asks to take it (issue 15).
    assert gos == [
        "/services",
        "/consent",
        "/pin",
        "/services",
        "/consent",
        "/pin",
        "/pin",
        "/verdict",
        "/?notice=done",
    ]


def test_a_card_opening_while_the_kiosk_goes_out_of_service_is_served_on_return() -> None:
    import threading

    from terminal.web.controller import KioskController
    from terminal.web.events import EventHub

    class Slow(FakeKioskBackend):
        def __init__(self) -> None:
            super().__init__()
            self.go_on = threading.Event()
            self.opening = threading.Event()

        def start_session(self, reader: str) -> Any:
            self.opening.set()
            assert self.go_on.wait(5)
            return super().start_session(reader)

    backend = Slow()
    ctl = KioskController(backend, EventHub())
    backend.start(ctl.on_event)
    tap = threading.Thread(target=backend.insert, args=(FakeToken(),))
    tap.start()
    assert backend.opening.wait(5)
    ctl.set_problems(frozenset({"pcscd"}))
    backend.go_on.set()
    tap.join(5)
    assert ctl.screen is Screen.OUT_OF_SERVICE and ctl.snapshot().get("kind") is None
    ctl.set_problems(frozenset())
    deadline = time.monotonic() + 5
    while ctl.screen is not Screen.SERVICES and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ctl.screen is Screen.SERVICES


def test_kiosk_backend_reports_its_terminal_certificate() -> None:
    """CardKioskBackend.health: ``authorized`` follows the kiosk's certificate (None without one)."""
    import contextlib

    from cryptography.hazmat.primitives.asymmetric import ec

    from cityid.keys import P256PublicKey
    from cityid.terminal_cert import issue_certificate
    from terminal.flows.authorization import TerminalAuthorization
    from terminal.verifier import NonceStore, Verifier
    from terminal.web.stack import CardKioskBackend
    from tests.doubles.static_view import StaticChainView

    now = [1_800_000_000.0]
    key = ec.generate_private_key(ec.SECP256R1())
    cert = issue_certificate(key, "k1", P256PublicKey.from_crypto(key.public_key()), ("busan_resident",),
                             int(now[0]) - 60, int(now[0]) + 60)  # fmt: skip
    auth = TerminalAuthorization("k1", key, cert, clock=lambda: now[0])
    verifier = Verifier(StaticChainView(), "k1", NonceStore())
    plain = CardKioskBackend(Verifier(StaticChainView(), "k0", NonceStore()), [], contextlib.nullcontext)
    assert plain.health().authorized is None
    backend = CardKioskBackend(verifier, [], contextlib.nullcontext, authorization=auth)
    assert backend.health().authorized is True
    now[0] += 120
    assert backend.health().authorized is False


def test_started_twice_runs_one_reader_loop_and_one_health_poller() -> None:
    """A second ``start()`` (an app factory run twice, a restart path) must not start a second card loop or
    poller: two card loops would both see every tap. Stopped, they start again."""
    import threading

    from terminal.web.controller import KioskController
    from terminal.web.events import EventHub

    class Counting(FakeKioskBackend):
        starts = 0

        def start(self, on_event: Any) -> None:
            self.starts += 1
            super().start(on_event)

    backend = Counting()
    ctl = KioskController(backend, EventHub())
    health, _seen = monitor(backend, Clock(), interval=0.05)
    before = {t.name for t in threading.enumerate()}
    try:
        ctl.start()
        ctl.start()
        health.start()
        assert health.start() is not None  # still checks and reports
        names = [t.name for t in threading.enumerate() if t.name not in before]
        assert backend.starts == 1
        assert names.count("kiosk-idle") == 1 and names.count("kiosk-health") == 1, names
    finally:
        ctl.stop()
        health.stop()
    ctl.start()  # after a stop: running again
    try:
        assert backend.starts == 2
    finally:
        ctl.stop()
