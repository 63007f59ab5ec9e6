"""The CTAP 2.1 authenticator core: ``process(request) -> response`` independent of any transport.

A request is the command byte followed by its CBOR parameter map; the response is a status byte followed
by the CBOR response map (CTAP 2.1 §8.1). Implemented: authenticatorMakeCredential (§6.1),
authenticatorGetAssertion (§6.2), authenticatorGetNextAssertion (§6.3), authenticatorGetInfo (§6.4),
authenticatorClientPIN (§6.5, :mod:`.clientpin`), authenticatorReset (§6.6), authenticatorCredentialManagement
(§6.8, :mod:`.credmgmt`, also the 0x41 preview command), authenticatorSelection (§6.9),
authenticatorLargeBlobs (§6.10, :mod:`.largeblobs`); extensions credProtect, hmac-secret and largeBlobKey
(§12). Every failure is a CTAP status byte, never an exception out of :meth:`Authenticator.process`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fido2.ctap import CtapError
from fido2.webauthn import AttestedCredentialData, AuthenticatorData

from emulators.card.store import CardStore
from emulators.fido.attestation import AttestationBatch, bind, default_batch, stored_batch_dir
from emulators.fido.clientpin import PERMISSION, ClientPinHandler, pin_protocol
from emulators.fido.credmgmt import CredentialManagement
from emulators.fido.credstore import (
    SUPPORTED_ALGS,
    Alg,
    Credential,
    CredentialList,
    CredKind,
    CredProtect,
    KeyVault,
)
from emulators.fido.ctap import (
    CMD,
    ERR,
    GetAssertionParam,
    GetAssertionResult,
    InfoKey,
    MakeCredentialParam,
    MakeCredentialResult,
    Params,
    encode_cbor,
    fail,
)
from emulators.fido.largeblobs import LargeBlobHandler
from emulators.fido.presence import Keepalive, UserPresence
from emulators.fido.state import EMPTY_BLOB_ARRAY, FidoState

logger = logging.getLogger(__name__)

FLAG = AuthenticatorData.FLAG

#: Largest request/response message (CTAP 2.1 §6.4 maxMsgSize). Fits one CTAPHID message (7609 bytes).
MAX_MSG_SIZE = 3072
MAX_CREDS_IN_LIST = 8
MAX_LARGE_BLOB = 4096
#: authenticatorReset only this long after power-up (CTAP 2.1 §6.6: "within 10 seconds").
RESET_WINDOW = 10.0
#: getNextAssertion / credential-management "next" state expires (CTAP 2.1 §6.3: 30 seconds).
NEXT_TIMEOUT = 30.0
FIRMWARE_VERSION = 0x0100
EXTENSIONS = ["credProtect", "hmac-secret", "largeBlobKey"]


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@dataclass
class _PendingAssertions:
    """State kept for authenticatorGetNextAssertion (CTAP 2.1 §6.2.2 step 13)."""

    creds: list[Credential]
    client_data_hash: bytes
    flags: FLAG
    uv: bool
    started: float
    hmac_input: tuple[Any, bytes, bytes] | None = None
    large_blob_key: bool = False


class Authenticator:
    """One virtual FIDO2 authenticator on a :class:`CardStore` (the state file, or memory)."""

    def __init__(
        self,
        store: CardStore,
        up: UserPresence | None = None,
        clock: Callable[[], float] = time.monotonic,
        transports: tuple[str, ...] = ("nfc", "usb"),
        attestation: AttestationBatch | None = None,
    ) -> None:
        self.store = store
        self.up = up or UserPresence()
        self.clock = clock
        self.transports = list(transports)
        self.state = FidoState(store)
        self.attestation = attestation or self._stored_batch()
        bind(store, self.attestation)
        self.vault = KeyVault(self.state)
        self.creds = CredentialList(self.state, self.vault)
        self.pin = ClientPinHandler(self.state, clock)
        self.credmgmt = CredentialManagement(self)
        self.large_blobs = LargeBlobHandler(self, MAX_MSG_SIZE - 64, MAX_LARGE_BLOB)
        self._lock = threading.RLock()
        self._cancel: threading.Event | None = None
        self._keepalive: Keepalive | None = None
        self._pending: _PendingAssertions | None = None
        self.powered_at = clock()
        self._handlers: dict[int, Callable[[Params], Mapping[int, Any] | None]] = {
            CMD.MAKE_CREDENTIAL: self._make_credential,
            CMD.GET_ASSERTION: self._get_assertion,
            CMD.GET_NEXT_ASSERTION: self._get_next_assertion,
            CMD.GET_INFO: lambda _p: self.info(),
            CMD.CLIENT_PIN: self.pin.process,
            CMD.RESET: self._reset,
            CMD.CREDENTIAL_MGMT: self.credmgmt.process,
            CMD.CREDENTIAL_MGMT_PRE: self.credmgmt.process,
            CMD.SELECTION: self._selection,
            CMD.LARGE_BLOBS: self.large_blobs.process,
        }

    def _stored_batch(self) -> AttestationBatch:
        """The batch the state names (if its directory still exists), else this process's default batch."""
        directory = stored_batch_dir(self.store)
        if directory is not None and directory.is_dir():
            return AttestationBatch.open(directory, self.state.aaguid)
        return default_batch(self.state.aaguid)

    # --- lifecycle ----------------------------------------------------------------------------------

    def power_on(self, cold: bool = True) -> None:
        """Power-up: volatile state cleared, reset window opens (CTAP 2.1 §6.5.5.1, §6.6).

        ``cold=False`` is a reset while the key stayed in the reader (PC/SC warm reset or host power-down):
        tokens and key agreement key are new, but the consecutive-wrong-PIN block stays (see
        :meth:`ClientPinHandler.power_on`).
        """
        with self._lock:
            self.pin.power_on(cold)
            self._pending = None
            self.credmgmt.clear()
            self.large_blobs.clear()
            self.powered_at = self.clock()

    # --- dispatcher ---------------------------------------------------------------------------------

    def process(
        self,
        request: bytes,
        cancel: threading.Event | None = None,
        keepalive: Keepalive | None = None,
    ) -> bytes:
        """One CTAP2 request (command byte + CBOR) → status byte + CBOR. Never raises."""
        if not request:
            return bytes((ERR.INVALID_LENGTH,))
        if len(request) > MAX_MSG_SIZE:
            return bytes((ERR.INVALID_LENGTH,))
        cmd = request[0]
        with self._lock:
            self._cancel, self._keepalive = cancel, keepalive
            try:
                handler = self._handlers.get(cmd)
                if handler is None:
                    raise fail(ERR.INVALID_COMMAND)
                if cmd != CMD.GET_NEXT_ASSERTION:
                    self._pending = None
                if cmd not in (CMD.CREDENTIAL_MGMT, CMD.CREDENTIAL_MGMT_PRE):
                    self.credmgmt.clear()
                params = Params.decode(request[1:])
                result = handler(params)
                logger.debug("CTAP command 0x%02x ok", cmd)
                return b"\x00" + (encode_cbor(result) if result else b"")
            except CtapError as exc:
                logger.debug("CTAP command 0x%02x failed: %s", cmd, exc.code)
                return bytes((int(exc.code),))
            except Exception:
                logger.exception("CTAP command 0x%02x crashed", cmd)
                return bytes((ERR.OTHER,))
            finally:
                self._cancel = self._keepalive = None

    def _user_presence(self) -> None:
        self.up.request(self._cancel, self._keepalive)

    # --- authenticatorGetInfo (§6.4) ----------------------------------------------------------------

    def info(self) -> dict[int, Any]:
        options = {
            "rk": True,
            "up": True,
            "plat": False,
            "clientPin": self.state.pin_set,
            "credMgmt": True,
            "largeBlobs": True,
            "pinUvAuthToken": True,
            # alwaysUv once a PIN exists (CTAP 2.1 §6.4): no credential is made or used without the PIN
            "alwaysUv": self.always_uv,
            "makeCredUvNotRqd": not self.always_uv,
        }
        info: dict[int, Any] = {
            InfoKey.VERSIONS: ["FIDO_2_0", "FIDO_2_1"],
            InfoKey.EXTENSIONS: EXTENSIONS,
            InfoKey.AAGUID: self.state.aaguid,
            InfoKey.OPTIONS: options,
            InfoKey.MAX_MSG_SIZE: MAX_MSG_SIZE,
            InfoKey.PIN_UV_AUTH_PROTOCOLS: [2, 1],
            InfoKey.MAX_CREDENTIAL_COUNT_IN_LIST: MAX_CREDS_IN_LIST,
            InfoKey.MAX_CREDENTIAL_ID_LENGTH: 64,
            InfoKey.TRANSPORTS: self.transports,
            InfoKey.ALGORITHMS: [{"alg": int(a), "type": "public-key"} for a in SUPPORTED_ALGS],
            InfoKey.MAX_SERIALIZED_LARGE_BLOB_ARRAY: MAX_LARGE_BLOB,
            InfoKey.FORCE_PIN_CHANGE: False,
            InfoKey.MIN_PIN_LENGTH: 4,
            InfoKey.FIRMWARE_VERSION: FIRMWARE_VERSION,
        }
        if not self.always_uv:
            # How many discoverable credentials a key holds differs per key and is answered to anyone:
            # once a PIN protects the key, only credential management (with the PIN) tells it (§6.8.2).
            info[InfoKey.REMAINING_DISCOVERABLE_CREDENTIALS] = self.creds.remaining()
        return info

    @property
    def always_uv(self) -> bool:
        """alwaysUv (CTAP 2.1 §6.4 options): on as soon as a PIN is set — makeCredential and getAssertion
        then need a pinUvAuthParam (CTAP2_ERR_PUAT_REQUIRED before anything else is looked at), so before
        the PIN a host learns nothing of the key's credentials, counter or attestation (issue 12)."""
        return self.state.pin_set

    def large_blob_array_for_reading(self) -> bytes:
        """The serialized large-blob array as authenticatorLargeBlobs(get) sees it (§6.10.2).

        Deviation: CTAP 2.1 lets anyone read the array. Its ciphertext is the same on every read and
        unique to the key, so any host could recognise the key by it. Once a PIN is set, the array is
        answered only while a pinUvAuthToken of this power cycle is live; before, the reader sees the
        empty array (what a fresh key answers) — without the PIN no largeBlobKey could decrypt it anyway.
        """
        if self.always_uv and not self.pin.token_live:
            return EMPTY_BLOB_ARRAY
        return self.state.large_blob_array()

    # --- helpers -------------------------------------------------------------------------------------

    def _lookup(self, cred_id: bytes, rp_id_hash: bytes) -> Credential | None:
        """Resolve an allow/exclude-list id: ours for this RP, and still stored if discoverable."""
        cred = self.vault.parse(cred_id, rp_id_hash)
        if cred is None or not cred.discoverable:
            return cred
        return self.creds.find(cred_id)

    def _empty_pin_auth(self) -> None:
        """A zero-length pinUvAuthParam: touch, then tell whether a PIN exists (CTAP 2.1 §6.1.2 step 1)."""
        self._user_presence()
        raise fail(ERR.PIN_INVALID if self.state.pin_set else ERR.PIN_NOT_SET)

    # --- authenticatorMakeCredential (§6.1) ---------------------------------------------------------

    def _make_credential(self, p: Params) -> dict[int, Any]:
        P = MakeCredentialParam  # noqa: N806
        cdh = p.bytes_(P.CLIENT_DATA_HASH, required=True) or b""
        rp = p.map(P.RP, required=True)
        user = p.map(P.USER, required=True)
        key_params = p.list_(P.PUB_KEY_CRED_PARAMS, required=True) or []
        assert rp is not None and user is not None
        rp_id = rp.text("id", required=True) or ""
        rp_name = rp.text("name")
        user_id = user.bytes_("id", required=True) or b""
        user_name, display_name = user.text("name"), user.text("displayName")
        alg: Alg | None = None
        for item in key_params:
            desc = Params(item) if isinstance(item, Mapping) else None
            if desc is None:
                raise fail(ERR.CBOR_UNEXPECTED_TYPE)
            kind, value = desc.text("type", required=True), desc.int_("alg", required=True)
            if alg is None and kind == "public-key" and value in SUPPORTED_ALGS:
                alg = Alg(value)
        exclude = p.descriptors(P.EXCLUDE_LIST)
        extensions = p.raw_map(P.EXTENSIONS) or {}
        options = p.options(P.OPTIONS)
        pin_param = p.bytes_(P.PIN_UV_AUTH_PARAM)
        version = p.uint(P.PIN_UV_AUTH_PROTOCOL)
        if p.uint(P.ENTERPRISE_ATTESTATION) is not None:
            raise fail(ERR.INVALID_PARAMETER)  # no enterprise attestation (§6.1.2 step 9)
        if pin_param is not None and not pin_param:
            self._empty_pin_auth()
        protocol = pin_protocol(version) if pin_param is not None else None
        if pin_param is None and self.always_uv:
            raise fail(ERR.PUAT_REQUIRED)  # alwaysUv: before the exclude list or any other lookup
        if alg is None:
            raise fail(ERR.UNSUPPORTED_ALGORITHM)
        if len(user_id) > 64 or len(cdh) != 32:
            raise fail(ERR.INVALID_LENGTH)
        rk = options.get("rk", False)
        if options.get("up") is False:
            raise fail(ERR.INVALID_OPTION)
        if options.get("uv") and pin_param is None:
            raise fail(ERR.INVALID_OPTION)  # no built-in user verification
        uv = False
        if protocol is not None and pin_param is not None:
            self.pin.verify_token(protocol, pin_param, cdh, PERMISSION.MAKE_CREDENTIAL, rp_id)
            uv = True
        rp_id_hash = sha256(rp_id.encode())
        for cred_id in exclude:
            excluded = self._lookup(cred_id, rp_id_hash)
            if excluded is not None and (excluded.cred_protect != CredProtect.UV_REQUIRED or uv):
                self._user_presence()
                raise fail(ERR.CREDENTIAL_EXCLUDED)

        cred_protect = CredProtect.UV_OPTIONAL
        ext_out: dict[str, Any] = {}
        if "credProtect" in extensions:
            level = extensions["credProtect"]
            if not isinstance(level, int) or isinstance(level, bool):
                raise fail(ERR.CBOR_UNEXPECTED_TYPE)
            if level not in (1, 2, 3):
                raise fail(ERR.INVALID_PARAMETER)
            cred_protect = CredProtect(level)
            ext_out["credProtect"] = level
        hmac_secret = extensions.get("hmac-secret", False)
        large_blob_key = extensions.get("largeBlobKey", False)
        if not isinstance(hmac_secret, bool) or not isinstance(large_blob_key, bool):
            raise fail(ERR.CBOR_UNEXPECTED_TYPE)
        if "largeBlobKey" in extensions and (not large_blob_key or not rk):
            raise fail(ERR.INVALID_OPTION)  # §12.3: only true, only for discoverable credentials
        if hmac_secret:
            ext_out["hmac-secret"] = True
        if rk and self.creds.remaining() == 0:
            same_user = [c for c in self.creds.for_rp(rp_id_hash) if (c.user or {}).get("id") == user_id]
            if not same_user:
                raise fail(ERR.KEY_STORE_FULL)

        self._user_presence()

        kind = CredKind.DISCOVERABLE if rk else CredKind.SERVER_SIDE
        cred_id = self.vault.new_id(rp_id_hash, kind, alg, cred_protect, bool(hmac_secret))
        user_entity: dict[str, Any] = {"id": user_id}
        if user_name is not None:
            user_entity["name"] = user_name
        if display_name is not None:
            user_entity["displayName"] = display_name
        counter = self.state.next_counter()
        cred = Credential(
            cred_id, rp_id_hash, alg, cred_protect, bool(hmac_secret), rk, rp_id, rp_name, user_entity,
            os.urandom(32) if large_blob_key else None, counter,
        )
        cred_data = AttestedCredentialData.create(self.state.aaguid, cred_id, self.vault.public_key(cred))
        flags = FLAG.UP | FLAG.AT | (FLAG.UV if uv else 0) | (FLAG.ED if ext_out else 0)
        auth_data = AuthenticatorData.create(rp_id_hash, flags, counter, cred_data, ext_out or None)
        att_stmt = self.attestation.statement(auth_data, cdh)
        if rk:
            self.creds.store(cred)  # the one write that makes the credential exist
        logger.info("credential created (%s, %s)", "discoverable" if rk else "server-side", alg.name)
        result: dict[int, Any] = {
            MakeCredentialResult.FMT: "packed",
            MakeCredentialResult.AUTH_DATA: bytes(auth_data),
            MakeCredentialResult.ATT_STMT: att_stmt,
        }
        if cred.large_blob_key:
            result[MakeCredentialResult.LARGE_BLOB_KEY] = cred.large_blob_key
        return result

    # --- authenticatorGetAssertion (§6.2) -----------------------------------------------------------

    def _get_assertion(self, p: Params) -> dict[int, Any]:
        P = GetAssertionParam  # noqa: N806
        rp_id = p.text(P.RP_ID, required=True) or ""
        cdh = p.bytes_(P.CLIENT_DATA_HASH, required=True) or b""
        allow = p.descriptors(P.ALLOW_LIST) if P.ALLOW_LIST in p else None
        extensions = p.raw_map(P.EXTENSIONS) or {}
        options = p.options(P.OPTIONS)
        pin_param = p.bytes_(P.PIN_UV_AUTH_PARAM)
        version = p.uint(P.PIN_UV_AUTH_PROTOCOL)
        if pin_param is not None and not pin_param:
            self._empty_pin_auth()
        protocol = pin_protocol(version) if pin_param is not None else None
        if pin_param is None and self.always_uv:
            raise fail(ERR.PUAT_REQUIRED)  # alwaysUv: the same answer whatever the allow list holds
        if len(cdh) != 32:
            raise fail(ERR.INVALID_LENGTH)
        if "rk" in options:
            raise fail(ERR.UNSUPPORTED_OPTION)
        up = options.get("up", True)
        if options.get("uv") and pin_param is None:
            raise fail(ERR.INVALID_OPTION)
        uv = False
        if protocol is not None and pin_param is not None:
            self.pin.verify_token(protocol, pin_param, cdh, PERMISSION.GET_ASSERTION, rp_id)
            uv = True
        rp_id_hash = sha256(rp_id.encode())

        hmac_input = self._hmac_secret_input(extensions.get("hmac-secret"))
        want_lbk = extensions.get("largeBlobKey")
        if want_lbk is not None and want_lbk is not True:
            raise fail(ERR.INVALID_OPTION)

        if allow:
            found = [c for c in (self._lookup(i, rp_id_hash) for i in allow) if c is not None]
            creds = [c for c in found if c.cred_protect != CredProtect.UV_REQUIRED or uv][:1]
        else:
            creds = [
                c for c in self.creds.for_rp(rp_id_hash) if c.cred_protect == CredProtect.UV_OPTIONAL or uv
            ]
        if not creds:
            raise fail(ERR.NO_CREDENTIALS)
        if up:
            self._user_presence()
        flags = (FLAG.UP if up else FLAG(0)) | (FLAG.UV if uv else FLAG(0))
        pending = _PendingAssertions(creds[1:], cdh, flags, uv, self.clock(), hmac_input, bool(want_lbk))
        result = self._assertion(creds[0], pending)
        if len(creds) > 1:
            result[GetAssertionResult.NUMBER_OF_CREDENTIALS] = len(creds)
            self._pending = pending
        return result

    def _get_next_assertion(self, _p: Params) -> dict[int, Any]:
        pending = self._pending
        if pending is None or not pending.creds or self.clock() - pending.started > NEXT_TIMEOUT:
            self._pending = None
            raise fail(ERR.NOT_ALLOWED)
        cred = pending.creds.pop(0)
        pending.started = self.clock()
        return self._assertion(cred, pending)

    def _hmac_secret_input(self, value: Any) -> tuple[Any, bytes, bytes] | None:
        """Check the hmac-secret input and decrypt its salts (CTAP 2.1 §12.5)."""
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise fail(ERR.CBOR_UNEXPECTED_TYPE)
        hp = Params(value)
        peer = hp.map(1, required=True)
        salt_enc = hp.bytes_(2, required=True) or b""
        salt_auth = hp.bytes_(3, required=True) or b""
        protocol = pin_protocol(hp.uint(4) or 1)
        shared = self.pin.shared_secret(protocol, peer)
        if not self.pin.check_mac(protocol, shared, salt_enc, salt_auth):
            raise fail(ERR.PIN_AUTH_INVALID)
        iv = 16 if protocol.VERSION == 2 else 0
        if len(salt_enc) - iv not in (32, 64):
            raise fail(ERR.INVALID_LENGTH)
        salts = protocol.decrypt(shared, salt_enc)
        return protocol, shared, salts

    def _assertion(self, cred: Credential, pending: _PendingAssertions) -> dict[int, Any]:
        ext_out: dict[str, Any] = {}
        if pending.hmac_input is not None and cred.hmac_secret:
            protocol, shared, salts = pending.hmac_input
            secret = self.vault.cred_random(cred, pending.uv)
            out = b"".join(
                hmac.new(secret, salts[i : i + 32], hashlib.sha256).digest() for i in range(0, len(salts), 32)
            )
            ext_out["hmac-secret"] = protocol.encrypt(shared, out)
        flags = pending.flags | (FLAG.ED if ext_out else FLAG(0))
        counter = self.state.next_counter()
        auth_data = AuthenticatorData.create(cred.rp_id_hash, flags, counter, b"", ext_out or None)
        signature = self.vault.sign(cred, bytes(auth_data) + pending.client_data_hash)
        result: dict[int, Any] = {
            GetAssertionResult.CREDENTIAL: {"id": cred.cred_id, "type": "public-key"},
            GetAssertionResult.AUTH_DATA: bytes(auth_data),
            GetAssertionResult.SIGNATURE: signature,
        }
        if cred.discoverable and cred.user:
            user = cred.user if pending.uv else {"id": cred.user["id"]}
            result[GetAssertionResult.USER] = user
        if pending.large_blob_key and cred.large_blob_key:
            result[GetAssertionResult.LARGE_BLOB_KEY] = cred.large_blob_key
        return result

    # --- authenticatorReset (§6.6) and authenticatorSelection (§6.9) ---------------------------------

    def _reset(self, _p: Params) -> None:
        if self.clock() - self.powered_at > RESET_WINDOW:
            raise fail(ERR.NOT_ALLOWED)
        self._user_presence()
        self.state.wipe()
        self.pin.power_on()
        self.large_blobs.clear()
        logger.warning("authenticator reset: all credentials and the PIN erased")
        return None

    def _selection(self, _p: Params) -> None:
        self._user_presence()
        return None
