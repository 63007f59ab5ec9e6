"""cityid.jose and cityid.sdjwt: codecs, strictness, and round trips (RFC 7515, RFC 7518, RFC 9901)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from cityid import jose, sdjwt
from cityid.errors import DecodeError
from cityid.keys import P256PublicKey, es256_raw_to_der

KEY = ec.derive_private_key(0x1234567890ABCDEF, ec.SECP256R1())
POINT = P256PublicKey.from_crypto(KEY.public_key()).point


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=100))
def test_b64url_round_trip(data: bytes) -> None:
    text = jose.b64url_encode(data)
    assert "=" not in text
    assert jose.b64url_decode(text) == data
    assert text == base64.urlsafe_b64encode(data).decode().rstrip("=")


@pytest.mark.parametrize("bad", ["QQ==", "Q", "a b", "a+b/", "QR", "é", "AAAA\n"])
def test_b64url_strict(bad: str) -> None:
    with pytest.raises(DecodeError):
        jose.b64url_decode(bad)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_b64url_random_text_only_typed_errors(text: str) -> None:
    with contextlib.suppress(DecodeError):
        jose.b64url_decode(text)


def test_der_raw_round_trip_and_range() -> None:
    raw = jose.es256_sign(KEY, b"hello")
    assert len(raw) == 64
    der = es256_raw_to_der(raw)
    assert jose.der_to_raw_p256(der) == raw
    with pytest.raises(DecodeError):
        jose.der_to_raw_p256(b"\x30\x03\x02\x01")
    with pytest.raises(DecodeError):
        jose.der_to_raw_p256(encode_dss_signature(0, 5))
    with pytest.raises(DecodeError):
        es256_raw_to_der(b"\x01" * 63)


def test_jwk_round_trip_and_off_curve() -> None:
    jwk = jose.jwk_from_point(POINT)
    assert jwk["kty"] == "EC" and jwk["crv"] == "P-256"
    assert jose.point_from_jwk(jwk) == POINT
    off = dict(jwk, y=jose.b64url_encode(bytes(31) + b"\x07"))
    with pytest.raises(DecodeError, match="curve"):
        jose.point_from_jwk(off)
    with pytest.raises(DecodeError):
        jose.point_from_jwk(dict(jwk, crv="P-384"))
    with pytest.raises(DecodeError, match="private"):
        jose.point_from_jwk(dict(jwk, d="AAAA"))
    with pytest.raises(DecodeError):
        jose.jwk_from_point(b"\x04" + bytes(64))


def test_compact_jws_sign_parse_verify() -> None:
    token = jose.sign_compact({"alg": "ES256", "typ": "JWT"}, {"sub": "부산", "n": 1}, KEY)
    jws = jose.parse_compact(token)
    assert jws.header == {"alg": "ES256", "typ": "JWT"}
    assert jws.payload == {"sub": "부산", "n": 1}
    assert jose.es256_verify(POINT, jws.signing_input, jws.signature)
    assert not jose.es256_verify(POINT, jws.signing_input + b"x", jws.signature)
    assert not jose.es256_verify(POINT, jws.signing_input, bytes(64))
    # deterministic compact JSON
    assert token.split(".")[0] == jose.b64url_encode(b'{"alg":"ES256","typ":"JWT"}')


@pytest.mark.parametrize(
    "token",
    [
        "a.b",
        "a.b.c.d",
        "..",
        "e30.e30.",
        jose.b64url_encode(b"[1]") + ".e30." + "A" * 86,
        jose.b64url_encode(b'{"a":1,"a":2}') + ".e30." + "A" * 86,
        "e30.e30." + "A" * 10,
    ],
)
def test_compact_jws_malformed(token: str) -> None:
    with pytest.raises(DecodeError):
        jose.parse_compact(token)


def test_disclosure_matches_rfc9901_example() -> None:
    # RFC 9901 §4.2.1 example disclosure for "family_name": "Möbius"
    encoded = "WyJfMjZiYzRMVC1hYzZxMktJNmNCVzVlcyIsICJmYW1pbHlfbmFtZSIsICJNXHUwMGY2Yml1cyJd"
    d = sdjwt.parse_disclosure(encoded)
    assert (d.salt, d.name, d.value) == ("_26bc4LT-ac6q2KI6cBW5es", "family_name", "Möbius")
    assert d.digest == jose.b64url_encode(hashlib.sha256(encoded.encode()).digest())


def test_disclosure_create_parse() -> None:
    d = sdjwt.create_disclosure("given_name", "민수")
    assert sdjwt.parse_disclosure(d.encoded) == d
    assert json.loads(base64.urlsafe_b64decode(d.encoded + "==")) == [d.salt, "given_name", "민수"]
    assert len(jose.b64url_decode(d.salt)) == 16
    with pytest.raises(DecodeError):
        sdjwt.create_disclosure("_sd", 1)
    for bad in ([1, "a", 2], ["s", 1, 2], ["s"], {"a": 1}, ["s", "_sd", 1]):
        with pytest.raises(DecodeError):
            sdjwt.parse_disclosure(jose.b64url_encode(json.dumps(bad).encode()))


def test_assemble_split_and_kb_signing_input() -> None:
    ij = jose.sign_compact({"alg": "ES256"}, {"x": 1}, KEY)
    ds = [sdjwt.create_disclosure(n, n).encoded for n in ("a", "b")]
    no_kb = sdjwt.presentation_without_kb(ij, ds)
    assert no_kb.endswith("~") and no_kb.count("~") == 3
    h = sdjwt.sd_hash(no_kb)
    si = sdjwt.kb_jwt_signing_input("kiosk-1", "n" * 22, 1700000000, h)
    head, pay = si.split(b".")
    assert jose.b64url_decode(head.decode()) == b'{"alg":"ES256","typ":"kb+jwt"}'
    assert json.loads(jose.b64url_decode(pay.decode())) == {
        "iat": 1700000000,
        "aud": "kiosk-1",
        "nonce": "n" * 22,
        "sd_hash": h,
    }
    kb = jose.attach_signature(si, jose.es256_sign(KEY, si))
    full = sdjwt.assemble(ij, ds, kb)
    assert sdjwt.split(full) == (ij, tuple(ds), kb)
    assert sdjwt.split(no_kb) == (ij, tuple(ds), "")
    assert sdjwt.split(ij + "~") == (ij, (), "")


@pytest.mark.parametrize(
    "bad", ["", "abc", "a.b~", "a.b.c~~", "a.b.c~x~x~", "a.b.c~d~e.f", "a.b.c~é~", "a.b.c~QQ==~"]
)
def test_split_malformed(bad: str) -> None:
    with pytest.raises(DecodeError):
        sdjwt.split(bad)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab.~_-=Q é0"), max_size=60))
def test_split_random_only_typed_errors(text: str) -> None:
    with contextlib.suppress(DecodeError):
        sdjwt.split(text)
