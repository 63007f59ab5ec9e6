"""A FIDO2 key session at the terminal (CTAP 2.1).

:class:`FidoSession` wraps python-fido2's :class:`~fido2.ctap2.Ctap2` on one key: info and PIN state,
set/change PIN, makeCredential/getAssertion with a PIN token when the key has a PIN, credential management
and the large-blob array. CTAP failures become the typed errors of :mod:`terminal.fido.errors`. The
relying-party checks (WebAuthn §7) are :class:`terminal.verifier.fido.FidoVerifier`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

from fido2.ctap import CtapDevice, CtapError
from fido2.ctap2.base import AssertionResponse, AttestationResponse, Ctap2, Info
from fido2.ctap2.blob import LargeBlobs
from fido2.ctap2.credman import CredentialManagement
from fido2.ctap2.pin import ClientPin, PinProtocol
from fido2.webauthn import (
    UserVerificationRequirement,
)

from terminal.fido.errors import (
    ERR,
    FidoError,
    FidoPinRequiredError,
    from_ctap,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
PERMISSION = ClientPin.PERMISSION
UV_REQUIRED = UserVerificationRequirement.REQUIRED
UV_DISCOURAGED = UserVerificationRequirement.DISCOURAGED
CRED_RESULT = CredentialManagement.RESULT


class PinState(Enum):
    """What the terminal shows about a key's PIN (CTAP 2.1 §6.5.5.3)."""

    NOT_SET = "not set"
    OK = "set"
    POWER_CYCLE_REQUIRED = "blocked until the key is re-inserted"
    BLOCKED = "blocked until reset"


@dataclass(frozen=True, slots=True)
class PinStatus:
    state: PinState
    retries: int | None = None

    def describe(self) -> str:
        if self.state is PinState.OK:
            return f"PIN set, {self.retries} tries left"
        if self.state is PinState.POWER_CYCLE_REQUIRED:
            return f"PIN {self.state.value} ({self.retries} tries left)"
        return f"PIN {self.state.value}"


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """authenticatorGetInfo, summarised (CTAP 2.1 §6.4)."""

    aaguid: str
    versions: tuple[str, ...]
    extensions: tuple[str, ...]
    transports: tuple[str, ...]
    pin: PinStatus
    remaining_credentials: int | None
    max_msg_size: int
    large_blobs: bool
    credential_management: bool
    firmware_version: int | None


@dataclass(frozen=True, slots=True)
class StoredCredential:
    """A discoverable credential on the key (credential management, CTAP 2.1 §6.8)."""

    rp_id: str
    credential_id: bytes
    user_id: bytes
    user_name: str | None
    display_name: str | None
    cred_protect: int | None


