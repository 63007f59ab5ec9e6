"""Selective Disclosure for JWTs (RFC 9901): disclosures, digests, the SD-JWT+KB serialization.

Shared by the issuer (server), the card emulator's PRESENT (which builds the KB-JWT with
:func:`kb_jwt_signing_input`) and the kiosk verifier (which parses with :func:`split`), so the three can never
disagree on a byte. Only ``sha-256`` (the RFC 9901 §4.1.1 default) is supported.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from hashlib import sha256
from typing import Any

from cityid.jose import (
    JoseError,
    attach_signature,
    b64url_decode,
    b64url_encode,
    json_dumps,
    json_loads,
    signing_input,
    split_compact,
)

SD_ALG = "sha-256"
KB_JWT_TYP = "kb+jwt"
KB_JWT_HEADER: dict[str, str] = {"alg": "ES256", "typ": KB_JWT_TYP}
SALT_BYTES = 16  # 128 bits (RFC 9901 §4.2.1 recommends at least 128)
#: Claim names a disclosure may not carry (RFC 9901 §4.2.1).
RESERVED_NAMES = frozenset({"_sd", "...", "_sd_alg"})


class SdJwtError(JoseError):
    """Malformed SD-JWT, disclosure or KB-JWT structure (RFC 9901)."""


# --- disclosures (RFC 9901 §4.2) ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Disclosure:
    """One disclosure. ``name`` is ``None`` for an array-element disclosure (RFC 9901 §4.2.2)."""

    salt: str
    name: str | None
    value: Any
    encoded: str  # the base64url string exactly as it appears in the SD-JWT

    @property
    def digest(self) -> str:
        return digest(self.encoded)


def digest(encoded_disclosure: str) -> str:
    """``base64url(SHA-256(ASCII(disclosure)))`` — RFC 9901 §4.2.3."""
    return b64url_encode(hashlib.sha256(encoded_disclosure.encode("ascii")).digest())


def new_salt() -> str:
    """A fresh 128-bit base64url salt (RFC 9901 §4.2.1)."""
    return b64url_encode(secrets.token_bytes(SALT_BYTES))


def create_disclosure(name: str | None, value: Any, salt: str | None = None) -> Disclosure:
    """Create an object-property disclosure ``[salt, name, value]`` (or ``[salt, value]`` if name is None)."""
    salt = salt if salt is not None else new_salt()
    if name is not None and (not isinstance(name, str) or name in RESERVED_NAMES):
        raise SdJwtError(f"claim name {name!r} cannot be selectively disclosed")
    array: list[Any] = [salt, value] if name is None else [salt, name, value]
    encoded = b64url_encode(json_dumps(array))
    return Disclosure(salt, name, value, encoded)


def parse_disclosure(encoded: str) -> Disclosure:
    """Decode one disclosure string; raise :class:`SdJwtError` unless it is a well-formed RFC 9901 array."""
    try:
        array = json_loads(b64url_decode(encoded))
    except JoseError as exc:
        raise SdJwtError(f"disclosure is not base64url JSON: {exc}") from exc
    if not isinstance(array, list) or len(array) not in (2, 3):
        raise SdJwtError("disclosure must be a JSON array of 2 or 3 elements")
    salt = array[0]
    if not isinstance(salt, str):
        raise SdJwtError("disclosure salt must be a string")
    if len(array) == 2:
        return Disclosure(salt, None, array[1], encoded)
    name = array[1]
    if not isinstance(name, str):
        raise SdJwtError("disclosure claim name must be a string")
    if name in RESERVED_NAMES:
        raise SdJwtError(f"disclosure uses the reserved claim name {name!r}")
    return Disclosure(salt, name, array[2], encoded)


# --- serialization (RFC 9901 §4) ------------------------------------------------------------------------


def assemble(issuer_jwt: str, disclosures: list[str] | tuple[str, ...], kb_jwt: str = "") -> str:
    """``<issuer JWT>~<disclosure>~…~<KB-JWT or empty>`` (RFC 9901 §4)."""
    return "~".join([issuer_jwt, *disclosures, kb_jwt])


def presentation_without_kb(issuer_jwt: str, disclosures: list[str] | tuple[str, ...]) -> str:
    """The SD-JWT part a KB-JWT's ``sd_hash`` covers: everything up to and including the last ``~``."""
    return assemble(issuer_jwt, disclosures, "")


def sd_hash(presentation_without_kb_: str) -> str:
    """``base64url(SHA-256(ASCII(<issuer JWT>~<disclosures>~)))`` — RFC 9901 §4.3.1."""
    return b64url_encode(hashlib.sha256(presentation_without_kb_.encode("ascii")).digest())


def kb_jwt_payload(aud: str, nonce: str, iat: int, sd_hash_: str) -> dict[str, Any]:
    """The KB-JWT claims in their canonical order (RFC 9901 §4.3)."""
    return {"iat": iat, "aud": aud, "nonce": nonce, "sd_hash": sd_hash_}


def kb_jwt_signing_input(aud: str, nonce: str, iat: int, sd_hash_: str) -> bytes:
    """ASCII ``header.payload`` of a KB-JWT: header ``{"alg":"ES256","typ":"kb+jwt"}`` (RFC 9901 §4.3)."""
    return signing_input(KB_JWT_HEADER, kb_jwt_payload(aud, nonce, iat, sd_hash_))


