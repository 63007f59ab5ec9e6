"""The city's relying party at the terminal (WebAuthn L2 §7): registrations and assertions of FIDO2 keys.

:class:`FidoVerifier` issues single-use challenges (:class:`terminal.verifier.nonces.NonceStore`), builds
the client data, verifies registrations with python-fido2's :class:`~fido2.server.Fido2Server`
(attestation against the trusted attestation roots) and assertions with the one WebAuthn check of
:func:`terminal.verifier.webauthn.check_assertion` — against the credential public key, later resolved from
the citizen's DID on chain (:meth:`FidoVerifier.authenticate_holder`). The key itself is driven through
:class:`terminal.fido.session.FidoSession`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from fido2.attestation.base import AttestationVerifier, InvalidAttestation
from fido2.cose import CoseKey
from fido2.server import Fido2Server
from fido2.webauthn import (
    AttestationConveyancePreference,
    AttestationObject,
    AttestedCredentialData,
    AuthenticatorAttestationResponse,
    AuthenticatorData,
    CollectedClientData,
    PublicKeyCredentialRpEntity,
    PublicKeyCredentialUserEntity,
    RegistrationResponse,
    UserVerificationRequirement,
)

from cityid.jose import b64url_decode, b64url_encode
from cityid.keys import P256PublicKey
from terminal.fido.errors import FidoError, FidoVerificationError
from terminal.fido.session import FidoSession
from terminal.verifier.nonces import NonceStore
from terminal.verifier.webauthn import AssertionCheckError, check_assertion, cose_key

logger = logging.getLogger(__name__)

UV_REQUIRED = UserVerificationRequirement.REQUIRED
UV_DISCOURAGED = UserVerificationRequirement.DISCOURAGED


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
    def p256_key(self) -> P256PublicKey:
        """The credential key as the P-256 value type (KeyFormatError for other algorithms, e.g. EdDSA:
        the chain holds P-256 keys)."""
        return P256PublicKey.from_cose(self.public_key)

    @property
    def holder_key(self) -> bytes:
        """The credential key as an uncompressed SEC1 P-256 point (what the citizen's DID lists on chain)."""
        return self.p256_key.point


def credential_for_holder_key(credential_id: bytes, point: bytes) -> AttestedCredentialData:
    """A credential record for ``credential_id`` whose key was resolved from the chain (SEC1 point)."""
    return AttestedCredentialData.create(b"\0" * 16, credential_id, cose_key(P256PublicKey.from_point(point)))


@dataclass(frozen=True, slots=True)
class Authentication:
    """A verified assertion."""

    credential_id: bytes
    user_handle: bytes | None
    sign_count: int
    user_verified: bool
    large_blob_key: bytes | None


class TrustedRootVerifier(AttestationVerifier):
    """python-fido2 attestation verification anchored on the given root certificates (DER or PEM)."""

    def __init__(self, roots: Sequence[bytes]) -> None:
        super().__init__()
        self.roots = [_to_der(r) for r in roots]

    def ca_lookup(self, attestation_result: Any, auth_data: AuthenticatorData) -> bytes | None:
        """The trusted root that signed the chain's last certificate (several batch roots may share a
        subject; a root that did not sign it is never returned, so the chain check fails)."""
        if not attestation_result.trust_path:
            return None
        leaf = x509.load_der_x509_certificate(attestation_result.trust_path[-1])
        for root in self.roots:
            cert = x509.load_der_x509_certificate(root)
            if cert.subject != leaf.issuer:
                continue
            try:
                leaf.verify_directly_issued_by(cert)
            except (ValueError, TypeError, InvalidSignature):
                continue
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
            PublicKeyCredentialRpEntity(id=rp_id, name=rp_name),
            attestation=(AttestationConveyancePreference.DIRECT if trusted_roots
                         else AttestationConveyancePreference.NONE),
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
        cred_protect: int = 2,
    ) -> Registration:
        """Register ``session``'s key for a citizen: discoverable, UV by PIN if set, ``cred_protect`` level
        (CTAP 2.1 §12.1: 2 userVerificationOptionalWithCredentialIDList, 3 userVerificationRequired)."""
        display = display_name or user_name
        user = PublicKeyCredentialUserEntity(name=user_name, id=user_id, display_name=display)
        challenge = self._challenge(self.SERVICE_REGISTER)
        uv = UV_REQUIRED if pin is not None else UV_DISCOURAGED
        _options, state = self.server.register_begin(user, challenge=challenge, user_verification=uv)
        client_data = CollectedClientData.create(CollectedClientData.TYPE.CREATE, challenge, self.origin)
        try:
            response = session.make_credential(
                {"id": self.rp_id, "name": self.server.rp.name},
                {"id": user_id, "name": user_name, "displayName": display},
                client_data.hash,
                exclude=exclude,
                pin=pin,
                cred_protect=cred_protect,
                large_blob_key=large_blob,
            )
        except FidoError:
            self.nonces.discard(b64url_encode(challenge))
            raise
        self._consume(challenge, self.SERVICE_REGISTER)
        attestation = AttestationObject.create(response.fmt, response.auth_data, response.att_stmt)
        cred_data = response.auth_data.credential_data
        if cred_data is None:
            raise FidoVerificationError("registration rejected: no attested credential data")
        registration = RegistrationResponse(
            raw_id=cred_data.credential_id,
            response=AuthenticatorAttestationResponse(
                client_data=client_data, attestation_object=attestation
            ),
        )
        try:
            auth_data = self.server.register_complete(state, registration)
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
        candidates = [c for c in credentials if c.credential_id == cred_id]
        if not candidates:
            raise FidoVerificationError("assertion rejected: unknown credential id")
        error: Exception | None = None
        for candidate in candidates:  # several keys for one id: keys resolved from a DID document
            try:
                check_assertion(
                    client_data, response.auth_data, response.signature, candidate.public_key,
                    challenge=challenge, rp_id=self.rp_id, origins=(self.origin,),
                    require_uv=pin is not None,
                )  # fmt: skip
                break
            except AssertionCheckError as exc:
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
    "FidoVerifier",
    "Registration",
    "TrustedRootVerifier",
    "credential_for_holder_key",
]
