"""Terminal FIDO flows on an in-process key: registration and assertion checks, PIN states, discovery."""

from __future__ import annotations

import pytest
from emulators.card.os import VirtualCard
from emulators.card.transport import InProcessConnection
from emulators.fido.attestation import AttestationBatch, export_root
from emulators.fido.card import FIDO_ATR, make_fido_card
from emulators.fido.hid import VirtualHidDevice
from emulators.fido.presence import UserPresence
from fido2.webauthn import AuthenticatorData

from terminal.fido.device import CtapSmartCardDevice
from terminal.fido.discovery import (
    FidoKey,
    FidoKeyInserted,
    FidoKeyRemoved,
    FidoKeyWatcher,
    classify_connection,
    discover_hid,
)
from terminal.fido.errors import (
    FidoCredentialExcludedError,
    FidoInvalidPinError,
    FidoNoCredentialsError,
    FidoNotAllowedError,
    FidoPinBlockedError,
    FidoPinPolicyError,
    FidoPinPowerCycleError,
    FidoPinRequiredError,
    FidoUserActionError,
    FidoVerificationError,
)
from terminal.fido.session import FidoSession, PinState
from terminal.verifier.fido import FidoVerifier
from terminal.verifier.nonces import NonceStore
from tests.unit.fido_support import Clock, make_auth


@pytest.fixture
def key():
    card, applet = make_fido_card(None)
    conn = InProcessConnection(card)
    return FidoSession(CtapSmartCardDevice(conn)), applet, conn


def _verifier(applet, **kw) -> FidoVerifier:
    root = export_root(applet.authenticator.store).encode()
    return FidoVerifier("busan.go.kr", trusted_roots=[root], **kw)


def test_register_and_authenticate_with_and_without_pin(key) -> None:
    session, applet, _ = key
    verifier = _verifier(applet)
    reg = verifier.register(session, b"citizen-1", "kim", "Kim Minji", large_blob=True)
    assert reg.attestation_trusted and not reg.user_verified and reg.large_blob_key
    auth = verifier.authenticate(session, [reg.credential], last_sign_count=reg.sign_count)
    assert auth.credential_id == reg.credential_id and auth.user_handle == b"citizen-1"
    assert auth.sign_count > reg.sign_count
    # credProtect 2: not discoverable without user verification
    with pytest.raises(FidoNoCredentialsError):
        verifier.authenticate(session, [reg.credential], discoverable=True)
    # the same key again for the same citizen is excluded
    with pytest.raises(FidoCredentialExcludedError):
        verifier.register(session, b"citizen-1", "kim", exclude=[reg.credential_id])
    session.set_pin("135790")
    with pytest.raises(FidoPinRequiredError):
        verifier.register(session, b"citizen-2", "lee")
    reg2 = verifier.register(session, b"citizen-2", "lee", pin="135790")
    assert reg2.user_verified
    auth3 = verifier.authenticate(session, [reg2.credential], pin="135790")
    assert auth3.user_verified
    # discoverable login with UV: the key picks the newest credential of the RP
    both = [reg.credential, reg2.credential]
    auth4 = verifier.authenticate(session, both, discoverable=True, pin="135790")
    assert auth4.credential_id == reg2.credential_id and auth4.user_handle == b"citizen-2"
    assert len(verifier.nonces) == 0  # every challenge was consumed


def test_untrusted_attestation_and_wrong_keys_are_rejected(key) -> None:
    session, applet, _ = key
    other_card, other_applet = make_fido_card(None, attestation=AttestationBatch.generate())
    stranger = _verifier(other_applet)  # trusts only the other batch's root
    with pytest.raises(FidoVerificationError, match="registration rejected"):
        stranger.register(session, b"citizen-1", "kim")
    verifier = _verifier(applet)
    reg = verifier.register(session, b"citizen-1", "kim")
    other = FidoSession(CtapSmartCardDevice(InProcessConnection(other_card)))
    reg_other = _verifier(other_applet).register(other, b"citizen-1", "kim")
    # the assertion is checked against the registered public key: another key's credential does not verify
    forged = type(reg.credential).create(
        reg.credential.aaguid, reg.credential.credential_id, reg_other.public_key
    )
    with pytest.raises(FidoVerificationError, match="assertion rejected"):
        verifier.authenticate(session, [forged])
    with pytest.raises(FidoNoCredentialsError):
        verifier.authenticate(session, [reg_other.credential])


