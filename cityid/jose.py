"""The small part of JOSE this project needs: base64url, ES256 compact JWS, P-256 JWKs.

Specs: RFC 7515 (JWS, §2 base64url without padding, §7.1 compact serialization), RFC 7518 §3.4 (ES256: the
signature is the 64-byte R || S, not DER), RFC 7517/7518 §6.2.1 (EC JWK ``kty``/``crv``/``x``/``y``).

Cards and PKCS#11 tokens return DER ECDSA signatures; :func:`der_to_raw_p256` converts them. Nothing here does
I/O; parsed public keys are cached so a verifier decodes each issuer or holder point once.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from cityid.errors import DecodeError
from cityid.keys import KeyFormatError, P256PublicKey, es256_der_to_raw

_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


class JoseError(DecodeError):
    """A malformed base64url string, JSON segment, compact JWS, JWK or signature encoding."""


# --- base64url (RFC 7515 §2) --------------------------------------------------------------------------


def b64url_encode(data: bytes) -> str:
    """base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_URL_TO_STD = bytes.maketrans(b"-_", b"+/")
_PAD = (b"", b"", b"==", b"=")
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# Last characters whose unused low bits are zero, by len % 4 (2 chars → 4 unused bits, 3 chars → 2).
_CANONICAL_LAST = {2: frozenset(_ALPHABET[::16]), 3: frozenset(_ALPHABET[::4])}


def b64url_decode(text: str) -> bytes:
    """Strict base64url: no padding, no whitespace, only ``A-Z a-z 0-9 - _``, canonical trailing bits.

    Raises :class:`JoseError` (a :class:`~cityid.errors.DecodeError`) on anything else.
    """
    if type(text) is not str:
        raise JoseError("base64url input must be a string")
    rem = len(text) & 3
    if rem == 1 or "+" in text or "/" in text or "=" in text or not text.isascii():
        raise JoseError(
            "invalid base64url length" if rem == 1 else
            "invalid base64url character (padding and whitespace are not allowed)"
        )  # fmt: skip
    # Reject non-canonical encodings (non-zero unused bits) so one value has exactly one encoding.
    if rem and text[-1] not in _CANONICAL_LAST[rem]:
        raise JoseError("non-canonical base64url (unused bits set)")
    try:  # strict mode rejects every remaining non-alphabet character
        return binascii.a2b_base64(text.encode("ascii").translate(_URL_TO_STD) + _PAD[rem], strict_mode=True)
    except binascii.Error as exc:
        raise JoseError("invalid base64url character (padding and whitespace are not allowed)") from exc


