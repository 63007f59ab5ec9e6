"""The kiosk's presentation verifier: one SD-JWT VC + key binding in, one :class:`Verdict` out.

Checks (docs/credential-format.md §Verification; RFC 9901 §7.1 and §7.3, SD-JWT VC draft §3.2, WebAuthn L2
§7.2 for FIDO presentations), cheap structural checks first, chain facts and signatures after:

size → format → type → expiry → audience → freshness → sd_hash → disclosures → chain (facts available
and fresh) → issuer signature → issuer trusted for the vct → status → holder key active on the sub DID →
key-binding signature (→ user verification for FIDO) → nonce consumed → requested claims disclosed.

The nonce is consumed only after every signature verified, so a forged presentation cannot burn the
citizen's nonce. Each verdict names the first failed check; its ``detail`` (for logs) never holds claims.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cityid.chain.view import ChainError, ChainView, CredentialStatus, StaleChainDataError, StatusRef
from cityid.credential import SD_JWT_VC_TYP, VCT, WEBAUTHN_KB_TYP, assertion_challenge
from cityid.jose import (
    JoseError,
    b64url_decode,
    decode_json_segment,
    es256_verify,
    point_from_jwk,
)
from cityid.keys import KeyFormatError, P256PublicKey, es256_raw_to_der
from cityid.sdjwt import KB_JWT_TYP, SdJwtError, parse_disclosure, resolve, sd_hash
from terminal.verifier.messages import CheckName, message
from terminal.verifier.nonces import NonceStore
from terminal.verifier.webauthn import (
    AssertionCheck,
    AssertionCheckError,
    check_assertion,
    parse_auth_data,
    parse_client_data,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 16 * 1024  # the card stores at most 8 KiB of credential; a presentation is smaller
DEFAULT_IAT_WINDOW = 60.0
DEFAULT_CLOCK_SKEW = 30.0
DEFAULT_RP_ID = "id.busan.go.kr"
_ALWAYS_VISIBLE = frozenset({"iss", "sub", "iat", "exp", "nbf", "vct", "cnf", "status", "_sd", "_sd_alg"})


class PresentationKind:
    """How the holder bound the presentation."""

    CARD = "card"  # RFC 9901 KB-JWT signed by the card's PIV 9A key
    FIDO = "fido"  # WebAuthn assertion (docs/credential-format.md §FIDO)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one verification.

    ``failed`` names the first failed check (``None`` when ``ok``); ``reason`` is a catalogue key
    (``verdict.ok`` / ``verdict.reason.*``, text in :mod:`terminal.verifier.messages`); ``detail`` is a
    technical explanation for logs without personal data; ``claims`` the disclosed claims the service asked
    for, held in memory only — :meth:`wipe` clears them (called on card removal).
    """

    ok: bool
    failed: CheckName | None
    reason: str
    detail: str = ""
    claims: dict[str, Any] = field(default_factory=dict, repr=False)
    subject: str = ""  # the pseudonymous citizen DID (no personal data)
    issuer: str = ""
    kind: str = ""

    def message(self, language: str = "en") -> str:
        """The plain-words verdict in ``language`` ("en" or "ko")."""
        return message(self.reason, language)

    def wipe(self) -> None:
        """Drop the disclosed claims from memory (best effort: Python cannot zero strings)."""
        self.claims.clear()


class _Reject(Exception):
    def __init__(self, check: CheckName, detail: str, reason: str | None = None) -> None:
        super().__init__(detail)
        self.check = check
        self.detail = detail
        self.reason = reason or f"verdict.reason.{check.value}"


def _obj(header_or_payload: str, what: str) -> dict[str, Any]:
    try:
        return decode_json_segment(header_or_payload, what)
    except JoseError as exc:
        raise _Reject(CheckName.FORMAT, str(exc)) from exc


def _sig(segment: str, what: str) -> bytes:
    try:
        raw = b64url_decode(segment)
    except JoseError as exc:
        raise _Reject(CheckName.FORMAT, f"{what} signature: {exc}") from exc
    if len(raw) != 64:
        raise _Reject(CheckName.FORMAT, f"{what} signature must be 64 bytes")
    return raw


def _int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _Reject(CheckName.FORMAT, f"{what} must be a non-negative integer")
    return value


