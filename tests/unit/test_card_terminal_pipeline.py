"""The APDU pipeline (cityid.apdu) and the session verbs against a scripted fake connection.

Covers command chaining (ISO 7816-4 §5.3.3), 61xx response chaining and 6Cxx re-send (§5.3.4), extended
APDUs (§5.1), PIN status words (SP 800-73-4 Part 2 §3.2.1), PIN-pad VERIFY (PC/SC part 10), TRACE redaction.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable

import pytest

from cityid.apdu import TRACE, ApduFormat, CommandApdu, SmartCardProtocol
from cityid.errors import (
    ApduError,
    ApplicationNotFoundError,
    InvalidPinError,
    MalformedApduError,
    PinBlockedError,
    PinPadError,
    SecurityStatusError,
)
from cityid.piv import PIV_AID, KeyRef
from terminal.pcsc.pinpad import CM_IOCTL_GET_FEATURE_REQUEST, Feature, PinPad, PinVerifyStructure
from terminal.sessions.base import InvalidPukError
from terminal.sessions.piv import PivSession


class ScriptedConnection:
    """Answers each raw APDU with ``handler(cmd)``; records what was sent."""

    def __init__(self, handler: Callable[[CommandApdu], tuple[bytes, int]]) -> None:
        self.handler = handler
        self.sent: list[bytes] = []

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        self.sent.append(apdu)
        return self.handler(CommandApdu.decode(apdu))


def test_command_chaining_splits_long_data() -> None:
    parts: list[CommandApdu] = []

    def handler(cmd: CommandApdu) -> tuple[bytes, int]:
        parts.append(cmd)
        return (b"ok", 0x9000) if not cmd.chained else (b"", 0x9000)

    proto = SmartCardProtocol(ScriptedConnection(handler))
    data = bytes(range(256)) * 2 + b"\x01" * 88  # 600 bytes
    assert proto.send_apdu(0x80, 0xD0, 0, 0, data) == b"ok"
    assert [len(p.data) for p in parts] == [255, 255, 90]
    assert [p.cla for p in parts] == [0x90, 0x90, 0x80]
    assert b"".join(p.data for p in parts) == data
    assert parts[-1].le == 256 and parts[0].le is None


def test_command_chaining_stops_on_error() -> None:
    calls = []

    def handler(cmd: CommandApdu) -> tuple[bytes, int]:
        calls.append(cmd)
        return b"", 0x6A80

    proto = SmartCardProtocol(ScriptedConnection(handler))
    with pytest.raises(ApduError) as exc:
        proto.send_apdu(0x80, 0xD0, 0, 0, b"x" * 600)
    assert exc.value.sw == 0x6A80
    assert len(calls) == 1


def test_response_chaining_collects_61xx() -> None:
    payload = bytes(range(256)) * 3 + b"tail"
    state = {"pos": 0}

    def handler(cmd: CommandApdu) -> tuple[bytes, int]:
        if cmd.ins not in (0xC0, 0xCA):
            raise AssertionError(cmd)
        n = cmd.le or 256
        chunk = payload[state["pos"] : state["pos"] + n]
        state["pos"] += len(chunk)
        left = len(payload) - state["pos"]
        return chunk, 0x9000 if left == 0 else 0x6100 | min(left, 256) & 0xFF

    conn = ScriptedConnection(handler)
    proto = SmartCardProtocol(conn)
    assert proto.send_apdu(0x00, 0xCA, 0, 0) == payload
    assert len(conn.sent) == 4
    assert all(CommandApdu.decode(a).ins == 0xC0 for a in conn.sent[1:])


def test_wrong_le_resends_with_exact_length() -> None:
    def handler(cmd: CommandApdu) -> tuple[bytes, int]:
        return (b"", 0x6C05) if cmd.le != 5 else (b"12345", 0x9000)

    conn = ScriptedConnection(handler)
    assert SmartCardProtocol(conn).send_apdu(0, 0xCA, 0, 0, le=10) == b"12345"
    assert [a[-1] for a in conn.sent] == [10, 5]


def test_endless_61xx_is_a_typed_error() -> None:
    proto = SmartCardProtocol(ScriptedConnection(lambda cmd: (b"x", 0x6101)))
    with pytest.raises(MalformedApduError):
        proto.send_apdu(0, 0xCA, 0, 0)


def test_extended_format_sends_one_apdu() -> None:
    conn = ScriptedConnection(lambda cmd: (b"\x53\x01x", 0x9000))
    proto = SmartCardProtocol(conn, ApduFormat.EXTENDED)
    proto.send_apdu(0x80, 0x50, 0, 0, b"r" * 700)
    assert len(conn.sent) == 1
    assert conn.sent[0][4] == 0 and len(conn.sent[0]) == 4 + 3 + 700 + 2


def _piv_card(pin: bytes = b"123456", tries: list[int] | None = None) -> ScriptedConnection:
    counter = tries if tries is not None else [3]

    def handler(cmd: CommandApdu) -> tuple[bytes, int]:
        if cmd.ins == 0xA4:
            return (b"\x61\x00", 0x9000) if PIV_AID.startswith(cmd.data) else (b"", 0x6A82)
        if cmd.ins == 0x20 and cmd.p2 == KeyRef.PIN:
            if counter[0] == 0:
                return b"", 0x6983
            if not cmd.data:
                return b"", 0x63C0 | counter[0]
            if cmd.data == pin.ljust(8, b"\xff"):
                counter[0] = 3
                return b"", 0x9000
            counter[0] -= 1
            return b"", 0x63C0 | counter[0]
        if cmd.ins == 0x2C:
            return b"", 0x63C2
        if cmd.ins == 0x87:
            return b"", 0x6982
        return b"", 0x6D00

    return ScriptedConnection(handler)


def test_piv_pin_status_words() -> None:
    conn = _piv_card()
    piv = PivSession(conn)
    assert piv.pin_attempts() == 3
    with pytest.raises(InvalidPinError) as exc:
        piv.verify_pin("000000")
    assert exc.value.attempts_remaining == 2
    assert piv.pin_attempts() == 2
    piv.verify_pin("123456")
    assert piv.pin_attempts() == 3
    for left in (2, 1):
        with pytest.raises(InvalidPinError) as exc:
            piv.verify_pin("999999")
        assert exc.value.attempts_remaining == left
    with pytest.raises(PinBlockedError):
        piv.verify_pin("999999")
    with pytest.raises(PinBlockedError):
        piv.verify_pin("123456")
    assert piv.pin_attempts() == 0
    with pytest.raises(InvalidPukError) as puk:
        piv.unblock_pin("00000000", "654321")
    assert puk.value.attempts_remaining == 2 and "PUK" in str(puk.value)
    with pytest.raises(SecurityStatusError):
        piv.sign(0x9A, b"hello")
    # VERIFY is a case-3 APDU (no Le), the empty VERIFY case 1 (SP 800-73-4 Part 2 §3.2.1).
    verifies = [CommandApdu.decode(a) for a in conn.sent if a[1] == 0x20]
    assert all(v.le is None for v in verifies)
    assert verifies[0].data == b""


def test_piv_select_failure_is_application_not_found() -> None:
    conn = ScriptedConnection(lambda cmd: (b"", 0x6A82))
    with pytest.raises(ApplicationNotFoundError):
        PivSession(conn)


def test_pin_length_is_checked_before_the_card() -> None:
    conn = _piv_card()
    piv = PivSession(conn)
    n = len(conn.sent)
    for bad in ("123", "123456789", "", "１２３４５６"):
        with pytest.raises(ValueError):
            piv.verify_pin(bad)
    assert len(conn.sent) == n


def test_trace_log_redacts_pins(caplog: pytest.LogCaptureFixture) -> None:
    piv = PivSession(_piv_card())
    with caplog.at_level(TRACE, logger="cityid.apdu"):
        piv.verify_pin("123456")
        with pytest.raises(ApduError):
            piv.change_pin("987654", "24680135")
    text = caplog.text
    assert "> 00200080" in text
    for secret in ("123456", b"123456".hex(), b"987654".hex(), b"24680135".hex()):
        assert secret not in text
    assert "redacted" in text
    assert logging.getLogger("cityid.apdu").handlers == []  # library code configures no logging


# --- PIN pad (PC/SC part 10) against a fake reader -------------------------------------------------

VERIFY_DIRECT = 0x42330006


class FakePinPadReader(ScriptedConnection):
    """A reader with FEATURE_VERIFY_PIN_DIRECT whose "user" types ``typed`` (or times out/cancels)."""

    def __init__(self, card: ScriptedConnection, typed: bytes | None, reader_sw: int = 0x6400) -> None:
        super().__init__(card.handler)
        self.typed = typed
        self.reader_sw = reader_sw
        self.controls: list[tuple[int, bytes]] = []

    def control(self, code: int, data: bytes = b"") -> bytes:
        self.controls.append((code, data))
        if code == CM_IOCTL_GET_FEATURE_REQUEST:
            return (
                bytes([Feature.VERIFY_PIN_START, 4])
                + (0x42330001).to_bytes(4, "big")
                + bytes([Feature.VERIFY_PIN_DIRECT, 4])
                + VERIFY_DIRECT.to_bytes(4, "big")
            )
        assert code == VERIFY_DIRECT
        fields = struct.unpack("<BBBBBHBBHB3sI", data[:19])
        apdu = data[19:]
        assert fields[-1] == len(apdu) == 13
        assert fields[2] == 0x82 and fields[3] == 8 and fields[5] == 0x0608
        if self.typed is None:
            return self.reader_sw.to_bytes(2, "big")
        if not 6 <= len(self.typed) <= 8:
            return b"\x64\x03"
        filled = apdu[:5] + self.typed + apdu[5 + len(self.typed) :]
        resp, sw = self.send_and_receive(filled)
        return resp + sw.to_bytes(2, "big")


def test_pin_verify_structure_layout() -> None:
    raw = PinVerifyStructure(bytes.fromhex("0020008008") + b"\xff" * 8).encode()
    assert len(raw) == 19 + 13
    assert raw[2] == 0x82 and raw[3] == 0x08 and raw[4] == 0
    assert raw[5:7] == bytes([8, 6])  # wPINMaxExtraDigit little-endian: max 8, min 6
    assert raw[15:19] == (13).to_bytes(4, "little")


def test_pinpad_verify_uses_the_reader() -> None:
    reader = FakePinPadReader(_piv_card(), typed=b"123456")
    piv = PivSession(reader)
    assert PinPad.detect(reader) is not None
    piv.verify_pin(None)
    assert any(code == VERIFY_DIRECT for code, _ in reader.controls)
    # the host sent only the FF-padded template: the PIN was typed on the reader
    assert b"123456" not in b"".join(d for _, d in reader.controls)
    assert piv.pin_attempts() == 3


def test_pinpad_wrong_pin_timeout_cancel_length() -> None:
    reader = FakePinPadReader(_piv_card(), typed=b"000000")
    piv = PivSession(reader)
    with pytest.raises(InvalidPinError) as exc:
        piv.verify_pin(None)
    assert exc.value.attempts_remaining == 2
    for sw in (0x6400, 0x6401):
        reader.typed, reader.reader_sw = None, sw
        with pytest.raises(PinPadError) as err:
            piv.verify_pin(None)
        assert err.value.sw == sw
    reader.typed = b"12"
    with pytest.raises(PinPadError) as err:
        piv.verify_pin(None)
    assert err.value.sw == 0x6403


def test_no_pinpad_needs_a_pin() -> None:
    piv = PivSession(_piv_card())
    with pytest.raises(ValueError, match="PIN pad"):
        piv.verify_pin(None)
