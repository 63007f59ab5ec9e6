"""Web layer through the Flask test client with the in-memory fake backends (no daemons)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from terminal.config import hash_password, parse_config
from terminal.web import create_app, shutdown
from terminal.web.controller import KioskController, Screen
from tests.doubles.fake_backends import FakeCounterBackend, FakeKioskBackend, FakeToken, screen_client

PIN = "246810"
CLERK_PASSWORD = "correct horse"
SENIOR = {
    "busan_resident": True,
    "age_over_65": True,
    "family_name": "Kim",
    "given_name": "Minsu",
    "district": "Haeundae-gu",
}


@pytest.fixture(scope="module")
def clerk_hash() -> str:
    return hash_password(CLERK_PASSWORD)


@pytest.fixture
def backend() -> FakeKioskBackend:
    return FakeKioskBackend()


@pytest.fixture
def app(backend: FakeKioskBackend, clerk_hash: str) -> Iterator[Flask]:
    config = parse_config(
        {
            "terminal": {"mode": "kiosk", "language": "en", "idle_timeout": 30},
            "server": {"url": "http://127.0.0.1:9"},
            "counter": {"clerks": {"kim": clerk_hash}},
        }
    )
    app = create_app(config, kiosk=backend, counter=FakeCounterBackend())
    app.extensions["cityid.kiosk"].backend.start(app.extensions["cityid.kiosk"].on_event)
    yield app
    shutdown(app)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return screen_client(app)


def csrf(client: FlaskClient) -> str:
    html = client.get("/", follow_redirects=True).get_data(as_text=True)
    return re.search(r'name="csrf-token" content="([^"]+)"', html)[1]


def ctl(app: Flask) -> KioskController:
    return app.extensions["cityid.kiosk"]


def to_pin(
    client: FlaskClient, backend: FakeKioskBackend, token: FakeToken, service: str = "benefit-check"
) -> str:
    backend.insert(token)
    tok = csrf(client)
    assert (
        client.post("/services", data={"service": service, "csrf_token": tok}).headers["Location"]
        == "/consent"
    )
    assert (
        client.post("/consent", data={"decision": "agree", "csrf_token": tok}).headers["Location"] == "/pin"
    )
    return tok


# --- security headers and CSRF ------------------------------------------------------------------------


def test_every_page_has_strict_csp_and_headers(client: FlaskClient) -> None:
    for path in ("/", "/static/kiosk.css", "/static/kiosk.js", "/counter/login", "/nope"):
        resp = client.get(path)
        csp = resp.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert "frame-ancestors 'none'" in csp
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["X-Frame-Options"] == "DENY"
    assert client.get("/").headers["Cache-Control"] == "no-store"


def test_session_cookie_is_httponly_and_samesite_strict(client: FlaskClient) -> None:
    resp = client.get("/")
    cookie = resp.headers.get("Set-Cookie", "")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie


@pytest.mark.parametrize(
    "path", ["/services", "/consent", "/pin", "/done", "/lang", "/touch", "/counter/login"]
)
def test_post_without_or_with_wrong_csrf_token_is_refused(client: FlaskClient, path: str) -> None:
    csrf(client)
    assert client.post(path, data={"pin": "123456"}).status_code == 403
    assert client.post(path, data={"csrf_token": "x" * 43}).status_code == 403
    assert client.post(path, headers={"X-CSRF-Token": "forged"}).status_code == 403


def test_csrf_token_in_header_is_accepted(client: FlaskClient) -> None:
    tok = csrf(client)
    assert client.post("/touch", headers={"X-CSRF-Token": tok}).status_code == 204


def test_language_switch_only_redirects_locally(client: FlaskClient) -> None:
    tok = csrf(client)
    for target in ("https://evil.example/", "//evil.example/x", "javascript:alert(1)"):
        resp = client.post("/lang", data={"lang": "ko", "next": target, "csrf_token": tok})
        assert resp.headers["Location"] == "/"
    assert client.post("/lang", data={"lang": "fr", "csrf_token": tok}).status_code == 400


def test_language_switch_changes_the_page(client: FlaskClient) -> None:
    tok = csrf(client)
    assert "Tap your card" in client.get("/").get_data(as_text=True)
    client.post("/lang", data={"lang": "ko", "next": "/", "csrf_token": tok})
    html = client.get("/").get_data(as_text=True)
    assert '<html lang="ko">' in html and "카드 또는 보안키를 대 주세요" in html


# --- the kiosk flow -----------------------------------------------------------------------------------


def test_full_flow_shows_only_the_service_claims(
    app: Flask, client: FlaskClient, backend: FakeKioskBackend
) -> None:
    assert client.get("/services").headers["Location"] == "/"  # nothing tapped yet
    tok = to_pin(client, backend, FakeToken(pin=PIN, claims=SENIOR))
    consent_html = client.get("/pin").get_data(as_text=True)
    assert "Enter your card PIN" in consent_html and "Tries left: 3" in consent_html
    resp = client.post("/pin", data={"pin": PIN, "csrf_token": tok})
    assert resp.headers["Location"] == "/verdict"
    html = client.get("/verdict").get_data(as_text=True)
    assert "You are eligible" in html and "Over 65" in html
    assert "Kim" not in html and "Minsu" not in html  # the benefit check never sees the name
    backend.remove()
    assert ctl(app).screen is Screen.IDLE
    assert client.get("/verdict").headers["Location"] == "/"


def test_consent_lists_exactly_the_claims_of_the_service(
    client: FlaskClient, backend: FakeKioskBackend
) -> None:
    backend.insert(FakeToken(claims=SENIOR))
    tok = csrf(client)
    client.post("/services", data={"service": "residence", "csrf_token": tok})
    html = client.get("/consent").get_data(as_text=True)
    claims = re.findall(r'data-claim="([^"]+)"', html)
    assert claims == ["family_name", "given_name", "district", "busan_resident"]


def test_wrong_pin_shows_tries_left_then_blocked(client: FlaskClient, backend: FakeKioskBackend) -> None:
    tok = to_pin(client, backend, FakeToken(pin=PIN, claims=SENIOR))
    assert client.post("/pin", data={"pin": "000000", "csrf_token": tok}).headers["Location"] == "/pin"
    html = client.get("/pin").get_data(as_text=True)
    assert "Wrong PIN. Tries left: 2" in html and 'role="alert"' in html
    # One try left: a distinct last-try screen before the final attempt (issue 15).
    assert client.post("/pin", data={"pin": "000000", "csrf_token": tok}).headers["Location"] == "/last-try"
    html = client.get("/last-try").get_data(as_text=True)
    assert "last try" in html and "PUK" in html and "post-office counter" in html
    assert client.post("/last-try", data={"decision": "try", "csrf_token": tok}).headers["Location"] == "/pin"
    assert client.post("/pin", data={"pin": "000000", "csrf_token": tok}).headers["Location"] == "/blocked"
    html = client.get("/blocked").get_data(as_text=True)
    assert "PIN is blocked" in html and "post-office counter" in html


def test_malformed_pin_never_reaches_the_card(client: FlaskClient, backend: FakeKioskBackend) -> None:
    token = FakeToken(pin=PIN, claims=SENIOR)
    tok = to_pin(client, backend, token)
    for bad in ("12", "abcdef", "1234567890", "１２３４５６"):
        client.post("/pin", data={"pin": bad, "csrf_token": tok})
        assert "A PIN is 4 to 8 digits" in client.get("/pin").get_data(as_text=True)
    assert token.tries == 3 and backend.presented == []


def test_removal_mid_flow_returns_to_idle_with_notice(
    app: Flask, client: FlaskClient, backend: FakeKioskBackend
) -> None:
    hub_q = app.extensions["cityid.hub"].subscribe()
    to_pin(client, backend, FakeToken(pin=PIN))
    backend.remove()
    messages = []
    while not hub_q.empty():
        messages.append(hub_q.get())
    assert any("event: removed" in m and '"go":"/?notice=removed"' in m for m in messages)
    html = client.get("/?notice=removed").get_data(as_text=True)
    assert "Your card was removed" in html
    assert client.get("/?notice=<script>").status_code == 200
    assert "<script>" not in client.get("/?notice=<script>").get_data(as_text=True).split("</head>")[1]


def test_verifier_rejection_is_explained(client: FlaskClient, backend: FakeKioskBackend) -> None:
    tok = to_pin(client, backend, FakeToken(pin=PIN, claims=SENIOR, reject_reason="verdict.reason.revoked"))
    client.post("/pin", data={"pin": PIN, "csrf_token": tok})
    html = client.get("/verdict").get_data(as_text=True)
    assert "This card has been cancelled" in html and "The city cancelled this card" in html
    assert "post-office counter" in html and 'id="another"' not in html  # a next step, no other service


def test_not_eligible_says_why(client: FlaskClient, backend: FakeKioskBackend) -> None:
    tok = to_pin(client, backend, FakeToken(pin=PIN, claims={"busan_resident": True, "age_over_65": False}))
    client.post("/pin", data={"pin": PIN, "csrf_token": tok})
    html = client.get("/verdict").get_data(as_text=True)
    assert "You are not eligible" in html and "You are not over 65." in html


def test_pin_is_never_logged_or_echoed(
    client: FlaskClient, backend: FakeKioskBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(1)
    tok = to_pin(client, backend, FakeToken(pin=PIN, claims=SENIOR))
    bodies = [client.post("/pin", data={"pin": "975318", "csrf_token": tok}, follow_redirects=True)]
    bodies.append(client.post("/pin", data={"pin": PIN, "csrf_token": tok}, follow_redirects=True))
    for resp in bodies:
        assert "975318" not in resp.get_data(as_text=True) and PIN not in resp.get_data(as_text=True)
    for record in caplog.records:
        text = record.getMessage()
        assert PIN not in text and "975318" not in text and "Kim" not in text


def test_done_wipes_before_removal(app: Flask, client: FlaskClient, backend: FakeKioskBackend) -> None:
    tok = to_pin(client, backend, FakeToken(pin=PIN, claims=SENIOR))
    client.post("/pin", data={"pin": PIN, "csrf_token": tok})
    ended = backend.ended
    assert client.post("/done", data={"csrf_token": tok}).headers["Location"] == "/?notice=done"
    assert ctl(app).snapshot() == {"screen": Screen.IDLE} and backend.ended == ended + 1


# --- counter ------------------------------------------------------------------------------------------


def login(client: FlaskClient, password: str = CLERK_PASSWORD) -> int:
    tok = csrf(client)
    return client.post(
        "/counter/login", data={"clerk": "kim", "password": password, "csrf_token": tok}
    ).status_code


def test_counter_needs_a_signed_in_clerk(client: FlaskClient) -> None:
    for path in ("/counter/", "/counter/enroll", "/counter/revoke"):
        assert client.get(path).headers["Location"] == "/counter/login"
    assert login(client, "wrong") == 401
    assert client.get("/counter/").status_code == 303
    assert login(client) == 303
    assert client.get("/counter/").status_code == 200


def test_counter_sign_in_locks_after_repeated_failures(client: FlaskClient) -> None:
    for _ in range(5):
        assert login(client, "nope") == 401
    assert login(client) == 429  # even the right password, for a minute


def test_counter_enroll_validates_and_never_echoes_secrets(app: Flask, client: FlaskClient) -> None:
    login(client)
    tok = csrf(client)
    bad = {
        "reader": "Fake Counter Reader",
        "family_name": "",
        "given_name": "Minsu",
        "birthdate": "2999-01-01",
        "district": "Atlantis",
        "pin": "12",
        "pin2": "12",
        "puk": "87654321",
        "puk2": "87654321",
        "csrf_token": tok,
    }
    resp = client.post("/counter/enroll", data=bad)
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400
    for field in ("family_name", "birthdate", "district", "pin"):
        assert f'id="err-{field}"' in html
    assert "87654321" not in html and 'value="Minsu"' in html
    good = dict(
        bad,
        family_name="Kim",
        birthdate="1950-03-01",
        district="Haeundae-gu",
        pin="135790",
        pin2="135790",
        resident="on",
    )
    resp = client.post("/counter/enroll", data=good)
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200 and "Card enrolled" in html and "cred-0001" in html
    assert "135790" not in html and "87654321" not in html
    resp = client.post("/counter/status", data={"credential_id": "cred-0001", "csrf_token": tok})
    assert "Valid" in resp.get_data(as_text=True)
    resp = client.post(
        "/counter/revoke", data={"credential_id": "cred-0001", "reason": "lost", "csrf_token": tok}
    )
    assert resp.status_code == 400  # confirmation box not ticked
    resp = client.post(
        "/counter/revoke",
        data={"credential_id": "cred-0001", "reason": "lost", "confirm": "on", "csrf_token": tok},
    )
    assert "Card revoked" in resp.get_data(as_text=True) and "Revoked" in resp.get_data(as_text=True)
    resp = client.post("/counter/status", data={"credential_id": "cred-9999", "csrf_token": tok})
    assert resp.status_code == 404 and "No such credential" in resp.get_data(as_text=True)


def test_counter_unblock_reports_puk_tries(client: FlaskClient) -> None:
    login(client)
    tok = csrf(client)
    data = {
        "reader": "Fake Counter Reader",
        "puk": "11111111",
        "pin": "135790",
        "pin2": "135790",
        "csrf_token": tok,
    }
    resp = client.post("/counter/unblock", data=data)
    assert resp.status_code == 400 and "Wrong PUK. Tries left: 2" in resp.get_data(as_text=True)
    resp = client.post("/counter/unblock", data=dict(data, puk="12345678"))
    assert resp.status_code == 200 and "PIN reset" in resp.get_data(as_text=True)


def test_counter_fido_form_validates_and_reports(client: FlaskClient) -> None:
    login(client)
    tok = csrf(client)
    data = {
        "reader": "Fake Counter Reader",
        "key_reader": "",
        "card_pin": "12",
        "pin": "1",
        "csrf_token": tok,
    }
    resp = client.post("/counter/fido", data=data)
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400
    assert 'id="err-card_pin"' in html and 'id="err-key_reader"' in html and 'id="err-pin"' in html
    data = dict(data, key_reader="Fake Counter Reader", card_pin="654321", pin="8642")
    resp = client.post("/counter/fido", data=data)
    assert resp.status_code == 400 and "Wrong PIN. Tries left: 2" in resp.get_data(as_text=True)
    resp = client.post("/counter/fido", data=dict(data, card_pin="123456"))
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200 and "Security key registered" in html
    assert "123456" not in html and "8642" not in html


def test_counter_abandon_needs_confirmation(client: FlaskClient) -> None:
    login(client)
    tok = csrf(client)
    assert "Abandon an unfinished enrollment" in client.get("/counter/").get_data(as_text=True)
    resp = client.post("/counter/abandon", data={"reader": "Fake Counter Reader", "csrf_token": tok})
    assert resp.status_code == 400 and 'id="err-confirm"' in resp.get_data(as_text=True)
    resp = client.post(
        "/counter/abandon", data={"reader": "Fake Counter Reader", "confirm": "on", "csrf_token": tok}
    )
    assert resp.status_code == 200 and "Enrollment abandoned, card erased" in resp.get_data(as_text=True)


@pytest.mark.parametrize(
    ("error", "status", "text"),
    [
        ("wrong", 400, "Wrong security key PIN. Tries left: 5"),
        ("power-cycle", 409, "Remove and re-insert the key"),
        ("blocked", 409, "the key must be reset"),
    ],
)
def test_counter_fido_key_pin_states_each_get_their_message(
    app: Flask, client: FlaskClient, error: str, status: int, text: str
) -> None:
    """Key PIN states are the shared PIN states (cityid.errors) and each shows its own message."""
    from terminal.fido.errors import FidoInvalidPinError, FidoPinBlockedError, FidoPinPowerCycleError

    raised = {
        "wrong": FidoInvalidPinError(5),
        "power-cycle": FidoPinPowerCycleError(4),
        "blocked": FidoPinBlockedError(),
    }[error]

    def register_fido(*_args: object) -> None:
        raise raised

    app.extensions["cityid.counter"].register_fido = register_fido
    login(client)
    tok = csrf(client)
    data = {
        "reader": "Fake Counter Reader",
        "key_reader": "Fake Counter Reader",
        "card_pin": "123456",
        "pin": "8642",
        "csrf_token": tok,
    }
    resp = client.post("/counter/fido", data=data)
    assert resp.status_code == status and text in resp.get_data(as_text=True)
