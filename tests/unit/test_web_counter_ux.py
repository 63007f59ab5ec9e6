"""Counter screens (issue 15 item 4) through the Flask test client and the fake counter backend: messages that
name the real cause, secrets cleared only where wrong, confirmation before enrolling over a citizen,
abandon only for unfinished enrollments, a city server that does not answer shown with a retry."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from terminal.config import hash_password, parse_config
from terminal.server_client import ServerError
from terminal.web import create_app, shutdown
from terminal.web.backend import TokenMissingError
from tests.doubles.fake_backends import FakeCounterBackend

READER = "Fake Counter Reader"
PASSWORD = "correct horse"
ENROLL = {
    "reader": READER,
    "family_name": "Jung",
    "given_name": "Haeun",
    "birthdate": "1950-03-01",
    "district": "Saha-gu",
    "resident": "on",
    "pin": "802468",
    "pin2": "802468",
    "puk": "13572468",
    "puk2": "13572468",
}


@pytest.fixture
def counter() -> FakeCounterBackend:
    return FakeCounterBackend()


@pytest.fixture
def app(counter: FakeCounterBackend) -> Iterator[Flask]:
    config = parse_config(
        {
            "terminal": {"mode": "counter", "language": "en"},
            "server": {"url": "http://127.0.0.1:9"},
            "counter": {"clerks": {"kim": hash_password(PASSWORD)}},
        }
    )
    app = create_app(config, counter=counter)
    yield app
    shutdown(app)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def csrf(client: FlaskClient, path: str = "/counter/login") -> str:
    html = client.get(path, follow_redirects=True).get_data(as_text=True)
    return re.search(r'name="csrf-token" content="([^"]+)"', html)[1]


def signed_in(client: FlaskClient) -> str:
    tok = csrf(client)
    resp = client.post("/counter/login", data={"clerk": "kim", "password": PASSWORD, "csrf_token": tok})
    assert resp.status_code == 303
    return csrf(client, "/counter/")


def post(client: FlaskClient, action: str, data: dict[str, str], tok: str) -> tuple[int, str]:
    resp = client.post(f"/counter/{action}", data={**data, "csrf_token": tok})
    return resp.status_code, resp.get_data(as_text=True)


def text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def secret_inputs(html: str) -> dict[str, bool]:
    """Secret field name → whether the page is told to clear it (``data-clear``)."""
    out = {}
    for tag in re.findall(r"<input[^>]*data-secret[^>]*>", html):
        out[re.search(r'name="([^"]+)"', tag)[1]] = "data-clear" in tag
        assert "value=" not in tag  # a secret is never written back into the page
    return out


def test_failed_sign_in_shows_no_clerk_and_no_sign_out(client: FlaskClient) -> None:
    tok = csrf(client)
    resp = client.post("/counter/login", data={"clerk": "nobody", "password": "x", "csrf_token": tok})
    html = resp.get_data(as_text=True)
    assert resp.status_code == 401 and "Wrong clerk ID or password" in html
    assert "Clerk: nobody" not in html and 'id="logout"' not in html
    assert 'value="nobody"' in html  # the typed id stays in its field


def test_name_error_names_the_characters_and_keeps_the_secrets(client: FlaskClient) -> None:
    tok = signed_in(client)
    status, html = post(client, "enroll", {**ENROLL, "family_name": "<b>Jung</b>"}, tok)
    assert status == 400
    assert "These characters are not allowed in a name: &lt; &gt;" in html
    assert "Enter 1 to 64 characters" not in html
    assert secret_inputs(html) == {
        "pin": False, "pin2": False, "puk": False, "puk2": False, "revocation_password": False,
    }  # fmt: skip
    status, html = post(client, "enroll", {**ENROLL, "family_name": "x" * 65}, tok)
    assert "Enter 1 to 64 characters" in html


def test_only_the_bad_secret_is_cleared(client: FlaskClient) -> None:
    tok = signed_in(client)
    status, html = post(client, "enroll", {**ENROLL, "pin2": "000000"}, tok)
    assert status == 400 and "The two PINs differ" in html
    cleared = secret_inputs(html)
    assert cleared["pin2"] and not cleared["pin"] and not cleared["puk"] and not cleared["puk2"]


def test_wrong_puk_clears_only_the_puk(client: FlaskClient, counter: FakeCounterBackend) -> None:
    tok = signed_in(client)
    status, html = post(client, "unblock", {"reader": READER, "puk": "11112222", "pin": "975310",
                                            "pin2": "975310"}, tok)  # fmt: skip
    assert status == 400 and "Wrong PUK. Tries left: 2" in html
    assert secret_inputs(html) == {"puk": True, "pin": False, "pin2": False}


def test_enrolling_over_a_citizen_asks_first_and_names_what_is_replaced(
    client: FlaskClient, counter: FakeCounterBackend
) -> None:
    tok = signed_in(client)
    status, html = post(client, "enroll", ENROLL, tok)
    assert status == 200 and "Card enrolled" in html
    old_did = counter.cards[READER].did
    assert old_did
    status, html = post(client, "enroll", {**ENROLL, "given_name": "Minji"}, tok)
    assert status == 409 and len(counter.credentials) == 1  # nothing enrolled yet
    assert "This card already holds a citizen" in html and old_did in html and "BSN-0011223344556677" in html
    assert "Enrolling Jung Minji replaces the identity below" in html
    assert 'name="replace_serial" value="0011223344556677"' in html
    confirm = {**ENROLL, "given_name": "Minji", "replace_serial": "0011223344556677"}
    status, html = post(client, "enroll", confirm, tok)  # no PUK, box not ticked
    assert status == 400 and 'id="err-current_puk"' in html and 'id="err-replace_confirm"' in html
    assert "This card already holds a citizen" in html
    status, html = post(
        client, "enroll", {**confirm, "current_puk": "99999999", "replace_confirm": "on"}, tok
    )
    assert status == 400 and "Wrong PUK" in html and secret_inputs(html)["current_puk"]
    assert not secret_inputs(html)["pin"] and counter.cards[READER].did == old_did
    status, html = post(
        client, "enroll", {**confirm, "current_puk": "13572468", "replace_confirm": "on"}, tok
    )
    assert status == 200 and "Card enrolled" in html and counter.cards[READER].did != old_did


def test_abandon_refuses_a_finished_card(client: FlaskClient, counter: FakeCounterBackend) -> None:
    tok = signed_in(client)
    post(client, "enroll", ENROLL, tok)
    did = counter.cards[READER].did
    status, html = post(client, "abandon", {"reader": READER, "confirm": "on"}, tok)
    assert status == 409 and "enrollment is finished" in html and "Nothing was erased" in html
    assert did in html and counter.cards[READER].did == did


def test_fido_messages_name_the_empty_reader(
    client: FlaskClient, counter: FakeCounterBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    tok = signed_in(client)
    data = {"reader": READER, "card_pin": "123456", "key_reader": "Key Reader", "pin": "8642"}

    def no_key(*_: object) -> None:
        raise TokenMissingError("key", "Key Reader")

    monkeypatch.setattr(counter, "register_fido", no_key)
    status, html = post(client, "fido", data, tok)
    assert status == 409 and "There is no security key on the key reader (Key Reader)" in html
    assert "no card in the chosen reader" not in html
    assert secret_inputs(html) == {"card_pin": False, "pin": False}

    def not_a_key(*_: object) -> None:
        raise TokenMissingError("key", "Key Reader", wrong_kind=True)

    monkeypatch.setattr(counter, "register_fido", not_a_key)
    status, html = post(client, "fido", data, tok)
    assert "is not a FIDO2 security key" in html


def test_server_without_answer_is_an_error_with_retry(
    client: FlaskClient, counter: FakeCounterBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    tok = signed_in(client)

    def frozen(*_: object) -> None:
        raise ServerError(0, "timeout", "no answer within 5 s")

    monkeypatch.setattr(counter, "enroll", frozen)
    status, html = post(client, "enroll", ENROLL, tok)
    assert status == 504 and "did not answer within 5 seconds" in html
    assert 'id="retry"' in html and 'form="counter-form"' in html
    assert not any(secret_inputs(html).values())  # nothing to retype for the retry
    monkeypatch.setattr(counter, "enroll", lambda *_: (_ for _ in ()).throw(ServerError(503, "chain", "x")))
    status, html = post(client, "enroll", ENROLL, tok)
    assert status == 503 and "could not finish the request right now" in html and 'id="retry"' in html
    assert "A server or chain problem" not in text(html)
    monkeypatch.setattr(
        counter, "enroll", lambda *_: (_ for _ in ()).throw(ServerError(0, "unreachable", "x"))
    )
    status, html = post(client, "enroll", ENROLL, tok)
    assert status == 503 and "cannot be reached right now" in html and 'id="retry"' in html


def test_a_counter_without_terminal_certificate_says_so_and_offers_a_retry(
    client: FlaskClient, counter: FakeCounterBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No authorization root from the city server (e.g. it has no [authorization_key]): the counter refuses
    to personalize (docs/card-profile.md §Terminal authentication) and says why, not "technical"."""
    from terminal.flows.authorization import TerminalCertificateMissingError

    tok = signed_in(client)

    def refused(*_: object) -> None:
        raise TerminalCertificateMissingError("no root: city server: no authorization key is configured")

    monkeypatch.setattr(counter, "enroll", refused)
    status, html = post(client, "enroll", ENROLL, tok)
    assert status == 503 and "no valid terminal certificate from the city server" in text(html)
    assert "a new card is not touched" in text(html) and 'id="retry"' in html
    assert "A server or chain problem" not in text(html)
    assert not any(secret_inputs(html).values())
