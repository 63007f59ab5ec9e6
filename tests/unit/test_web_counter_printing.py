"""The counter's enrollment receipt and certificate scanner through the Flask test client (issue 13).

The scanner is a real pty pair (socat) with the scanner emulator on the far end, read by SerialScanner and
checked by the library verifier (kiosk keys from a table, anchors from a stand-in chain).
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from flask.testing import FlaskClient

from cityid import certificate as c
from cityid.keys import P256PublicKey
from terminal.config import hash_password, parse_config
from terminal.flows.certificate import PASSWORD_LINE, REVOCATION_PASSWORD_SLOT, enrollment_receipt_blocks
from terminal.flows.kiosk import SERVICES
from terminal.peripherals.printer import PrinterState, Text
from terminal.web import create_app, shutdown, start
from terminal.web.printing import CounterPrinting, CounterScanning
from tests.doubles.fake_backends import FakeCounterBackend, FakeToken
from tests.unit.test_web_printing import Printer

PASSWORD = "correct horse"
ANCHOR = "eip155:31337:0x" + "11" * 20


class Chain:
    """Anchored roots (stands in for CityAnchorRegistry)."""

    def __init__(self) -> None:
        self.roots: dict[bytes, int] = {}

    @property
    def anchor(self) -> str:
        return ANCHOR

    def anchored_at(self, root: bytes) -> int | None:
        return self.roots.get(root)


def _csrf(client: FlaskClient, path: str = "/counter/login") -> str:
    html = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf-token" content="([^"]+)"', html)[1]


def _login(client: FlaskClient) -> str:
    tok = _csrf(client)
    assert client.post("/counter/login", data={"clerk": "kim", "password": PASSWORD,
                                               "csrf_token": tok}).status_code == 303  # fmt: skip
    return _csrf(client, "/counter/")  # a new session after sign-in


def _app(**extra: Any) -> Flask:
    config = parse_config({"terminal": {"mode": "counter", "id": "counter-3", "language": "en"},
                           "server": {"url": "http://127.0.0.1:9"},
                           "counter": {"clerks": {"kim": hash_password(PASSWORD)}}})  # fmt: skip
    return create_app(config, counter=FakeCounterBackend(), **extra)


def _text(blocks: list[Any]) -> str:
    return "\n".join(b.text for b in blocks if isinstance(b, Text))


def test_enrollment_receipt_has_no_personal_claim_and_a_marked_password_slot() -> None:
    blocks = enrollment_receipt_blocks("cred-0042", "counter-3", 1_800_000_000)
    text = _text(blocks)
    assert "cred-0042" in text and "counter-3" in text and "2027-01-15" in text
    assert REVOCATION_PASSWORD_SLOT in text and "none on this receipt" in text  # no password chosen
    assert "Lost or stolen" in text
    assert Text("  pw-1", bold=True) in enrollment_receipt_blocks("c", "k", 0, revocation_password="pw-1")


def test_a_long_revocation_password_is_printed_whole_on_several_lines() -> None:
    password = "".join(chr(ord("a") + i % 26) for i in range(100))  # 100 characters: the form allows 128
    blocks = enrollment_receipt_blocks("c", "k", 0, revocation_password=password)
    lines = [b.text.strip() for b in blocks if isinstance(b, Text) and b.bold and b.text.startswith("  ")]
    assert "".join(lines[1:]) == password and all(len(x) <= PASSWORD_LINE for x in lines[1:])
    assert REVOCATION_PASSWORD_SLOT not in _text(blocks)


def test_enrollment_receipt_printed_on_request_and_reprinted_after_a_fault() -> None:
    printer = Printer()
    app = _app(counter_printing=CounterPrinting(printer, "counter-3"))  # type: ignore[arg-type]
    client = app.test_client()
    tok = _login(client)
    form = {"reader": "Fake Counter Reader", "family_name": "Kim", "given_name": "Minsu",
            "birthdate": "1950-03-01", "district": "Haeundae-gu", "resident": "on", "pin": "135790",
            "pin2": "135790", "puk": "87654321", "puk2": "87654321", "csrf_token": tok}  # fmt: skip
    html = client.post("/counter/enroll", data=form).get_data(as_text=True)
    assert 'id="print-receipt"' in html and printer.printed == []  # printed only when asked
    printer.state = PrinterState.COVER_OPEN
    resp = client.post("/counter/receipt", data={"csrf_token": tok})
    html = resp.get_data(as_text=True)
    assert resp.status_code == 503 and "The printer cover is open." in html and 'id="print-receipt"' in html
    printer.state = PrinterState.READY
    resp = client.post("/counter/receipt", data={"csrf_token": tok})
    assert resp.status_code == 200
    assert "The enrollment receipt has been printed" in resp.get_data(as_text=True)
    (blocks,) = printer.printed
    text = "\n".join(b.text for b in blocks if isinstance(b, Text))
    assert "cred-0001" in text
    for personal in ("Kim", "Minsu", "1950", "Haeundae"):
        assert personal not in text, personal
    assert REVOCATION_PASSWORD_SLOT in text  # none chosen in this enrollment
    shutdown(app)


def test_the_chosen_revocation_password_is_printed_once_and_never_put_in_the_cookie() -> None:
    printer = Printer()
    clock = [1_800_000_000.0]
    printing = CounterPrinting(printer, "counter-3", clock=lambda: clock[0])  # type: ignore[arg-type]
    app = _app(counter_printing=printing)
    client = app.test_client()
    tok = _login(client)
    password = "heron-over-gwangan"
    form = {"reader": "Fake Counter Reader", "family_name": "Kim", "given_name": "Minsu",
            "birthdate": "1950-03-01", "district": "Haeundae-gu", "resident": "on", "pin": "135790",
            "pin2": "135790", "puk": "87654321", "puk2": "87654321", "revocation_password": password,
            "csrf_token": tok}  # fmt: skip
    html = client.post("/counter/enroll", data=form).get_data(as_text=True)
    assert 'id="print-receipt"' in html and password not in html
    cookie = client.get_cookie("cityid_session")
    assert cookie is not None
    from flask.sessions import SecureCookieSessionInterface

    signer = SecureCookieSessionInterface().get_signing_serializer(app)
    assert signer is not None and password not in repr(signer.loads(cookie.value))  # only a token
    printer.state = PrinterState.PAPER_OUT
    assert client.post("/counter/receipt", data={"csrf_token": tok}).status_code == 503
    printer.state = PrinterState.READY  # after the fault the password is still held: the reprint has it
    assert client.post("/counter/receipt", data={"csrf_token": tok}).status_code == 200
    (blocks,) = printer.printed
    assert Text(f"  {password}", bold=True) in blocks and REVOCATION_PASSWORD_SLOT not in _text(blocks)
    # a second copy: the password was dropped once printed
    assert client.post("/counter/receipt", data={"csrf_token": tok}).status_code == 200
    assert password not in _text(printer.printed[1]) and REVOCATION_PASSWORD_SLOT in _text(printer.printed[1])
    # 15 minutes later the held receipt is forgotten: a clear answer, nothing printed
    clock[0] += 901
    resp = client.post("/counter/receipt", data={"csrf_token": tok})
    assert resp.status_code == 410 and "no longer held" in resp.get_data(as_text=True)
    assert len(printer.printed) == 2
    # signing out drops a receipt that was never printed (and its password) at once
    backend = app.extensions["cityid.counter"]
    backend.cards["Fake Counter Reader"] = FakeToken()  # the next citizen's blank card
    html = client.post("/counter/enroll", data={**form, "csrf_token": tok}).get_data(as_text=True)
    assert 'id="print-receipt"' in html and len(printing._held) == 1
    client.post("/counter/logout", data={"csrf_token": tok})
    assert len(printing._held) == 0
    shutdown(app)


def test_no_receipt_button_without_a_printer() -> None:
    app = _app()
    client = app.test_client()
    tok = _login(client)
    assert client.post("/counter/receipt", data={"csrf_token": tok}).status_code == 409
    shutdown(app)


@pytest.fixture
def scanning_app() -> Iterator[tuple[Flask, Any, Any, Chain]]:
    if shutil.which("socat") is None:
        pytest.skip("socat (Debian package) is needed for a pty pair")
    from emulators.ptys import PtyPair
    from emulators.scanner import ScannerEmulator

    from terminal.peripherals.scanner import SerialScanner

    key = ec.generate_private_key(ec.SECP256R1())
    chain = Chain()
    verifier = c.CertificateVerifier(
        c.StaticKioskDirectory({"kiosk-1": P256PublicKey.from_crypto(key.public_key())}), chain
    )
    pair = PtyPair()
    emu = ScannerEmulator(pair.device)
    scanning = CounterScanning(SerialScanner(pair.host, idle_s=0.2), verifier)
    app = _app(scanning=scanning)
    start(app)
    try:
        yield app, emu, key, chain
    finally:
        shutdown(app)
        emu.close()
        pair.close()


def _scan_page(client: FlaskClient, scans: int, app: Flask) -> str:
    scanning = app.extensions["cityid.counter_scanning"]
    deadline = time.monotonic() + 5
    while scanning.scans < scans and time.monotonic() < deadline:
        time.sleep(0.02)
    return client.get("/counter/scan").get_data(as_text=True)


def test_scanning_a_certificate_shows_its_verification(scanning_app) -> None:  # type: ignore[no-untyped-def]
    app, emu, key, chain = scanning_app
    client = app.test_client()
    _login(client)
    assert app.extensions["cityid.counter_scanning"].wait_ready(5)  # port open, reader thread reading
    html = client.get("/counter/scan").get_data(as_text=True)
    assert 'id="scan-none"' in html and 'data-state="ready"' in html and "Scanner ready" in html
    facts = {"family_name": "김", "given_name": "민지", "district": "Haeundae-gu", "busan_resident": True}
    cert = c.issue(key, kiosk="kiosk-1", service="residence", facts=facts,
                   requested=SERVICES["residence"].claims, anchor=ANCHOR)  # fmt: skip
    sibling = b"\x07" * 32
    proof = c.AnchorProof(c.compute_root(cert.document_hash, [sibling]), (sibling,))
    chain.roots[proof.root] = int(time.time())
    emu.noise()  # power-up garbage first: dropped by the scanner
    emu.scan(cert.with_proof(proof).qr_text())
    html = _scan_page(client, 1, app)
    assert 'data-valid="true"' in html and "Valid certificate" in html and "민지" in html
    assert cert.confirmation in html and "kiosk-1" in html and "Residence" in html
    # an edited fact: refused, and the screen says why
    head, _payload, sig = cert.jws.split(".")
    from cityid.jose import b64url_encode, json_dumps

    edited = b64url_encode(json_dumps({**cert.payload, "facts": {**facts, "district": "Seo-gu"}}))
    emu.scan(f"{c.QR_PREFIX}{head}.{edited}.{sig}~{proof.encode()}")
    html = _scan_page(client, 2, app)
    assert 'data-valid="false"' in html and 'data-reason="signature"' in html and "altered" in html
    assert "민지" not in html  # the refused certificate's facts are not shown
    emu.scan("not a certificate")
    html = _scan_page(client, 3, app)
    assert 'data-reason="malformed"' in html


def test_a_scanner_closed_under_its_reader_thread_ends_quietly() -> None:
    """stop() closes the port while the reader may be in read(): pyserial then fails with TypeError (fd None);
    that is a typed ScannerError, and the counter's thread ends without a traceback."""
    import threading

    from terminal.peripherals.scanner import ScannerError, SerialScanner

    class ClosedPort:
        in_waiting = 0

        def read(self, n: int) -> bytes:
            raise TypeError("'NoneType' object cannot be interpreted as an integer")

        def close(self) -> None:
            pass

    scanner = SerialScanner("/dev/null", serial_factory=lambda *a, **k: ClosedPort())
    with pytest.raises(ScannerError):
        scanner.read_line(0.1)
    crashes: list[Any] = []
    previous, threading.excepthook = threading.excepthook, crashes.append
    try:
        scanning = CounterScanning(scanner, verifier=None)
        scanning.start()
        scanning._stop.set()  # stop() as it runs: the flag first, the port closed under the reader
        assert scanning._thread is not None
        scanning._thread.join(timeout=3)
        assert not scanning._thread.is_alive() and crashes == []
    finally:
        threading.excepthook = previous
