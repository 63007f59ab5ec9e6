"""FIDO2 flows at the terminal: a key session (CTAP 2.1) and the relying-party checks (WebAuthn §7).

* :class:`FidoSession` wraps python-fido2's :class:`~fido2.ctap2.Ctap2` on one key: info and PIN state,
  set/change PIN, makeCredential/getAssertion with a PIN token when the key has a PIN, credential management
  and the large-blob array. CTAP failures become the typed errors of :mod:`terminal.fido.errors`.
* :class:`FidoVerifier` is the city's relying party on the terminal: it issues single-use challenges
  (:class:`terminal.verifier.nonces.NonceStore`), builds the client data, and verifies registrations and
  assertions with python-fido2's :class:`~fido2.server.Fido2Server` — attestation against the trusted test
  attestation root, assertion signatures against the credential public key (later resolved from the
  citizen's DID on chain: pass that key in ``credentials``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fido2.attestation import AttestationVerifier
from fido2.attestation.base import InvalidAttestation
from fido2.cose import ES256, CoseKey
from fido2.ctap import CtapDevice, CtapError
from fido2.ctap2 import AssertionResponse, AttestationResponse, Ctap2, Info
from fido2.ctap2.blob import LargeBlobs
from fido2.ctap2.credman import CredentialManagement
from fido2.ctap2.pin import ClientPin, PinProtocol
from fido2.server import Fido2Server
from fido2.webauthn import (
    AttestationObject,
    AttestedCredentialData,
    AuthenticatorData,
    CollectedClientData,
    PublicKeyCredentialUserEntity,
    UserVerificationRequirement,
)

from cityid.jose import b64url_decode, b64url_encode
from terminal.fido.errors import (
    ERR,
    FidoError,
    FidoInvalidPinError,
    FidoPinRequiredError,
    FidoVerificationError,
    from_ctap,
)
from terminal.verifier.nonces import NonceStore

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


@dataclass(frozen=True, slots=True)
class Registration:
    """A verified registration: what the city stores about the citizen's key."""

    credential_id: bytes
    public_key: CoseKey
    credential: AttestedCredentialData
    aaguid: str
    sign_count: int
    user_verified: bool
    attestation_trusted: bool
    large_blob_key: bytes | None

    @property
    def holder_key(self) -> bytes:
        """The credential key as an uncompressed SEC1 P-256 point (what the citizen's DID lists on chain)."""
        return sec1_point(self.public_key)


def sec1_point(key: CoseKey) -> bytes:
    """``04 || x || y`` of an ES256 COSE key (ValueError for other algorithms: the chain holds P-256 keys)."""
    if key.ALGORITHM != ES256.ALGORITHM:
        raise ValueError("only ES256 (P-256) credential keys can be published as DID keys")
    return b"\x04" + bytes(key[-2]) + bytes(key[-3])


def credential_for_holder_key(credential_id: bytes, point: bytes) -> AttestedCredentialData:
    """A credential record for ``credential_id`` whose key was resolved from the chain (SEC1 point)."""
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    return AttestedCredentialData.create(b"\0" * 16, credential_id, ES256.from_cryptography_key(public))


