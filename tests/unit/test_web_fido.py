"""The kiosk backend's FIDO2 path (no daemons): an emulated security key in-process holding the citizen
credential in its largeBlob, the key's own PIN, and the verifier on a static chain view."""

from __future__ import annotations

import contextlib
import re
from typing import Any

import pytest
from emulators.card.transport import InProcessConnection
from emulators.fido.attestation import export_root
from emulators.fido.card import make_fido_card

from cityid.credential import VCT, LocalSigner, issue
from cityid.errors import NoCardError, PinPowerCycleError, WrongPinError
from terminal.config import parse_config
from terminal.fido.device import CtapSmartCardDevice
from terminal.fido.session import FidoSession
from terminal.flows.kiosk import SERVICES
from terminal.verifier import NonceStore, Verifier
from terminal.verifier.fido import FidoVerifier
from terminal.web import create_app, shutdown
from terminal.web.backend import TokenKind, TokenPresent
from terminal.web.stack import CardKioskBackend
from tests.credkit import AUDIENCE, CITIZEN, CITIZEN_DID, ISSUER_DID, ISSUER_KEY, ISSUER_POINT, NOW, STATUS
from tests.doubles.fake_backends import screen_client
from tests.doubles.static_view import StaticChainView

RP_ID = "id.busan.go.kr"
KEY_PIN = "4321"
READER = "Key reader"


def _key(with_credential: bool = True, pin: str | None = KEY_PIN) -> tuple[Any, bytes]:
    card, applet = make_fido_card(None)
    session = FidoSession(CtapSmartCardDevice(InProcessConnection(card)))
    if pin is None:
        return card, b""
    session.set_pin(pin)
    rp = FidoVerifier(RP_ID, trusted_roots=[export_root(applet.authenticator.store).encode()])
    reg = rp.register(session, b"citizen-7", "citizen-7", pin=pin, large_blob=True)
    pk = reg.public_key
    point = b"\x04" + pk[-2] + pk[-3]
    if with_credential:
        cred = issue(
            CITIZEN, point, ISSUER_DID, STATUS, LocalSigner(ISSUER_KEY), NOW - 60, NOW + 86400, CITIZEN_DID
        )
        session.write_blob(reg.large_blob_key, cred.record.encode(), pin=pin)
    return card, point


def _backend(card: Any, point: bytes) -> CardKioskBackend:
    view = StaticChainView(
        issuer_keys={ISSUER_DID: (ISSUER_POINT,)},
        trusted={(ISSUER_DID, VCT)},
        holder_keys={CITIZEN_DID: (point,)},
    )
    verifier = Verifier(view, AUDIENCE, NonceStore(), clock=lambda: NOW, rp_id=RP_ID)
    conn = InProcessConnection(card) if card is not None else None
    return CardKioskBackend(
        verifier, list(SERVICES.values()), lambda reader: contextlib.nullcontext(conn), clock=lambda: NOW
    )


def test_fido_key_session_wrong_pin_then_verdict() -> None:
    card, point = _key()
    backend = _backend(card, point)
    info = backend.start_session(READER)
    assert info.kind is TokenKind.FIDO and info.pin_tries == 8 and not info.blocked
    with pytest.raises(WrongPinError) as err:
        backend.present("benefit-check", "9999")
    assert err.value.attempts_remaining == 7
    view = backend.present("benefit-check", KEY_PIN)
    assert view.ok and view.outcome == "verdict.eligible"
    assert dict(view.facts) == {"claim.busan_resident": "value.yes", "claim.age_over_65": "value.yes"}


def test_three_wrong_key_pins_block_until_reinserted() -> None:
    card, point = _key()
    backend = _backend(card, point)
    backend.start_session(READER)
    for _ in range(2):
        with pytest.raises(WrongPinError):
            backend.present("residence", "0000")
    with pytest.raises((WrongPinError, PinPowerCycleError)):
        backend.present("residence", "0000")
    # blocked until the key is re-inserted — its own state, not "blocked" (issue 9 item 5)
    with pytest.raises(PinPowerCycleError) as err:
        backend.present("residence", KEY_PIN)
    assert err.value.attempts_remaining == 5


def test_key_without_pin_or_credential_is_explained() -> None:
    card, _ = _key(pin=None)
    with pytest.raises(NoCardError, match="no PIN"):
        _backend(card, b"").start_session(READER)
    card, point = _key(with_credential=False)
    backend = _backend(card, point)
    backend.start_session(READER)
    view_or_error: Any
    try:
        view_or_error = backend.present("benefit-check", KEY_PIN)
    except Exception as exc:
        view_or_error = exc
    assert type(view_or_error).__name__ == "CityIdError" and "no citizen credential" in str(view_or_error)


