"""Printed certificates anyone can verify from their QR code (docs/certificates.md).

A certificate is an ES256 compact JWS (RFC 7515 §7.1) signed with the issuing kiosk's terminal key. Its
payload holds the facts the verdict disclosed for one service (never more), the service, the kiosk, issue
and expiry times, a confirmation number and a fresh 128-bit salt (so two certificates of the same facts never
share a hash or any other value: the QR is not a tracking handle). The document hash — SHA-256 of the JWS
signing input — is anchored on chain in a Merkle batch (CityAnchorRegistry, :mod:`cityid.chain.merkle`).

QR text (docs/certificates.md §QR)::

    BC1:<compact JWS>[~<base64url(root || sibling_1 || … || sibling_n)>]

The proof part is present once the batch is anchored (a reprint); without it the verifier fetches the proof by
document hash (:class:`ProofSource`). Verification (:class:`CertificateVerifier`): format → kiosk authorised
(:class:`KioskDirectory`) → signature → validity window → anchor on chain (:class:`AnchorChecker`).
Nothing here does I/O except through those interfaces; the chain one is :class:`ChainAnchorChecker`.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric import ec

from cityid.chain.merkle import compute_root
from cityid.errors import CityIdError
from cityid.jose import (
    JoseError,
    b64url_decode,
    b64url_encode,
    parse_compact,
    sign_compact,
)
from cityid.keys import P256PublicKey

logger = logging.getLogger(__name__)

QR_PREFIX = "BC1:"
JWS_TYP = "busan-cert+jws"
VERSION = 1
DEFAULT_VALIDITY_S = 90 * 24 * 3600  # Government24 document confirmation: 90 days
MAX_QR_CHARS = 4096  # a version-40 QR holds at most 2953 bytes; anything longer is not ours
MAX_FACTS = 16
MAX_FACT_CHARS = 128
MAX_PROOF_DEPTH = 32
CLOCK_SKEW_S = 300
_KIOSK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_FACT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_CNO = re.compile(r"^[0-9]{4}-[0-9]{4}-[0-9]{4}-[0-9]{4}$")
_ANCHOR = re.compile(r"^eip155:(?P<chain>[0-9]{1,18}):(?P<registry>0x[0-9a-fA-F]{40})$")

FactValue = str | bool | int


class CertificateError(CityIdError):
    """A certificate cannot be built (facts not requested, bad values) — a programming or input error."""


class Rejection(StrEnum):
    """Why a certificate is refused (stable codes; docs/certificates.md §Verification)."""

    MALFORMED = "malformed"  # not a certificate QR, bad encoding, bad fields
    KIOSK_UNKNOWN = "kiosk_unknown"  # the named kiosk is not authorised by the city
    SIGNATURE = "signature"  # the kiosk's key does not verify the signature (edited document)
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"  # issued in the future (beyond clock skew)
    WRONG_CHAIN = "wrong_chain"  # anchored on another registry than this verifier trusts
    PENDING = "pending"  # queued for anchoring, batch not on chain yet: not verifiable yet
    NOT_ANCHORED = "not_anchored"  # the proof does not lead to an anchored root
    UNAVAILABLE = "unavailable"  # chain or proof service unreachable: no verdict (never "valid")


class CertificateRejected(CityIdError):
    """The certificate is refused; ``reason`` is a :class:`Rejection`, the message has no personal data."""

    def __init__(self, reason: Rejection, message: str) -> None:
        self.reason = reason
        super().__init__(f"{reason.value}: {message}")


@dataclass(frozen=True, slots=True)
class AnchorProof:
    """A Merkle proof that a document hash is in an anchored batch."""

    root: bytes
    siblings: tuple[bytes, ...]

    def encode(self) -> str:
        return b64url_encode(self.root + b"".join(self.siblings))

    @classmethod
    def decode(cls, text: str) -> AnchorProof:
        raw = b64url_decode(text)
        if not raw or len(raw) % 32 or len(raw) > 32 * (MAX_PROOF_DEPTH + 1):
            raise JoseError("proof must be 32-byte root plus up to 32 siblings")
        parts = tuple(raw[i : i + 32] for i in range(0, len(raw), 32))
        return cls(parts[0], parts[1:])


@dataclass(frozen=True, slots=True)
class Certificate:
    """A signed certificate: the compact JWS, its parsed payload and (once anchored) its proof."""

    jws: str
    payload: dict[str, Any] = field(repr=False)
    proof: AnchorProof | None = None

    @property
    def document_hash(self) -> bytes:
        return document_hash(self.jws)

    @property
    def confirmation(self) -> str:
        return str(self.payload["cno"])

    @property
    def kiosk(self) -> str:
        return str(self.payload["kiosk"])

    def qr_text(self) -> str:
        """What the QR code carries (docs/certificates.md §QR)."""
        tail = f"~{self.proof.encode()}" if self.proof else ""
        return f"{QR_PREFIX}{self.jws}{tail}"

    def with_proof(self, proof: AnchorProof) -> Certificate:
        return Certificate(self.jws, self.payload, proof)


def document_hash(jws: str) -> bytes:
    """SHA-256 of the JWS signing input ``header.payload`` — what is anchored (signature excluded)."""
    head, _, rest = jws.partition(".")
    payload, _, _sig = rest.partition(".")
    return hashlib.sha256(f"{head}.{payload}".encode("ascii")).digest()


def new_confirmation_number() -> str:
    """16 random digits in four groups (the Government24 document-confirmation shape)."""
    digits = f"{secrets.randbelow(10**16):016d}"
    return "-".join(digits[i : i + 4] for i in range(0, 16, 4))


def anchor_uri(chain_id: int, registry: str) -> str:
    """``eip155:<chain id>:<anchor registry>`` (CAIP-10 account of the registry)."""
    return f"eip155:{int(chain_id)}:{registry}"


def _check_facts(facts: Mapping[str, object], requested: Sequence[str]) -> dict[str, FactValue]:
    extra = sorted(set(facts) - set(requested))
    if extra:
        raise CertificateError(f"{len(extra)} fact(s) not requested by the service may not be printed")
    missing = [name for name in requested if name not in facts]
    if missing:
        raise CertificateError(f"{len(missing)} requested fact(s) were not disclosed")
    if not 0 < len(facts) <= MAX_FACTS:
        raise CertificateError(f"a certificate holds 1 to {MAX_FACTS} facts")
    out: dict[str, FactValue] = {}
    for name in requested:  # the service's order
        value = facts[name]
        if not _FACT_NAME.match(name):
            raise CertificateError(f"fact name {name!r} is not a claim name")
        if isinstance(value, str):
            if len(value) > MAX_FACT_CHARS or not value.isprintable():
                raise CertificateError(f"fact {name} is too long or not printable")
        elif not isinstance(value, bool | int) or (isinstance(value, int) and abs(value) > 2**53):
            raise CertificateError(f"fact {name} must be a string, a boolean or a small integer")
        out[name] = value  # type: ignore[assignment]
    return out


def issue(
    key: ec.EllipticCurvePrivateKey,
    *,
    kiosk: str,
    service: str,
    facts: Mapping[str, object],
    requested: Sequence[str],
    anchor: str,
    now: float | None = None,
    validity_s: int = DEFAULT_VALIDITY_S,
) -> Certificate:
    """Sign a certificate of exactly the ``requested`` facts (a fact the service did not ask for is refused).

    ``anchor`` is :func:`anchor_uri` of the registry the batch will be anchored in.
    """
    if not _KIOSK_ID.match(kiosk) or not _KIOSK_ID.match(service):
        raise CertificateError("kiosk and service ids are 1-64 letters, digits, '.', '_' or '-'")
    if not _ANCHOR.match(anchor):
        raise CertificateError("anchor must be eip155:<chain id>:<registry address>")
    if not 60 <= validity_s <= 10 * 365 * 24 * 3600:
        raise CertificateError("validity must be 1 minute to 10 years")
    iat = int(time.time() if now is None else now)
    payload: dict[str, Any] = {
        "v": VERSION,
        "cno": new_confirmation_number(),
        "svc": service,
        "facts": _check_facts(facts, requested),
        "kiosk": kiosk,
        "iat": iat,
        "exp": iat + validity_s,
        "anchor": anchor,
        "salt": b64url_encode(secrets.token_bytes(16)),
    }
    jws = sign_compact({"alg": "ES256", "typ": JWS_TYP, "kid": kiosk}, payload, key)
    return Certificate(jws, payload)


# --- parsing -----------------------------------------------------------------------------------------


def _bad(message: str) -> CertificateRejected:
    return CertificateRejected(Rejection.MALFORMED, message)


def _payload_fields(p: dict[str, Any]) -> None:
    expected = {"v", "cno", "svc", "facts", "kiosk", "iat", "exp", "anchor", "salt"}
    if set(p) != expected:
        raise _bad("payload members are not those of a version-1 certificate")
    if p["v"] != VERSION:
        raise _bad("unsupported certificate version")
    for name in ("iat", "exp"):
        if type(p[name]) is not int or not 0 < p[name] < 2**40:
            raise _bad(f"{name} must be a unix time")
    if not isinstance(p["cno"], str) or not _CNO.match(p["cno"]):
        raise _bad("bad confirmation number")
    for name in ("svc", "kiosk"):
        if not isinstance(p[name], str) or not _KIOSK_ID.match(p[name]):
            raise _bad(f"bad {name}")
    if not isinstance(p["anchor"], str) or not _ANCHOR.match(p["anchor"]):
        raise _bad("bad anchor registry")
    try:
        if not isinstance(p["salt"], str) or len(b64url_decode(p["salt"])) != 16:
            raise _bad("salt must be 16 bytes")
    except JoseError:
        raise _bad("salt is not base64url") from None
    facts = p["facts"]
    if not isinstance(facts, dict):
        raise _bad("facts must be an object")
    try:
        _check_facts(facts, list(facts))
    except CertificateError as exc:
        raise _bad(str(exc)) from None


def parse_qr(text: str) -> Certificate:
    """Parse QR text into a :class:`Certificate` (no signature or chain check); MALFORMED on anything else."""
    if not isinstance(text, str):
        raise _bad("QR text must be a string")
    text = text.strip()
    if len(text) > MAX_QR_CHARS:  # bound before any JSON decoding (docs/certificates.md §Limits)
        raise _bad("too long for a certificate")
    if not text.startswith(QR_PREFIX):
        raise _bad("not a Busan certificate code")
    body = text[len(QR_PREFIX) :]
    jws, sep, proof_text = body.partition("~")
    try:
        parsed = parse_compact(jws)
        proof = AnchorProof.decode(proof_text) if sep else None
    except JoseError as exc:
        raise _bad(str(exc)) from None
    h = parsed.header
    if h.get("alg") != "ES256" or h.get("typ") != JWS_TYP or set(h) != {"alg", "typ", "kid"}:
        raise _bad("header must be ES256 with typ busan-cert+jws and kid")
    _payload_fields(parsed.payload)
    if h["kid"] != parsed.payload["kiosk"]:
        raise _bad("header kid and payload kiosk differ")
    return Certificate(jws, parsed.payload, proof)


# --- interfaces the verifier depends on --------------------------------------------------------------


class KioskDirectory(Protocol):
    """Which kiosks the city authorises to issue certificates, and their keys.

    Today: a kiosk's terminal key registered with the city server. Terminal certificates can replace this
    without touching the verifier (docs/certificates.md §Kiosk authorisation).
    """

    def kiosk_key(self, kiosk_id: str) -> P256PublicKey | None:
        """The kiosk's current public key, or None when the kiosk is unknown or disabled."""
        ...


