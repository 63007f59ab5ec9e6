"""RFC 9901 §7.1 disclosure processing (cityid.sdjwt.resolve) against the reference implementation on nested
objects, array elements and decoy digests, and its rejections."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st
from jwcrypto.jwk import JWK
from sd_jwt.common import SDObj
from sd_jwt.issuer import SDJWTIssuer
from sd_jwt.verifier import SDJWTVerifier

from cityid import jose, sdjwt
from cityid.errors import DecodeError
from cityid.keys import P256PublicKey

ISSUER = ec.derive_private_key(31, ec.SECP256R1())
ISSUER_JWK = JWK.from_json(json.dumps(P256PublicKey.from_crypto(ISSUER.public_key()).jwk()))
PRIVATE_JWK = JWK.from_pyca(ISSUER)


def _ours(sd_jwt: str) -> dict:
    issuer_jwt, disclosures, kb = sdjwt.split(sd_jwt)
    assert kb == ""
    payload = jose.parse_compact(issuer_jwt).payload
    return sdjwt.resolve(payload, [sdjwt.parse_disclosure(d) for d in disclosures])


def _reference(sd_jwt: str) -> dict:
    return SDJWTVerifier(sd_jwt, lambda iss, hdr: ISSUER_JWK).get_verified_payload()


CLAIMS = {
    "iss": "did:example:issuer",
    SDObj("given_name"): "민수",
    "address": {SDObj("locality"): "Busan", SDObj("district"): "Haeundae-gu", "country": "KR"},
    "nationalities": [SDObj("KR"), "JP", SDObj({"nested": [SDObj(1), 2]})],
    SDObj("profile"): {SDObj("age_over_65"): True, "age_over_19": True},
}


@pytest.mark.parametrize("decoys", [False, True])
def test_same_claims_as_reference(decoys: bool) -> None:
    issued = SDJWTIssuer(CLAIMS, PRIVATE_JWK, add_decoy_claims=decoys).sd_jwt_issuance
    assert _ours(issued) == _reference(issued)


def _subset(issued: str, keep: list[int]) -> str:
    ij, ds, _ = sdjwt.split(issued)
    return sdjwt.assemble(ij, [ds[i] for i in keep])


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_any_subset_of_disclosures_matches_reference(data: st.DataObject) -> None:
    issued = SDJWTIssuer(CLAIMS, PRIVATE_JWK, add_decoy_claims=True).sd_jwt_issuance
    n = len(sdjwt.split(issued)[1])
    keep = data.draw(st.lists(st.integers(0, n - 1), unique=True))
    subset = _subset(issued, keep)
    try:
        ours = _ours(subset)
    except DecodeError as exc:
        # a nested disclosure kept without its parent: RFC 9901 §7.1 requires rejecting it (the reference
        # silently ignores it); keeping every disclosure must then resolve
        assert "not referenced" in str(exc)
        assert _ours(issued) == _reference(issued)
        return
    assert ours == _reference(subset)


def _payload(**extra: object) -> dict:
    return {"iss": "x", "_sd_alg": "sha-256", **extra}


def test_rejections() -> None:
    a = sdjwt.create_disclosure("a", 1)
    el = sdjwt.create_disclosure(None, 5)
    with pytest.raises(DecodeError, match="more than once"):
        sdjwt.resolve(_payload(_sd=[a.digest, a.digest]), [a])
    with pytest.raises(DecodeError, match="not referenced"):
        sdjwt.resolve(_payload(_sd=[]), [a])
    with pytest.raises(DecodeError, match="twice"):
        sdjwt.resolve(_payload(_sd=[a.digest]), [a, a])
    with pytest.raises(DecodeError, match="already exists"):
        sdjwt.resolve(_payload(a=0, _sd=[a.digest]), [a])
    with pytest.raises(DecodeError, match="array"):
        sdjwt.resolve(_payload(list=[{"...": a.digest}]), [a])
    with pytest.raises(DecodeError, match="object"):
        sdjwt.resolve(_payload(_sd=[el.digest]), [el])
    with pytest.raises(DecodeError, match="_sd_alg"):
        sdjwt.resolve({"_sd_alg": "sha-512", "_sd": []}, [])
    with pytest.raises(DecodeError, match="array"):
        sdjwt.resolve(_payload(_sd="abc"), [])
    deep: dict = {}
    node = deep
    for _ in range(40):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(DecodeError, match="deeply"):
        sdjwt.resolve(deep, [])


def test_decoys_vanish_and_array_elements_resolve() -> None:
    a = sdjwt.create_disclosure("a", {"b": 1})
    el = sdjwt.create_disclosure(None, "x")
    decoy = sdjwt.digest("decoy")
    decoy2 = sdjwt.digest("decoy2")
    out = sdjwt.resolve(
        _payload(_sd=[decoy, a.digest], arr=[{"...": el.digest}, {"...": decoy2}, 3]), [a, el]
    )
    assert out == {"iss": "x", "a": {"b": 1}, "arr": ["x", 3]}
