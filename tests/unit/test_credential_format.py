"""cityid.credential: the Busan citizen SD-JWT VC, checked against RFC 9901 / SD-JWT VC and the reference
implementation (PyPI ``sd-jwt``) as an independent verifier."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import date

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwcrypto.jwk import JWK
from sd_jwt.verifier import SDJWTVerifier

from cityid import jose, sdjwt
from cityid.chain.view import StatusRef
from cityid.citizen import CredentialRecord
from cityid.credential import (
    CLAIM_NAMES,
    VCT,
    CitizenClaims,
    CredentialError,
    IssuedCredential,
    LocalSigner,
    assertion_challenge,
    issue,
)
from cityid.errors import DecodeError
from cityid.keys import P256PublicKey

ISSUER = ec.derive_private_key(21, ec.SECP256R1())
HOLDER = ec.derive_private_key(22, ec.SECP256R1())
HOLDER_POINT = P256PublicKey.from_crypto(HOLDER.public_key()).point
ISSUER_DID = "did:ethr:0x7a69:0x1111111111111111111111111111111111111111"
CITIZEN_DID = "did:ethr:0x7a69:0x3333333333333333333333333333333333333333"
STATUS = StatusRef(31337, "0x" + "44" * 20, 1, 7)
CLAIMS = CitizenClaims.derive(
    "박", "지영", date(2008, 5, 2), "Suyeong-gu", True, "BS-1", as_of=date(2027, 5, 1)
)


def _issue(claims: CitizenClaims = CLAIMS, **kw: object) -> IssuedCredential:
    args = dict(
        claims=claims,
        holder_point=HOLDER_POINT,
        issuer_did=ISSUER_DID,
        status_ref=STATUS,
        signer=LocalSigner(ISSUER),
        iat=1_800_000_000,
        exp=1_900_000_000,
        citizen_did=CITIZEN_DID,
    )
    args.update(kw)
    return issue(**args)  # type: ignore[arg-type]


def test_age_flags_derived_at_issuance() -> None:
    assert (CLAIMS.age_over_19, CLAIMS.age_over_65) == (False, False)
    c = CitizenClaims.derive(
        "박", "지영", date(2008, 5, 1), "Suyeong-gu", True, "BS-1", as_of=date(2027, 5, 1)
    )
    assert c.age_over_19
    c = CitizenClaims.derive(
        "박", "지영", date(1962, 1, 1), "Suyeong-gu", True, "BS-1", as_of=date(2027, 1, 1)
    )
    assert c.age_over_19 and c.age_over_65


def test_issuer_jwt_shape() -> None:
    cred = _issue()
    jws = jose.parse_compact(cred.issuer_jwt)
    assert jws.header == {"alg": "ES256", "typ": "dc+sd-jwt"}
    p = jws.payload
    assert p["iss"] == ISSUER_DID and p["sub"] == CITIZEN_DID and p["vct"] == VCT
    assert p["cnf"] == {"jwk": jose.jwk_from_point(HOLDER_POINT)}
    assert StatusRef.from_claim(p["status"]) == STATUS
    assert p["_sd_alg"] == "sha-256" and p["_sd"] == sorted(p["_sd"]) and len(p["_sd"]) == len(CLAIM_NAMES)
    # no personal data in the clear
    text = jose.b64url_decode(cred.issuer_jwt.split(".")[1]).decode()
    for value in ("박", "지영", "2008-05-02", "Suyeong-gu", "BS-1"):
        assert value not in text
    assert jose.es256_verify(
        P256PublicKey.from_crypto(ISSUER.public_key()).point, jws.signing_input, jws.signature
    )
    assert {d.name for d in cred.disclosures} == set(CLAIM_NAMES)
    assert sdjwt.resolve(p, cred.disclosures)["given_name"] == "지영"


def test_record_round_trip() -> None:
    cred = _issue()
    rec = CredentialRecord.decode(cred.record.encode())
    assert rec.issuer_jwt == cred.issuer_jwt and rec.vct == VCT
    assert [d.claim for d in rec.disclosures] == list(CLAIM_NAMES)
    assert len(cred.record.encode()) < 2048
    assert len(cred.credential_hash) == 64


@pytest.mark.parametrize(
    "change",
    [{"district": "Gangnam-gu"}, {"birthdate": "02-05-2008"}, {"family_name": ""}, {"busan_resident": 1},
     {"card_number": "x" * 65}],
)  # fmt: skip
def test_invalid_claims_rejected(change: dict) -> None:
    with pytest.raises(CredentialError):
        _issue(replace(CLAIMS, **change))


def test_invalid_arguments_rejected() -> None:
    with pytest.raises(CredentialError):
        _issue(iat=10, exp=5)
    with pytest.raises(CredentialError):
        _issue(issuer_did="city-of-busan")
    with pytest.raises(DecodeError):
        _issue(holder_point=b"\x04" + bytes(64))

    class BadSigner:
        def sign(self, signing_input: bytes) -> bytes:
            return b"\x30\x06"

    with pytest.raises(CredentialError):
        _issue(signer=BadSigner())


def _reference_verify(presentation: str, aud: str, nonce: str) -> dict:
    def issuer_key(iss: str, header: dict) -> JWK:
        assert iss == ISSUER_DID
        return JWK.from_json(json.dumps(P256PublicKey.from_crypto(ISSUER.public_key()).jwk()))

    return SDJWTVerifier(presentation, issuer_key, aud, nonce).get_verified_payload()


def test_reference_implementation_verifies_software_holder_presentation() -> None:
    cred = _issue()
    chosen = [d.encoded for d in cred.disclosures if d.name in ("given_name", "district")]
    p = sdjwt.present(cred.issuer_jwt, chosen, "kiosk-1", "n0nce-123456", 1_800_000_100,
                      lambda b: jose.es256_sign(HOLDER, b))  # fmt: skip
    out = _reference_verify(p, "kiosk-1", "n0nce-123456")
    assert out["given_name"] == "지영" and out["district"] == "Suyeong-gu"
    assert "family_name" not in out and "birthdate" not in out
    assert out["vct"] == VCT and out["sub"] == CITIZEN_DID
    with pytest.raises(Exception):  # noqa: B017 - the reference raises bare ValueError/JWS errors
        _reference_verify(p, "kiosk-2", "n0nce-123456")


def test_assertion_challenge_is_sha256_of_kb_payload() -> None:
    c = assertion_challenge("aud", "nonce-1", 5, "h")
    assert c == hashlib.sha256(b'{"iat":5,"aud":"aud","nonce":"nonce-1","sd_hash":"h"}').digest()
