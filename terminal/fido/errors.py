"""Typed errors of the terminal FIDO flows: one per state the terminal shows (CTAP 2.1 §6.5, §8.2).

The PIN states derive from the shared state classes of :mod:`cityid.errors` (``WrongPinError``,
``BlockedPinError``, ``PinPowerCycleError``, ``PinNotSetError``) so flows and the web catch card and key
PIN states alike; each keeps its CTAP status in ``code``.
"""

from __future__ import annotations

from fido2.ctap import CtapError

from cityid.errors import BlockedPinError, CityIdError, PinNotSetError, PinPowerCycleError, WrongPinError

ERR = CtapError.ERR


class FidoError(CityIdError):
    """A security key refused or failed an operation; ``code`` is the CTAP status (or None)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        self.code = code
        super().__init__(message)


class FidoPinError(FidoError):
    """Base class of the PIN states."""


class FidoPinNotSetError(FidoPinError, PinNotSetError):
    """The key has no PIN yet (CTAP2_ERR_PIN_NOT_SET)."""

    what = "key PIN"

    def __init__(self) -> None:
        super().__init__("the security key has no PIN yet", ERR.PIN_NOT_SET)


class FidoPinRequiredError(FidoPinError):
    """The operation needs the key's PIN (CTAP2_ERR_PUAT_REQUIRED)."""

    def __init__(self) -> None:
        super().__init__("the security key's PIN is needed", ERR.PUAT_REQUIRED)


class FidoInvalidPinError(FidoPinError, WrongPinError):
    """Wrong PIN; ``attempts_remaining`` tries are left before the PIN blocks (CTAP2_ERR_PIN_INVALID)."""

    what = "key PIN"

    def __init__(self, attempts_remaining: int) -> None:
        self.attempts_remaining = attempts_remaining
        super().__init__(f"wrong PIN, {attempts_remaining} tries left", ERR.PIN_INVALID)


class FidoPinPowerCycleError(FidoPinError, PinPowerCycleError):
    """Three wrong PINs in a row: remove and re-insert the key (CTAP2_ERR_PIN_AUTH_BLOCKED)."""

    what = "key PIN"

    def __init__(self, attempts_remaining: int | None = None) -> None:
        self.attempts_remaining = attempts_remaining
        left = f" ({attempts_remaining} tries left)" if attempts_remaining is not None else ""
        super().__init__(
            f"too many wrong PINs in a row: remove and re-insert the security key{left}", ERR.PIN_AUTH_BLOCKED
        )


class FidoPinBlockedError(FidoPinError, BlockedPinError):
    """No PIN tries left: only a reset (erasing all credentials) helps (CTAP2_ERR_PIN_BLOCKED)."""

    what = "key PIN"
    attempts_remaining = 0

    def __init__(self) -> None:
        super().__init__("the security key's PIN is blocked; the key must be reset", ERR.PIN_BLOCKED)


class FidoPinPolicyError(FidoPinError):
    """The new PIN breaks the key's rules (4–63 bytes, CTAP2_ERR_PIN_POLICY_VIOLATION)."""

    def __init__(self, detail: str = "the PIN must have 4 to 63 characters") -> None:
        super().__init__(detail, ERR.PIN_POLICY_VIOLATION)


class FidoUserActionError(FidoError):
    """The holder did not touch the key, refused, or the platform cancelled."""


class FidoNoCredentialsError(FidoError):
    """The key has no credential for this RP / these credential ids (CTAP2_ERR_NO_CREDENTIALS)."""

    def __init__(self) -> None:
        super().__init__("the security key has no matching credential", ERR.NO_CREDENTIALS)


class FidoCredentialExcludedError(FidoError):
    """The key already holds a credential of this citizen (CTAP2_ERR_CREDENTIAL_EXCLUDED)."""

    def __init__(self) -> None:
        super().__init__("this security key is already registered", ERR.CREDENTIAL_EXCLUDED)


class FidoNotAllowedError(FidoError):
    """Refused in this state, e.g. reset later than 10 s after power-up (CTAP2_ERR_NOT_ALLOWED)."""


class FidoVerificationError(FidoError):
    """The relying-party checks of a registration or assertion failed (WebAuthn §7.1 / §7.2)."""


def from_ctap(exc: CtapError, attempts_remaining: int | None = None) -> FidoError:
    """The typed error for a CTAP status (attempts_remaining fills in the PIN states)."""
    code = exc.code
    if code == ERR.PIN_INVALID:
        return FidoInvalidPinError(attempts_remaining if attempts_remaining is not None else -1)
    if code == ERR.PIN_AUTH_BLOCKED:
        return FidoPinPowerCycleError(attempts_remaining)
    if code == ERR.PIN_BLOCKED:
        return FidoPinBlockedError()
    if code == ERR.PIN_NOT_SET:
        return FidoPinNotSetError()
    if code == ERR.PUAT_REQUIRED:
        return FidoPinRequiredError()
    if code == ERR.PIN_POLICY_VIOLATION:
        return FidoPinPolicyError()
    if code == ERR.NO_CREDENTIALS:
        return FidoNoCredentialsError()
    if code == ERR.CREDENTIAL_EXCLUDED:
        return FidoCredentialExcludedError()
    if code in (ERR.OPERATION_DENIED, ERR.KEEPALIVE_CANCEL, ERR.USER_ACTION_TIMEOUT, ERR.ACTION_TIMEOUT):
        return FidoUserActionError(f"the security key was not confirmed ({code.name})", int(code))
    if code == ERR.NOT_ALLOWED:
        return FidoNotAllowedError("the security key does not allow this now", int(code))
    name = getattr(code, "name", f"0x{int(code):02X}")
    return FidoError(f"the security key refused the operation ({name})", int(code))
