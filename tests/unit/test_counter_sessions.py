"""Clerk sessions live server-side (terminal/web/clerk_sessions.py; issue 11 item 2): logout and the idle
timeout end them for every copy of the cookie, the lockout survives a restart, unknown ids cost the same."""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from terminal.config import hash_password, parse_config
from terminal.web import create_app, shutdown
from tests.doubles.fake_backends import FakeCounterBackend, FakeKioskBackend, screen_client

PASSWORD = "correct horse"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def clerk_hash() -> str:
    return hash_password(PASSWORD)


def _app(db: Path, clerk_hash: str, clock: Clock) -> Flask:
    config = parse_config(
        {
            "terminal": {"mode": "kiosk", "language": "en", "idle_timeout": 30},
            "server": {"url": "http://127.0.0.1:9"},
            "counter": {"clerks": {"kim": clerk_hash}},
        }
    )
    app = create_app(config, kiosk=FakeKioskBackend(), counter=FakeCounterBackend())
    app.config.update(CITYID_CLERK_DB=str(db), CITYID_CLOCK=clock)
    return app


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app(tmp_path: Path, clerk_hash: str, clock: Clock) -> Iterator[Flask]:
    app = _app(tmp_path / "sessions.sqlite", clerk_hash, clock)
    yield app
    shutdown(app)


def _csrf(client: FlaskClient) -> str:
    html = client.get("/counter/login").get_data(as_text=True)
    return re.search(r'name="csrf-token" content="([^"]+)"', html)[1]


def _login(client: FlaskClient, clerk: str = "kim", password: str = PASSWORD) -> int:
    tok = _csrf(client)
    data = {"clerk": clerk, "password": password, "csrf_token": tok}
    return client.post("/counter/login", data=data).status_code


def _cookie(app: Flask, client: FlaskClient) -> str:
    return client.get_cookie(app.config["SESSION_COOKIE_NAME"]).value  # type: ignore[union-attr]


def test_a_cookie_captured_before_logout_is_signed_out(app: Flask) -> None:
    client = screen_client(app)
    assert _login(client) == 303
    copy = screen_client(app)
    copy.set_cookie(app.config["SESSION_COOKIE_NAME"], _cookie(app, client))
    assert copy.get("/counter/").status_code == 200  # the copy works while the session lives
    captured = _cookie(app, client)
    assert client.get("/counter/").status_code == 200
    tok = _csrf(client)
    assert client.post("/counter/logout", data={"csrf_token": tok}).status_code == 303
    thief = screen_client(app)
    thief.set_cookie(app.config["SESSION_COOKIE_NAME"], captured)
    assert thief.get("/counter/").status_code == 303  # back to the sign-in page
    assert client.get("/counter/").status_code == 303


def test_idle_timeout_ends_the_session(app: Flask, clock: Clock) -> None:
    client = screen_client(app)
    assert _login(client) == 303
    clock.now += 800
    assert client.get("/counter/").status_code == 200  # activity refreshes the session
    clock.now += 800
    assert client.get("/counter/").status_code == 200
    clock.now += 901
    assert client.get("/counter/").headers["Location"] == "/counter/login"
    clock.now += 1
    assert client.get("/counter/").status_code == 303  # ended, not merely expired once


def test_lockout_survives_a_restart(tmp_path: Path, clerk_hash: str, clock: Clock) -> None:
    db = tmp_path / "sessions.sqlite"
    first = _app(db, clerk_hash, clock)
    client = screen_client(first)
    for _ in range(5):
        assert _login(client, password="nope") == 401
    assert _login(client) == 429
    shutdown(first)
    second = _app(db, clerk_hash, clock)  # the counter app restarted: same state file
    try:
        client = screen_client(second)
        assert _login(client) == 429
        clock.now += 61
        assert _login(client) == 303
    finally:
        shutdown(second)


def test_unknown_and_known_clerk_ids_cost_the_same(app: Flask) -> None:
    client = screen_client(app)
    tok = _csrf(client)

    def attempt(clerk: str) -> float:
        data = {"clerk": clerk, "password": "wrong password", "csrf_token": tok}
        t0 = time.perf_counter()
        assert client.post("/counter/login", data=data).status_code == 401
        return time.perf_counter() - t0

    known, unknown = [], []
    for i in range(50):
        # distinct ids (and a cleared lockout for kim) so that no id is locked during the run
        known.append(attempt("kim"))
        unknown.append(attempt(f"nobody-{i}"))
        if i % 4 == 3:
            app.extensions["cityid.clerk_sessions"].record("kim", True)
    k, u = statistics.median(known), statistics.median(unknown)
    assert k > 0.002  # scrypt really runs (not a trivially fast path)
    assert 0.5 <= u / k <= 2.0, (k, u)
