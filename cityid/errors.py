"""Typed errors shared by the terminal, the server and the emulators.

Every error carries its data (status word, tries left, …) so callers never parse messages.
"""

from __future__ import annotations

from cityid.iso7816 import SW


class CityIdError(Exception):
    """Base class of every error this project raises on purpose."""


# --- encoding errors -------------------------------------------------------------------------------


class DecodeError(CityIdError, ValueError):
    """Bytes that do not decode as the structure they claim to be."""


class MalformedApduError(DecodeError):
    """A command or response APDU whose length fields do not match its bytes (maps to SW 6700)."""

    sw = SW.WRONG_LENGTH


class TlvError(DecodeError):
    """Malformed BER-TLV (bad tag, bad or truncated length)."""


# --- card errors -----------------------------------------------------------------------------------


class CardError(CityIdError):
    """Something went wrong talking to a card."""


class ApduError(CardError):
    """The card answered with a status word other than 9000."""

    def __init__(self, sw: int, message: str | None = None, data: bytes = b"") -> None:
        self.sw = sw
        self.data = data
        super().__init__(message or f"card returned {sw:04X} ({SW.describe(sw)})")


class ApplicationNotFoundError(ApduError):
    """SELECT of an AID the card does not have (6A82)."""

    def __init__(self, aid: bytes, sw: int = SW.FILE_NOT_FOUND) -> None:
        self.aid = aid
        super().__init__(sw, f"application {aid.hex().upper()} not found on card")


class SecurityStatusError(ApduError):
    """The command needs a PIN or key authentication first (6982)."""

    def __init__(self, sw: int = SW.SECURITY_STATUS_NOT_SATISFIED, message: str | None = None) -> None:
        super().__init__(sw, message or "security status not satisfied (PIN or admin key needed)")


# --- PIN states (cards and FIDO keys alike) ----------------------------------------------------------
#
# Callers (flows, web) catch these state classes; the transport-specific subclasses keep their own data:
# card errors their status word (``ApduError.sw``, SP 800-73-4 §3.2.1), FIDO errors their CTAP status
# (``terminal.fido.errors.FidoError.code``, CTAP 2.1 §6.5).


class PinError(CityIdError):
    """Base class of the PIN states; ``what`` names the secret ("PIN", "PUK", "key PIN")."""

    what: str = "PIN"
    attempts_remaining: int | None = None


class WrongPinError(PinError):
    """Wrong PIN; ``attempts_remaining`` tries are left before it blocks."""


class BlockedPinError(PinError):
    """No tries left: only an unblock (card: PUK) or a reset (FIDO key) helps."""


class PinPowerCycleError(PinError):
    """Too many wrong PINs in a row: blocked until the token is removed and re-inserted (power cycle).

    ``attempts_remaining`` tries are left after that (CTAP 2.1 §6.5.5.7: PIN_AUTH_BLOCKED).
    """


class PinNotSetError(PinError):
    """The token has no PIN yet (a FIDO key never registered at a counter)."""


class InvalidPinError(ApduError, WrongPinError):
    """Wrong PIN/PUK on a card (63Cx); ``attempts_remaining`` tries are left."""

    def __init__(self, attempts_remaining: int, sw: int | None = None) -> None:
        self.attempts_remaining = attempts_remaining
        super().__init__(
            sw if sw is not None else (SW.VERIFY_FAILED | attempts_remaining),
            f"wrong PIN, {attempts_remaining} tries left",
        )


class PinBlockedError(ApduError, BlockedPinError):
    """The card PIN (or PUK) is blocked (6983 / 63C0)."""

    def __init__(self, sw: int = SW.AUTH_METHOD_BLOCKED, what: str = "PIN") -> None:
        self.what = what
        self.attempts_remaining = 0
        super().__init__(sw, f"{what} is blocked")


class PinPadError(ApduError):
    """PIN entry on a PIN-pad reader failed: timeout (6400), cancel (6401), bad length (6403)."""


class CardRemovedError(CardError):
    """The card left the reader (or was reset) in the middle of a command."""


class NoCardError(CardError):
    """No card is present in the reader."""


class UnusableTokenError(NoCardError):
    """A token is present but a kiosk cannot use it (refused at tap, before any PIN).

    ``reason``: ``"blank"`` (GET INFO ``C7``: no activated credential stored, docs/card-profile.md),
    ``"foreign"`` (neither a Busan citizen card nor a FIDO2 key), ``"unregistered_key"`` (a FIDO2 key
    without a PIN: never registered at a counter).
    """

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason


class CardNotFinishedError(UnusableTokenError):
    """A citizen card whose personalization was not finished (credential written, not activated,
    docs/card-profile.md §ACTIVATE): refused at tap like a blank card until the counter completes it."""

    def __init__(
        self, message: str = "card not finished: return to the counter to complete enrollment"
    ) -> None:
        super().__init__("blank", message)


class ReaderError(CardError):
    """The reader or the PC/SC service failed."""


class PcscUnavailableError(ReaderError):
    """The PC/SC service (pcscd) is not running or went away."""


class NoReaderError(ReaderError):
    """No (matching) reader is connected."""


def error_for_sw(sw: int) -> ApduError:
    """Map a failing status word to the most specific typed error (63Cx: SP 800-73-4 §3.2.1)."""
    if sw & 0xFFF0 == 0x63C0:
        tries = sw & 0x0F
        if tries == 0:
            return PinBlockedError(sw)
        return InvalidPinError(tries, sw)
    if sw == SW.AUTH_METHOD_BLOCKED:
        return PinBlockedError(sw)
    if sw == SW.SECURITY_STATUS_NOT_SATISFIED:
        return SecurityStatusError(sw)
    if sw in (SW.PINPAD_TIMEOUT, SW.PINPAD_CANCELLED, SW.PINPAD_MISMATCH, SW.PINPAD_BAD_LENGTH):
        return PinPadError(sw, f"PIN pad: {SW.describe(sw).lower()}")
    return ApduError(sw)