def split(presentation: str) -> tuple[str, tuple[str, ...], str]:
    """Split an SD-JWT or SD-JWT+KB into (issuer JWT, disclosures, KB-JWT or ``""``).

    Structural checks only (RFC 9901 §4 and §7.1 step 1): ASCII, at least one ``~``, a three-segment issuer
    JWT, non-empty base64url disclosures without duplicates, a three-segment KB-JWT or nothing after the
    last ``~``. Signatures and digests are the verifier's job. Raises :class:`SdJwtError`.
    """
    if not isinstance(presentation, str):
        raise SdJwtError("presentation must be a string")
    if not presentation.isascii():
        raise SdJwtError("presentation contains non-ASCII characters")
    parts = presentation.split("~")
    if len(parts) < 2:
        raise SdJwtError("not an SD-JWT: no '~' separator")
    issuer_jwt, disclosures, kb_jwt = parts[0], tuple(parts[1:-1]), parts[-1]
    try:
        split_compact(issuer_jwt)
    except JoseError as exc:
        raise SdJwtError(f"issuer JWT: {exc}") from exc
    for i, d in enumerate(disclosures):
        if not d:
            raise SdJwtError(f"disclosure {i + 1} is empty ('~~')")
        try:
            b64url_decode(d)
        except JoseError as exc:
            raise SdJwtError(f"disclosure {i + 1}: {exc}") from exc
    if len(set(disclosures)) != len(disclosures):
        raise SdJwtError("the same disclosure appears twice")
    if kb_jwt:
        try:
            split_compact(kb_jwt)
        except JoseError as exc:
            raise SdJwtError(f"KB-JWT: {exc}") from exc
    return issuer_jwt, disclosures, kb_jwt


# --- processing (RFC 9901 §7.1 step 3) --------------------------------------------------------------------


def resolve(
    payload: dict[str, Any], disclosures: list[Disclosure] | tuple[Disclosure, ...]
) -> dict[str, Any]:
    """Replace digests in ``payload`` by the disclosed claims (RFC 9901 §7.1, step 3).

    Rejects (``SdJwtError``) a digest that appears twice, a disclosure no digest refers to, an object
    disclosure in an array slot (or the reverse), a disclosed name that already exists, and malformed
    ``_sd`` arrays. Unmatched digests are decoys and vanish; ``_sd`` and ``_sd_alg`` are removed.
    """
    alg = payload.get("_sd_alg", SD_ALG)
    if alg != SD_ALG:
        raise SdJwtError(f"unsupported _sd_alg {alg!r}")
    by_digest = {b64url_encode(sha256(d.encoded.encode("ascii")).digest()): d for d in disclosures}
    if len(by_digest) != len(disclosures):
        raise SdJwtError("the same disclosure appears twice")
    seen: set[str] = set()
    result = _walk_object(payload, by_digest, seen, 0)
    if len(by_digest) and not seen.issuperset(by_digest):
        unused = len(set(by_digest) - seen)
        raise SdJwtError(f"{unused} disclosure(s) not referenced by the issuer JWT")
    return result


_MAX_DEPTH = 32


def _walk_value(value: Any, by_digest: dict[str, Disclosure], seen: set[str], depth: int) -> Any:
    kind = type(value)
    if kind is dict:
        return _walk_object(value, by_digest, seen, depth + 1)
    if kind is list:
        return _walk_array(value, by_digest, seen, depth + 1)
    return value


def _take(dig: object, by_digest: dict[str, Disclosure], seen: set[str]) -> Disclosure | None:
    if type(dig) is not str:
        raise SdJwtError("digest must be a string")
    if dig in seen:
        raise SdJwtError("a digest appears more than once")
    seen.add(dig)
    return by_digest.get(dig)


def _walk_object(node: dict[str, Any], by_digest: dict[str, Disclosure], seen: set[str], depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise SdJwtError("claims nested too deeply")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key != "_sd" and key != "_sd_alg":
            kind = type(value)
            out[key] = (
                value if kind is not dict and kind is not list else _walk_value(value, by_digest, seen, depth)
            )
    digests = node.get("_sd")
    if digests is None:
        return out
    if type(digests) is not list:
        raise SdJwtError("_sd must be an array")
    for dig in digests:
        found = _take(dig, by_digest, seen)
        if found is None:
            continue  # decoy digest
        if found.name is None:
            raise SdJwtError("array-element disclosure referenced from an object")
        if found.name in out:
            raise SdJwtError(f"disclosed claim {found.name!r} already exists")
        out[found.name] = _walk_value(found.value, by_digest, seen, depth)
    return out


def _walk_array(node: list[Any], by_digest: dict[str, Disclosure], seen: set[str], depth: int) -> list[Any]:
    if depth > _MAX_DEPTH:
        raise SdJwtError("claims nested too deeply")
    items: list[Any] = []
    for item in node:
        if type(item) is dict and len(item) == 1 and "..." in item:
            found = _take(item["..."], by_digest, seen)
            if found is None:
                continue  # decoy
            if found.name is not None:
                raise SdJwtError("object disclosure referenced from an array")
            items.append(_walk_value(found.value, by_digest, seen, depth))
        else:
            items.append(_walk_value(item, by_digest, seen, depth))
    return items


def present(
    issuer_jwt: str,
    disclosures: list[str] | tuple[str, ...],
    aud: str,
    nonce: str,
    iat: int,
    sign: Callable[[bytes], bytes],
) -> str:
    """Build an SD-JWT+KB (RFC 9901 §4.3) with a holder signing callback returning the ES256 ``R || S``.

    What the card's PRESENT does on-card; used by software holders (tests, benchmarks, the demo).
    """
    sdh = sd_hash(presentation_without_kb(issuer_jwt, disclosures))
    data = kb_jwt_signing_input(aud, nonce, iat, sdh)
    return assemble(issuer_jwt, disclosures, attach_signature(data, sign(data)))
