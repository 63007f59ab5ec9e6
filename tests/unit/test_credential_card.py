"""Presentations made by the emulated citizen card (in-process, no daemons): verified by our verifier and
by the reference sd-jwt implementation; only requested claims leave the card; claims wiped on end()."""

from __future__ import annotations

import json

import pytest
from emulators.card.citizen_card import make_citizen_card
from emulators.card.transport import InProcessConnection
from jwcrypto.jwk import JWK
from sd_jwt.verifier import SDJWTVerifier

from cityid import jose
from cityid.errors import ApduError, CardRemovedError, InvalidPinError
from terminal.flows.kiosk import SERVICES, KioskVerification, service
from terminal.sessions.citizen import CitizenSession
from terminal.verifier import CheckName, NonceStore, Verifier
from tests.credkit import AUDIENCE, CITIZEN_DID, ISSUER_DID, ISSUER_POINT, NOW, PIN, chain_for, personalize


@pytest.fixture(scope="module")
def card() -> tuple[InProcessConnection, object]:
    conn = InProcessConnection(make_citizen_card(None))
    cred = personalize(conn)
    return conn, cred


@pytest.fixture
def kiosk(card: tuple[InProcessConnection, object]) -> tuple[Verifier, CitizenSession, InProcessConnection]:
    conn, cred = card
    if conn.removed:
        conn.insert()
    verifier = Verifier(chain_for(cred), AUDIENCE, NonceStore(), clock=lambda: NOW)  # type: ignore[arg-type]
    return verifier, CitizenSession(conn), conn


def test_benefit_check_discloses_only_what_it_needs(kiosk: tuple) -> None:
    verifier, session, _ = kiosk
    flow = KioskVerification(verifier, service("benefit-check"), clock=lambda: NOW)
    verdict = flow.run_card(session, PIN)
    assert verdict.ok, verdict
    assert verdict.claims == {"busan_resident": True, "age_over_65": True}
    assert verdict.subject == CITIZEN_DID
    flow.end()
    assert flow.claims == {} and verdict.claims == {}


def test_residence_service(kiosk: tuple) -> None:
    verifier, session, _ = kiosk
    flow = KioskVerification(verifier, SERVICES["residence"], clock=lambda: NOW)
    verdict = flow.run_card(session, PIN)
    assert verdict.ok
    assert verdict.claims == {"family_name": "김", "given_name": "민수", "district": "Haeundae-gu",
                              "busan_resident": True}  # fmt: skip


def test_card_presentation_has_only_requested_disclosures(kiosk: tuple) -> None:
    verifier, session, _ = kiosk
    nonce = verifier.nonce_store.issue("x")
    session.verify_pin(PIN)
    p = session.present(["age_over_19"], nonce, AUDIENCE, NOW)
    assert p.count("~") == 2  # issuer JWT ~ one disclosure ~ KB-JWT
    assert "민수" not in json.dumps([jose.b64url_decode(d).decode() for d in p.split("~")[1:-1]])


def test_reference_sd_jwt_verifies_card_presentation(kiosk: tuple) -> None:
    _, session, _ = kiosk
    session.verify_pin(PIN)
    p = session.present(["given_name", "district"], "reference-nonce-1", AUDIENCE, NOW)

    def issuer_key(iss: str, header: dict) -> JWK:
        assert iss == ISSUER_DID
        return JWK.from_json(json.dumps(jose.jwk_from_point(ISSUER_POINT)))

    out = SDJWTVerifier(p, issuer_key, AUDIENCE, "reference-nonce-1").get_verified_payload()
    assert out["given_name"] == "민수" and out["district"] == "Haeundae-gu"
    assert "family_name" not in out and "birthdate" not in out
    with pytest.raises(ValueError, match="nonce"):
        SDJWTVerifier(p, issuer_key, AUDIENCE, "another-nonce")


def test_wrong_pin_propagates_and_nothing_is_kept(kiosk: tuple) -> None:
    verifier, session, _ = kiosk
    flow = KioskVerification(verifier, service("benefit-check"), clock=lambda: NOW)
    with pytest.raises(InvalidPinError):
        flow.run_card(session, "999999")
    assert flow.claims == {} and len(verifier.nonce_store) == 0
    assert flow.run_card(session, PIN).ok  # correct PIN resets the counter


def test_present_without_pin_is_refused(kiosk: tuple) -> None:
    _, session, _ = kiosk
    with pytest.raises(ApduError):
        session.present(["age_over_19"], "nonce-nonce-1", AUDIENCE, NOW)


def test_card_removed_during_flow(kiosk: tuple) -> None:
    verifier, session, conn = kiosk

    def pull_then_present(claims: tuple, nonce: str, aud: str, iat: int) -> str:
        conn.remove()
        return session.present(claims, nonce, aud, iat)

    flow = KioskVerification(verifier, service("benefit-check"), clock=lambda: NOW)
    with pytest.raises(CardRemovedError):
        flow.run(pull_then_present)
    assert flow.claims == {} and len(verifier.nonce_store) == 0


def test_card_presentation_replayed_is_rejected(kiosk: tuple) -> None:
    verifier, session, _ = kiosk
    nonce = verifier.nonce_store.issue("benefit-check")
    session.verify_pin(PIN)
    p = session.present(["busan_resident", "age_over_65"], nonce, AUDIENCE, NOW)
    claims = ("busan_resident", "age_over_65")
    assert verifier.verify(p, claims, "benefit-check").ok
    v = verifier.verify(p, claims, "benefit-check")
    assert not v.ok and v.failed == CheckName.NONCE


def test_rejected_presentation_leaves_no_usable_nonce(kiosk: tuple) -> None:
    verifier, session, _ = kiosk
    wrong_aud = Verifier(verifier.chain_view, "https://kiosk.busan.go.kr/other", verifier.nonce_store,
                         clock=lambda: NOW)  # fmt: skip
    flow = KioskVerification(wrong_aud, service("benefit-check"), clock=lambda: NOW)

    def present_for_first_kiosk(claims: tuple, nonce: str, aud: str, iat: int) -> str:
        session.verify_pin(PIN)
        return session.present(claims, nonce, AUDIENCE, iat)

    verdict = flow.run(present_for_first_kiosk)
    assert verdict.failed == CheckName.AUDIENCE
    assert len(verifier.nonce_store) == 0  # the exposed nonce cannot be replayed at the first kiosk