def test_counter_that_does_not_grow_is_refused(key) -> None:
    session, applet, _ = key
    verifier = _verifier(applet)
    reg = verifier.register(session, b"c", "c")
    first = verifier.authenticate(session, [reg.credential])
    with pytest.raises(FidoVerificationError, match="cloned"):
        verifier.authenticate(session, [reg.credential], last_sign_count=first.sign_count + 100)


def test_challenges_are_single_use(key) -> None:
    session, applet, _ = key
    clock = Clock()
    verifier = _verifier(applet, nonces=NonceStore(ttl=60, clock=clock))
    reg = verifier.register(session, b"c", "c")
    challenge = verifier._challenge(verifier.SERVICE_AUTHENTICATE)
    verifier._consume(challenge, verifier.SERVICE_AUTHENTICATE)
    with pytest.raises(FidoVerificationError, match="already used"):
        verifier._consume(challenge, verifier.SERVICE_AUTHENTICATE)
    expired = verifier._challenge(verifier.SERVICE_AUTHENTICATE)
    clock.advance(61)
    with pytest.raises(FidoVerificationError):
        verifier._consume(expired, verifier.SERVICE_AUTHENTICATE)
    wrong_service = verifier._challenge(verifier.SERVICE_REGISTER)
    with pytest.raises(FidoVerificationError):
        verifier._consume(wrong_service, verifier.SERVICE_AUTHENTICATE)
    # a failed key operation discards its challenge too
    applet.authenticator.up.mode = applet.authenticator.up.mode.__class__("deny")
    with pytest.raises(FidoUserActionError):
        verifier.authenticate(session, [reg.credential])
    assert len(verifier.nonces) == 0


def test_pin_states_as_the_terminal_shows_them(key) -> None:
    session, _, conn = key
    assert session.pin_status().state is PinState.NOT_SET
    with pytest.raises(FidoPinPolicyError):
        session.set_pin("12")
    session.set_pin("2468")
    status = session.pin_status()
    assert (status.state, status.retries, status.describe()) == (PinState.OK, 8, "PIN set, 8 tries left")
    errors = []
    for _ in range(3):
        with pytest.raises((FidoInvalidPinError, FidoPinPowerCycleError)) as info:
            session.change_pin("0000", "13579")
        errors.append(info.value)
    assert [type(e) for e in errors] == [FidoInvalidPinError, FidoInvalidPinError, FidoPinPowerCycleError]
    assert [e.attempts_remaining for e in errors] == [7, 6, 5]
    assert session.pin_status().state is PinState.POWER_CYCLE_REQUIRED
    assert "re-inserted" in session.pin_status().describe()
    for _cycle in range(2):
        conn.remove()
        conn.insert()
        session = FidoSession(CtapSmartCardDevice(conn))
        assert session.pin_status().state is PinState.OK
        for _ in range(3):
            try:
                session.change_pin("0000", "13579")
            except (FidoInvalidPinError, FidoPinPowerCycleError, FidoPinBlockedError) as exc:
                last = exc
    assert isinstance(last, FidoPinBlockedError)
    assert session.pin_status() == session.pin_status().__class__(PinState.BLOCKED, 0)
    assert session.pin_status().describe() == "PIN blocked until reset"
    # only a reset (in the window after insertion) helps
    conn.remove()
    conn.insert()
    session = FidoSession(CtapSmartCardDevice(conn))
    session.reset()
    assert session.pin_status().state is PinState.NOT_SET


def test_reset_outside_the_window_is_not_allowed() -> None:
    clock = Clock()
    device = VirtualHidDevice(make_auth(clock=clock))
    from fido2.hid import CtapHidDevice

    session = FidoSession(CtapHidDevice(device.descriptor, device.open()))
    clock.advance(11)
    with pytest.raises(FidoNotAllowedError):
        session.reset()
    device.replug()  # USB re-plug: a new device handle, the reset window is open again
    FidoSession(CtapHidDevice(device.descriptor, device.open())).reset()


