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
from terminal.flows.certificate import REVOCATION_PASSWORD_SLOT, enrollment_receipt_blocks
from terminal.flows.kiosk import SERVICES
from terminal.peripherals.printer import PrinterState, Text
from terminal.web import create_app, shutdown, start
from terminal.web.printing import CounterPrinting, CounterScanning
from tests.doubles.fake_backends import FakeCounterBackend
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


def test_enrollment_receipt_has_no_personal_claim_and_a_marked_password_slot() -> None:
    blocks = enrollment_receipt_blocks("cred-0042", "counter-3", 1_800_000_000)
    text = "\n".join(b.text for b in blocks if isinstance(b, Text))
    assert "cred-0042" in text and "counter-3" in text and "2027-01-15" in text
    assert REVOCATION_PASSWORD_SLOT in text and "not yet issued" in text  # the other issue's slot
    assert "Lost or stolen" in text
    assert Text("pw-1") in enrollment_receipt_blocks("c", "k", 0, revocation_password="pw-1")


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
    assert 'id="scan-none"' in client.get("/counter/scan").get_data(as_text=True)
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
