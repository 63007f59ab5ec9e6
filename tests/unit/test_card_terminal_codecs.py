"""Property tests: random bytes into every decoder of the terminal's card layer — only typed errors come out.

Decoders: cityid.apdu (command/response APDUs, ISO 7816-4 §5.1), cityid.tlv (BER-TLV), cityid.citizen
(credential record, PRESENT request), the terminal's CardInfo, ATR and PC/SC feature-list parsers.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cityid.apdu import CommandApdu, ResponseApdu
from cityid.citizen import CredentialRecord, PresentRequest, StoredDisclosure
from cityid.errors import DecodeError, MalformedApduError, TlvError
from cityid.tlv import Tlv, encode_tlv, encode_tlvs, parse_tlv_list
from terminal.pcsc.atr import parse_atr
from terminal.pcsc.pinpad import parse_features
from terminal.sessions.citizen import CardInfo

SETTINGS = settings(max_examples=200, deadline=None)


def _is_extended(raw: bytes) -> bool:
    return len(raw) >= 7 and raw[4] == 0


@SETTINGS
@given(st.binary(max_size=300) | st.binary(min_size=4, max_size=8).map(lambda b: b[:4] + b"\x00" + b[4:]))
def test_command_apdu_decode_random(raw: bytes) -> None:
    try:
        cmd = CommandApdu.decode(raw)
    except MalformedApduError:
        return
    assert cmd.encode(extended=_is_extended(raw)) == raw


@st.composite
def command_apdus(draw: st.DrawFn) -> CommandApdu:
    header = draw(st.tuples(*[st.integers(0, 255)] * 4))
    data = draw(st.binary(max_size=600))
    le = draw(st.none() | st.integers(1, 256) | st.integers(1, 65536))
    return CommandApdu(*header, data=data, le=le)


@SETTINGS
@given(command_apdus(), st.booleans())
def test_command_apdu_round_trip(cmd: CommandApdu, force_extended: bool) -> None:
    raw = cmd.encode(True if force_extended else None)
    assert CommandApdu.decode(raw) == cmd


@SETTINGS
@given(st.binary(max_size=600))
def test_response_apdu_decode_random(raw: bytes) -> None:
    try:
        resp = ResponseApdu.decode(raw)
    except MalformedApduError:
        assert len(raw) < 2
        return
    assert resp.encode() == raw
    assert 0 <= resp.sw <= 0xFFFF


@SETTINGS
@given(st.binary(max_size=400))
def test_tlv_parse_random(raw: bytes) -> None:
    try:
        tlvs = parse_tlv_list(raw)
    except TlvError:
        return
    again = encode_tlvs((t.tag, t.value) for t in tlvs)
    assert parse_tlv_list(again) == tlvs
    for t in tlvs:
        if t.constructed:
            with contextlib.suppress(TlvError):
                t.children()


tags = st.sampled_from([0x4F, 0x53, 0x5C, 0x70, 0x7C, 0x80, 0x81, 0x82, 0x5FC102, 0x7F49, 0x9F7F])


@SETTINGS
@given(st.lists(st.tuples(tags, st.binary(max_size=300)), max_size=6))
def test_tlv_round_trip(items: list[tuple[int, bytes]]) -> None:
    raw = encode_tlvs(items)
    assert [(t.tag, t.value) for t in parse_tlv_list(raw)] == items


def _mutate(data: bytes, pos: int, value: int, cut: int) -> bytes:
    if not data:
        return data
    b = bytearray(data)
    b[pos % len(b)] = value
    return bytes(b[: max(0, len(b) - cut)])


@st.composite
def credential_bytes(draw: st.DrawFn) -> bytes:
    names = draw(st.lists(st.text(min_size=1, max_size=40), max_size=4))
    rec = CredentialRecord(
        draw(st.sampled_from(["a.b.c", "x", "e30.e30.sig"])),
        tuple(StoredDisclosure(n, draw(st.text(alphabet="abc_-", max_size=20))) for n in names),
        draw(st.text(max_size=20)),
    )
    raw = rec.encode()
    if draw(st.booleans()):
        raw = _mutate(raw, draw(st.integers(0, 1000)), draw(st.integers(0, 255)), draw(st.integers(0, 3)))
    return raw


@SETTINGS
@given(st.binary(max_size=300) | credential_bytes())
def test_credential_record_decode_random(raw: bytes) -> None:
    try:
        rec = CredentialRecord.decode(raw)
    except TlvError:
        return
    assert CredentialRecord.decode(rec.encode()) == rec


@st.composite
def present_bytes(draw: st.DrawFn) -> bytes:
    req = PresentRequest(
        tuple(draw(st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=3, unique=True))),
        draw(st.text(alphabet="0123456789abcdef", min_size=1, max_size=70)),
        draw(st.text(alphabet="abc:/.", min_size=1, max_size=30)),
        draw(st.integers(0, 2**63)),
    )
    raw = req.encode()
    if draw(st.booleans()):
        raw = _mutate(raw, draw(st.integers(0, 1000)), draw(st.integers(0, 255)), draw(st.integers(0, 3)))
    return raw


@SETTINGS
@given(st.binary(max_size=300) | present_bytes())
def test_present_request_decode_random(raw: bytes) -> None:
    try:
        req = PresentRequest.decode(raw)
    except TlvError:
        return
    assert PresentRequest.decode(req.encode()) == req


@SETTINGS
@given(
    st.binary(max_size=200)
    | st.lists(st.tuples(st.integers(0xC0, 0xC6), st.binary(max_size=12)), max_size=8).map(
        lambda items: encode_tlvs(items)
    )
)
def test_card_info_decode_random(raw: bytes) -> None:
    try:
        info = CardInfo.decode(raw)
    except TlvError:
        return
    assert 0 <= info.pin_tries <= 255


@SETTINGS
@given(st.binary(max_size=40) | st.binary(max_size=30).map(lambda b: b"\x3b" + b))
def test_atr_parse_random(raw: bytes) -> None:
    try:
        info = parse_atr(raw)
    except DecodeError:
        return
    assert len(info.historical) == raw[1] & 0x0F
    assert info.historical in raw


@SETTINGS
@given(st.binary(max_size=60))
def test_feature_list_parse_random(raw: bytes) -> None:
    try:
        features = parse_features(raw)
    except DecodeError:
        return
    assert len(raw) % 6 == 0
    assert len(features) <= len(raw) // 6  # a repeated tag keeps its last code


def test_known_atr_historical_capabilities() -> None:
    # 3B 8A 80 01 + historical 80 73 00 00 40 ... : category 80, card capabilities 73 with extended bit.
    atr = bytes([0x3B, 0x80 | 8, 0x80, 0x01]) + bytes.fromhex("8073000040") + b"\x00\x00\x00"
    info = parse_atr(atr)
    assert info.protocols == (0, 1)
    assert info.historical == bytes.fromhex("807300004000 0000".replace(" ", ""))
    assert info.extended_length is True
    no_ext = bytes([0x3B, 0x80 | 5, 0x80, 0x01]) + bytes.fromhex("8073000000")
    assert parse_atr(no_ext).extended_length is False
    assert parse_atr(bytes.fromhex("3B00")).extended_length is None


def test_tlv_errors_are_typed() -> None:
    with pytest.raises(TlvError):
        Tlv.unpack(0x53, encode_tlv(0x70, b"x"))
    with pytest.raises(TlvError):
        parse_tlv_list(b"\x53\x05ab")