@dataclass(frozen=True, slots=True)
class Authentication:
    """A verified assertion."""

    credential_id: bytes
    user_handle: bytes | None
    sign_count: int
    user_verified: bool
    large_blob_key: bytes | None


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
        large_blob_key: bool = False,
    ) -> AssertionResponse:
        """authenticatorGetAssertion (§6.2) with user presence; UV by PIN when ``pin`` is given."""
        return self._call(
            self.ctap.get_assertion,
            rp_id,
            client_data_hash,
            allow_list=[{"type": "public-key", "id": i} for i in allow] or None,
            extensions={"largeBlobKey": True} if large_blob_key else None,
            **self._auth(pin, PERMISSION.GET_ASSERTION, rp_id, client_data_hash),
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


class TrustedRootVerifier(AttestationVerifier):
    """python-fido2 attestation verification anchored on the given root certificates (DER or PEM)."""

    def __init__(self, roots: Sequence[bytes]) -> None:
        super().__init__()
        self.roots = [_to_der(r) for r in roots]

    def ca_lookup(self, attestation_result: Any, auth_data: AuthenticatorData) -> bytes | None:
        if not attestation_result.trust_path:
            return None
        leaf = x509.load_der_x509_certificate(attestation_result.trust_path[-1])
        for root in self.roots:
            if x509.load_der_x509_certificate(root).subject == leaf.issuer:
                return root
        return None


def _to_der(cert: bytes) -> bytes:
    if cert.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(cert).public_bytes(serialization.Encoding.DER)
    return cert


class FidoVerifier:
    """The city's relying party at the terminal: single-use challenges and WebAuthn verification."""

    SERVICE_REGISTER = "fido-register"
    SERVICE_AUTHENTICATE = "fido-authenticate"

    def __init__(
        self,
        rp_id: str,
        rp_name: str = "Busan Metropolitan City",
        *,
        origin: str | None = None,
        trusted_roots: Sequence[bytes] = (),
        nonces: NonceStore | None = None,
    ) -> None:
        self.rp_id = rp_id
        self.origin = origin or f"https://{rp_id}"
        self.nonces = nonces if nonces is not None else NonceStore(ttl=120.0)
        self.trusted = bool(trusted_roots)
        self.server = Fido2Server(
            {"id": rp_id, "name": rp_name},
            attestation="direct" if trusted_roots else "none",
            verify_origin=lambda origin: origin == self.origin,
            verify_attestation=TrustedRootVerifier(trusted_roots) if trusted_roots else None,
        )

    def _challenge(self, service: str) -> bytes:
        return b64url_decode(self.nonces.issue(service))

    def _consume(self, challenge: bytes, service: str) -> None:
        if not self.nonces.consume(b64url_encode(challenge), service):
            raise FidoVerificationError("challenge unknown, expired or already used")

    def register(
        self,
        session: FidoSession,
        user_id: bytes,
        user_name: str,
        display_name: str | None = None,
        *,
        pin: str | None = None,
        exclude: Sequence[bytes] = (),
        large_blob: bool = False,
    ) -> Registration:
        """Register ``session``'s key for a citizen: discoverable, credProtect level 2, UV by PIN if set."""
        user = PublicKeyCredentialUserEntity(user_name, user_id, display_name or user_name)
        challenge = self._challenge(self.SERVICE_REGISTER)
        uv = UV_REQUIRED if pin is not None else UV_DISCOURAGED
        _options, state = self.server.register_begin(user, challenge=challenge, user_verification=uv)
        client_data = CollectedClientData.create(CollectedClientData.TYPE.CREATE, challenge, self.origin)
        try:
            response = session.make_credential(
                {"id": self.rp_id, "name": self.server.rp.name},
                {"id": user_id, "name": user_name, "displayName": display_name or user_name},
                client_data.hash,
                exclude=exclude,
                pin=pin,
                large_blob_key=large_blob,
            )
        except FidoError:
            self.nonces.discard(b64url_encode(challenge))
            raise
        self._consume(challenge, self.SERVICE_REGISTER)
        attestation = AttestationObject.create(response.fmt, response.auth_data, response.att_stmt)
        try:
            auth_data = self.server.register_complete(state, client_data, attestation)
        except (ValueError, InvalidAttestation) as exc:
            raise FidoVerificationError(f"registration rejected: {exc}") from None
        cred = auth_data.credential_data
        assert cred is not None
        return Registration(
            credential_id=cred.credential_id,
            public_key=cred.public_key,
            credential=cred,
            aaguid=str(cred.aaguid),
            sign_count=auth_data.counter,
            user_verified=auth_data.is_user_verified(),
            attestation_trusted=self.trusted,
            large_blob_key=response.large_blob_key,
        )

    def authenticate_holder(
        self,
        session: FidoSession,
        credential_ids: Sequence[bytes],
        holder_keys: Sequence[bytes],
        *,
        pin: str | None = None,
        last_sign_count: int | None = None,
    ) -> Authentication:
        """Authenticate a citizen whose keys come from the chain (``VerificationFacts.holder_keys``).

        The assertion must verify under one of the DID's active P-256 keys; the credential ids come from
        the citizen's enrolment record (or the key's discoverable credential when empty).
        """
        creds = [credential_for_holder_key(i, k) for i in credential_ids for k in holder_keys]
        if not credential_ids:
            raise FidoVerificationError("no credential id for this citizen")
        return self.authenticate(session, creds, pin=pin, last_sign_count=last_sign_count)

    def authenticate(
        self,
        session: FidoSession,
        credentials: Sequence[AttestedCredentialData],
        *,
        pin: str | None = None,
        last_sign_count: int | None = None,
        large_blob: bool = False,
        discoverable: bool = False,
    ) -> Authentication:
        """getAssertion on a fresh single-use challenge, verified against the credential public keys.

        ``credentials`` are the registered keys the signature is checked against; with ``discoverable`` no
        allow list is sent and the key picks its own credential for the RP (it must be among them). A
        signature counter that did not grow past ``last_sign_count`` is refused (cloned key, WebAuthn §6.1.1).
        """
        challenge = self._challenge(self.SERVICE_AUTHENTICATE)
        uv = UV_REQUIRED if pin is not None else UV_DISCOURAGED
        _options, state = self.server.authenticate_begin(
            None if discoverable else credentials, uv, challenge=challenge
        )
        client_data = CollectedClientData.create(CollectedClientData.TYPE.GET, challenge, self.origin)
        try:
            response = session.get_assertion(
                self.rp_id,
                client_data.hash,
                allow=[] if discoverable else [c.credential_id for c in credentials],
                pin=pin,
                large_blob_key=large_blob,
            )
        except FidoError:
            self.nonces.discard(b64url_encode(challenge))
            raise
        self._consume(challenge, self.SERVICE_AUTHENTICATE)
        cred_id = response.credential["id"]
        candidates = [c for c in credentials if c.credential_id == cred_id] or list(credentials)
        error: Exception | None = None
        for candidate in candidates:  # several keys for one id: keys resolved from a DID document
            try:
                self.server.authenticate_complete(
                    state, [candidate], cred_id, client_data, response.auth_data, response.signature
                )
                break
            except ValueError as exc:
                error = exc
        else:
            raise FidoVerificationError(f"assertion rejected: {error}") from None
        counter = response.auth_data.counter
        if last_sign_count is not None and counter != 0 and counter <= last_sign_count:
            raise FidoVerificationError(
                f"signature counter went from {last_sign_count} to {counter}: possible cloned key"
            )
        user = response.user or {}
        return Authentication(
            credential_id=cred_id,
            user_handle=user.get("id"),
            sign_count=counter,
            user_verified=response.auth_data.is_user_verified(),
            large_blob_key=response.large_blob_key,
        )


__all__ = [
    "Authentication",
    "FidoInvalidPinError",
    "FidoSession",
    "FidoVerifier",
    "KeyInfo",
    "PinState",
    "PinStatus",
    "Registration",
    "StoredCredential",
]
