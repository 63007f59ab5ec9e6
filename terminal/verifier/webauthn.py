"""The one WebAuthn assertion check of the terminal (WebAuthn L2 §7.2 steps 11–21), on python-fido2's types.

Used by the presentation verifier (the assertion that binds a FIDO presentation, docs/credential-format.md
§FIDO) and by the relying party at the counter (:class:`terminal.verifier.fido.FidoVerifier`). The checks
run in a fixed order and the first failure is raised as :class:`AssertionCheckError` naming it, so each
caller maps it to its own verdict or error.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum

from fido2.cose import ES256, CoseKey
from fido2.webauthn import AuthenticatorData, CollectedClientData

from cityid.errors import CityIdError
from cityid.jose import JoseError, json_loads
from cityid.keys import P256PublicKey


class AssertionCheck(StrEnum):
    """The step of WebAuthn L2 §7.2 that failed."""

    FORMAT = "format"  # clientDataJSON / authenticatorData do not parse
    TYPE = "type"  # step 11: type is not webauthn.get
    RELYING_PARTY = "relying-party"  # steps 13 and 15: origin and rpIdHash
    CHALLENGE = "challenge"  # step 12
    SIGNATURE = "signature"  # step 20
    USER_PRESENCE = "user-presence"  # step 16
    USER_VERIFICATION = "user-verification"  # step 17


class AssertionCheckError(CityIdError):
    """An assertion failed ``check`` (``str(self)`` explains, without personal data)."""

    def __init__(self, check: AssertionCheck, detail: str) -> None:
        self.check = check
        super().__init__(detail)


@dataclass(frozen=True, slots=True)
class CheckedAssertion:
    """A verified assertion's authenticator data and client data."""

    auth_data: AuthenticatorData
    client_data: CollectedClientData

    @property
    def user_verified(self) -> bool:
        return self.auth_data.is_user_verified()

    @property
    def sign_count(self) -> int:
        return self.auth_data.counter


def parse_client_data(client_data_json: bytes) -> CollectedClientData:
    """``clientDataJSON`` as python-fido2's type; strict, size-bounded JSON first (RFC 8259)."""
    try:
        value = json_loads(client_data_json)
    except JoseError as exc:
        raise AssertionCheckError(AssertionCheck.FORMAT, f"clientDataJSON: {exc}") from None
    if not isinstance(value, dict) or not all(isinstance(value.get(k), str) for k in ("type", "origin")):
        raise AssertionCheckError(AssertionCheck.FORMAT, "malformed clientDataJSON")
    try:
        return CollectedClientData(bytes(client_data_json))
    except (KeyError, ValueError, TypeError) as exc:
        raise AssertionCheckError(AssertionCheck.FORMAT, f"malformed clientDataJSON ({exc})") from None


def parse_auth_data(data: bytes) -> AuthenticatorData:
    """``authenticatorData`` (WebAuthn L2 §6.1) as python-fido2's type."""
    if len(data) < 37:
        raise AssertionCheckError(AssertionCheck.FORMAT, "authenticatorData shorter than 37 bytes")
    try:
        return AuthenticatorData(bytes(data))
    except Exception as exc:  # ValueError, struct.error, CBOR errors of a hostile extension block
        raise AssertionCheckError(AssertionCheck.FORMAT, f"malformed authenticatorData ({exc})") from None


def cose_key(key: P256PublicKey | CoseKey) -> CoseKey:
    """The COSE key a signature is checked with (a P-256 key resolved from a DID becomes ES256)."""
    return ES256(key.cose()) if isinstance(key, P256PublicKey) else key


def check_assertion(
    client_data: CollectedClientData,
    auth_data: AuthenticatorData,
    signature: bytes,
    public_key: P256PublicKey | CoseKey,
    *,
    challenge: bytes,
    rp_id: str,
    origins: Collection[str],
    require_uv: bool,
) -> CheckedAssertion:
    """WebAuthn L2 §7.2: type, relying party (origin and rpIdHash), challenge, signature, UP, UV."""
    if client_data.type != CollectedClientData.TYPE.GET.value:
        raise AssertionCheckError(AssertionCheck.TYPE, "clientData type is not webauthn.get")
    if client_data.origin not in origins or auth_data.rp_id_hash != hashlib.sha256(rp_id.encode()).digest():
        raise AssertionCheckError(
            AssertionCheck.RELYING_PARTY, "assertion made for another relying party or origin"
        )
    if client_data.challenge != challenge:
        raise AssertionCheckError(AssertionCheck.CHALLENGE, "the challenge is not the one issued")
    try:
        cose_key(public_key).verify(bytes(auth_data) + client_data.hash, bytes(signature))
    except Exception:  # InvalidSignature, or a signature that is not DER at all
        raise AssertionCheckError(AssertionCheck.SIGNATURE, "assertion signature does not verify") from None
    if not auth_data.is_user_present():
        raise AssertionCheckError(AssertionCheck.USER_PRESENCE, "user presence flag not set")
    if require_uv and not auth_data.is_user_verified():
        raise AssertionCheckError(AssertionCheck.USER_VERIFICATION, "user verification flag not set")
    return CheckedAssertion(auth_data, client_data)
