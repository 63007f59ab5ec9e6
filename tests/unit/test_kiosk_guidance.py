"""Issue 15 item 1: time limits with a warning, last-try screen, refusals at tap, plain outcomes, notices."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from terminal.config import parse_config
from terminal.web import create_app, shutdown
from terminal.web.controller import KioskController, Screen
from terminal.web.events import EventHub
from tests.doubles.fake_backends import FakeKioskBackend, FakeToken, screen_client

PIN = "123456"
SENIOR = {"busan_resident": True, "age_over_65": True}
I18N = Path(__file__).resolve().parents[2] / "terminal" / "web" / "i18n"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def backend() -> FakeKioskBackend:
    return FakeKioskBackend()


@pytest.fixture
def app(backend: FakeKioskBackend) -> Iterator[Flask]:
    config = parse_config({"terminal": {"mode": "kiosk", "language": "en", "idle_timeout": 30}})
    application = create_app(config, kiosk=backend)
    application.extensions["cityid.kiosk"].backend.start(application.extensions["cityid.kiosk"].on_event)
    try:
        yield application
    finally:
        shutdown(application)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return screen_client(app)


def csrf(client: FlaskClient) -> str:
    html = client.get("/", follow_redirects=True).get_data(as_text=True)
    return re.search(r'name="csrf-token" content="([^"]+)"', html)[1]


def controller(backend: FakeKioskBackend, clock: Clock) -> tuple[KioskController, list[tuple[str, dict]]]:
    hub = EventHub()
    published: list[tuple[str, dict]] = []
    hub.publish = lambda kind, data: published.append((kind, data))  # type: ignore[method-assign]
    ctl = KioskController(backend, hub, idle_timeout=30, warning=20, clock=clock)
    backend.start(ctl.on_event)
    return ctl, published


def test_wipe_comes_only_after_a_warning_of_at_least_20_seconds() -> None:
    backend, clock = FakeKioskBackend(), Clock()
    ctl, published = controller(backend, clock)
    backend.insert(FakeToken(pin=PIN))
    snap = ctl.snapshot()
    assert snap["screen"] is Screen.SERVICES and snap["countdown_in"] == 30 and snap["warning"] == 20
    clock.now += 49.9  # countdown has run 19.9 s of its 20
    assert not ctl.check_idle()
    ctl.touch()  # "more time" (or any touch, scroll, key)
    clock.now += 49.9
    assert not ctl.check_idle() and ctl.screen is Screen.SERVICES
    clock.now += 0.2
    assert ctl.check_idle() and ctl.screen is Screen.IDLE
    assert published[-1] == ("timeout", {"go": "/?notice=timeout"})


def test_consent_and_pin_screens_get_longer_limits() -> None:
    backend, clock = FakeKioskBackend(), Clock()
    ctl, _ = controller(backend, clock)
    backend.insert(FakeToken(pin=PIN))
    ctl.choose("benefit-check")
    assert ctl.limit(Screen.CONSENT) == ctl.limit(Screen.PIN) == 90 > ctl.limit(Screen.SERVICES)
    assert ctl.snapshot()["countdown_in"] == 90
    clock.now += 90 + 19
    assert not ctl.check_idle()
    clock.now += 2
    assert ctl.check_idle()


def test_countdown_and_more_time_are_on_every_session_screen(
    client: FlaskClient, backend: FakeKioskBackend
) -> None:
    def check(path: str, limit: str) -> None:
        html = client.get(path).get_data(as_text=True)
        assert 'id="countdown"' in html and 'id="more-time"' in html and "More time" in html, path
        assert 'data-warning="20"' in html and f'data-limit="{limit}"' in html, path

    backend.insert(FakeToken(pin=PIN, claims=SENIOR))
    tok = csrf(client)
    check("/services", "30.0")
    client.post("/services", data={"service": "benefit-check", "csrf_token": tok})
    check("/consent", "90.0")
    client.post("/consent", data={"decision": "agree", "csrf_token": tok})
    check("/pin", "90.0")
    client.post("/pin", data={"pin": PIN, "csrf_token": tok})
    check("/verdict", "30.0")


def test_idle_screen_has_no_countdown(client: FlaskClient) -> None:
    assert 'id="countdown"' not in client.get("/").get_data(as_text=True)


def test_last_try_screen_comes_before_the_final_attempt_and_stop_keeps_the_try(
    client: FlaskClient, backend: FakeKioskBackend
) -> None:
    token = FakeToken(pin=PIN, claims=SENIOR, tries=1)
    backend.insert(token)
    tok = csrf(client)
    client.post("/services", data={"service": "benefit-check", "csrf_token": tok})
    resp = client.post("/consent", data={"decision": "agree", "csrf_token": tok})
    assert resp.headers["Location"] == "/last-try"
    html = client.get("/last-try").get_data(as_text=True)
    assert "<title>Careful: this is your last try" in html and "locks itself" in html
    # The PIN cannot be sent from the last-try screen.
    assert client.post("/pin", data={"pin": "000000", "csrf_token": tok}).headers["Location"] == "/last-try"
    resp = client.post("/last-try", data={"decision": "stop", "csrf_token": tok})
    assert resp.headers["Location"] == "/services"
    assert token.tries == 1


@pytest.mark.parametrize(
    ("reason", "words"),
    [
        ("blank", "has not been issued yet"),
        ("foreign", "not a Busan citizen card"),
        ("unregistered_key", "security key is not registered"),
        ("unusable", "cannot be read"),
    ],
)
def test_unusable_tokens_are_refused_at_tap_with_what_to_do(
    client: FlaskClient, backend: FakeKioskBackend, reason: str, words: str
) -> None:
    backend.insert(FakeToken(refuse=reason))
    resp = client.get("/")
    assert resp.headers["Location"] == "/refused"
    html = client.get("/refused").get_data(as_text=True)
    assert words in html and "post-office counter" in html and f'data-reason="{reason}"' in html
    assert client.get("/services").headers["Location"] == "/refused"  # no services, no PIN
    backend.remove()
    assert client.get("/").status_code == 200


def test_revoked_card_outcome_in_plain_words_with_next_step_and_no_other_service(
    client: FlaskClient, backend: FakeKioskBackend
) -> None:
    backend.insert(FakeToken(pin=PIN, claims=SENIOR, reject_reason="verdict.reason.revoked"))
    tok = csrf(client)
    client.post("/services", data={"service": "benefit-check", "csrf_token": tok})
    client.post("/consent", data={"decision": "agree", "csrf_token": tok})
    client.post("/pin", data={"pin": PIN, "csrf_token": tok})
    html = client.get("/verdict").get_data(as_text=True)
    assert "cancelled and can no longer be used" in html and "ID card" in html and "new citizen card" in html
    assert 'id="another"' not in html and 'id="done"' in html
    client.post("/lang", data={"lang": "ko", "next": "/verdict", "csrf_token": tok})
    html = client.get("/verdict").get_data(as_text=True)
    assert "폐지" in html and "폐기" not in html


def test_not_eligible_still_offers_another_service(client: FlaskClient, backend: FakeKioskBackend) -> None:
    backend.insert(FakeToken(pin=PIN, claims={"busan_resident": True, "age_over_65": False}))
    tok = csrf(client)
    client.post("/services", data={"service": "benefit-check", "csrf_token": tok})
    client.post("/consent", data={"decision": "agree", "csrf_token": tok})
    client.post("/pin", data={"pin": PIN, "csrf_token": tok})
    assert 'id="another"' in client.get("/verdict").get_data(as_text=True)


def test_done_with_card_in_reader_says_to_take_it_and_removal_clears_the_notice(
    app: Flask, client: FlaskClient, backend: FakeKioskBackend
) -> None:
    backend.insert(FakeToken(pin=PIN, claims=SENIOR))
    tok = csrf(client)
    client.post("/services", data={"service": "benefit-check", "csrf_token": tok})
    client.post("/consent", data={"decision": "agree", "csrf_token": tok})
    client.post("/pin", data={"pin": PIN, "csrf_token": tok})
    assert client.post("/done", data={"csrf_token": tok}).headers["Location"] == "/?notice=done"
    assert "take your card or security key" in client.get("/?notice=done").get_data(as_text=True)
    hub: EventHub = app.extensions["cityid.kiosk"].hub
    seen: list[tuple[str, dict]] = []
    original = hub.publish
    hub.publish = lambda kind, data: (seen.append((kind, data)), original(kind, data))  # type: ignore[method-assign]
    backend.remove()
    assert seen == [("removed", {"go": "/"})]  # the notice leaves with the citizen


def test_declining_consent_is_acknowledged_once(client: FlaskClient, backend: FakeKioskBackend) -> None:
    backend.insert(FakeToken(pin=PIN))
    tok = csrf(client)
    client.post("/services", data={"service": "benefit-check", "csrf_token": tok})
    resp = client.post("/consent", data={"decision": "decline", "csrf_token": tok})
    assert resp.headers["Location"] == "/services"
    assert "nothing was read from your card" in client.get("/services").get_data(as_text=True)
    assert "nothing was read" not in client.get("/services").get_data(as_text=True)


def test_security_key_screens_say_security_key(client: FlaskClient, backend: FakeKioskBackend) -> None:
    from terminal.web.backend import TokenKind

    backend.insert(FakeToken(pin=PIN, kind=TokenKind.FIDO, tries=8))
    tok = csrf(client)
    text = client.get("/services").get_data(as_text=True)
    client.post("/services", data={"service": "benefit-check", "csrf_token": tok})
    client.post("/consent", data={"decision": "agree", "csrf_token": tok})
    text += client.get("/pin").get_data(as_text=True)
    main = re.sub(r"<header.*?</header>|<footer.*?</footer>", "", text, flags=re.S)
    assert "security key" in main and "your card" not in main.lower()


def test_each_screen_has_its_own_title_and_translated_pin_validation(
    client: FlaskClient, backend: FakeKioskBackend
) -> None:
    titles = {re.search(r"<title>(.*?)</title>", client.get("/").get_data(as_text=True))[1]}
    backend.insert(FakeToken(pin=PIN))
    tok = csrf(client)
    titles.add(re.search(r"<title>(.*?)</title>", client.get("/services").get_data(as_text=True))[1])
    client.post("/services", data={"service": "benefit-check", "csrf_token": tok})
    titles.add(re.search(r"<title>(.*?)</title>", client.get("/consent").get_data(as_text=True))[1])
    client.post("/consent", data={"decision": "agree", "csrf_token": tok})
    client.post("/lang", data={"lang": "ko", "next": "/pin", "csrf_token": tok})
    html = client.get("/pin").get_data(as_text=True)
    titles.add(re.search(r"<title>(.*?)</title>", html)[1])
    assert len(titles) == 4
    assert 'data-msg-missing="먼저 PIN을 입력하세요."' in html and "A PIN" not in html


def test_no_korean_particle_placeholders_and_one_term_for_revoked() -> None:
    ko = json.loads((I18N / "ko.json").read_text("utf-8"))
    from terminal.web.catalog import catalogue

    for key, text in {**catalogue("ko"), **ko}.items():
        assert not re.search(r"\((을|를|이|가|은|는|과|와)\)", text), key
        assert "폐기" not in text, key
