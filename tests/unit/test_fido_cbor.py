"""Bad input to the CTAP core: malformed CBOR, wrong types, oversized messages: a status byte, no crash."""

from __future__ import annotations

import pytest
from emulators.fido.authenticator import MAX_MSG_SIZE
from emulators.fido.ctap import decode_cbor
from fido2 import cbor
from fido2.ctap import CtapError
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.fido_support import ES256, RP, cdh, make_auth, user

ERR = CtapError.ERR
AUTH = make_auth()


def status(request: bytes) -> int:
    return AUTH.process(request)[0]


@pytest.mark.parametrize(
    "payload",
    [
        b"\xa1",  # map of one pair, truncated
        b"\xa1\x01",  # value missing
        b"\x5a\xff\xff\xff\xff",  # byte string longer than the message
        b"\xa1\x01\xf6",  # null (python-fido2 reads it as False)
        b"\xa1\x01\xfb\x3f\xf0\x00\x00\x00\x00\x00\x00",  # float
        b"\xa2\x01\x01\x01\x02",  # duplicate keys
        b"\xa2\x02\x01\x01\x02",  # keys not in canonical order
        b"\xa1\x18\x01\x01",  # non-minimal integer encoding
        b"\xa1\x01\x62\xc3\x28",  # invalid UTF-8
        b"\xa1\x01\x9f\x01\xff",  # indefinite-length array
        b"\xa1\x01\xa1\x01\xa1\x01\xa1\x01\xa1\x01\x01",  # nested five maps deep
        b"\xa1\x01\x01\x00",  # trailing bytes
        b"\x81" * 5000,  # deep nesting (recursion) — also oversized
    ],
)
def test_malformed_cbor_is_invalid_cbor(payload: bytes) -> None:
    code = status(b"\x01" + payload)
    assert code in (ERR.INVALID_CBOR, ERR.INVALID_LENGTH)
    if len(payload) < MAX_MSG_SIZE:
        assert code == ERR.INVALID_CBOR


@pytest.mark.parametrize(
    "params",
    [
        [1, 2, 3],  # not a map
        {1: "text", 2: RP, 3: user(), 4: ES256},  # clientDataHash not bytes
        {1: b"\0" * 32, 2: "rp", 3: user(), 4: ES256},  # rp not a map
        {1: b"\0" * 32, 2: RP, 3: user(), 4: {"alg": -7}},  # params not an array
        {1: b"\0" * 32, 2: RP, 3: user(), 4: [7]},  # param not a map
        {1: b"\0" * 32, 2: RP, 3: user(), 4: ES256, 7: {"rk": 1}},  # option not a bool
        {1: b"\0" * 32, 2: RP, 3: user(), 4: ES256, 5: [{"id": 1, "type": "public-key"}]},
        {1: b"\0" * 32, 2: {"id": 5}, 3: user(), 4: ES256},
        {1: b"\0" * 32, 2: RP, 3: user(), 4: ES256, 6: {"credProtect": True}},
    ],
)
def test_wrong_types_are_cbor_unexpected_type(params) -> None:
    assert status(b"\x01" + cbor.encode(params)) == ERR.CBOR_UNEXPECTED_TYPE


def test_lengths() -> None:
    assert AUTH.process(b"") == bytes([ERR.INVALID_LENGTH])
    big = {1: b"\0" * 32, 2: RP, 3: {"id": b"u", "name": "x" * MAX_MSG_SIZE}, 4: ES256}
    assert status(b"\x01" + cbor.encode(big)) == ERR.INVALID_LENGTH
    bad_hash = {1: b"\0" * 31, 2: RP, 3: user(), 4: ES256}
    assert status(b"\x01" + cbor.encode(bad_hash)) == ERR.INVALID_LENGTH
    long_user = {1: cdh(), 2: RP, 3: {"id": b"u" * 65}, 4: ES256}
    assert status(b"\x01" + cbor.encode(long_user)) == ERR.INVALID_LENGTH


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_decoder_never_raises_anything_but_invalid_cbor(data: bytes) -> None:
    try:
        value = decode_cbor(data)
    except CtapError as exc:
        assert exc.code == ERR.INVALID_CBOR
    else:
        assert cbor.encode(value) == data  # whatever decodes is canonical


cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.binary(max_size=40)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.integers(-5, 12), children, max_size=5)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([0x01, 0x02, 0x04, 0x06, 0x08, 0x0A, 0x0B, 0x0C, 0x41, 0x07, 0x99]), cbor_values)
def test_every_command_answers_a_status_byte_for_any_cbor(cmd: int, value) -> None:
    try:
        payload = cbor.encode(value) if value is not None else b""
    except ValueError:
        payload = b"\xf6"
    response = AUTH.process(bytes([cmd]) + payload)
    assert len(response) >= 1
    if response[0] == 0 and len(response) > 1:
        decoded = cbor.decode(response[1:])
        assert isinstance(decoded, dict)
        assert cbor.encode(decoded) == response[1:]
    else:
        assert response[0] != ERR.OTHER  # no internal failure


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=400))
def test_random_requests_never_crash(request: bytes) -> None:
    response = AUTH.process(request)
    assert len(response) >= 1 and response[0] != ERR.OTHER