class ProofSource(Protocol):
    """Where to fetch the Merkle proof of a certificate printed before its batch was anchored."""

    def proof(self, document_hash: bytes) -> AnchorProof | None:
        """The proof, or None while queued / unknown; raise ``CityIdError`` when unreachable."""
        ...


class AnchorChecker(Protocol):
    """The chain: is a Merkle root anchored in the registry?"""

    @property
    def anchor(self) -> str:
        """:func:`anchor_uri` of the registry this checker reads."""
        ...

    def anchored_at(self, root: bytes) -> int | None:
        """Unix time the root was anchored, or None. Raise ``CityIdError`` when the chain is unreachable."""
        ...


class StaticKioskDirectory:
    """A :class:`KioskDirectory` from a mapping kiosk id → key (`kiosk verify-certificate --kiosks`)."""

    def __init__(self, keys: Mapping[str, P256PublicKey]) -> None:
        self._keys = dict(keys)

    def kiosk_key(self, kiosk_id: str) -> P256PublicKey | None:
        return self._keys.get(kiosk_id)

    @classmethod
    def from_json(cls, data: object) -> StaticKioskDirectory:
        """``{"kiosk-id": <public JWK>, …}``."""
        if not isinstance(data, dict):
            raise CertificateError("kiosk directory must be an object of kiosk id → public JWK")
        return cls({str(k): P256PublicKey.from_jwk(v) for k, v in data.items()})