def test_credentials_and_blobs_through_the_session(key) -> None:
    session, applet, _ = key
    verifier = _verifier(applet)
    session.set_pin("2468")
    reg = verifier.register(session, b"citizen-7", "park", pin="2468", large_blob=True)
    creds = session.credentials("2468")
    assert [(c.rp_id, c.user_id, c.cred_protect) for c in creds] == [("busan.go.kr", b"citizen-7", 2)]
    with pytest.raises(FidoPinRequiredError):
        session.write_blob(reg.large_blob_key, b"x")
    session.write_blob(reg.large_blob_key, b"eyJhbGciOi...sd-jwt~", pin="2468")
    assert session.read_blob(reg.large_blob_key) == b"eyJhbGciOi...sd-jwt~"
    session.delete_credential("2468", reg.credential_id)
    assert session.credentials("2468") == []
    with pytest.raises(FidoInvalidPinError):
        session.credentials("9999")


def test_classification_and_watcher_events() -> None:
    card, _ = make_fido_card(None)
    assert classify_connection(InProcessConnection(card)) == "FIDO_2_0"
    assert classify_connection(InProcessConnection(VirtualCard([], FIDO_ATR))) is None

    from terminal.pcsc.monitor import CardInserted, CardRemoved

    fido_readers = {"Reader A"}
    watcher = FidoKeyWatcher(
        classify=lambda r: FidoKey("pcsc", r, "FIDO_2_0") if r in fido_readers else None,
    )
    events = watcher.events()
    watcher.on_card_event(CardInserted("Reader A", b"\x3b\x00"))
    watcher.on_card_event(CardInserted("Reader B", b"\x3b\x00"))  # a plain smart card: no event
    watcher.on_card_event(CardRemoved("Reader B"))
    watcher.on_card_event(CardRemoved("Reader A"))
    got = [events.get_nowait() for _ in range(events.qsize())]
    assert [type(e) for e in got] == [FidoKeyInserted, FidoKeyRemoved]
    assert got[0].key.name == "Reader A"

    device = VirtualHidDevice(make_auth())
    plugged = [device]
    from fido2.hid import CtapHidDevice

    def lister():
        return [CtapHidDevice(d.descriptor, d.open()) for d in plugged]

    hid_watch = FidoKeyWatcher(hid_lister=lister)
    q = hid_watch.events()
    hid_watch.scan_hid()
    hid_watch.scan_hid()
    plugged.clear()
    hid_watch.scan_hid()
    got = [q.get_nowait() for _ in range(q.qsize())]
    assert [type(e) for e in got] == [FidoKeyInserted, FidoKeyRemoved]
    assert got[0].key.transport == "hid"
    keys = discover_hid(lambda: [CtapHidDevice(device.descriptor, device.open())])
    session = FidoSession(keys[0].open())
    assert session.info().pin.state is PinState.NOT_SET


def test_user_refusal_is_a_typed_error() -> None:
    card, applet = make_fido_card(None, UserPresence("deny"))
    session = FidoSession(CtapSmartCardDevice(InProcessConnection(card)))
    with pytest.raises(FidoUserActionError):
        _verifier(applet).register(session, b"c", "c")
    assert AuthenticatorData.FLAG.UP == 1


def test_authentication_against_keys_resolved_from_the_chain(key) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    session, applet, _ = key
    verifier = _verifier(applet)
    reg = verifier.register(session, b"citizen-9", "choi")
    point = reg.holder_key
    assert len(point) == 65 and point[0] == 4
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    other_point = other.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    # the DID lists a rotated-in key and the FIDO key: either may be the right one
    result = verifier.authenticate_holder(session, [reg.credential_id], [other_point, point])
    assert result.credential_id == reg.credential_id
    with pytest.raises(FidoVerificationError, match="assertion rejected"):
        verifier.authenticate_holder(session, [reg.credential_id], [other_point])  # key revoked on chain


def test_hid_watcher_thread_reports_plug_and_unplug() -> None:
    from fido2.hid import CtapHidDevice

    device = VirtualHidDevice(make_auth())
    plugged: list[VirtualHidDevice] = []
    watcher = FidoKeyWatcher(
        hid_lister=lambda: [CtapHidDevice(d.descriptor, d.open()) for d in list(plugged)], poll=0.02
    )
    events = watcher.events()
    watcher.start()
    try:
        plugged.append(device)
        assert isinstance(events.get(timeout=5), FidoKeyInserted)
        plugged.clear()
        removed = events.get(timeout=5)
        assert isinstance(removed, FidoKeyRemoved) and removed.transport == "hid"
    finally:
        watcher.stop()
