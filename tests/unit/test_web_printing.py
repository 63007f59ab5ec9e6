"""The kiosk's "print my certificate" on the verdict screen, through the Flask test client (issue 13).

A real :class:`CertificateDesk` (signing, job keeping, reprint rules) over an in-memory anchoring queue and a
stand-in printer whose status the test switches; the pty/emulator path is in tests/integration.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from flask.testing import FlaskClient

from cityid import certificate as c
from cityid.errors import CityIdError
from terminal.config import parse_config
from terminal.flows.certificate import CertificateDesk
from terminal.peripherals.printer import Block, PrinterFault, PrinterState, PrinterStatus, QrCode
from terminal.web import create_app, shutdown
from terminal.web.printing import KioskPrinting
from tests.doubles.fake_backends import FakeKioskBackend, FakeToken, screen_client

PIN = "246810"
SENIOR = {"busan_resident": True, "age_over_65": True, "family_name": "Kim", "given_name": "Minsu",
          "district": "Haeundae-gu", "birthdate": "1950-01-01"}  # fmt: skip


class Queue:
    def __init__(self) -> None:
        self.submitted: list[bytes] = []
        self.fail = False

    def submit(self, document_hash: bytes) -> c.AnchorProof | None:
        if self.fail:
            raise CityIdError("unreachable")
        self.submitted.append(document_hash)
        return None

    def proof(self, document_hash: bytes) -> c.AnchorProof | None:
        return None


class Printer:
    """Stands in for ReceiptPrinter: ``state`` is what DLE EOT answers; ``mid_print`` faults mid-job."""

    def __init__(self) -> None:
        self.state = PrinterState.READY
        self.mid_print: PrinterState | None = None
        self.printed: list[Sequence[Block]] = []

    def status(self) -> PrinterStatus:
        return PrinterStatus(self.state)

    def print(self, blocks: Sequence[Block]) -> PrinterStatus:
        if self.state is not PrinterState.READY:
            raise PrinterFault(PrinterStatus(self.state), "before")
        if self.mid_print is not None:
            self.state, self.mid_print = self.mid_print, None
            raise PrinterFault(PrinterStatus(self.state), "printing")
        self.printed.append(blocks)
        return PrinterStatus(PrinterState.READY)


@pytest.fixture
def rig() -> Iterator[tuple[Flask, FakeKioskBackend, Printer, Queue]]:
    config = parse_config({"terminal": {"mode": "kiosk", "language": "en", "require_clock_sync": False}})
    queue, printer = Queue(), Printer()
    desk = CertificateDesk(ec.generate_private_key(ec.SECP256R1()), "busan-kiosk-dev",
                           "eip155:31337:0x" + "11" * 20, queue, printer)  # type: ignore[arg-type]  # fmt: skip
    backend = FakeKioskBackend()
    app = create_app(config, kiosk=backend, printing=KioskPrinting(desk))
    backend.start(app.extensions["cityid.kiosk"].on_event)
    yield app, backend, printer, queue
    shutdown(app)


def _verdict(client: FlaskClient, backend: FakeKioskBackend, service: str, claims: dict[str, Any]) -> str:
    backend.insert(FakeToken(pin=PIN, claims=dict(claims)))
    html = client.get("/", follow_redirects=True).get_data(as_text=True)
    tok = re.search(r'name="csrf-token" content="([^"]+)"', html)[1]
    client.post("/services", data={"service": service, "csrf_token": tok})
    client.post("/consent", data={"decision": "agree", "csrf_token": tok})
    assert client.post("/pin", data={"pin": PIN, "csrf_token": tok}).headers["Location"] == "/verdict"
    return tok


def _print(client: FlaskClient, tok: str) -> str:
    resp = client.post("/print", data={"csrf_token": tok})
    assert resp.headers["Location"] == "/verdict"  # the verdict stays
    return client.get("/verdict").get_data(as_text=True)


def _qr(blocks: Sequence[Block]) -> c.Certificate:
    (qr,) = [b for b in blocks if isinstance(b, QrCode)]
    return c.parse_qr(qr.data)


def test_print_only_on_request_with_only_the_service_facts(rig) -> None:  # type: ignore[no-untyped-def]
    app, backend, printer, queue = rig
    client = screen_client(app)
    tok = _verdict(client, backend, "benefit-check", SENIOR)
    page = client.get("/verdict").get_data(as_text=True)
    assert 'id="print"' in page and "Print my certificate" in page
    assert printer.printed == [] and queue.submitted == []  # nothing issued until the citizen asks
    page = _print(client, tok)
    assert "Your certificate has been printed" in page and 'id="print"' not in page  # once per verdict
    (blocks,) = printer.printed
    cert = _qr(blocks)
    assert cert.payload["facts"] == {"busan_resident": True, "age_over_65": True}  # never the name
    assert cert.payload["svc"] == "benefit-check" and cert.payload["kiosk"] == "busan-kiosk-dev"
    assert cert.confirmation in page
    assert queue.submitted == [cert.document_hash]
    assert client.post("/print", data={"csrf_token": tok}).status_code == 303
    assert len(printer.printed) == 1  # a second POST (double tap, stale page) prints nothing more


def test_no_button_for_a_refused_verdict_or_without_printer(rig) -> None:  # type: ignore[no-untyped-def]
    app, backend, printer, queue = rig
    client = screen_client(app)
    tok = _verdict(client, backend, "benefit-check", {**SENIOR, "age_over_65": False})
    page = client.get("/verdict").get_data(as_text=True)
    assert "You are not eligible" in page and 'id="print"' not in page
    client.post("/print", data={"csrf_token": tok})
    assert printer.printed == [] and queue.submitted == []
    config = parse_config({"terminal": {"mode": "kiosk", "language": "en", "require_clock_sync": False}})
    plain_backend = FakeKioskBackend()
    plain = create_app(config, kiosk=plain_backend)
    plain_backend.start(plain.extensions["cityid.kiosk"].on_event)
    other = screen_client(plain)
    _verdict(other, plain_backend, "benefit-check", SENIOR)
    assert 'id="print"' not in other.get("/verdict").get_data(as_text=True)
    shutdown(plain)


@pytest.mark.parametrize(
    ("state", "en"),
    [
        (PrinterState.PAPER_OUT, "The printer is out of paper."),
        (PrinterState.COVER_OPEN, "The printer cover is open."),
        (PrinterState.OFFLINE, "The printer is offline."),
        (PrinterState.DISCONNECTED, "The printer is not connected (the cable is unplugged)."),
        (PrinterState.NO_ANSWER, "The printer does not answer (it may be switched off)."),
    ],
)
def test_faults_before_printing_issue_nothing_and_keep_the_verdict(rig, state, en) -> None:  # type: ignore[no-untyped-def]
    app, backend, printer, queue = rig
    client = screen_client(app)
    tok = _verdict(client, backend, "residence", SENIOR)
    printer.state = state
    page = _print(client, tok)
    assert en in page and "Residence confirmed" in page and "Minsu" in page  # the verdict is kept
    assert f'data-key="printer.state.{state.value}"' in page
    assert queue.submitted == [] and printer.printed == []  # nothing anchored for paper that cannot print
    client.post("/lang", data={"lang": "ko", "next": "/verdict", "csrf_token": tok})
    from terminal.web.catalog import translate

    assert translate("ko", f"printer.state.{state.value}") in client.get("/verdict").get_data(as_text=True)
    health = client.get("/health").get_json()  # staff see it; the kiosk stays in service
    assert health["status"] == "ok" and health["printer"]["state"] == state.value
    assert f"printer.state.{state.value}" in health["warnings"]
    printer.state = PrinterState.READY
    page = _print(client, tok)
    assert translate("ko", "print.done") in page and len(queue.submitted) == 1


def test_fault_mid_print_reprints_the_same_document_anchored_once(rig) -> None:  # type: ignore[no-untyped-def]
    app, backend, printer, queue = rig
    client = screen_client(app)
    tok = _verdict(client, backend, "residence", SENIOR)
    printer.mid_print = PrinterState.PAPER_OUT
    page = _print(client, tok)
    assert "The printer is out of paper." in page and "Try printing again" in page
    assert len(queue.submitted) == 1 and printer.printed == []
    desk = app.extensions["cityid.kiosk"].printing.desk
    assert [j.state.value for j in desk.jobs()] == ["failed"]  # kept for staff too
    assert client.get("/health").get_json()["printer"]["failed_jobs"] == 1
    printer.state = PrinterState.READY
    page = _print(client, tok)
    assert "Your certificate has been printed" in page
    (blocks,) = printer.printed
    assert _qr(blocks).document_hash == queue.submitted[0] and len(queue.submitted) == 1
    residence = ("family_name", "given_name", "district", "busan_resident")
    assert _qr(blocks).payload["facts"] == {k: SENIOR[k] for k in residence}


def test_queue_unreachable_prints_nothing_and_says_so(rig) -> None:  # type: ignore[no-untyped-def]
    app, backend, printer, queue = rig
    client = screen_client(app)
    tok = _verdict(client, backend, "residence", SENIOR)
    queue.fail = True
    page = _print(client, tok)
    assert "nothing was printed" in page and printer.printed == [] and "Residence confirmed" in page
    queue.fail = False
    assert "Your certificate has been printed" in _print(client, tok)


def test_the_printable_facts_are_wiped_with_the_session(rig) -> None:  # type: ignore[no-untyped-def]
    app, backend, printer, _queue = rig
    client = screen_client(app)
    tok = _verdict(client, backend, "residence", SENIOR)
    ctl = app.extensions["cityid.kiosk"]
    assert dict(ctl.snapshot()["verdict"].printable)["given_name"] == "Minsu"
    assert "printable" not in repr(ctl.snapshot()["verdict"])  # not in any repr (log line)
    backend.remove()
    assert ctl.snapshot() == {"screen": ctl.screen}
    assert client.post("/print", data={"csrf_token": tok}).headers["Location"] == "/"
    assert printer.printed == []
