"""One value type for a P-256 public key, and the ES256 signature encodings.

Card keys arrive as SEC1 points (PIV GENERATE, SP 800-73-4 Part 2 §3.3.2), FIDO keys as COSE_Key
(RFC 9053 §7.1.1), holder keys in a credential as JWK (RFC 7518 §6.2.1), keys in certificates as
SubjectPublicKeyInfo (RFC 5280 §4.1.2.7), and ``cryptography`` wants its own object. :class:`P256PublicKey`
is validated once (the point lies on the curve) and converts to each of those, so no call site converts by
hand. Signatures: a card answers DER ``ECDSA-Sig-Value``; JWS ES256 is raw ``R || S`` (RFC 7518 §3.4).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from cityid.errors import DecodeError

#: Order of the P-256 group (SEC 2 §2.4.2).
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_COSE_KTY_EC2, _COSE_ALG_ES256, _COSE_CRV_P256 = 2, -7, 1


class KeyFormatError(DecodeError):
    """Bytes or a structure that is not a valid P-256 public key or ES256 signature."""


def _b64u(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64u(text: str) -> bytes:
    import base64
    import binascii

    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise KeyFormatError(f"not base64url: {exc}") from None


@dataclass(frozen=True, slots=True)
class P256PublicKey:
    """A P-256 public key, held as its uncompressed SEC1 point ``04 || x || y`` (validated on creation)."""

    point: bytes
    _crypto: ec.EllipticCurvePublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        point = bytes(self.point)
        if len(point) != 65 or point[0] != 0x04:
            raise KeyFormatError("P-256 point must be 65 bytes, uncompressed (04 || x || y)")
        try:
            key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        except ValueError:
            raise KeyFormatError("the point is not on the P-256 curve") from None
        object.__setattr__(self, "point", point)
        object.__setattr__(self, "_crypto", key)

    # --- from … -----------------------------------------------------------------------------------

    @classmethod
    def from_point(cls, point: bytes) -> P256PublicKey:
        return cls(bytes(point))

    @classmethod
    def from_crypto(cls, key: object) -> P256PublicKey:
        """A ``cryptography`` public key (must be P-256)."""
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
            raise KeyFormatError("only P-256 keys are supported")
        encoding, fmt = serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        return cls(key.public_bytes(encoding, fmt))

    @classmethod
    def from_cose(cls, cose: Mapping[int, Any]) -> P256PublicKey:
        """An ES256 EC2 COSE_Key (RFC 9053 §7.1.1: 1 kty=2, 3 alg=-7, -1 crv=1, -2 x, -3 y)."""
        try:
            kty, crv, x, y = cose[1], cose.get(-1), cose[-2], cose[-3]
        except (KeyError, TypeError, AttributeError):
            raise KeyFormatError("COSE key lacks kty, x or y") from None
        alg = cose.get(3)
        if kty != _COSE_KTY_EC2 or crv != _COSE_CRV_P256 or alg not in (None, _COSE_ALG_ES256):
            raise KeyFormatError("COSE key is not an ES256 P-256 EC2 key")
        if not isinstance(x, bytes | bytearray) or not isinstance(y, bytes | bytearray):
            raise KeyFormatError("COSE key x and y must be byte strings")
        if len(x) != 32 or len(y) != 32:
            raise KeyFormatError("COSE key x and y must be 32 bytes each")
        return cls(b"\x04" + bytes(x) + bytes(y))

    @classmethod
    def from_jwk(cls, jwk: object) -> P256PublicKey:
        """A public JWK ``{"kty":"EC","crv":"P-256","x","y"}``; private members are refused."""
        if not isinstance(jwk, Mapping):
            raise KeyFormatError("JWK must be a JSON object")
        if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
            raise KeyFormatError("JWK must be kty EC, crv P-256")
        if "d" in jwk:
            raise KeyFormatError("JWK contains a private key")
        x, y = jwk.get("x"), jwk.get("y")
        if not isinstance(x, str) or not isinstance(y, str):
            raise KeyFormatError("JWK x and y must be strings")
        xb, yb = _unb64u(x), _unb64u(y)
        if len(xb) != 32 or len(yb) != 32:
            raise KeyFormatError("JWK x and y must be 32 bytes each")
        return cls(b"\x04" + xb + yb)

    @classmethod
    def from_spki(cls, data: bytes) -> P256PublicKey:
        """SubjectPublicKeyInfo, PEM or DER."""
        try:
            if data.lstrip().startswith(b"-----"):
                key = serialization.load_pem_public_key(data)
            else:
                key = serialization.load_der_public_key(data)
        except (ValueError, TypeError) as exc:
            raise KeyFormatError(f"not a public key: {exc}") from None
        return cls.from_crypto(key)

    # --- to … -------------------------------------------------------------------------------------

    @property
    def x(self) -> bytes:
        return self.point[1:33]

    @property
    def y(self) -> bytes:
        return self.point[33:65]

    @property
    def crypto(self) -> ec.EllipticCurvePublicKey:
        """The ``cryptography`` key (built once, at validation)."""
        return self._crypto

    def jwk(self) -> dict[str, str]:
        return {"kty": "EC", "crv": "P-256", "x": _b64u(self.x), "y": _b64u(self.y)}

    def cose(self) -> dict[int, Any]:
        return {1: _COSE_KTY_EC2, 3: _COSE_ALG_ES256, -1: _COSE_CRV_P256, -2: self.x, -3: self.y}

    def spki_pem(self) -> str:
        return self._crypto.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")

    def hex(self) -> str:
        return self.point.hex()

    # --- use --------------------------------------------------------------------------------------

    def verify_der(self, signature: bytes, data: bytes) -> bool:
        """ECDSA-SHA256 over ``data`` with a DER signature; False when it does not verify."""
        try:
            self._crypto.verify(bytes(signature), data, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            return False
        return True

    def verify_raw(self, signature: bytes, data: bytes) -> bool:
        """ECDSA-SHA256 with a raw ES256 signature ``R || S``."""
        try:
            der = es256_raw_to_der(signature)
        except KeyFormatError:
            return False
        return self.verify_der(der, data)


def es256_der_to_raw(der: bytes) -> bytes:
    """DER ``ECDSA-Sig-Value`` → 64-byte ``R || S`` (RFC 7518 §3.4); values must be in range for P-256."""
    try:
        r, s = decode_dss_signature(bytes(der))
    except (ValueError, TypeError) as exc:
        raise KeyFormatError(f"invalid DER ECDSA signature: {exc}") from None
    if not (0 < r < P256_ORDER and 0 < s < P256_ORDER):
        raise KeyFormatError("ECDSA signature values out of range for P-256")
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def es256_raw_to_der(raw: bytes) -> bytes:
    """64-byte ``R || S`` → DER ``ECDSA-Sig-Value``."""
    if len(raw) != 64:
        raise KeyFormatError(f"ES256 signature must be 64 bytes, got {len(raw)}")
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    if not (0 < r < P256_ORDER and 0 < s < P256_ORDER):
        raise KeyFormatError("ECDSA signature values out of range for P-256")
    return encode_dss_signature(r, s)


def low_s(raw: bytes) -> bytes:
    """``R || S`` with S in the lower half of the group order (canonical; harmless for ES256 verifiers)."""
    r, s = raw[:32], int.from_bytes(raw[32:], "big")
    if s > P256_ORDER // 2:
        s = P256_ORDER - s
    return r + s.to_bytes(32, "big")
