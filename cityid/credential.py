"""The Busan citizen credential: an SD-JWT VC (RFC 9901 + IETF SD-JWT VC draft), and its FIDO binding.

Normative description: ``docs/credential-format.md``. This module is its executable half, imported by the
issuer (server), the card personalization flow and the kiosk verifier.

- Issuer JWT header ``{"alg":"ES256","typ":"dc+sd-jwt"[,"kid"]}``; payload with the always-visible claims
  ``iss`` (issuer DID), ``sub`` (pseudonymous citizen DID), ``iat``, ``exp``, ``vct``, ``cnf.jwk`` (holder
  P-256 key: the card's 9A key or a FIDO credential key) and ``status`` (on-chain status list reference),
  plus ``_sd``/``_sd_alg`` for the selectively disclosable personal claims in :data:`CLAIM_NAMES`.
- Card presentations end in an RFC 9901 KB-JWT. FIDO presentations end in a *WebAuthn key-binding JWT*
  (:data:`WEBAUTHN_KB_TYP`): the KB claims are committed to by the WebAuthn challenge
  (:func:`assertion_challenge`) and the signature is the authenticator's assertion signature.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import date
from typing import Any, Protocol

from cityid.chain.view import StatusRef
from cityid.citizen import MAX_CLAIMS, CredentialRecord, StoredDisclosure
from cityid.jose import (
    JoseError,
    attach_signature,
    b64url_encode,
    b64url_json,
    der_to_raw_p256,
    es256_sign,
    json_dumps,
    jwk_from_point,
    signing_input,
)
from cityid.sdjwt import (
    SD_ALG,
    Disclosure,
    assemble,
    create_disclosure,
    kb_jwt_payload,
    presentation_without_kb,
    sd_hash,
)

#: The credential type (SD-JWT VC ``vct``), a URL under the city's domain (docs/credential-format.md §vct).
VCT = "https://id.busan.go.kr/vct/citizen/v1"
#: SD-JWT VC media type / JWS ``typ`` (SD-JWT VC draft §3.2.1).
SD_JWT_VC_TYP = "dc+sd-jwt"
#: ``typ`` of the project's WebAuthn-assertion key-binding JWT (docs/credential-format.md §FIDO).
WEBAUTHN_KB_TYP = "webauthn-kb+jwt"
#: Default validity of a citizen credential (the card itself is valid ten years; credentials are re-issued).
DEFAULT_VALIDITY_SECONDS = 2 * 365 * 24 * 3600


class CredentialError(JoseError):
    """Invalid claims or arguments when issuing a credential."""


# Claim names (all selectively disclosable). Names from OpenID Connect Core §5.1 where one exists.
FAMILY_NAME = "family_name"
GIVEN_NAME = "given_name"
BIRTHDATE = "birthdate"  # ISO 8601 YYYY-MM-DD (OIDC Core §5.1)
DISTRICT = "district"  # gu / gun of Busan, romanized ("Haeundae-gu"); docs list the 16 values
BUSAN_RESIDENT = "busan_resident"  # bool: registered resident of Busan at issuance
AGE_OVER_19 = "age_over_19"  # bool, Korean age of majority (Civil Act art. 4), as of iat
AGE_OVER_65 = "age_over_65"  # bool, senior benefits threshold, as of iat
CARD_NUMBER = "card_number"  # the card's printed number (not the resident registration number)

CLAIM_NAMES: tuple[str, ...] = (
    FAMILY_NAME,
    GIVEN_NAME,
    BIRTHDATE,
    DISTRICT,
    BUSAN_RESIDENT,
    AGE_OVER_19,
    AGE_OVER_65,
    CARD_NUMBER,
)

#: Busan's 15 gu and 1 gun (romanization of the Ministry of the Interior).
DISTRICTS: frozenset[str] = frozenset(
    {
        "Jung-gu", "Seo-gu", "Dong-gu", "Yeongdo-gu", "Busanjin-gu", "Dongnae-gu", "Nam-gu", "Buk-gu",
        "Haeundae-gu", "Saha-gu", "Geumjeong-gu", "Gangseo-gu", "Yeonje-gu", "Suyeong-gu", "Sasang-gu",
        "Gijang-gun",
    }
)  # fmt: skip


def _age_at(birthdate: date, on: date) -> int:
    return on.year - birthdate.year - ((on.month, on.day) < (birthdate.month, birthdate.day))


@dataclass(frozen=True, slots=True)
class CitizenClaims:
    """The personal claims of one citizen (they live on the card and in the issuer's database only)."""

    family_name: str
    given_name: str
    birthdate: str
    district: str
    busan_resident: bool
    age_over_19: bool
    age_over_65: bool
    card_number: str

    @classmethod
    def derive(
        cls,
        family_name: str,
        given_name: str,
        birthdate: date,
        district: str,
        busan_resident: bool,
        card_number: str,
        as_of: date,
    ) -> CitizenClaims:
        """Build the claims, computing the age flags from ``birthdate`` as of ``as_of`` (the issuance day)."""
        age = _age_at(birthdate, as_of)
        return cls(
            family_name, given_name, birthdate.isoformat(), district, busan_resident, age >= 19, age >= 65,
            card_number,
        )  # fmt: skip

    def validate(self) -> None:
        """Raise :class:`CredentialError` on a claim the format does not allow."""
        for name in (FAMILY_NAME, GIVEN_NAME, CARD_NUMBER):
            value = getattr(self, name)
            if not isinstance(value, str) or not 0 < len(value) <= 64 or not value.isprintable():
                raise CredentialError(f"{name} must be 1-64 printable characters")
        try:
            date.fromisoformat(self.birthdate)
        except (TypeError, ValueError) as exc:
            raise CredentialError("birthdate must be YYYY-MM-DD") from exc
        if len(self.birthdate) != 10:
            raise CredentialError("birthdate must be YYYY-MM-DD")
        if self.district not in DISTRICTS:
            raise CredentialError(f"unknown district {self.district!r}")
        for name in (BUSAN_RESIDENT, AGE_OVER_19, AGE_OVER_65):
            if not isinstance(getattr(self, name), bool):
                raise CredentialError(f"{name} must be a boolean")

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Signer(Protocol):
    """An issuer key (keystore, PKCS#11 token, in-memory key); returns the 64-byte ES256 ``R || S``."""

    def sign(self, signing_input: bytes) -> bytes: ...


class LocalSigner:
    """A :class:`Signer` over an in-memory ``cryptography`` P-256 private key (tests, demo, dev server)."""

    def __init__(self, private_key: Any) -> None:
        self._key = private_key

    def sign(self, signing_input: bytes) -> bytes:
        return es256_sign(self._key, signing_input)


@dataclass(frozen=True, slots=True)
class IssuedCredential:
    """An issued credential: the issuer JWT, one disclosure per claim, and the card record to write."""

    issuer_jwt: str
    disclosures: tuple[Disclosure, ...]
    payload: dict[str, Any]

    @property
    def record(self) -> CredentialRecord:
        """What PUT CREDENTIAL writes to the card (cityid.citizen)."""
        stored = tuple(StoredDisclosure(d.name or "", d.encoded) for d in self.disclosures)
        return CredentialRecord(self.issuer_jwt, stored, VCT)

    @property
    def sd_jwt(self) -> str:
        """The full SD-JWT with every disclosure and no key binding (``<jwt>~<d>~…~``)."""
        return presentation_without_kb(self.issuer_jwt, [d.encoded for d in self.disclosures])

    @property
    def credential_hash(self) -> str:
        """Hex SHA-256 of the issuer JWT: the identifier the issuer stores (no personal data)."""
        return hashlib.sha256(self.issuer_jwt.encode("ascii")).hexdigest()


def issue(
    claims: CitizenClaims,
    holder_point: bytes,
    issuer_did: str,
    status_ref: StatusRef,
    signer: Signer,
    iat: int,
    exp: int,
    citizen_did: str,
    *,
    kid: str | None = None,
    salts: dict[str, str] | None = None,
) -> IssuedCredential:
    """Issue a Busan citizen SD-JWT VC bound to ``holder_point`` (docs/credential-format.md §Issuer JWT).

    Every claim of :data:`CLAIM_NAMES` becomes one disclosure with a fresh 128-bit salt (``salts`` fixes them
    for test vectors); ``_sd`` holds the digests sorted, so their order reveals nothing.
    """
    claims.validate()
    if not issuer_did.startswith("did:") or not citizen_did.startswith("did:"):
        raise CredentialError("issuer and subject must be DIDs")
    if not 0 < iat < exp:
        raise CredentialError("need 0 < iat < exp")
    values = claims.as_dict()
    disclosures = tuple(
        create_disclosure(name, values[name], (salts or {}).get(name)) for name in CLAIM_NAMES
    )
    assert len(disclosures) <= MAX_CLAIMS
    header: dict[str, Any] = {"alg": "ES256", "typ": SD_JWT_VC_TYP}
    if kid:
        header["kid"] = kid
    payload: dict[str, Any] = {
        "iss": issuer_did,
        "sub": citizen_did,
        "iat": iat,
        "exp": exp,
        "vct": VCT,
        "cnf": {"jwk": jwk_from_point(holder_point)},
        "status": status_ref.to_claim(),
        "_sd": sorted(d.digest for d in disclosures),
        "_sd_alg": SD_ALG,
    }
    data = signing_input(header, payload)
    signature = signer.sign(data)
    if len(signature) != 64:
        raise CredentialError("signer must return a 64-byte ES256 signature (R || S)")
    return IssuedCredential(attach_signature(data, signature), disclosures, payload)


# --- FIDO2 assertion-bound presentations (docs/credential-format.md §FIDO) -----------------------------


def assertion_challenge(aud: str, nonce: str, iat: int, sd_hash: str) -> bytes:
    """The WebAuthn challenge committing to a presentation: ``SHA-256(JSON{iat,aud,nonce,sd_hash})``.

    The JSON is the KB-JWT payload in its canonical compact form (cityid.sdjwt.kb_jwt_payload).
    """
    return hashlib.sha256(json_dumps(kb_jwt_payload(aud, nonce, iat, sd_hash))).digest()


def webauthn_kb_jwt(
    aud: str,
    nonce: str,
    iat: int,
    sd_hash: str,
    authenticator_data: bytes,
    client_data_json: bytes,
    signature: bytes,
) -> str:
    """The key-binding JWT of a FIDO presentation (``typ`` :data:`WEBAUTHN_KB_TYP`).

    Payload: the KB-JWT claims plus ``webauthn`` {``authenticatorData``, ``clientDataJSON``} (base64url);
    signature: the assertion signature (DER from the authenticator, or raw) as ES256 ``R || S``. It verifies
    over ``authenticatorData || SHA-256(clientDataJSON)`` (WebAuthn L2 §7.2 step 20), not over the JWS
    signing input.
    """
    raw = signature if len(signature) == 64 else der_to_raw_p256(signature)
    header = {"alg": "ES256", "typ": WEBAUTHN_KB_TYP}
    payload = kb_jwt_payload(aud, nonce, iat, sd_hash)
    payload["webauthn"] = {
        "authenticatorData": b64url_encode(authenticator_data),
        "clientDataJSON": b64url_encode(client_data_json),
    }
    return f"{b64url_json(header)}.{b64url_json(payload)}.{b64url_encode(raw)}"


def fido_presentation(
    record: CredentialRecord,
    claims: tuple[str, ...] | list[str],
    aud: str,
    nonce: str,
    iat: int,
    get_assertion: Callable[[bytes], tuple[bytes, bytes, bytes]],
) -> str:
    """Build an assertion-bound presentation from the credential stored with a FIDO key.

    ``get_assertion(challenge)`` runs WebAuthn/CTAP getAssertion with that challenge and returns
    ``(authenticatorData, clientDataJSON, signature)``; raises :class:`CredentialError` for an unknown claim.
    """
    by_name = {d.claim: d.disclosure for d in record.disclosures}
    missing = [c for c in claims if c not in by_name]
    if missing:
        raise CredentialError(f"claim(s) not in the stored credential: {', '.join(missing)}")
    chosen = [by_name[c] for c in claims]
    sdh = sd_hash(presentation_without_kb(record.issuer_jwt, chosen))
    auth_data, client_data_json, signature = get_assertion(assertion_challenge(aud, nonce, iat, sdh))
    kb = webauthn_kb_jwt(aud, nonce, iat, sdh, auth_data, client_data_json, signature)
    return assemble(record.issuer_jwt, chosen, kb)
