"""Shared helpers for the terminal card-layer tests: a test issuer, credentials, presentation checks."""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from cityid import jose, sdjwt
from cityid.citizen import CredentialRecord, StoredDisclosure
from cityid.keys import P256PublicKey

ISSUER_KEY = ec.generate_private_key(ec.SECP256R1())
VCT = "urn:busan:citizen:1"
CLAIMS: dict[str, Any] = {
    "family_name": "Kim",
    "given_name": "Minsu",
    "birthdate": "1956-03-01",
    "district": "Haeundae-gu",
    "age_over_19": True,
    "age_over_65": True,
}
DID = "did:ethr:0x7a69:0x3333333333333333333333333333333333333333"
PIN, NEW_PIN, PUK, NEW_PUK = "123456", "24681357", "12345678", "87654321"


def make_sd_jwt(holder_point: bytes) -> str:
    """A small SD-JWT VC (``<jwt>~<disclosure>~…~``), every claim disclosable, holder key in ``cnf``."""
    discs = [sdjwt.create_disclosure(k, v) for k, v in CLAIMS.items()]
    payload = {
        "iss": "did:ethr:0x7a69:0x1111111111111111111111111111111111111111",
        "vct": VCT,
        "_sd_alg": "sha-256",
        "_sd": sorted(d.digest for d in discs),
        "cnf": {"jwk": jose.jwk_from_point(holder_point)},
    }
    issuer_jwt = jose.sign_compact({"alg": "ES256", "typ": "dc+sd-jwt"}, payload, ISSUER_KEY)
    return sdjwt.presentation_without_kb(issuer_jwt, [d.encoded for d in discs])


def make_record(holder_point: bytes) -> CredentialRecord:
    issuer_jwt, discs, _ = sdjwt.split(make_sd_jwt(holder_point))
    stored = tuple(StoredDisclosure(sdjwt.parse_disclosure(d).name or "", d) for d in discs)
    return CredentialRecord(issuer_jwt, stored, VCT)


def check_presentation(
    text: str, holder_point: bytes, claims: list[str], nonce: str, aud: str, iat: int
) -> dict[str, Any]:
    """Verify what a card presented: issuer signature, only ``claims`` disclosed, KB-JWT by the holder key
    over exactly this SD-JWT (RFC 9901 §4.3, §7.3). Returns the disclosed claims."""
    issuer_jwt, discs, kb = sdjwt.split(text)
    signing_input = issuer_jwt.rsplit(".", 1)[0].encode("ascii")
    assert jose.es256_verify(
        P256PublicKey.from_crypto(ISSUER_KEY.public_key()),
        signing_input,
        jose.b64url_decode(issuer_jwt.split(".")[2]),
    )
    disclosed = {d.name: d.value for d in map(sdjwt.parse_disclosure, discs)}
    assert sorted(disclosed) == sorted(claims)
    kb_header, kb_payload, kb_sig = kb.split(".")
    assert jose.decode_json_segment(kb_header) == {"alg": "ES256", "typ": "kb+jwt"}
    payload = jose.decode_json_segment(kb_payload)
    expected_hash = jose.b64url_encode(
        hashlib.sha256(sdjwt.presentation_without_kb(issuer_jwt, discs).encode("ascii")).digest()
    )
    assert payload == {"iat": iat, "aud": aud, "nonce": nonce, "sd_hash": expected_hash}
    assert jose.es256_verify(holder_point, f"{kb_header}.{kb_payload}".encode(), jose.b64url_decode(kb_sig))
    return disclosed
