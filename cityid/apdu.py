"""APDU codec and the I/O-independent APDU pipeline (ISO/IEC 7816-4 §5.1–5.3).

* :class:`CommandApdu` / :class:`ResponseApdu` encode and decode short and extended APDUs (§5.1).
* A :class:`SmartCardConnection` is anything with ``send_and_receive(apdu) -> (data, sw)``: the pyscard
  adapter in ``terminal.pcsc``, or the in-process emulator transport in ``firmware_tools``.
* Processors are small layers on a connection: command chaining of short APDUs (CLA bit 0x10, §5.3.3) or
  one extended APDU, then response chaining (``61xx`` + GET RESPONSE, ``6Cxx`` re-send, §5.3.4 / §5.6).
* :class:`SmartCardProtocol` puts them together and turns failing status words into typed errors.

Model: Yubico's yubikit ``core.smartcard``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from typing import Protocol, runtime_checkable

from cityid.errors import ApplicationNotFoundError, MalformedApduError, error_for_sw
from cityid.iso7816 import CLA, INS, SW, ClaBit

logger = logging.getLogger(__name__)

#: Custom log level for APDU traffic, below DEBUG. Sensitive payloads (PINs, keys) are redacted.
TRACE = 5
logging.addLevelName(TRACE, "TRACE")

SHORT_MAX_LC = 255
SHORT_MAX_LE = 256
EXTENDED_MAX_LC = 65535
EXTENDED_MAX_LE = 65536


@dataclass(frozen=True, slots=True)
class CommandApdu:
    """A command APDU. ``le`` is None when absent, else the expected length (256/65536 = "maximum")."""

    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    le: int | None = None

    def __post_init__(self) -> None:
        for name in ("cla", "ins", "p1", "p2"):
            v = getattr(self, name)
            if not 0 <= v <= 0xFF:
                raise MalformedApduError(f"{name} {v} is not a byte")
        if len(self.data) > EXTENDED_MAX_LC:
            raise MalformedApduError(f"command data of {len(self.data)} bytes is too long")
        if self.le is not None and not 0 < self.le <= EXTENDED_MAX_LE:
            raise MalformedApduError(f"Le {self.le} out of range")

    @property
    def header(self) -> bytes:
        return bytes((self.cla, self.ins, self.p1, self.p2))

    @property
    def chained(self) -> bool:
        """True when CLA says more commands of this chain follow (bit 0x10, interindustry class)."""
        return bool(self.cla & ClaBit.CHAINING)

    def needs_extended(self) -> bool:
        return len(self.data) > SHORT_MAX_LC or (self.le is not None and self.le > SHORT_MAX_LE)

    def encode(self, extended: bool | None = None) -> bytes:
        """Encode as short or extended (§5.1); ``None`` picks short when it fits."""
        if extended is None:
            extended = self.needs_extended()
        elif not extended and self.needs_extended():
            raise MalformedApduError("command does not fit a short APDU")
        out = bytearray(self.header)
        if not extended:
            if self.data:
                out.append(len(self.data))
                out += self.data
            if self.le is not None:
                out.append(self.le & 0xFF)  # 256 -> 00
            return bytes(out)
        if not self.data and self.le is None:
            return bytes(out)
        out.append(0)
        if self.data:
            out += len(self.data).to_bytes(2, "big")
            out += self.data
        if self.le is not None:
            out += (self.le & 0xFFFF).to_bytes(2, "big")  # 65536 -> 0000
        return bytes(out)

    def __bytes__(self) -> bytes:
        return self.encode()

    @classmethod
    def decode(cls, raw: bytes) -> CommandApdu:
        """Decode the four cases, short or extended (§5.1); raise :class:`MalformedApduError`."""
        n = len(raw)
        if n < 4:
            raise MalformedApduError(f"APDU of {n} bytes is shorter than a header")
        cla, ins, p1, p2 = raw[0], raw[1], raw[2], raw[3]
        body = raw[4:]
        if not body:  # case 1
            return cls(cla, ins, p1, p2)
        if len(body) == 1:  # case 2S
            return cls(cla, ins, p1, p2, b"", body[0] or 256)
        if body[0] != 0:  # short with Lc
            lc = body[0]
            if len(body) == 1 + lc:  # case 3S
                return cls(cla, ins, p1, p2, bytes(body[1:]))
            if len(body) == 2 + lc:  # case 4S
                return cls(cla, ins, p1, p2, bytes(body[1 : 1 + lc]), body[-1] or 256)
            raise MalformedApduError(f"Lc {lc} does not match {len(body) - 1} body bytes")
        # extended: body[0] == 0
        if len(body) == 3:  # case 2E
            le = int.from_bytes(body[1:3], "big") or 65536
            return cls(cla, ins, p1, p2, b"", le)
        if len(body) < 3:
            raise MalformedApduError("truncated extended length")
        lc = int.from_bytes(body[1:3], "big")
        if lc == 0:
            raise MalformedApduError("extended Lc of zero")
        if len(body) == 3 + lc:  # case 3E
            return cls(cla, ins, p1, p2, bytes(body[3:]))
        if len(body) == 5 + lc:  # case 4E
            le = int.from_bytes(body[-2:], "big") or 65536
            return cls(cla, ins, p1, p2, bytes(body[3 : 3 + lc]), le)
        raise MalformedApduError(f"extended Lc {lc} does not match {len(body) - 3} body bytes")


@dataclass(frozen=True, slots=True)
class ResponseApdu:
    """A response APDU: data and the status word."""

    data: bytes
    sw: int

    def encode(self) -> bytes:
        return bytes(self.data) + self.sw.to_bytes(2, "big")

    def __bytes__(self) -> bytes:
        return self.encode()

    @classmethod
    def decode(cls, raw: bytes) -> ResponseApdu:
        if len(raw) < 2:
            raise MalformedApduError(f"response of {len(raw)} bytes has no status word")
        return cls(bytes(raw[:-2]), int.from_bytes(raw[-2:], "big"))


@runtime_checkable
class SmartCardConnection(Protocol):
    """A connection to one card: the only thing the protocol layers need from I/O."""

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        """Send one raw command APDU, return (response data, SW)."""
        ...


class ApduFormat(Enum):
    """How long commands travel (§5.1): chained short APDUs or one extended APDU."""

    SHORT = "short"
    EXTENDED = "extended"


def _log_command(cmd: CommandApdu, sensitive: bool) -> None:
    if logger.isEnabledFor(TRACE):
        shown = f"<{len(cmd.data)} bytes redacted>" if sensitive and cmd.data else cmd.data.hex()
        logger.log(TRACE, "> %s %s le=%s", cmd.header.hex(), shown, cmd.le)


def _log_response(data: bytes, sw: int, sensitive: bool) -> None:
    if logger.isEnabledFor(TRACE):
        shown = f"<{len(data)} bytes redacted>" if sensitive and data else data.hex()
        logger.log(TRACE, "< %s %04X", shown, sw)


class ApduProcessor(Protocol):
    """One layer of the pipeline."""

    def send_apdu(self, cmd: CommandApdu, sensitive: bool = False) -> tuple[bytes, int]: ...


class RawProcessor:
    """Bottom layer: encode one APDU and hand it to the connection."""

    def __init__(self, connection: SmartCardConnection, extended: bool = False) -> None:
        self.connection = connection
        self.extended = extended

    def send_apdu(self, cmd: CommandApdu, sensitive: bool = False) -> tuple[bytes, int]:
        _log_command(cmd, sensitive)
        data, sw = self.connection.send_and_receive(cmd.encode(True if self.extended else None))
        _log_response(data, sw, sensitive)
        return data, sw


class CommandChainingProcessor:
    """Split command data over 255 bytes into short APDUs with CLA|0x10 on all but the last (§5.3.3)."""

    def __init__(self, delegate: ApduProcessor, chunk: int = SHORT_MAX_LC) -> None:
        self.delegate = delegate
        self.chunk = chunk

    def send_apdu(self, cmd: CommandApdu, sensitive: bool = False) -> tuple[bytes, int]:
        data = cmd.data
        le = cmd.le if cmd.le is None or cmd.le <= SHORT_MAX_LE else SHORT_MAX_LE
        while len(data) > self.chunk:
            part = CommandApdu(cmd.cla | ClaBit.CHAINING, cmd.ins, cmd.p1, cmd.p2, data[: self.chunk])
            resp, sw = self.delegate.send_apdu(part, sensitive)
            if sw != SW.SUCCESS:
                return resp, sw
            data = data[self.chunk :]
        return self.delegate.send_apdu(CommandApdu(cmd.cla, cmd.ins, cmd.p1, cmd.p2, data, le), sensitive)


class ResponseChainingProcessor:
    """Collect ``61xx`` continuations with GET RESPONSE and re-send on ``6Cxx`` (§5.3.4, §5.6)."""

    def __init__(
        self, delegate: ApduProcessor, ins_get_response: int = INS.GET_RESPONSE, max_rounds: int = 512
    ) -> None:
        self.delegate = delegate
        self.ins_get_response = ins_get_response
        self.max_rounds = max_rounds

    def send_apdu(self, cmd: CommandApdu, sensitive: bool = False) -> tuple[bytes, int]:
        data, sw = self.delegate.send_apdu(cmd, sensitive)
        if sw & 0xFF00 == SW.WRONG_LE:
            exact = sw & 0xFF or 256
            data, sw = self.delegate.send_apdu(
                CommandApdu(cmd.cla, cmd.ins, cmd.p1, cmd.p2, cmd.data, exact), sensitive
            )
        buf = bytearray(data)
        rounds = 0
        while sw & 0xFF00 == SW.BYTES_REMAINING:
            rounds += 1
            if rounds > self.max_rounds:
                raise MalformedApduError("card keeps answering 61xx")
            get = CommandApdu(CLA.ISO, self.ins_get_response, 0, 0, b"", sw & 0xFF or 256)
            data, sw = self.delegate.send_apdu(get, sensitive)
            buf += data
        return bytes(buf), sw


class SmartCardProtocol:
    """The APDU pipeline for one card session, raising typed errors for failing status words."""

    def __init__(
        self,
        connection: SmartCardConnection,
        apdu_format: ApduFormat = ApduFormat.SHORT,
        ins_get_response: int = INS.GET_RESPONSE,
    ) -> None:
        self.connection = connection
        self.ins_get_response = ins_get_response
        self.configure(apdu_format)

    def configure(self, apdu_format: ApduFormat) -> None:
        """Switch between chained short APDUs and extended APDUs."""
        self.apdu_format = apdu_format
        if apdu_format is ApduFormat.EXTENDED:
            inner: ApduProcessor = RawProcessor(self.connection, extended=True)
        else:
            inner = CommandChainingProcessor(RawProcessor(self.connection))
        self.processor: ApduProcessor = ResponseChainingProcessor(inner, self.ins_get_response)

    def send_apdu_sw(
        self,
        cla: int,
        ins: int,
        p1: int,
        p2: int,
        data: bytes = b"",
        le: int | None = None,
        *,
        sensitive: bool = False,
    ) -> tuple[bytes, int]:
        """Send through the pipeline; return (data, sw) without raising on the status word."""
        if le is None and self.apdu_format is ApduFormat.SHORT:
            le = SHORT_MAX_LE
        elif le is None:
            le = EXTENDED_MAX_LE
        return self.processor.send_apdu(CommandApdu(cla, ins, p1, p2, bytes(data), le), sensitive)

    def send_apdu(
        self,
        cla: int,
        ins: int,
        p1: int,
        p2: int,
        data: bytes = b"",
        le: int | None = None,
        *,
        sensitive: bool = False,
    ) -> bytes:
        """Send through the pipeline; return the data or raise the typed error for the SW."""
        resp, sw = self.send_apdu_sw(cla, ins, p1, p2, data, le, sensitive=sensitive)
        if sw != SW.SUCCESS:
            raise error_for_sw(sw)
        return resp

    def select(self, aid: bytes) -> bytes:
        """SELECT by DF name (AID), first or only occurrence (§11.2.2); return the FCI/property template."""
        resp, sw = self.send_apdu_sw(CLA.ISO, INS.SELECT, 0x04, 0x00, aid)
        if sw in (SW.FILE_NOT_FOUND, SW.INS_NOT_SUPPORTED, SW.INCORRECT_P1P2, SW.FUNCTION_NOT_SUPPORTED):
            raise ApplicationNotFoundError(aid, sw)
        if sw != SW.SUCCESS:
            raise error_for_sw(sw)
        return resp