class Verifier:
    """Verify Busan citizen presentations for one kiosk (``audience``) against a :class:`ChainView`.

    ``clock`` returns unix seconds; ``iat_window`` bounds |now - KB iat|; ``max_bytes`` bounds the input;
    ``max_chain_age`` (optional) re-checks the age of the chain facts on top of the ChainView's own bound.
    FIDO presentations are accepted for ``rp_id`` from ``origins`` (user verification required by default).
    """

    def __init__(
        self,
        chain_view: ChainView,
        audience: str,
        nonce_store: NonceStore,
        clock: Callable[[], float] = time.time,
        iat_window: float = DEFAULT_IAT_WINDOW,
        max_bytes: int = DEFAULT_MAX_BYTES,
        *,
        vct: str = VCT,
        clock_skew: float = DEFAULT_CLOCK_SKEW,
        max_chain_age: float | None = None,
        rp_id: str = DEFAULT_RP_ID,
        origins: Sequence[str] = (),
        require_uv: bool = True,
    ) -> None:
        self.chain_view = chain_view
        self.audience = audience
        self.nonce_store = nonce_store
        self.clock = clock
        self.iat_window = iat_window
        self.max_bytes = max_bytes
        self.vct = vct
        self.clock_skew = clock_skew
        self.max_chain_age = max_chain_age
        self.rp_id = rp_id
        self.origins = frozenset(origins or (f"https://{rp_id}",))
        self.require_uv = require_uv

    def verify(
        self, presentation: str | bytes, required_claims: Sequence[str] = (), service: str | None = None
    ) -> Verdict:
        """Run every check; return the verdict (never raises for bad input)."""
        facts: dict[str, str] = {}
        try:
            claims = self._verify(presentation, tuple(required_claims), service, facts)
        except (TypeError, AttributeError, KeyError, ValueError, RecursionError) as exc:
            # a shape no check anticipated: fail closed with a verdict, never a traceback at the kiosk
            logger.warning("presentation rejected: unexpected %s", type(exc).__name__)
            rej = _Reject(CheckName.FORMAT, f"unexpected structure ({type(exc).__name__})")
        except _Reject as caught:
            rej = caught
        else:
            return Verdict(True, None, "verdict.ok", "", claims, facts["sub"], facts["iss"], facts["kind"])
        logger.info("presentation rejected: %s (%s)", rej.check.value, rej.detail)
        return Verdict(
            False, rej.check, rej.reason, rej.detail, {}, facts.get("sub", ""), facts.get("iss", ""),
            facts.get("kind", ""),
        )  # fmt: skip

    # --- the pipeline -------------------------------------------------------------------------------------

    def _verify(
        self, presentation: str | bytes, required: tuple[str, ...], service: str | None, out: dict[str, str]
    ) -> dict[str, Any]:
        # size and transport encoding
        if len(presentation) > self.max_bytes:
            raise _Reject(CheckName.SIZE, f"{len(presentation)} bytes > {self.max_bytes}")
        if isinstance(presentation, bytes | bytearray):
            try:
                presentation = bytes(presentation).decode("ascii")
            except UnicodeDecodeError as exc:
                raise _Reject(CheckName.FORMAT, "presentation is not ASCII") from exc
        if not isinstance(presentation, str) or not presentation.isascii():
            raise _Reject(CheckName.FORMAT, "presentation is not an ASCII string")

        # format: <issuer-jwt>~<disclosure>~...~<kb>
        parts = presentation.split("~")
        if len(parts) < 2:
            raise _Reject(CheckName.FORMAT, "not an SD-JWT (no '~')")
        issuer_jwt, disclosures, kb_jwt = parts[0], parts[1:-1], parts[-1]
        if not kb_jwt:
            raise _Reject(CheckName.FORMAT, "key binding is missing")
        ij = issuer_jwt.split(".")
        kb = kb_jwt.split(".")
        if len(ij) != 3 or len(kb) != 3:
            raise _Reject(CheckName.FORMAT, "issuer JWT and key binding must be compact JWS")
        header = _obj(ij[0], "issuer JWT header")
        payload = _obj(ij[1], "issuer JWT payload")
        issuer_sig = _sig(ij[2], "issuer JWT")
        kb_header = _obj(kb[0], "key-binding header")
        kb_payload = _obj(kb[1], "key-binding payload")
        kb_sig = _sig(kb[2], "key-binding")

        # type
        if header.get("alg") != "ES256" or kb_header.get("alg") != "ES256":
            raise _Reject(CheckName.TYPE, "alg must be ES256")
        if header.get("typ") != SD_JWT_VC_TYP:
            raise _Reject(CheckName.TYPE, f"issuer JWT typ must be {SD_JWT_VC_TYP}")
        if payload.get("vct") != self.vct:
            raise _Reject(CheckName.TYPE, "vct is not the citizen credential type")
        kb_typ = kb_header.get("typ")
        if kb_typ == KB_JWT_TYP:
            out["kind"] = PresentationKind.CARD
        elif kb_typ == WEBAUTHN_KB_TYP:
            out["kind"] = PresentationKind.FIDO
        else:
            raise _Reject(CheckName.TYPE, "unknown key-binding typ")
        iss, sub = payload.get("iss"), payload.get("sub")
        if not isinstance(iss, str) or not isinstance(sub, str) or not iss.startswith("did:"):
            raise _Reject(CheckName.FORMAT, "iss and sub must be DIDs")
        if not sub.startswith("did:"):
            raise _Reject(CheckName.FORMAT, "iss and sub must be DIDs")
        out["iss"], out["sub"] = iss, sub
        cnf = payload.get("cnf")
        try:
            holder_point = point_from_jwk(cnf.get("jwk") if isinstance(cnf, dict) else None)
            status_ref = StatusRef.from_claim(payload.get("status"))
        except (JoseError, ValueError) as exc:
            raise _Reject(CheckName.FORMAT, f"cnf or status: {exc}") from exc

        # expiry
        now = self.clock()
        exp = _int(payload.get("exp"), "exp")
        iat = _int(payload.get("iat"), "iat")
        if now >= exp:
            raise _Reject(CheckName.EXPIRY, "credential expired", "verdict.reason.expired")
        nbf = payload.get("nbf", iat)
        if now + self.clock_skew < max(iat, _int(nbf, "nbf")):
            raise _Reject(CheckName.EXPIRY, "credential not yet valid", "verdict.reason.not_yet_valid")

        # audience, freshness, sd_hash (claims shared by KB-JWT and the WebAuthn KB)
        if kb_payload.get("aud") != self.audience:
            raise _Reject(CheckName.AUDIENCE, "aud is not this kiosk")
        kb_iat = _int(kb_payload.get("iat"), "KB iat")
        if abs(now - kb_iat) > self.iat_window:
            raise _Reject(CheckName.FRESHNESS, f"KB iat {kb_iat - now:+.0f}s from now")
        nonce = kb_payload.get("nonce")
        if not isinstance(nonce, str) or not nonce:
            raise _Reject(CheckName.FORMAT, "KB nonce missing")
        presented_sd_hash = kb_payload.get("sd_hash")
        expected_sd_hash = sd_hash(presentation[: len(presentation) - len(kb_jwt)])
        if presented_sd_hash != expected_sd_hash:
            raise _Reject(CheckName.SD_HASH, "sd_hash does not cover the presented SD-JWT")

        # disclosures (RFC 9901 §7.1 step 3)
        try:
            parsed = [parse_disclosure(d) for d in disclosures]
            if any(d.name in _ALWAYS_VISIBLE for d in parsed):
                raise SdJwtError("a registered claim (iss, exp, cnf, status, …) may not be disclosed")
            resolved = resolve(payload, parsed)
        except SdJwtError as exc:
            raise _Reject(CheckName.DISCLOSURES, str(exc)) from exc

        # chain facts
        try:
            facts = self.chain_view.verification_facts(iss, sub, self.vct, status_ref)
        except StaleChainDataError as exc:
            raise _Reject(CheckName.CHAIN, str(exc)) from exc
        except ChainError as exc:
            raise _Reject(CheckName.CHAIN, f"chain unavailable: {exc}") from exc
        if self.max_chain_age is not None and now - facts.synced_at > self.max_chain_age:
            raise _Reject(CheckName.CHAIN, f"chain facts {now - facts.synced_at:.0f}s old")

        # issuer signature and trust
        signing_input = f"{ij[0]}.{ij[1]}".encode("ascii")
        if not any(self._es256(key, signing_input, issuer_sig) for key in facts.issuer_keys):
            raise _Reject(CheckName.ISSUER_SIGNATURE, "no active key of the iss DID verifies the issuer JWT")
        if not facts.issuer_trusted:
            raise _Reject(CheckName.ISSUER_TRUSTED, "iss not accredited for the vct")

        # status
        if facts.status == CredentialStatus.REVOKED:
            raise _Reject(CheckName.STATUS, "status revoked", "verdict.reason.revoked")
        if facts.status == CredentialStatus.SUSPENDED:
            raise _Reject(CheckName.STATUS, "status suspended", "verdict.reason.suspended")
        if facts.status != CredentialStatus.VALID:
            raise _Reject(CheckName.CHAIN, f"unknown status value {facts.status}")

        # holder key
        if holder_point not in facts.holder_keys:
            raise _Reject(CheckName.HOLDER_KEY, "cnf key is not an active key of the sub DID")

        # key binding
        if out["kind"] == PresentationKind.CARD:
            if not self._es256(holder_point, f"{kb[0]}.{kb[1]}".encode("ascii"), kb_sig):
                raise _Reject(CheckName.KEY_BINDING, "KB-JWT signature does not verify with cnf")
        else:
            self._check_webauthn(kb_payload, holder_point, kb_sig, nonce, kb_iat, expected_sd_hash)

        # nonce (after the signatures: a forgery cannot burn it)
        if not self.nonce_store.consume(nonce, service):
            raise _Reject(CheckName.NONCE, "nonce unknown, expired, for another service or already used")

        # the claims the service asked for (only those are returned)
        if not required:
            return {k: v for k, v in resolved.items() if k not in _ALWAYS_VISIBLE}
        missing = [c for c in required if c not in resolved or c in _ALWAYS_VISIBLE]
        if missing:
            raise _Reject(CheckName.CLAIMS, f"{len(missing)} requested claim(s) not disclosed")
        return {c: resolved[c] for c in required}

    @staticmethod
    def _es256(point: bytes, data: bytes, signature: bytes) -> bool:
        try:
            return es256_verify(point, data, signature)
        except JoseError:
            return False

    def _check_webauthn(
        self, kb_payload: dict[str, Any], point: bytes, signature: bytes, nonce: str, iat: int, sdh: str
    ) -> None:
        """WebAuthn L2 §7.2 steps 11-21 for the assertion that binds a FIDO presentation (the one check of
        :func:`terminal.verifier.webauthn.check_assertion`); the challenge commits to the presentation."""
        wa = kb_payload.get("webauthn")
        if not isinstance(wa, dict):
            raise _Reject(CheckName.FORMAT, "webauthn member missing")
        try:
            auth_data = b64url_decode(wa.get("authenticatorData", ""))
            cdj = b64url_decode(wa.get("clientDataJSON", ""))
            client_data = parse_client_data(cdj)
            parsed_auth_data = parse_auth_data(auth_data)
        except (JoseError, TypeError) as exc:
            raise _Reject(CheckName.FORMAT, f"webauthn data: {exc}") from exc
        except AssertionCheckError as exc:
            raise _Reject(CheckName.FORMAT, str(exc)) from exc
        try:
            check_assertion(
                client_data, parsed_auth_data, es256_raw_to_der(signature), P256PublicKey.from_point(point),
                challenge=assertion_challenge(self.audience, nonce, iat, sdh), rp_id=self.rp_id,
                origins=self.origins, require_uv=self.require_uv,
            )  # fmt: skip
        except KeyFormatError as exc:
            raise _Reject(CheckName.KEY_BINDING, f"assertion signature: {exc}") from exc
        except AssertionCheckError as exc:
            check = _WEBAUTHN_CHECKS[exc.check]
            detail = str(exc)
            if exc.check is AssertionCheck.CHALLENGE:
                detail = "WebAuthn challenge does not commit to this presentation"
            elif exc.check is AssertionCheck.SIGNATURE:
                detail = "assertion signature does not verify with cnf"
            raise _Reject(check, detail) from exc


#: How a failed WebAuthn step shows in a presentation verdict.
_WEBAUTHN_CHECKS = {
    AssertionCheck.FORMAT: CheckName.FORMAT,
    AssertionCheck.TYPE: CheckName.TYPE,
    AssertionCheck.RELYING_PARTY: CheckName.AUDIENCE,
    AssertionCheck.CHALLENGE: CheckName.KEY_BINDING,
    AssertionCheck.SIGNATURE: CheckName.KEY_BINDING,
    AssertionCheck.USER_PRESENCE: CheckName.USER_VERIFICATION,
    AssertionCheck.USER_VERIFICATION: CheckName.USER_VERIFICATION,
}
