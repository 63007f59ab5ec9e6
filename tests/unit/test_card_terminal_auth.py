"""Terminal authentication on the emulated card (docs/card-profile.md §Terminal authentication; issue 12
item 1): the card verifies the kiosk's certificate against the city authorization root and the kiosk's
signature over a card challenge, then PRESENT releases only the certificate's claims to that terminal id.
Fake terminals — no certificate, an expired one, one not allowed a claim, a replayed signature — get nothing.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from emulators.card.citizen_card import make_citizen_card
from emulators.card.transport import InProcessConnection

from cityid import jose
from cityid.citizen import InfoTag, Ins
from cityid.credential import AGE_OVER_65, BIRTHDATE, BUSAN_RESIDENT, DISTRICT, FAMILY_NAME, GIVEN_NAME
from cityid.errors import ApduError, SecurityStatusError
from cityid.iso7816 import SW
from cityid.keys import P256PublicKey
from cityid.piv import Slot
from cityid.terminal_cert import (
    CertificateError,
    TerminalAuthentication,
    TerminalCertificate,
    authority_id,
    issue_certificate,
    ta_signing_input,
)
from cityid.tlv import parse_tlv_dict
from terminal.flows.kiosk import KioskVerification, service
from terminal.sessions.citizen import CitizenSession, TerminalNotAuthorizedError
from terminal.sessions.piv import PivSession
from terminal.verifier import NonceStore, Verifier
from tests.credkit import CITIZEN_DID, ISSUER_DID, ISSUER_POINT, NOW, PIN, personalize
from tests.doubles.static_view import StaticChainView

ROOT_KEY = ec.derive_private_key(0xA070, ec.SECP256R1())
ROOT = P256PublicKey.from_crypto(ROOT_KEY.public_key())
KIOSK_ID = "busan-kiosk-001"
KIOSK_KEY = ec.derive_private_key(0x4B105, ec.SECP256R1())
OTHER_ID = "busan-kiosk-002"
OTHER_KEY = ec.derive_private_key(0x4B106, ec.SECP256R1())
BENEFIT = (BUSAN_RESIDENT, AGE_OVER_65)


def cert_for(
    terminal_id: str = KIOSK_ID,
    key: ec.EllipticCurvePrivateKey = KIOSK_KEY,
    claims: tuple[str, ...] = BENEFIT,
    not_before: int = NOW - 600,
    not_after: int = NOW + 86400,
    signer: ec.EllipticCurvePrivateKey = ROOT_KEY,
) -> TerminalCertificate:
    return issue_certificate(
        signer, terminal_id, P256PublicKey.from_crypto(key.public_key()), claims, not_before, not_after, 7, 3
    )


def signer(key: ec.EllipticCurvePrivateKey):
    return lambda message: jose.es256_sign(key, message)


@pytest.fixture
def card() -> tuple[InProcessConnection, object]:
    conn = InProcessConnection(make_citizen_card(None))
    cred = personalize(conn, authorization_root=ROOT)
    conn.reset()
    return conn, cred


def _verifier(cred: object, audience: str = KIOSK_ID) -> Verifier:
    holder = jose.point_from_jwk(cred.payload["cnf"]["jwk"])  # type: ignore[attr-defined]
    view = StaticChainView(
        issuer_keys={ISSUER_DID: (ISSUER_POINT,)},
        trusted={(ISSUER_DID, "https://id.busan.go.kr/vct/citizen/v1")},
        holder_keys={CITIZEN_DID: (holder,)},
    )
    return Verifier(view, audience, NonceStore(), clock=lambda: NOW)


def _present(session: CitizenSession, claims: tuple[str, ...] = BENEFIT, aud: str = KIOSK_ID) -> str:
    session.verify_pin(PIN)
    return session.present(claims, "n" * 16, aud, NOW)


# --- the certificate format -----------------------------------------------------------------------------


def test_certificate_round_trip_and_strict_parsing() -> None:
    cert = cert_for()
    raw = cert.encode()
    again = TerminalCertificate.decode(raw)
    assert again == cert and again.verify(ROOT) and again.body.authority == authority_id(ROOT)
    assert (again.body.status_list, again.body.status_index) == (7, 3)
    assert not again.verify(P256PublicKey.from_crypto(OTHER_KEY.public_key()))
    with pytest.raises(CertificateError):
        TerminalCertificate.decode(raw + b"\x00")
    with pytest.raises(CertificateError):
        TerminalCertificate.decode(raw[:-1])
    tampered = bytearray(raw)
    tampered[raw.index(KIOSK_ID.encode())] ^= 0x01  # the terminal id, still printable
    assert not TerminalCertificate.decode(bytes(tampered)).verify(ROOT)
    with pytest.raises(CertificateError):
        cert_for(claims=(BUSAN_RESIDENT, BUSAN_RESIDENT))
    with pytest.raises(CertificateError):
        cert_for(not_before=NOW, not_after=NOW - 1)


# --- fake terminals get nothing -------------------------------------------------------------------------


def test_without_a_certificate_present_is_refused_even_with_the_pin(card) -> None:
    conn, _ = card
    session = CitizenSession(conn)
    with pytest.raises(TerminalNotAuthorizedError) as exc:
        _present(session)
    assert exc.value.sw == SW.COMMAND_NOT_ALLOWED


def test_authorized_kiosk_gets_exactly_its_claims_for_its_own_id(card) -> None:
    conn, cred = card
    session = CitizenSession(conn)
    session.authenticate_terminal(cert_for(), signer(KIOSK_KEY), NOW)
    verifier = _verifier(cred)
    flow = KioskVerification(verifier, service("benefit-check"), clock=lambda: NOW)
    verdict = flow.run_card(session, PIN)
    assert verdict.ok, verdict
    assert verdict.claims == {BUSAN_RESIDENT: True, AGE_OVER_65: True}
    # the KB-JWT aud is the authenticated terminal: a verifier for another audience refuses it
    session.verify_pin(PIN)
    text = session.present(BENEFIT, "m" * 16, KIOSK_ID, NOW)
    kb = jose.parse_compact(text.rsplit("~", 1)[1])
    assert kb.payload["aud"] == KIOSK_ID


def test_claim_outside_the_certificate_is_refused(card) -> None:
    conn, _ = card
    session = CitizenSession(conn)
    session.authenticate_terminal(cert_for(), signer(KIOSK_KEY), NOW)
    for claims in ((BIRTHDATE,), (BUSAN_RESIDENT, FAMILY_NAME), (GIVEN_NAME, DISTRICT)):
        with pytest.raises(TerminalNotAuthorizedError):
            _present(session, claims)
    with pytest.raises(TerminalNotAuthorizedError):  # aud must be the certificate's terminal id
        _present(session, BENEFIT, aud=OTHER_ID)
    assert _present(session).count("~") == 3  # the allowed ones still work: 2 disclosures + KB-JWT


def test_expired_certificate_is_refused(card) -> None:
    conn, _ = card
    session = CitizenSession(conn)
    # expired at personalization time (the card's date is NOW - 1 day): refused at PSO VERIFY CERTIFICATE
    old = cert_for(not_before=NOW - 10 * 86400, not_after=NOW - 2 * 86400)
    with pytest.raises(TerminalNotAuthorizedError) as exc:
        session.authenticate_terminal(old, signer(KIOSK_KEY), NOW - 3 * 86400)
    assert exc.value.sw == SW.CONDITIONS_NOT_SATISFIED
    with pytest.raises(TerminalNotAuthorizedError):
        _present(session)
    # not expired for the card's date, but the terminal's signed time lies after its validity
    short = cert_for(not_before=NOW - 3600, not_after=NOW - 60)
    with pytest.raises(TerminalNotAuthorizedError) as exc:
        session.authenticate_terminal(short, signer(KIOSK_KEY), NOW)
    assert exc.value.sw == SW.CONDITIONS_NOT_SATISFIED
    # lying about the time does not help once the card has seen a newer certificate
    session.authenticate_terminal(cert_for(not_before=NOW), signer(KIOSK_KEY), NOW)
    conn.reset()
    session = CitizenSession(conn)
    with pytest.raises(TerminalNotAuthorizedError) as exc:
        session.authenticate_terminal(short, signer(KIOSK_KEY), NOW - 120)
    assert exc.value.sw == SW.CONDITIONS_NOT_SATISFIED
    # and a time before the card's date is refused even inside a certificate's validity
    with pytest.raises(TerminalNotAuthorizedError):
        session.authenticate_terminal(cert_for(), signer(KIOSK_KEY), NOW - 300)


def test_certificate_from_another_authority_or_forged_is_refused(card) -> None:
    conn, _ = card
    session = CitizenSession(conn)
    with pytest.raises(TerminalNotAuthorizedError) as exc:
        session.authenticate_terminal(cert_for(signer=OTHER_KEY), signer(KIOSK_KEY), NOW)
    assert exc.value.sw == SW.REFERENCE_DATA_NOT_FOUND
    good = cert_for()
    forged = TerminalCertificate(cert_for(claims=(BIRTHDATE, FAMILY_NAME)).body, good.signature)
    with pytest.raises(TerminalNotAuthorizedError) as exc:
        session.authenticate_terminal(forged, signer(KIOSK_KEY), NOW)
    assert exc.value.sw == SW.SECURITY_STATUS_NOT_SATISFIED
    with pytest.raises(TerminalNotAuthorizedError):  # the right certificate, signed by another key
        session.authenticate_terminal(good, signer(OTHER_KEY), NOW)
    with pytest.raises(TerminalNotAuthorizedError):
        _present(session)


def test_replaying_another_terminals_signature_gets_nothing(card) -> None:
    conn, _ = card
    seen: list[bytes] = []

    def recording(message: bytes) -> bytes:
        sig = jose.es256_sign(KIOSK_KEY, message)
        seen.append(sig)
        return sig

    session = CitizenSession(conn)
    session.authenticate_terminal(cert_for(), recording, NOW)  # the real kiosk, observed
    conn.reset()
    session = CitizenSession(conn)
    # the same certificate and the observed signature: a fresh challenge makes it worthless
    with pytest.raises(TerminalNotAuthorizedError):
        session.authenticate_terminal(cert_for(), lambda _m: seen[0], NOW)
    # a fake kiosk with its own valid certificate presenting the observed signature
    with pytest.raises(TerminalNotAuthorizedError):
        session.authenticate_terminal(cert_for(OTHER_ID, OTHER_KEY), lambda _m: seen[0], NOW)
    with pytest.raises(TerminalNotAuthorizedError):
        _present(session, aud=OTHER_ID)


def test_apdu_level_rules(card) -> None:
    conn, _ = card
    session = CitizenSession(conn)
    p = session.protocol
    cert = cert_for()
    # EXTERNAL AUTHENTICATE without GET CHALLENGE / without a certificate: 6985
    auth = TerminalAuthentication(NOW, b"\x01" * 64)
    assert p.send_apdu_sw(0, Ins.EXTERNAL_AUTHENTICATE, 0, 0, auth.encode())[1] == SW.CONDITIONS_NOT_SATISFIED
    assert p.send_apdu_sw(0, Ins.PSO, 0, 0xBE, cert.encode())[1] == SW.SUCCESS
    ch1, sw = p.send_apdu_sw(0, Ins.GET_CHALLENGE, 0, 0, le=16)
    ch2, _ = p.send_apdu_sw(0, Ins.GET_CHALLENGE, 0, 0, le=16)
    assert sw == SW.SUCCESS and len(ch1) == len(ch2) == 16 and ch1 != ch2
    # answering the superseded challenge fails, and uses up the certificate and the challenge
    old = TerminalAuthentication.sign(KIOSK_KEY, ch1, KIOSK_ID, NOW)
    assert (
        p.send_apdu_sw(0, Ins.EXTERNAL_AUTHENTICATE, 0, 0, old.encode())[1]
        == SW.SECURITY_STATUS_NOT_SATISFIED
    )
    good = TerminalAuthentication.sign(KIOSK_KEY, ch2, KIOSK_ID, NOW)
    assert p.send_apdu_sw(0, Ins.EXTERNAL_AUTHENTICATE, 0, 0, good.encode())[1] == SW.CONDITIONS_NOT_SATISFIED
    # malformed data, wrong P1P2
    assert p.send_apdu_sw(0, Ins.PSO, 0, 0xBE, b"\x7f\x21\x01\x00")[1] == SW.INCORRECT_DATA
    assert p.send_apdu_sw(0, Ins.PSO, 0, 0, cert.encode())[1] == SW.INCORRECT_P1P2
    assert p.send_apdu_sw(0, Ins.GET_CHALLENGE, 1, 0, le=16)[1] == SW.INCORRECT_P1P2
    assert p.send_apdu_sw(0, Ins.PSO, 0, 0xBE, cert.encode())[1] == SW.SUCCESS
    ch, _ = p.send_apdu_sw(0, Ins.GET_CHALLENGE, 0, 0, le=16)
    assert p.send_apdu_sw(0, Ins.EXTERNAL_AUTHENTICATE, 0, 0, b"\x7c\x00")[1] == SW.INCORRECT_DATA
    # the authentication is volatile: gone after a reset and after selecting another applet
    session.authenticate_terminal(cert, signer(KIOSK_KEY), NOW)
    PivSession(conn)
    session = CitizenSession(conn)
    with pytest.raises(TerminalNotAuthorizedError):
        _present(session)
    assert ta_signing_input(ch, KIOSK_ID, NOW).startswith(b"CITYID-TA1" + ch)


# --- the presentation-binding key -----------------------------------------------------------------------


def test_binding_key_is_the_credentials_key_and_not_reachable_through_piv(card) -> None:
    conn, cred = card
    holder = P256PublicKey.from_point(jose.point_from_jwk(cred.payload["cnf"]["jwk"]))  # type: ignore[attr-defined]
    piv = PivSession(conn)
    piv.verify_pin(PIN)
    digest_input = b"anything a terminal wants signed"
    der = piv.sign(Slot.AUTHENTICATION, digest_input)
    assert not holder.verify_der(der, digest_input)  # 9A is another key: it cannot bind presentations
    citizen = CitizenSession(conn)
    citizen.authenticate()
    assert citizen.identity().binding_key == holder
    # the citizen applet's GENERAL AUTHENTICATE reaches only the management key
    conn.reset()
    citizen = CitizenSession(conn)
    citizen.verify_pin(PIN)
    with pytest.raises(ApduError) as exc:
        citizen.protocol.send_apdu(0, Ins.GENERAL_AUTHENTICATE, 0x11, 0x9A, b"\x7c\x04\x82\x00\x81\x00")
    assert exc.value.sw == SW.INCORRECT_P1P2
    # generating a binding key needs the management key
    conn.reset()
    with pytest.raises(SecurityStatusError):
        CitizenSession(conn).generate_binding_key()


def test_present_needs_the_pin_for_every_presentation(card) -> None:
    conn, _ = card
    session = CitizenSession(conn)
    session.authenticate_terminal(cert_for(), signer(KIOSK_KEY), NOW)
    _present(session)
    with pytest.raises(SecurityStatusError):
        session.present(BENEFIT, "n" * 16, KIOSK_ID, NOW)


# --- nothing linkable before the PIN ---------------------------------------------------------------------


def test_get_info_before_pin_is_identical_for_two_cards_of_one_issuance() -> None:
    answers = []
    for _ in range(2):
        conn = InProcessConnection(make_citizen_card(None))
        personalize(conn, authorization_root=ROOT)
        conn.reset()
        session = CitizenSession(conn)
        raw = session.protocol.send_apdu(0x80, Ins.GET_INFO, 0, 0)
        answers.append(raw)
        fields = parse_tlv_dict(raw)
        assert InfoTag.SERIAL not in fields and InfoTag.DID not in fields and InfoTag.CLAIMS not in fields
        assert InfoTag.BINDING_KEY not in fields
        info = session.info()
        assert info.authority == authority_id(ROOT) and info.pin_tries == 3 and not info.reveals_identity
    assert answers[0] == answers[1]


def test_erase_keeps_the_root_and_the_date(card) -> None:
    conn, _ = card
    session = CitizenSession(conn)
    session.authenticate_terminal(cert_for(not_before=NOW), signer(KIOSK_KEY), NOW)
    session.authenticate()
    session.erase()
    assert session.identity().binding_key is None
    conn.reset()
    session = CitizenSession(conn)
    assert session.info().authority == authority_id(ROOT)
    with pytest.raises(TerminalNotAuthorizedError):  # the date did not go back with the erase
        session.authenticate_terminal(
            cert_for(not_after=NOW - 1, not_before=NOW - 100), signer(KIOSK_KEY), NOW - 50
        )


def test_cardtool_personalize_with_an_authorization_root(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """``cardtool personalize --authorization-root HEX``: the card gets the root (terminal authentication
    from then on) and a binding key, printed for the credential; a bad hex value is one clear error."""
    import contextlib

    from firmware_tools import card_cli
    from firmware_tools.cli import main

    conn = InProcessConnection(make_citizen_card(None))
    conn.reader = "in-process"  # type: ignore[attr-defined]
    monkeypatch.setattr(card_cli, "_open", lambda _args: contextlib.nullcontext(conn))
    for name, value in (("CARDTOOL_PIN", PIN), ("CARDTOOL_NEW_PIN", "246810"), ("CARDTOOL_PUK", "12345678"),
                        ("CARDTOOL_NEW_PUK", "97531864")):  # fmt: skip
        monkeypatch.setenv(name, value)
    assert main(["personalize", "--authorization-root", ROOT.hex()]) == 0
    out = capsys.readouterr().out
    binding = out.split("presentation-binding key (P-256): ")[1].split()[0]
    conn.reset()
    session = CitizenSession(conn)
    assert session.info().authority == authority_id(ROOT)
    session.authenticate()
    assert session.identity().binding_key == P256PublicKey.from_point(bytes.fromhex(binding))
    assert main(["personalize", "--keep-key", "--keep-pin", "--authorization-root", "zz"]) == 1
    assert "--authorization-root: not a hex P-256 point" in capsys.readouterr().err
