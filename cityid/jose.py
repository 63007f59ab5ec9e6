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

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from cityid.errors import DecodeError

P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
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
            value, end = _DECODER.scan_once(text, 0)
            if end == len(text):
                return value
        except StopIteration:
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


# --- ECDSA signature encodings (RFC 7518 §3.4) -------------------------------------------------------


def der_to_raw_p256(der: bytes) -> bytes:
    """DER ``ECDSA-Sig-Value`` → 64-byte ``R || S`` (RFC 7518 §3.4)."""
    try:
        r, s = decode_dss_signature(bytes(der))
    except (ValueError, TypeError) as exc:
        raise JoseError(f"invalid DER ECDSA signature: {exc}") from exc
    if not (0 < r < P256_ORDER and 0 < s < P256_ORDER):
        raise JoseError("ECDSA signature values out of range for P-256")
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def raw_to_der_p256(raw: bytes) -> bytes:
    """64-byte ``R || S`` → DER ``ECDSA-Sig-Value``."""
    if len(raw) != 64:
        raise JoseError(f"ES256 signature must be 64 bytes, got {len(raw)}")
    return encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))


# --- P-256 points and JWKs (RFC 7518 §6.2.1) ---------------------------------------------------------


@lru_cache(maxsize=1024)
def public_key_from_point(point: bytes) -> ec.EllipticCurvePublicKey:
    """Uncompressed SEC1 point (65 bytes) → a validated ``cryptography`` key (cached per point)."""
    if len(point) != 65 or point[0] != 0x04:
        raise JoseError("P-256 point must be 65 bytes, uncompressed (04 || x || y)")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError as exc:
        raise JoseError("point is not on the P-256 curve") from exc


def point_from_public_key(key: ec.EllipticCurvePublicKey) -> bytes:
    """A ``cryptography`` P-256 public key → uncompressed SEC1 point."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    if not isinstance(key.curve, ec.SECP256R1):
        raise JoseError("only P-256 keys are supported")
    return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def jwk_from_point(point: bytes) -> dict[str, str]:
    """Uncompressed P-256 point → public JWK ``{"kty":"EC","crv":"P-256","x","y"}`` (validated)."""
    public_key_from_point(bytes(point))
    return {"kty": "EC", "crv": "P-256", "x": b64url_encode(point[1:33]), "y": b64url_encode(point[33:65])}


def point_from_jwk(jwk: object) -> bytes:
    """Public P-256 JWK → uncompressed point; the point must lie on the curve; private members refused."""
    if not isinstance(jwk, dict):
        raise JoseError("JWK must be a JSON object")
    if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
        raise JoseError("JWK must be kty EC, crv P-256")
    if "d" in jwk:
        raise JoseError("JWK contains a private key")
    x, y = jwk.get("x"), jwk.get("y")
    if not isinstance(x, str) or not isinstance(y, str):
        raise JoseError("JWK x and y must be strings")
    xb, yb = b64url_decode(x), b64url_decode(y)
    if len(xb) != 32 or len(yb) != 32:
        raise JoseError("JWK x and y must be 32 bytes each")
    point = b"\x04" + xb + yb
    public_key_from_point(point)
    return point


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
    return der_to_raw_p256(private_key.sign(data, _ECDSA_SHA256))


def es256_verify(key: bytes | ec.EllipticCurvePublicKey, data: bytes, raw_signature: bytes) -> bool:
    """Verify a 64-byte ES256 signature over ``data`` with a point (65 bytes) or a public key."""
    if len(raw_signature) != 64:
        return False
    r = int.from_bytes(raw_signature[:32], "big")
    s = int.from_bytes(raw_signature[32:], "big")
    if not (0 < r < P256_ORDER and 0 < s < P256_ORDER):
        return False
    public_key = public_key_from_point(bytes(key)) if isinstance(key, bytes | bytearray) else key
    try:
        public_key.verify(encode_dss_signature(r, s), data, _ECDSA_SHA256)
    except InvalidSignature:
        return False
    return True


def sign_compact(
    header: dict[str, Any], payload: dict[str, Any], private_key: ec.EllipticCurvePrivateKey
) -> str:
    """Build and ES256-sign a compact JWS with a ``cryptography`` key."""
    data = signing_input(header, payload)
    return attach_signature(data, es256_sign(private_key, data))
