"""cityid.keys: one P-256 key value type, the same key whichever encoding it came in."""

from __future__ import annotations

import contextlib

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from fido2.cose import ES256
from hypothesis import given
from hypothesis import strategies as st

from cityid.keys import P256_ORDER, KeyFormatError, P256PublicKey, es256_der_to_raw, es256_raw_to_der, low_s

PRIVATE = ec.derive_private_key(7, ec.SECP256R1())
KEY = P256PublicKey.from_crypto(PRIVATE.public_key())


def test_every_encoding_round_trips_to_the_same_key() -> None:
    assert P256PublicKey.from_point(KEY.point) == KEY
    assert P256PublicKey.from_jwk(KEY.jwk()) == KEY
    assert P256PublicKey.from_cose(KEY.cose()) == KEY
    assert P256PublicKey.from_spki(KEY.spki_pem().encode()) == KEY
    # python-fido2's own COSE type reads our COSE key and gives the same point back
    assert P256PublicKey.from_cose(ES256(KEY.cose())) == KEY
    assert ES256.from_cryptography_key(KEY.crypto) == KEY.cose()


def test_invalid_keys_are_typed_errors() -> None:
    with pytest.raises(KeyFormatError):
        P256PublicKey(b"\x04" + bytes(64))  # not on the curve
    with pytest.raises(KeyFormatError):
        P256PublicKey(KEY.point[:64])
    with pytest.raises(KeyFormatError):
        P256PublicKey.from_jwk({**KEY.jwk(), "d": "AA"})
    with pytest.raises(KeyFormatError):
        P256PublicKey.from_cose({**KEY.cose(), -1: 2})
    with pytest.raises(KeyFormatError):
        P256PublicKey.from_crypto(ec.generate_private_key(ec.SECP384R1()).public_key())


def test_signatures_verify_in_both_encodings() -> None:
    der = PRIVATE.sign(b"data", ec.ECDSA(hashes.SHA256()))
    raw = es256_der_to_raw(der)
    assert es256_raw_to_der(raw) == der
    assert KEY.verify_der(der, b"data") and KEY.verify_raw(raw, b"data")
    assert not KEY.verify_raw(raw, b"other") and not KEY.verify_raw(raw[:63], b"data")
    canonical = low_s(raw)
    assert int.from_bytes(canonical[32:], "big") <= P256_ORDER // 2
    assert KEY.verify_raw(canonical, b"data")
    r, _ = decode_dss_signature(der)
    assert int.from_bytes(canonical[:32], "big") == r


@given(st.binary(max_size=80))
def test_random_bytes_never_escape_as_other_errors(data: bytes) -> None:
    for parse in (P256PublicKey.from_point, es256_der_to_raw, es256_raw_to_der):
        with contextlib.suppress(KeyFormatError):
            parse(data)
