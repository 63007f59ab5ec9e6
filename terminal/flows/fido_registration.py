"""Counter flow: register a citizen's FIDO2 security key (docs/credential-format.md §FIDO, docs/ui.md).

1. the citizen card presents every claim to the counter (card PIN) through the kiosk verification flow
   (:class:`terminal.flows.kiosk.KioskVerification`: single-use nonce, discarded after the verdict either
   way) — genuine, not revoked, the card key still on the citizen's DID;
2. the key gets the city's discoverable credential (its PIN is set if it has none; UV by PIN; credProtect
   level 3, userVerificationRequired — CTAP 2.1 §12.1 — so the credential and its largeBlobKey are unusable
   without the PIN; largeBlobKey; attestation checked against ``trusted_roots`` when given);
3. the server issues the citizen a credential bound to the key (cnf = the key's public key, published on
   the citizen's DID) and it is written to the key's largeBlob.

The claims exist only in memory during the call.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from typing import Any, Protocol

from cityid.apdu import SmartCardConnection
from cityid.credential import CLAIM_NAMES
from cityid.errors import CityIdError, NoCardError, PinError
from cityid.jose import b64url_encode
from terminal.fido.errors import FidoError
from terminal.fido.session import FidoSession
from terminal.flows.authorization import TerminalAuthorization
from terminal.flows.kiosk import CitizenCard, KioskVerification, Service
from terminal.server_client import EnrollmentResult
from terminal.sessions.citizen import CitizenSession
from terminal.verifier import Verifier
from terminal.verifier.fido import FidoVerifier, Registration
from terminal.verifier.verifier import DEFAULT_RP_ID

logger = logging.getLogger(__name__)

FIDO_SERVICE = "counter-fido-registration"
#: The claims the clerk entered at enrollment (the server derives the age flags): what the key's credential
#: is issued with.
ISSUED_CLAIMS = ("family_name", "given_name", "birthdate", "district", "busan_resident", "card_number")
#: credProtect userVerificationRequired (CTAP 2.1 §12.1).
CRED_PROTECT_UV_REQUIRED = 3


class Issuer(Protocol):
    """What the flow needs from the city server (:class:`terminal.server_client.ServerClient`)."""

    def enroll(
        self,
        idempotency_key: str,
        claims: dict[str, Any],
        card_point: bytes,
        card_serial: bytes,
        citizen_did: str | None = None,
    ) -> EnrollmentResult: ...


@dataclass(frozen=True, slots=True)
class KeyRegistration:
    """A key registered on a citizen's DID, with the credential issued to it (identifiers only)."""

    did: str
    credential_id: str  # the key's WebAuthn credential id (base64url)
    citizen_credential_id: str  # the city credential issued to the key


class CardDidNotVerifyError(CityIdError):
    """The citizen card's presentation was rejected (``failed`` names the check)."""


def citizen_claims(
    verifier: Verifier,
    card: CitizenCard,
    pin: str,
    clock: Callable[[], float] = time.time,
    authorization: TerminalAuthorization | None = None,
) -> tuple[dict[str, Any], str]:
    """The citizen's verified claims (as issued) and DID: the card presents every claim to the counter
    (after terminal authentication with ``authorization``, docs/card-profile.md §Terminal authentication)."""
    verification = KioskVerification(verifier, Service(FIDO_SERVICE, CLAIM_NAMES), clock)
    try:
        verdict = verification.run_card(card, pin, authorization)
        if not verdict.ok:
            raise CardDidNotVerifyError(
                f"the citizen card did not verify ({verdict.failed.value if verdict.failed else '?'})"
            )
        claims = {k: verdict.claims[k] for k in ISSUED_CLAIMS if k in verdict.claims}
        return claims, verdict.subject
    finally:
        verification.end()


def register_key(
    session: FidoSession,
    issuer: Issuer,
    claims: Mapping[str, Any] | Callable[[bytes], Mapping[str, Any]],
    did: str,
    key_pin: str,
    *,
    rp_id: str = DEFAULT_RP_ID,
    trusted_roots: Sequence[bytes] = (),
    idempotency_key: str | None = None,
) -> tuple[Registration, EnrollmentResult]:
    """Steps 2 and 3 on one key: the city credential, the issued citizen credential in its largeBlob.

    ``claims`` may be a function of the key's serial (8 bytes derived from the credential id). FIDO PIN
    states propagate as the shared :mod:`cityid.errors` states; other key failures as ``CityIdError``.
    """
    try:
        if not session.pin_set:
            session.set_pin(key_pin)
        rp = FidoVerifier(rp_id, trusted_roots=trusted_roots)
        user_id = hashlib.sha256(did.encode()).digest()[:16]
        reg = rp.register(
            session, user_id, did, pin=key_pin, large_blob=True, cred_protect=CRED_PROTECT_UV_REQUIRED
        )
        if reg.large_blob_key is None:
            raise FidoError("the security key gave no largeBlobKey")
        serial = hashlib.sha256(reg.credential_id).digest()[:8]
        key = idempotency_key or (
            "fido-" + hashlib.sha256(did.encode() + b"|" + reg.credential_id).hexdigest()[:40]
        )
        issued = dict(claims(serial) if callable(claims) else claims)
        result = issuer.enroll(key, issued, reg.p256_key.point, serial, did)
        session.write_blob(reg.large_blob_key, result.record.encode(), pin=key_pin)
    except PinError:
        raise
    except FidoError as exc:
        raise CityIdError(f"security key: {exc}") from None
    return reg, result


class FidoKeyRegistration:
    """Register the key for the citizen whose card presents (module docstring)."""

    def __init__(
        self,
        issuer: Issuer,
        verifier: Verifier,
        *,
        rp_id: str = DEFAULT_RP_ID,
        trusted_roots: Sequence[bytes] = (),
        clock: Callable[[], float] = time.time,
        authorization: TerminalAuthorization | None = None,
    ) -> None:
        self.issuer = issuer
        self.verifier = verifier
        self.authorization = authorization  # this counter's terminal authorization towards the card
        self.rp_id = rp_id
        self.trusted_roots = tuple(trusted_roots)  # attestation roots (PEM/DER); empty: attestation "none"
        self._clock = clock

    def run(
        self,
        open_card: Callable[[], AbstractContextManager[SmartCardConnection]],
        card_pin: str,
        open_key: Callable[[], AbstractContextManager[FidoSession]],
        key_pin: str,
    ) -> KeyRegistration:
        """The card from ``open_card()`` presents (card PIN; closed — card reset — right after); then the
        key's :class:`FidoSession` from ``open_key()`` is registered (key PIN)."""
        with open_card() as conn:
            claims, did = citizen_claims(
                self.verifier, CitizenSession(conn), card_pin, self._clock, self.authorization
            )
        try:
            with ExitStack() as stack:
                try:
                    session = stack.enter_context(open_key())
                except NoCardError:
                    raise NoCardError("the card in the key reader is not a FIDO2 security key") from None
                reg, result = register_key(
                    session, self.issuer, claims, did, key_pin,
                    rp_id=self.rp_id, trusted_roots=self.trusted_roots,
                )  # fmt: skip
        finally:
            claims.clear()
        logger.info("FIDO2 key registered, credential %s", result.credential_id)
        return KeyRegistration(did, b64url_encode(reg.credential_id), result.credential_id)
