"""PIN-pad readers (PC/SC part 10 v2.02.09): feature discovery and VERIFY with the PIN typed on the reader.

``CM_IOCTL_GET_FEATURE_REQUEST`` (SCARD_CTL_CODE(3400)) answers a TLV list ``tag(1) len(1)=4 code(4, big
endian)``. With FEATURE_VERIFY_PIN_DIRECT the terminal sends a PIN_VERIFY_STRUCTURE (§2.5.2, little-endian
fields) holding the VERIFY APDU template; the reader collects the PIN, fills it in and returns the card's
response, or its own 6400 (timeout) / 6401 (cancel) / 6403 (bad length).
"""

from __future__ import annotations

import logging
import struct
import sys
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol, runtime_checkable

from cityid.errors import CardRemovedError, DecodeError, PcscUnavailableError, ReaderError
from cityid.piv import PIN_LEN_MAX, PIN_LEN_MIN, PIN_PAD_BYTE

logger = logging.getLogger(__name__)


def scard_ctl_code(code: int) -> int:
    """SCARD_CTL_CODE: pcsc-lite 0x42000000 + code; Windows FILE_DEVICE_SMARTCARD << 16 | code << 2."""
    if sys.platform == "win32":
        return (0x31 << 16) | (code << 2)
    return 0x42000000 + code


CM_IOCTL_GET_FEATURE_REQUEST = scard_ctl_code(3400)


class Feature(IntEnum):
    """Feature tags of the GET_FEATURE_REQUEST answer (part 10 §2.3)."""

    VERIFY_PIN_START = 0x01
    VERIFY_PIN_FINISH = 0x02
    MODIFY_PIN_START = 0x03
    MODIFY_PIN_FINISH = 0x04
    GET_KEY_PRESSED = 0x05
    VERIFY_PIN_DIRECT = 0x06
    MODIFY_PIN_DIRECT = 0x07
    MCT_READER_DIRECT = 0x08
    MCT_UNIVERSAL = 0x09
    IFD_PIN_PROPERTIES = 0x0A
    ABORT = 0x0B
    SET_SPE_MESSAGE = 0x0C
    VERIFY_PIN_DIRECT_APP_ID = 0x0D
    MODIFY_PIN_DIRECT_APP_ID = 0x0E
    WRITE_DISPLAY = 0x0F
    GET_KEY = 0x10
    IFD_DISPLAY_PROPERTIES = 0x11
    GET_TLV_PROPERTIES = 0x12
    CCID_ESC_COMMAND = 0x13
    EXECUTE_PACE = 0x20


@runtime_checkable
class ControlConnection(Protocol):
    """A connection that can also talk to the reader (SCardControl)."""

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]: ...

    def control(self, code: int, data: bytes = b"") -> bytes: ...


def parse_features(data: bytes) -> dict[int, int]:
    """Parse the feature list: ``{feature tag: control code}`` (part 10 §2.3); raise DecodeError."""
    features: dict[int, int] = {}
    i = 0
    while i < len(data):
        if i + 2 > len(data):
            raise DecodeError("truncated feature TLV")
        tag, length = data[i], data[i + 1]
        if length != 4 or i + 2 + length > len(data):
            raise DecodeError(f"feature {tag:02X} has length {length}, expected 4")
        features[tag] = int.from_bytes(data[i + 2 : i + 6], "big")
        i += 6
    return features


@dataclass(frozen=True, slots=True)
class PinVerifyStructure:
    """PIN_VERIFY_STRUCTURE (part 10 §2.5.2) for a PIN padded with FF to a fixed block, ASCII digits."""

    apdu: bytes  # the VERIFY APDU template, PIN bytes already present as padding
    min_len: int = PIN_LEN_MIN
    max_len: int = PIN_LEN_MAX
    timeout: int = 30  # seconds; 0 = reader default
    lang_id: int = 0x0409

    def encode(self) -> bytes:
        block = len(self.apdu) - 5
        if not 0 < block <= 15:
            raise ValueError("VERIFY template must carry a 1-15 byte PIN block")
        return (
            struct.pack(
                "<BBBBBHBBHB3sI",
                self.timeout,  # bTimerOut
                self.timeout,  # bTimerOut2
                0x82,  # bmFormatString: units = bytes, PIN at offset 0, left justified, ASCII
                block,  # bmPINBlockString: no length field, block of `block` bytes
                0x00,  # bmPINLengthFormat: no PIN length in the APDU
                (self.min_len << 8) | self.max_len,  # wPINMaxExtraDigit: XXYY = min, max
                0x02,  # bEntryValidationCondition: validation key pressed
                0x01,  # bNumberMessage
                self.lang_id,  # wLangId
                0x00,  # bMsgIndex
                b"\x00\x00\x00",  # bTeoPrologue (T=1 only, filled by the driver)
                len(self.apdu),  # ulDataLength
            )
            + self.apdu
        )


class PinPad:
    """A reader's PIN pad: VERIFY with the PIN entered on the reader (FEATURE_VERIFY_PIN_DIRECT)."""

    def __init__(self, connection: ControlConnection, verify_code: int, features: dict[int, int]) -> None:
        self.connection = connection
        self.verify_code = verify_code
        self.features = features

    @classmethod
    def detect(cls, connection: object) -> PinPad | None:
        """The reader's PIN pad, or None when the connection has no reader control or no PIN pad."""
        if not isinstance(connection, ControlConnection):
            return None
        try:
            features = parse_features(connection.control(CM_IOCTL_GET_FEATURE_REQUEST))
        except (CardRemovedError, PcscUnavailableError):
            raise
        except (ReaderError, DecodeError) as exc:
            logger.debug("reader has no usable feature list: %s", exc)
            return None
        code = features.get(Feature.VERIFY_PIN_DIRECT)
        if code is None:
            return None
        return cls(connection, code, features)

    def verify(
        self, p2: int, cla: int = 0x00, ins: int = 0x20, block: int = PIN_LEN_MAX
    ) -> tuple[bytes, int]:
        """VERIFY ``p2`` with the PIN typed on the reader; return (data, SW) as the card or reader answered.

        6400/6401/6403 come from the reader (timeout / cancelled / wrong length) and map to PinPadError in
        :func:`cityid.errors.error_for_sw`.
        """
        template = bytes((cla, ins, 0x00, p2, block)) + bytes([PIN_PAD_BYTE]) * block
        answer = self.connection.control(self.verify_code, PinVerifyStructure(template).encode())
        if len(answer) < 2:
            raise ReaderError(f"PIN pad returned {len(answer)} bytes, expected a status word")
        logger.debug("PIN pad VERIFY answered %02X%02X", answer[-2], answer[-1])
        return answer[:-2], (answer[-2] << 8) | answer[-1]
