"""The kiosk's staff reprint page (issue 13 item 5: "the verdict and document kept so staff can reprint,
nothing anchored twice"), through the Flask test client: a real CertificateDesk over an in-memory anchoring
queue and the stand-in printer of test_web_printing."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from flask.testing import FlaskClient

from terminal.config import hash_password, parse_config
from terminal.flows.certificate import CertificateDesk
from terminal.peripherals.printer import PrinterState
from terminal.web import create_app, shutdown
from terminal.web.printing import KioskPrinting
from tests.doubles.fake_backends import FakeKioskBackend, screen_client
from tests.unit.test_web_printing import SENIOR, Printer, Queue, _print, _qr, _verdict

STAFF_PASSWORD = "staff-pass-7"


@pytest.fixture
def rig() -> Iterator[tuple[Flask, FakeKioskBackend, Printer, Queue, list[float]]]:
    config = parse_config({"terminal": {"mode": "kiosk", "language": "en", "require_clock_sync": False},
                           "counter": {"clerks": {"lee": hash_password(STAFF_PASSWORD)}}})  # fmt: skip
    queue, printer = Queue(), Printer()
    desk = CertificateDesk(ec.generate_private_key(ec.SECP256R1()), "busan-kiosk-dev",
                           "eip155:31337:0x" + "11" * 20, queue, printer)  # type: ignore[arg-type]  # fmt: skip
    backend = FakeKioskBackend()
    app = create_app(config, kiosk=backend, printing=KioskPrinting(desk))
    now = [1_800_000_000.0]
    app.config["CITYID_CLOCK"] = lambda: now[0]
    backend.start(app.extensions["cityid.kiosk"].on_event)
    yield app, backend, printer, queue, now
    shutdown(app)


def _csrf(html: str) -> str:
    return re.search(r'name="csrf-token" content="([^"]+)"', html)[1]


def _sign_in(client: FlaskClient, password: str = STAFF_PASSWORD) -> Any:
    tok = _csrf(client.get("/staff/login").get_data(as_text=True))
    return client.post("/staff/login", data={"clerk": "lee", "password": password, "csrf_token": tok})


def test_staff_pages_need_a_staff_sign_in(rig) -> None:  # type: ignore[no-untyped-def]
    app, *_ = rig
    for client in (app.test_client(), screen_client(app)):  # not even the kiosk's own screen gets in
        resp = client.get("/staff/printer")
        assert resp.status_code == 303 and resp.headers["Location"].endswith("/staff/login")
        tok = _csrf(client.get("/staff/login").get_data(as_text=True))
        assert client.post("/staff/printer/reprint", data={"job": "x", "csrf_token": tok}).status_code == 303
    client = app.test_client()
    assert _sign_in(client, "wrong").status_code == 401
    codes = [_sign_in(client, "wrong").status_code for _ in range(5)]
    assert codes[-1] == 429  # the counter's lockout applies to staff sign-in too
    assert _sign_in(client).status_code == 429  # even the right password, while locked


def test_staff_reprint_prints_the_kept_document_and_anchors_it_once(rig) -> None:  # type: ignore[no-untyped-def]
    app, backend, printer, queue, _ = rig
    client = screen_client(app)
    tok = _verdict(client, backend, "residence", SENIOR)
    assert 'id="staff-link"' in client.get("/verdict").get_data(as_text=True)
    printer.mid_print = PrinterState.PAPER_OUT
    assert "The printer is out of paper." in _print(client, tok)
    assert len(queue.submitted) == 1 and printer.printed == []

    # staff come to the kiosk and sign in on its screen
    assert _sign_in(client).headers["Location"].endswith("/staff/printer")
    page = client.get("/staff/printer").get_data(as_text=True)
    assert 'data-state="paper_out"' in page and "The printer is out of paper." in page
    (job,) = app.extensions["cityid.printing"].staff_jobs()
    assert f'id="job-{job.id}" data-state="failed"' in page and "Residence" in page
    assert job.confirmation in page
    for personal in ("Minsu", "Kim", "Haeundae", "1950"):  # the kept facts never show on the staff page
        assert personal not in page, personal
    printer.state = PrinterState.READY  # paper loaded
    tok = _csrf(page)
    resp = client.post("/staff/printer/reprint", data={"job": job.id, "csrf_token": tok})
    page = resp.get_data(as_text=True)
    assert resp.status_code == 200 and "Reprinted." in page
    assert f'id="job-{job.id}" data-state="printed"' in page
    (blocks,) = printer.printed
    assert _qr(blocks).document_hash == queue.submitted[0] and len(queue.submitted) == 1  # anchored once
    assert _qr(blocks).confirmation == job.confirmation

    # signing out returns the screen to the citizen's verdict (the screen binding was kept)
    client.post("/staff/logout", data={"csrf_token": tok})
    assert client.get("/staff/printer").status_code == 303
    page = client.get("/verdict").get_data(as_text=True)
    assert "Residence confirmed" in page
    # the citizen taps "try printing again": already printed by staff, no second paper, no new anchor
    page = _print(client, tok)
    assert "Your certificate has been printed" in page
    assert len(printer.printed) == 1 and len(queue.submitted) == 1
    # a second copy on purpose is still the same document
    _sign_in(client)
    client.post("/staff/printer/reprint", data={"job": job.id, "csrf_token": tok})
    assert len(printer.printed) == 2 and _qr(printer.printed[1]).document_hash == queue.submitted[0]
    assert len(queue.submitted) == 1


def test_staff_reprint_faults_and_forgotten_jobs_are_plain_answers(rig) -> None:  # type: ignore[no-untyped-def]
    app, backend, printer, queue, now = rig
    client = screen_client(app)
    tok = _verdict(client, backend, "benefit-check", SENIOR)
    printer.mid_print = PrinterState.COVER_OPEN
    _print(client, tok)
    _sign_in(client)
    (job,) = app.extensions["cityid.printing"].staff_jobs()
    resp = client.post("/staff/printer/reprint", data={"job": job.id, "csrf_token": tok})  # cover still open
    page = resp.get_data(as_text=True)
    assert resp.status_code == 503 and 'data-key="printer.state.cover_open"' in page and printer.printed == []
    resp = client.post("/staff/printer/reprint", data={"job": "no-such-job", "csrf_token": tok})
    assert resp.status_code == 410 and "no longer kept" in resp.get_data(as_text=True)
    assert len(queue.submitted) == 1
    # two minutes without a request end the staff session (a kiosk is a public place)
    now[0] += 121
    assert client.get("/staff/printer").headers["Location"].endswith("/staff/login")


def test_staff_page_without_a_printer(rig) -> None:  # type: ignore[no-untyped-def]
    _, *_ = rig
    config = parse_config({"terminal": {"mode": "kiosk", "language": "en", "require_clock_sync": False},
                           "counter": {"clerks": {"lee": hash_password(STAFF_PASSWORD)}}})  # fmt: skip
    backend = FakeKioskBackend()
    plain = create_app(config, kiosk=backend)
    backend.start(plain.extensions["cityid.kiosk"].on_event)
    client = screen_client(plain)
    assert 'id="staff-link"' not in client.get("/", follow_redirects=True).get_data(as_text=True)
    _sign_in(client)
    page = client.get("/staff/printer").get_data(as_text=True)
    assert 'data-state="not_configured"' in page and 'id="jobs"' not in page
    shutdown(plain)
