"""authenticatorClientPIN: PIN/UV auth protocols 1 and 2, PIN retries and pinUvAuthTokens (CTAP 2.1 §6.5).

The crypto of both protocols (KDF, AES-256-CBC, HMAC) is python-fido2's own
:class:`~fido2.ctap2.pin.PinProtocolV1` / :class:`~fido2.ctap2.pin.PinProtocolV2`, used here from the
authenticator side. Persistent PIN state lives in the ``fido`` store section (see :mod:`.state`); the key
agreement key, the pinUvAuthToken and the count of consecutive wrong PINs are volatile (power cycle).

PIN storage: CTAP compares ``LEFT(SHA-256(PIN), 16)``; the state keeps only HMAC-SHA-256(device pin salt,
that value), never the PIN.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec
from fido2.ctap2.pin import ClientPin, PinProtocolV1, PinProtocolV2
from fido2.utils import bytes2int, int2bytes

from emulators.fido.ctap import ERR, ClientPinParam, Params, fail
from emulators.fido.state import FidoState

logger = logging.getLogger(__name__)

SUB = ClientPin.CMD
PERMISSION = ClientPin.PERMISSION
RESULT = ClientPin.RESULT

#: Total wrong PINs before the PIN is blocked until reset (CTAP 2.1 §6.5.2.2: maxPINRetries 8).
MAX_PIN_RETRIES = 8
#: Consecutive wrong PINs that block PIN use until the next power cycle (CTAP 2.1 §6.5.5.4).
MAX_CONSECUTIVE_FAILS = 3
MIN_PIN_LENGTH = 4
MAX_PIN_BYTES = 63
#: Longest a pinUvAuthToken stays usable (CTAP 2.1 §6.5.2.1: maxUsageTimePeriod, at most 10 minutes).
TOKEN_LIFETIME = 600.0
#: Permissions this authenticator grants (no bio enrolment, no authenticatorConfig).
SUPPORTED_PERMISSIONS = (
    PERMISSION.MAKE_CREDENTIAL | PERMISSION.GET_ASSERTION | PERMISSION.CREDENTIAL_MGMT
    | PERMISSION.LARGE_BLOB_WRITE
)

#: Both supported protocols derive from PinProtocolV1, which declares ``kdf`` (CTAP 2.1 §6.5.6, §6.5.7).
PROTOCOLS: dict[int, PinProtocolV1] = {1: PinProtocolV1(), 2: PinProtocolV2()}


def pin_protocol(version: int | None) -> PinProtocolV1:
    """The PIN/UV auth protocol object for ``version`` (CTAP2_ERR_MISSING/INVALID_PARAMETER otherwise)."""
    if version is None:
        raise fail(ERR.MISSING_PARAMETER)
    try:
        return PROTOCOLS[version]
    except KeyError:
        raise fail(ERR.INVALID_PARAMETER) from None


def _param_length(protocol: PinProtocolV1) -> int:
    return 16 if protocol.VERSION == 1 else 32


@dataclass
class PinToken:
    """The current pinUvAuthToken and its state (CTAP 2.1 §6.5.2.1)."""

    value: bytes
    permissions: int = 0
    rp_id: str | None = None
    issued: float = 0.0
    in_use: bool = False


class ClientPinHandler:
    """ClientPIN sub-commands and pinUvAuthParam verification for the other commands."""

    def __init__(self, state: FidoState, clock: Callable[[], float] = time.monotonic) -> None:
        self.state = state
        self.clock = clock
        self.consecutive_fails = 0
        self.power_on()

    # --- volatile state -----------------------------------------------------------------------------

    def power_on(self, cold: bool = True) -> None:
        """Power-up: new key agreement key and token (§6.5.5.1); a *cold* one (the key was removed and
        re-inserted, or re-plugged) also clears the consecutive-wrong-PIN count (§6.5.5.4). A warm reset
        — what pcscd does whenever a client disconnects — does not, or any host could skip the rule."""
        self._regenerate_key()
        self.token = PinToken(os.urandom(32))
        if cold:
            self.consecutive_fails = 0

    def _regenerate_key(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())

    def reset_token(self) -> None:
        """resetPinUvAuthToken(): fresh random value, no permissions (§6.5.5.1)."""
        self.token = PinToken(os.urandom(32))

    @property
    def token_live(self) -> bool:
        """A PIN was verified in this power cycle and its pinUvAuthToken is still usable (§6.5.2.1)."""
        tok = self.token
        return tok.in_use and self.clock() - tok.issued <= TOKEN_LIFETIME

    @property
    def power_cycle_required(self) -> bool:
        return self.consecutive_fails >= MAX_CONSECUTIVE_FAILS

    def cose_key(self) -> dict[int, int | bytes]:
        """The key agreement public key as a COSE_Key with alg -25 (ECDH-ES+HKDF-256), §6.5.6."""
        nums = self._key.public_key().public_numbers()
        return {1: 2, 3: -25, -1: 1, -2: int2bytes(nums.x, 32), -3: int2bytes(nums.y, 32)}

    def shared_secret(self, protocol: PinProtocolV1, peer: Params | None) -> bytes:
        """decapsulate(peerCoseKey): ECDH with our key agreement key then the protocol's KDF (§6.5.6/7)."""
        if peer is None:
            raise fail(ERR.MISSING_PARAMETER)
        try:
            kty, crv = peer.data.get(1), peer.data.get(-1)
            x, y = peer.bytes_(-2, required=True), peer.bytes_(-3, required=True)
            if kty != 2 or crv != 1 or len(x or b"") != 32 or len(y or b"") != 32:
                raise ValueError("not a P-256 EC2 key")
            pub = ec.EllipticCurvePublicNumbers(bytes2int(x), bytes2int(y), ec.SECP256R1()).public_key()
        except ValueError:
            raise fail(ERR.INVALID_PARAMETER) from None
        z = self._key.exchange(ec.ECDH(), pub)
        return protocol.kdf(z)

    @staticmethod
    def check_mac(protocol: PinProtocolV1, key: bytes, message: bytes, mac: bytes) -> bool:
        """verify(key, message, signature) of the protocol (§6.5.6 / §6.5.7)."""
        if len(mac) != _param_length(protocol):
            return False
        return hmac.compare_digest(protocol.authenticate(key, message), mac)

    @staticmethod
    def _decrypt(protocol: PinProtocolV1, key: bytes, ciphertext: bytes) -> bytes:
        iv = 16 if protocol.VERSION == 2 else 0
        if len(ciphertext) <= iv or (len(ciphertext) - iv) % 16:
            raise fail(ERR.INVALID_PARAMETER)
        return protocol.decrypt(key, ciphertext)

    # --- token checks used by the other commands ------------------------------------------------------

    def verify_token(
        self, protocol: PinProtocolV1, param: bytes, message: bytes, permission: int, rp_id: str | None
    ) -> None:
        """Check a pinUvAuthParam made with the current token and its permission/RP binding (§6.5.5.7)."""
        tok = self.token
        if not tok.in_use:
            raise fail(ERR.PIN_AUTH_INVALID)
        if self.clock() - tok.issued > TOKEN_LIFETIME:
            tok.in_use = False
            raise fail(ERR.PIN_TOKEN_EXPIRED)
        if not self.check_mac(protocol, tok.value, message, param):
            raise fail(ERR.PIN_AUTH_INVALID)
        if not tok.permissions & permission:
            raise fail(ERR.PIN_AUTH_INVALID)
        if rp_id is not None:
            if tok.rp_id is None:
                tok.rp_id = rp_id  # bind on first use (§6.5.5.7 getPinUvAuthTokenUsingPinWithPermissions)
            elif tok.rp_id != rp_id:
                raise fail(ERR.PIN_AUTH_INVALID)

    # --- sub-commands -----------------------------------------------------------------------------

    def process(self, params: Params) -> dict[int, object]:
        """Dispatch one authenticatorClientPIN request (§6.5.5)."""
        sub = params.uint(ClientPinParam.SUB_COMMAND, required=True)
        version = params.uint(ClientPinParam.PIN_UV_AUTH_PROTOCOL)
        if sub == SUB.GET_PIN_RETRIES:
            return {
                RESULT.PIN_RETRIES: self.state.pin_retries,
                RESULT.POWER_CYCLE_STATE: self.power_cycle_required,
            }
        protocol = pin_protocol(version)
        if sub == SUB.GET_KEY_AGREEMENT:
            return {RESULT.KEY_AGREEMENT: self.cose_key()}
        if sub == SUB.SET_PIN:
            self._set_pin(protocol, params)
            return {}
        if sub == SUB.CHANGE_PIN:
            self._change_pin(protocol, params)
            return {}
        if sub == SUB.GET_TOKEN_USING_PIN_LEGACY:
            if ClientPinParam.PERMISSIONS in params or ClientPinParam.RP_ID in params:
                raise fail(ERR.INVALID_PARAMETER)
            return self._get_token(
                protocol, params, PERMISSION.MAKE_CREDENTIAL | PERMISSION.GET_ASSERTION, None
            )
        if sub == SUB.GET_TOKEN_USING_PIN:
            permissions = params.uint(ClientPinParam.PERMISSIONS, required=True) or 0
            rp_id = params.text(ClientPinParam.RP_ID)
            if permissions == 0:
                raise fail(ERR.INVALID_PARAMETER)
            # ~ of the IntFlag spans the defined permissions only: known ones we do not grant (be, acfg) are
            # refused, RFU bits pass as before.
            if permissions & ~SUPPORTED_PERMISSIONS:
                raise fail(ERR.UNAUTHORIZED_PERMISSION)
            return self._get_token(protocol, params, permissions, rp_id)
        if sub in (SUB.GET_TOKEN_USING_UV, SUB.GET_UV_RETRIES):
            raise fail(ERR.INVALID_SUBCOMMAND)  # no built-in UV
        raise fail(ERR.INVALID_SUBCOMMAND)

    def _new_pin(self, protocol: PinProtocolV1, shared: bytes, new_pin_enc: bytes) -> bytes:
        """Decrypt and check a padded new PIN; return LEFT(SHA-256(PIN), 16) (§6.5.5.5 setPIN steps)."""
        expected = 64 + (16 if protocol.VERSION == 2 else 0)
        if len(new_pin_enc) != expected:
            raise fail(ERR.INVALID_PARAMETER)
        padded = self._decrypt(protocol, shared, new_pin_enc)
        pin = padded.rstrip(b"\0")
        try:
            code_points = len(pin.decode("utf-8"))
        except UnicodeDecodeError:
            raise fail(ERR.PIN_POLICY_VIOLATION) from None
        if code_points < MIN_PIN_LENGTH or len(pin) > MAX_PIN_BYTES:
            raise fail(ERR.PIN_POLICY_VIOLATION)
        return hashlib.sha256(pin).digest()[:16]

    def _set_pin(self, protocol: PinProtocolV1, params: Params) -> None:
        peer = params.map(ClientPinParam.KEY_AGREEMENT, required=True)
        param = params.bytes_(ClientPinParam.PIN_UV_AUTH_PARAM, required=True) or b""
        new_pin_enc = params.bytes_(ClientPinParam.NEW_PIN_ENC, required=True) or b""
        if self.state.pin_set:
            raise fail(ERR.NOT_ALLOWED)
        shared = self.shared_secret(protocol, peer)
        if not self.check_mac(protocol, shared, new_pin_enc, param):
            raise fail(ERR.PIN_AUTH_INVALID)
        self.state.set_pin(self._new_pin(protocol, shared, new_pin_enc), MAX_PIN_RETRIES)
        logger.info("PIN set")

    def _check_blocked(self) -> None:
        if not self.state.pin_set:
            raise fail(ERR.PIN_NOT_SET)
        if self.state.pin_retries == 0:
            raise fail(ERR.PIN_BLOCKED)
        if self.power_cycle_required:
            raise fail(ERR.PIN_AUTH_BLOCKED)

    def _verify_pin_hash(self, protocol: PinProtocolV1, shared: bytes, pin_hash_enc: bytes) -> None:
        """Decrement retries first (tear-safe), compare, then restore or report (§6.5.5.5 changePIN)."""
        if len(pin_hash_enc) != 16 + (16 if protocol.VERSION == 2 else 0):
            raise fail(ERR.INVALID_PARAMETER)  # malformed, not a guess: costs no try
        retries = self.state.pin_retries - 1
        self.state.set_pin_retries(retries)
        pin_hash = self._decrypt(protocol, shared, pin_hash_enc)
        if len(pin_hash) != 16 or not self.state.pin_matches(pin_hash):
            self._regenerate_key()
            self.consecutive_fails += 1
            logger.info("wrong PIN (%d tries left)", retries)
            if retries == 0:
                raise fail(ERR.PIN_BLOCKED)
            if self.power_cycle_required:
                raise fail(ERR.PIN_AUTH_BLOCKED)
            raise fail(ERR.PIN_INVALID)
        self.consecutive_fails = 0
        self.state.set_pin_retries(MAX_PIN_RETRIES)

    def _change_pin(self, protocol: PinProtocolV1, params: Params) -> None:
        peer = params.map(ClientPinParam.KEY_AGREEMENT, required=True)
        param = params.bytes_(ClientPinParam.PIN_UV_AUTH_PARAM, required=True) or b""
        new_pin_enc = params.bytes_(ClientPinParam.NEW_PIN_ENC, required=True) or b""
        pin_hash_enc = params.bytes_(ClientPinParam.PIN_HASH_ENC, required=True) or b""
        self._check_blocked()
        shared = self.shared_secret(protocol, peer)
        if not self.check_mac(protocol, shared, new_pin_enc + pin_hash_enc, param):
            raise fail(ERR.PIN_AUTH_INVALID)
        self._verify_pin_hash(protocol, shared, pin_hash_enc)
        self.state.set_pin(self._new_pin(protocol, shared, new_pin_enc), MAX_PIN_RETRIES)
        self.reset_token()
        logger.info("PIN changed")

    def _get_token(
        self, protocol: PinProtocolV1, params: Params, permissions: int, rp_id: str | None
    ) -> dict[int, object]:
        peer = params.map(ClientPinParam.KEY_AGREEMENT, required=True)
        pin_hash_enc = params.bytes_(ClientPinParam.PIN_HASH_ENC, required=True) or b""
        self._check_blocked()
        shared = self.shared_secret(protocol, peer)
        self._verify_pin_hash(protocol, shared, pin_hash_enc)
        self.reset_token()
        self.token = PinToken(self.token.value, permissions, rp_id, self.clock(), True)
        return {RESULT.PIN_UV_TOKEN: protocol.encrypt(shared, self.token.value)}