def json_dumps(obj: Any) -> bytes:
    """Deterministic compact JSON as UTF-8 (no whitespace, insertion order, non-ASCII kept as UTF-8)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _reject_constant(name: str) -> Any:
    raise JoseError(f"non-standard JSON constant {name}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise JoseError("duplicate JSON member")
    return out


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)


def json_loads(data: bytes | str) -> Any:
    """Strict JSON (RFC 8259 / RFC 7515 §5.2): UTF-8, no NaN/Infinity, no duplicate members."""
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
        try:  # fast path: the C scanner on compact JSON (what JOSE producers emit)
            value, end = _DECODER.raw_decode(text)
            if end == len(text):
                return value
        except json.JSONDecodeError:
            pass
        return _DECODER.decode(text)  # whitespace around the value, or an error with a position
    except JoseError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise JoseError(f"invalid JSON: {exc}") from exc


def b64url_json(obj: Any) -> str:
    """``base64url(json_dumps(obj))`` — a JWS header or payload segment."""
    return b64url_encode(json_dumps(obj))


def decode_json_segment(segment: str, what: str = "segment") -> dict[str, Any]:
    """Decode a base64url JSON-object segment; raise :class:`JoseError` naming ``what``."""
    try:
        value = json_loads(b64url_decode(segment))
    except JoseError as exc:
        raise JoseError(f"{what}: {exc}") from exc
    if not isinstance(value, dict):
        raise JoseError(f"{what} is not a JSON object")
    return value


# --- P-256 keys and ES256 encodings: cityid.keys, with JOSE's error type ---------------------------------


def der_to_raw_p256(der: bytes) -> bytes:
    """DER ``ECDSA-Sig-Value`` → 64-byte ``R || S`` (RFC 7518 §3.4)."""
    try:
        return es256_der_to_raw(der)
    except KeyFormatError as exc:
        raise JoseError(str(exc)) from None


@lru_cache(maxsize=1024)
def p256_key(point: bytes) -> P256PublicKey:
    """A validated key for an uncompressed point (cached per point: verifiers see the same keys again)."""
    try:
        return P256PublicKey.from_point(point)
    except KeyFormatError as exc:
        raise JoseError(str(exc)) from None


def jwk_from_point(point: bytes) -> dict[str, str]:
    """Uncompressed P-256 point → public JWK (validated)."""
    return p256_key(bytes(point)).jwk()


def point_from_jwk(jwk: object) -> bytes:
    """Public P-256 JWK → uncompressed point; the point must lie on the curve; private members refused."""
    try:
        return P256PublicKey.from_jwk(jwk).point
    except KeyFormatError as exc:
        raise JoseError(str(exc)) from None


# --- compact JWS (RFC 7515 §7.1) ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompactJws:
    """A parsed compact JWS; ``signing_input`` is the ASCII ``header.payload`` the signature covers."""

    header: dict[str, Any]
    payload: dict[str, Any]
    signing_input: bytes
    signature: bytes


def signing_input(header: dict[str, Any], payload: dict[str, Any]) -> bytes:
    """``base64url(header) '.' base64url(payload)`` as ASCII bytes (RFC 7515 §5.1)."""
    return f"{b64url_json(header)}.{b64url_json(payload)}".encode("ascii")


def attach_signature(signing_input_: bytes, raw_signature: bytes) -> str:
    """Finish a compact JWS from its signing input and a 64-byte ES256 signature."""
    if len(raw_signature) != 64:
        raise JoseError(f"ES256 signature must be 64 bytes, got {len(raw_signature)}")
    return f"{signing_input_.decode('ascii')}.{b64url_encode(raw_signature)}"


def split_compact(token: str) -> tuple[str, str, str]:
    """Split a compact JWS into its three segments, with clear errors (RFC 7515 §7.1)."""
    if not isinstance(token, str):
        raise JoseError("compact JWS must be a string")
    parts = token.split(".")
    if len(parts) != 3:
        raise JoseError(f"compact JWS must have 3 segments, got {len(parts)}")
    if not parts[0] or not parts[1] or not parts[2]:
        raise JoseError("compact JWS has an empty segment")
    return parts[0], parts[1], parts[2]


def parse_compact(token: str) -> CompactJws:
    """Parse (without verifying) a compact JWS with JSON-object header and payload and a 64-byte sig."""
    h, p, s = split_compact(token)
    header = decode_json_segment(h, "JWS header")
    payload = decode_json_segment(p, "JWS payload")
    signature = b64url_decode(s)
    if len(signature) != 64:
        raise JoseError(f"ES256 signature must be 64 bytes, got {len(signature)}")
    return CompactJws(header, payload, f"{h}.{p}".encode("ascii"), signature)


def es256_sign(private_key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ES256-sign ``data`` with a ``cryptography`` key; returns the 64-byte ``R || S``."""
    return der_to_raw_p256(private_key.sign(data, ec.ECDSA(hashes.SHA256())))


def es256_verify(key: bytes | P256PublicKey, data: bytes, raw_signature: bytes) -> bool:
    """Verify a 64-byte ES256 signature over ``data`` with a point (65 bytes) or a key."""
    public_key = p256_key(bytes(key)) if isinstance(key, bytes | bytearray) else key
    return public_key.verify_raw(raw_signature, data)


def sign_compact(
    header: dict[str, Any], payload: dict[str, Any], private_key: ec.EllipticCurvePrivateKey
) -> str:
    """Build and ES256-sign a compact JWS with a ``cryptography`` key."""
    data = signing_input(header, payload)
    return attach_signature(data, es256_sign(private_key, data))