def test_fido_key_through_the_kiosk_screens() -> None:
    card, point = _key()
    backend = _backend(card, point)
    app = create_app(parse_config({"terminal": {"language": "en"}}), kiosk=backend)
    ctl = app.extensions["cityid.kiosk"]
    backend.start(ctl.on_event)
    client = screen_client(app)
    try:
        backend.feed(TokenPresent(READER, TokenKind.FIDO))
        html = client.get("/services").get_data(as_text=True)
        assert "Your security key is ready." in html
        tok = re.search(r'name="csrf-token" content="([^"]+)"', html)[1]
        client.post("/services", data={"service": "benefit-check", "csrf_token": tok})
        client.post("/consent", data={"decision": "agree", "csrf_token": tok})
        html = client.get("/pin").get_data(as_text=True)
        assert "Enter your security key PIN" in html and "Tries left: 8" in html
        assert client.post("/pin", data={"pin": KEY_PIN, "csrf_token": tok}).headers["Location"] == "/verdict"
        assert "You are eligible" in client.get("/verdict").get_data(as_text=True)
    finally:
        shutdown(app)


def test_usb_hid_key_becomes_a_token_like_a_card() -> None:
    from emulators.fido.hid import VirtualHidDevice
    from fido2.hid import CtapHidDevice

    from terminal.fido.discovery import FidoKeyWatcher

    _, applet = make_fido_card(None)
    device = VirtualHidDevice(applet.authenticator)
    session = FidoSession(CtapHidDevice(device.descriptor, device.open()))
    session.set_pin(KEY_PIN)
    rp = FidoVerifier(RP_ID)
    reg = rp.register(session, b"citizen-9", "citizen-9", pin=KEY_PIN, large_blob=True)
    point = b"\x04" + reg.public_key[-2] + reg.public_key[-3]
    cred = issue(
        CITIZEN, point, ISSUER_DID, STATUS, LocalSigner(ISSUER_KEY), NOW - 60, NOW + 86400, CITIZEN_DID
    )
    session.write_blob(reg.large_blob_key, cred.record.encode(), pin=KEY_PIN)

    backend = _backend(None, point)
    events: list[Any] = []
    backend.start(events.append)
    plugged = [device]
    watcher = FidoKeyWatcher(None, lambda: [CtapHidDevice(d.descriptor, d.open()) for d in plugged])
    watcher.subscribe(backend.on_fido_key_event)
    watcher.scan_hid()
    assert len(events) == 1 and isinstance(events[0], TokenPresent) and events[0].kind is TokenKind.FIDO
    info = backend.start_session(events[0].reader)
    assert info.kind is TokenKind.FIDO and info.pin_tries == 8
    view = backend.present("residence", KEY_PIN)
    assert view.ok and view.outcome == "verdict.confirmed"
    plugged.clear()
    watcher.scan_hid()
    assert type(events[-1]).__name__ == "TokenRemoved" and events[-1].reader == events[0].reader


def test_key_pin_blocked_until_reinserted_is_explained_on_screen() -> None:
    """Three wrong key PINs in a row: the PIN screen says to re-insert the key (not "blocked for good")."""
    card, point = _key()
    backend = _backend(card, point)
    app = create_app(parse_config({"terminal": {"language": "en"}}), kiosk=backend)
    ctl = app.extensions["cityid.kiosk"]
    backend.start(ctl.on_event)
    client = screen_client(app)
    try:
        backend.feed(TokenPresent(READER, TokenKind.FIDO))
        html = client.get("/services").get_data(as_text=True)
        tok = re.search(r'name="csrf-token" content="([^"]+)"', html)[1]
        client.post("/services", data={"service": "residence", "csrf_token": tok})
        client.post("/consent", data={"decision": "agree", "csrf_token": tok})
        for _ in range(3):
            client.post("/pin", data={"pin": "0000", "csrf_token": tok})
        assert client.post("/pin", data={"pin": KEY_PIN, "csrf_token": tok}).headers["Location"] == "/pin"
        html = client.get("/pin").get_data(as_text=True)
        assert "Remove your security key and insert it again" in html and "Tries left: 5" in html
    finally:
        shutdown(app)
