"""FIDO2 assertion-bound presentations with the emulated authenticator (in-process): register the key, issue
the credential to its key, store it in the key's largeBlob, present with a real getAssertion (PIN → UV) and
verify in the same Verifier as card presentations."""

from __future__ import annotations

import pytest
from emulators.card.transport import InProcessConnection
from emulators.fido.attestation import export_root
from emulators.fido.card import make_fido_card
from fido2.webauthn import CollectedClientData

from cityid.citizen import CredentialRecord
from cityid.credential import VCT, CredentialError, LocalSigner, fido_presentation, issue
from terminal.fido.device import CtapSmartCardDevice
from terminal.fido.errors import FidoInvalidPinError, FidoPinRequiredError
from terminal.fido.session import FidoSession
from terminal.flows.kiosk import FidoPresenter, KioskVerification, service
from terminal.verifier import CheckName, NonceStore, Verifier
from terminal.verifier.fido import FidoVerifier, Registration
from tests.credkit import (
    AUDIENCE,
    CITIZEN,
    CITIZEN_DID,
    ISSUER_DID,
    ISSUER_KEY,
    ISSUER_POINT,
    NOW,
    STATUS,
)
from tests.doubles.static_view import StaticChainView

RP_ID = "id.busan.go.kr"
ORIGIN = f"https://{RP_ID}"
PIN = "135790"
CLAIMS = ("busan_resident", "age_over_65")


def _make_key(pin: str | None) -> tuple[FidoSession, Registration, bytes]:
    card, applet = make_fido_card(None)
    session = FidoSession(CtapSmartCardDevice(InProcessConnection(card)))
    if pin is not None:
        session.set_pin(pin)
    rp = FidoVerifier(RP_ID, trusted_roots=[export_root(applet.authenticator.store).encode()])
    reg = rp.register(session, b"citizen-42", "citizen-42", pin=pin, large_blob=True)
    pk = reg.public_key
    point = b"\x04" + pk[-2] + pk[-3]  # COSE EC2: -2 x, -3 y
    cred = issue(
        CITIZEN, point, ISSUER_DID, STATUS, LocalSigner(ISSUER_KEY), NOW - 3600, NOW + 86400, CITIZEN_DID
    )
    session.write_blob(reg.large_blob_key, cred.record.encode(), pin=pin)
    return session, reg, point


@pytest.fixture(scope="module")
def key() -> tuple[FidoSession, Registration, bytes]:
    return _make_key(PIN)


def _chain(point: bytes) -> StaticChainView:
    return StaticChainView(
        issuer_keys={ISSUER_DID: (ISSUER_POINT,)},
        trusted={(ISSUER_DID, VCT)},
        holder_keys={CITIZEN_DID: (point,)},
    )


def _present(key, nonce: str, *, aud: str = AUDIENCE, pin: str | None = PIN, origin: str = ORIGIN) -> str:
    session, reg, _ = key
    record = CredentialRecord.decode(session.read_blob(reg.large_blob_key))

    def get_assertion(challenge: bytes) -> tuple[bytes, bytes, bytes]:
        client_data = CollectedClientData.create(CollectedClientData.TYPE.GET, challenge, origin)
        resp = session.get_assertion(RP_ID, client_data.hash, allow=[reg.credential_id], pin=pin)
        return bytes(resp.auth_data), bytes(client_data), resp.signature

    return fido_presentation(record, CLAIMS, aud, nonce, NOW, get_assertion)


def _verifier(point: bytes) -> Verifier:
    return Verifier(_chain(point), AUDIENCE, NonceStore(), clock=lambda: NOW, rp_id=RP_ID)


def test_fido_presentation_verifies(key) -> None:
    v = _verifier(key[2])
    p = _present(key, v.nonce_store.issue("benefit-check"))
    verdict = v.verify(p, CLAIMS, "benefit-check")
    assert verdict.ok, verdict
    assert verdict.kind == "fido" and verdict.claims == {"busan_resident": True, "age_over_65": True}
    assert not v.verify(p, CLAIMS, "benefit-check").ok  # replay


def test_fido_without_pin_lacks_user_verification(key) -> None:
    """A key with a PIN signs nothing without it (alwaysUv); a key that has no PIN signs without UV,
    and the verifier refuses that presentation."""
    v = _verifier(key[2])
    with pytest.raises(FidoPinRequiredError):
        _present(key, v.nonce_store.issue("s"), pin=None)
    bare = _make_key(None)
    v = _verifier(bare[2])
    verdict = v.verify(_present(bare, v.nonce_store.issue("s"), pin=None), CLAIMS, "s")
    assert verdict.failed == CheckName.USER_VERIFICATION


def test_fido_wrong_audience_origin_and_key(key) -> None:
    v = _verifier(key[2])
    assert (
        v.verify(_present(key, v.nonce_store.issue("s"), aud="other"), CLAIMS, "s").failed
        == CheckName.AUDIENCE
    )
    verdict = v.verify(_present(key, v.nonce_store.issue("s"), origin="https://evil.example"), CLAIMS, "s")
    assert verdict.failed == CheckName.AUDIENCE
    revoked = Verifier(_chain(b"\x04" + bytes(64)), AUDIENCE, NonceStore(), clock=lambda: NOW, rp_id=RP_ID)
    p = _present(key, revoked.nonce_store.issue("s"))
    assert revoked.verify(p, CLAIMS, "s").failed == CheckName.HOLDER_KEY


def test_unknown_claim_is_a_clear_error(key) -> None:
    session, reg, _ = key
    record = CredentialRecord.decode(session.read_blob(reg.large_blob_key))
    with pytest.raises(CredentialError, match="not in the stored credential"):
        fido_presentation(record, ("tax_id",), AUDIENCE, "n" * 22, NOW, lambda c: (b"", b"", b""))


def test_kiosk_flow_with_fido_presenter(key) -> None:
    session, _, point = key
    flow = KioskVerification(_verifier(point), service("benefit-check"), clock=lambda: NOW)
    verdict = flow.run(FidoPresenter(session, PIN, RP_ID))
    assert verdict.ok, verdict
    assert verdict.kind == "fido" and flow.claims == {"busan_resident": True, "age_over_65": True}
    flow.end()
    assert flow.claims == {} and len(flow.verifier.nonce_store) == 0


def test_fido_presenter_wrong_pin(key) -> None:
    session, _, point = key
    flow = KioskVerification(_verifier(point), service("benefit-check"), clock=lambda: NOW)
    with pytest.raises(FidoInvalidPinError):
        flow.run(FidoPresenter(session, "000000", RP_ID))
    assert flow.claims == {} and len(flow.verifier.nonce_store) == 0
    session.token(PIN, 0x02, RP_ID)  # the right PIN restores the retries for the other tests