class FidoSession:
    """One security key (any python-fido2 CtapDevice: PC/SC, HID, in-process)."""

    def __init__(self, device: CtapDevice) -> None:
        self.device = device
        try:
            self.ctap = Ctap2(device)
        except CtapError as exc:
            raise from_ctap(exc) from None
        except ValueError as exc:
            raise FidoError(f"not a FIDO2 security key: {exc}") from None

    def close(self) -> None:
        self.device.close()

    def __enter__(self) -> FidoSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- info and PIN state ----------------------------------------------------------------------

    def refresh(self) -> Info:
        self.ctap._info = self._call(self.ctap.get_info)
        return self.ctap.info

    @property
    def pin_set(self) -> bool:
        return bool(self.ctap.info.options.get("clientPin"))

    def _client_pin(self) -> ClientPin:
        return ClientPin(self.ctap)

    def pin_status(self) -> PinStatus:
        info = self.refresh()
        if not info.options.get("clientPin"):
            return PinStatus(PinState.NOT_SET)
        retries, power_cycle = self._call(self._client_pin().get_pin_retries)
        if retries == 0:
            return PinStatus(PinState.BLOCKED, 0)
        if power_cycle:
            return PinStatus(PinState.POWER_CYCLE_REQUIRED, retries)
        return PinStatus(PinState.OK, retries)

    def info(self) -> KeyInfo:
        info = self.refresh()
        return KeyInfo(
            aaguid=str(info.aaguid),
            versions=tuple(info.versions),
            extensions=tuple(info.extensions),
            transports=tuple(info.transports),
            pin=self.pin_status(),
            remaining_credentials=info.remaining_disc_creds,
            max_msg_size=info.max_msg_size,
            large_blobs=bool(info.options.get("largeBlobs")),
            credential_management=bool(info.options.get("credMgmt")),
            firmware_version=info.firmware_version,
        )

    def _retries(self) -> int | None:
        try:
            return self._client_pin().get_pin_retries()[0]
        except CtapError:
            return None

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except CtapError as exc:
            retries = self._retries() if exc.code in (ERR.PIN_INVALID, ERR.PIN_AUTH_BLOCKED) else None
            raise from_ctap(exc, retries) from None

    def set_pin(self, pin: str) -> None:
        """Give a new key its first PIN (setPIN, §6.5.5.5)."""
        self._check_pin_format(pin)
        self._call(self._client_pin().set_pin, pin)
        self.refresh()

    def change_pin(self, old_pin: str, new_pin: str) -> None:
        """changePIN (§6.5.5.6); a wrong old PIN costs a try."""
        self._check_pin_format(new_pin)
        self._call(self._client_pin().change_pin, old_pin, new_pin)

    @staticmethod
    def _check_pin_format(pin: str) -> None:
        from terminal.fido.errors import FidoPinPolicyError

        if len(pin) < 4 or len(pin.encode()) > 63:
            raise FidoPinPolicyError()

    def token(
        self, pin: str, permissions: ClientPin.PERMISSION, rp_id: str | None
    ) -> tuple[PinProtocol, bytes]:
        """A pinUvAuthToken with ``permissions`` (getPinUvAuthTokenUsingPinWithPermissions, §6.5.5.7)."""
        client_pin = self._client_pin()
        token = self._call(client_pin.get_pin_token, pin, permissions, rp_id)
        return client_pin.protocol, token

    def _auth(
        self, pin: str | None, permission: ClientPin.PERMISSION, rp_id: str, client_data_hash: bytes
    ) -> dict[str, Any]:
        if pin is None:
            return {}
        protocol, token = self.token(pin, permission, rp_id)
        return {
            "pin_uv_protocol": protocol.VERSION,
            "pin_uv_param": protocol.authenticate(token, client_data_hash),
        }

    # --- credentials ------------------------------------------------------------------------------

    def make_credential(
        self,
        rp: dict[str, str],
        user: dict[str, Any],
        client_data_hash: bytes,
        *,
        exclude: Sequence[bytes] = (),
        pin: str | None = None,
        discoverable: bool = True,
        cred_protect: int | None = 2,
        large_blob_key: bool = False,
    ) -> AttestationResponse:
        """authenticatorMakeCredential (§6.1): ES256 preferred, EdDSA accepted."""
        if pin is None and self.pin_set and discoverable:
            raise FidoPinRequiredError()
        extensions: dict[str, Any] = {}
        if cred_protect:
            extensions["credProtect"] = cred_protect
        if large_blob_key:
            extensions["largeBlobKey"] = True
        return self._call(
            self.ctap.make_credential,
            client_data_hash,
            rp,
            user,
            [{"type": "public-key", "alg": -7}, {"type": "public-key", "alg": -8}],
            exclude_list=[{"type": "public-key", "id": i} for i in exclude] or None,
            extensions=extensions or None,
            options={"rk": True} if discoverable else None,
            **self._auth(pin, PERMISSION.MAKE_CREDENTIAL, rp["id"], client_data_hash),
        )

    def get_assertion(
        self,
        rp_id: str,
        client_data_hash: bytes,
        *,
        allow: Sequence[bytes] = (),
        pin: str | None = None,
        pin_token: tuple[PinProtocol, bytes] | None = None,
        large_blob_key: bool = False,
        user_presence: bool = True,
    ) -> AssertionResponse:
        """authenticatorGetAssertion (§6.2); UV by ``pin`` or by a ``pin_token`` from :meth:`token`
        (several assertions on one PIN entry). ``user_presence=False`` is a silent probe (option up=false)."""
        if pin_token is not None:
            protocol, token = pin_token
            auth: dict[str, Any] = {
                "pin_uv_protocol": protocol.VERSION,
                "pin_uv_param": protocol.authenticate(token, client_data_hash),
            }
        else:
            auth = self._auth(pin, PERMISSION.GET_ASSERTION, rp_id, client_data_hash)
        return self._call(
            self.ctap.get_assertion,
            rp_id,
            client_data_hash,
            allow_list=[{"type": "public-key", "id": i} for i in allow] or None,
            extensions={"largeBlobKey": True} if large_blob_key else None,
            options=None if user_presence else {"up": False},
            **auth,
        )

    def _credman(self, pin: str) -> CredentialManagement:
        protocol, token = self.token(pin, PERMISSION.CREDENTIAL_MGMT, None)
        return CredentialManagement(self.ctap, protocol, token)

    def credentials(self, pin: str) -> list[StoredCredential]:
        """Every discoverable credential on the key (enumerateRPs + enumerateCredentials, §6.8)."""
        credman = self._credman(pin)
        out: list[StoredCredential] = []
        for rp in self._call(credman.enumerate_rps):
            rp_id = rp[CRED_RESULT.RP]["id"]
            for cred in self._call(credman.enumerate_creds, rp[CRED_RESULT.RP_ID_HASH]):
                user = cred[CRED_RESULT.USER]
                out.append(
                    StoredCredential(
                        rp_id,
                        cred[CRED_RESULT.CREDENTIAL_ID]["id"],
                        user.get("id", b""),
                        user.get("name"),
                        user.get("displayName"),
                        cred.get(CRED_RESULT.CRED_PROTECT),
                    )
                )
        return out

    def delete_credential(self, pin: str, credential_id: bytes) -> None:
        credman = self._credman(pin)
        self._call(credman.delete_cred, {"type": "public-key", "id": credential_id})

    # --- large blobs (§6.10) -------------------------------------------------------------------------

    def read_blob(self, large_blob_key: bytes) -> bytes | None:
        """The blob stored for a credential (decrypted with its largeBlobKey), or None."""
        return self._call(LargeBlobs(self.ctap).get_blob, large_blob_key)

    def write_blob(self, large_blob_key: bytes, data: bytes | None, pin: str | None = None) -> None:
        """Store (or with None delete) the blob of a credential; needs the PIN once the key has one."""
        if pin is None and self.pin_set:
            raise FidoPinRequiredError()
        if pin is not None:
            protocol, token = self.token(pin, PERMISSION.LARGE_BLOB_WRITE, None)
            blobs = LargeBlobs(self.ctap, protocol, token)
        else:
            blobs = LargeBlobs(self.ctap)
        self._call(blobs.put_blob, large_blob_key, data)

    # --- reset (§6.6) ----------------------------------------------------------------------------

    def reset(self) -> None:
        """Erase every credential and the PIN (only within 10 s of inserting the key)."""
        self._call(self.ctap.reset)
        self.refresh()


__all__ = [
    "FidoSession",
    "KeyInfo",
    "PinState",
    "PinStatus",
    "StoredCredential",
]
