"""What every applet session shares: the APDU pipeline choice and PIN verification (keyboard or PIN pad)."""

from __future__ import annotations

import contextlib
import logging

from cityid.apdu import ApduFormat, CommandApdu, SmartCardConnection, SmartCardProtocol
from cityid.errors import (
    ApduError,
    ApplicationNotFoundError,
    InvalidPinError,
    PinBlockedError,
    ReaderError,
    error_for_sw,
)
from cityid.iso7816 import CLA, INS, SW
from cityid.piv import KeyRef, pad_pin
from terminal.pcsc.pinpad import PinPad

logger = logging.getLogger(__name__)


class InvalidPukError(InvalidPinError):
    """Wrong PUK (63Cx); ``attempts_remaining`` PUK tries are left."""

    what = "PUK"

    def __init__(self, attempts_remaining: int, sw: int | None = None) -> None:
        super().__init__(attempts_remaining, sw)
        self.args = (f"wrong PUK, {attempts_remaining} tries left",)


#: Status words meaning "this card or reader does not take extended length fields".
_NO_EXTENDED = {SW.WRONG_LENGTH, SW.INS_NOT_SUPPORTED, SW.CLA_NOT_SUPPORTED, SW.NO_PRECISE_DIAGNOSIS}


def open_applet(
    connection: SmartCardConnection, aid: bytes, extended: bool | None = None
) -> tuple[SmartCardProtocol, bytes]:
    """SELECT ``aid`` and return (pipeline, SELECT response).

    The pipeline sends one extended APDU per command when the reader and card take them (ISO 7816-4 §5.1),
    else chained short APDUs (§5.3.3). When nobody knows yet (``connection.extended`` is None), the SELECT
    itself is the probe: sent as an extended APDU, re-sent short if the card or reader refuses it; the
    answer is remembered on the connection, so the probe costs no extra APDU.
    """
    choice = extended if extended is not None else getattr(connection, "extended", None)
    if choice is None:
        proto = SmartCardProtocol(connection, ApduFormat.EXTENDED)
        try:
            resp = proto.select(aid)
        except ApplicationNotFoundError:
            raise
        except ApduError as exc:
            if exc.sw not in _NO_EXTENDED:
                raise
            logger.debug("extended SELECT refused (%04X): using short APDUs", exc.sw)
        except ReaderError as exc:
            logger.debug("extended SELECT failed in the reader (%s): using short APDUs", exc)
        else:
            _remember(connection, True)
            return proto, resp
        _remember(connection, False)
        choice = False
    proto = SmartCardProtocol(connection, ApduFormat.EXTENDED if choice else ApduFormat.SHORT)
    return proto, proto.select(aid)


def _remember(connection: SmartCardConnection, extended: bool) -> None:
    with contextlib.suppress(AttributeError):  # any connection object may remember it (PcscConnection does)
        setattr(connection, "extended", extended)  # noqa: B010 - optional attribute outside SmartCardConnection


def encode_pin(pin: str | bytes) -> bytes:
    """A PIN as the card wants it: ASCII, 6-8 characters, padded with FF to 8 (SP 800-73-4 Part 2 §3.2.1)."""
    try:
        raw = pin.encode("ascii") if isinstance(pin, str) else bytes(pin)
    except UnicodeEncodeError as exc:
        raise ValueError("PIN must be ASCII digits") from exc
    if not raw:
        raise ValueError("empty PIN")
    return pad_pin(raw)


def send_no_le(
    protocol: SmartCardProtocol, ins: int, p1: int, p2: int, data: bytes = b"", *, sensitive: bool = False
) -> tuple[bytes, int]:
    """Send a case 1/3 command (no Le field, as PIV's VERIFY/CHANGE/RESET are specified) through the
    pipeline's chaining layers; return (data, sw)."""
    return protocol.processor.send_apdu(CommandApdu(CLA.ISO, ins, p1, p2, data), sensitive)


def _raise_for_pin(sw: int, puk: bool = False) -> None:
    if sw == SW.SUCCESS:
        return
    err = error_for_sw(sw)
    if puk and isinstance(err, InvalidPinError):
        raise InvalidPukError(err.attempts_remaining or 0, sw)
    if puk and isinstance(err, PinBlockedError):
        raise PinBlockedError(sw, what="PUK")
    raise err


class PinMixin:
    """VERIFY / retry-counter verbs shared by the PIV and citizen sessions (the card-wide PIN, ref 80)."""

    protocol: SmartCardProtocol
    connection: SmartCardConnection

    def _verify(self, ref: int, pin: str | bytes | None) -> None:
        if pin is None:
            pinpad = PinPad.detect(self.connection)
            if pinpad is None:
                raise ValueError("no PIN given and the reader has no PIN pad")
            _data, sw = pinpad.verify(ref)
        else:
            _data, sw = send_no_le(self.protocol, INS.VERIFY, 0, ref, encode_pin(pin), sensitive=True)
        _raise_for_pin(sw)

    def verify_pin(self, pin: str | bytes | None) -> None:
        """VERIFY the PIN (ref 80); ``None`` means "on the reader's PIN pad".

        Raises InvalidPinError (tries left), PinBlockedError, PinPadError.
        """
        self._verify(KeyRef.PIN, pin)

    def pin_attempts(self) -> int:
        """PIN tries left, from an empty VERIFY (63Cx). When the PIN is currently verified the card answers
        9000 and its counter is at the reset value, reported as ``max_pin_tries``."""
        _data, sw = send_no_le(self.protocol, INS.VERIFY, 0, KeyRef.PIN)
        if sw == SW.SUCCESS:
            return self.max_pin_tries
        if sw & 0xFFF0 == SW.VERIFY_FAILED:
            return sw & 0x0F
        if sw == SW.AUTH_METHOD_BLOCKED:
            return 0
        raise ApduError(sw)

    max_pin_tries = 3

    def change_pin(self, old_pin: str | bytes, new_pin: str | bytes) -> None:
        """CHANGE REFERENCE DATA for the PIN (SP 800-73-4 Part 2 §3.2.2)."""
        data = encode_pin(old_pin) + encode_pin(new_pin)
        _d, sw = send_no_le(self.protocol, INS.CHANGE_REFERENCE_DATA, 0, KeyRef.PIN, data, sensitive=True)
        _raise_for_pin(sw)

    def change_puk(self, old_puk: str | bytes, new_puk: str | bytes) -> None:
        """CHANGE REFERENCE DATA for the PUK (ref 81)."""
        data = encode_pin(old_puk) + encode_pin(new_puk)
        _d, sw = send_no_le(self.protocol, INS.CHANGE_REFERENCE_DATA, 0, KeyRef.PUK, data, sensitive=True)
        _raise_for_pin(sw, puk=True)

    def unblock_pin(self, puk: str | bytes, new_pin: str | bytes) -> None:
        """RESET RETRY COUNTER with the PUK, setting a new PIN (SP 800-73-4 Part 2 §3.2.3)."""
        data = encode_pin(puk) + encode_pin(new_pin)
        _d, sw = send_no_le(self.protocol, INS.RESET_RETRY_COUNTER, 0, KeyRef.PIN, data, sensitive=True)
        _raise_for_pin(sw, puk=True)