class ChainAnchorChecker:
    """:class:`AnchorChecker` on CityAnchorRegistry (``anchorOf``); anchored roots are cached (final)."""

    def __init__(self, client: Any, network: Any) -> None:
        from cityid.chain.bindings import AnchorRegistry

        self.registry = AnchorRegistry(client, network.address("anchor_registry"))
        self._anchor = anchor_uri(network.chain_id, self.registry.address)
        self._known: dict[bytes, int] = {}
        self._lock = threading.Lock()

    @property
    def anchor(self) -> str:
        return self._anchor

    def anchored_at(self, root: bytes) -> int | None:
        with self._lock:
            if root in self._known:
                return self._known[root]
        ts, block, _who = self.registry.anchor_of(root)
        if block == 0:
            return None
        with self._lock:
            self._known[root] = ts
        return ts


@dataclass(frozen=True, slots=True)
class VerifiedCertificate:
    """A certificate that passed every check: what was printed, and when it was anchored."""

    confirmation: str
    service: str
    kiosk: str
    issued_at: int
    expires_at: int
    facts: dict[str, FactValue]
    document_hash: bytes
    anchored_at: int
    proof: AnchorProof


class CertificateVerifier:
    """Signature, kiosk authorisation, validity and anchor on chain (docs/certificates.md §Verification)."""

    def __init__(
        self,
        kiosks: KioskDirectory,
        chain: AnchorChecker,
        proofs: ProofSource | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kiosks = kiosks
        self.chain = chain
        self.proofs = proofs
        self.clock = clock

    def verify(self, qr_text: str) -> VerifiedCertificate:
        """The printed facts of a valid certificate; :class:`CertificateRejected` otherwise."""
        cert = parse_qr(qr_text)
        p = cert.payload
        key = self._kiosk_key(cert.kiosk)
        parsed = parse_compact(cert.jws)
        if not key.verify_raw(parsed.signature, parsed.signing_input):
            raise CertificateRejected(Rejection.SIGNATURE, "the signature does not match the document")
        now = self.clock()
        if now >= p["exp"]:
            raise CertificateRejected(Rejection.EXPIRED, "the certificate has expired")
        if p["iat"] > now + CLOCK_SKEW_S or p["exp"] <= p["iat"]:
            raise CertificateRejected(Rejection.NOT_YET_VALID, "issued in the future")
        if p["anchor"].lower() != self.chain.anchor.lower():
            raise CertificateRejected(
                Rejection.WRONG_CHAIN, "anchored in a registry this verifier does not use"
            )
        doc = cert.document_hash
        proof = cert.proof or self._fetch_proof(doc)
        if compute_root(doc, proof.siblings) != proof.root:
            raise CertificateRejected(Rejection.NOT_ANCHORED, "the proof does not lead to its root")
        try:
            anchored = self.chain.anchored_at(proof.root)
        except CityIdError as exc:
            raise CertificateRejected(
                Rejection.UNAVAILABLE, f"chain unreachable: {type(exc).__name__}"
            ) from exc
        if anchored is None:
            raise CertificateRejected(Rejection.NOT_ANCHORED, "the batch root is not anchored on chain")
        return VerifiedCertificate(
            confirmation=p["cno"],
            service=p["svc"],
            kiosk=p["kiosk"],
            issued_at=p["iat"],
            expires_at=p["exp"],
            facts=dict(p["facts"]),
            document_hash=doc,
            anchored_at=anchored,
            proof=proof,
        )

    def _kiosk_key(self, kiosk: str) -> P256PublicKey:
        try:
            key = self.kiosks.kiosk_key(kiosk)
        except CityIdError as exc:
            raise CertificateRejected(Rejection.UNAVAILABLE, "kiosk directory unreachable") from exc
        if key is None:
            raise CertificateRejected(Rejection.KIOSK_UNKNOWN, "the kiosk is not authorised by the city")
        return key

    def _fetch_proof(self, doc: bytes) -> AnchorProof:
        if self.proofs is None:
            raise CertificateRejected(
                Rejection.PENDING, "no proof in the code and no proof service configured"
            )
        try:
            proof = self.proofs.proof(doc)
        except CityIdError as exc:
            raise CertificateRejected(Rejection.UNAVAILABLE, f"proof service unreachable: {exc}") from exc
        if proof is None:
            raise CertificateRejected(Rejection.PENDING, "not anchored yet (its batch is still queued)")
        return proof
