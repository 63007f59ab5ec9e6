"""Small request-schema checks for the JSON API: each failure is a :class:`ValidationError` (400)."""

from __future__ import annotations

import re
from typing import Any

from cityid.jose import JoseError, b64url_decode
from cityid.keys import KeyFormatError, P256PublicKey
from server.service import ValidationError

IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9_.:-]{8,128}$")
CREDENTIAL_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
DID = re.compile(r"^did:ethr:[A-Za-z0-9x:-]{1,40}:0x[0-9a-fA-F]{40}$")
MAX_BATCH = 500


def body_object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValidationError("request body must be a JSON object")
    return data


def only_keys(obj: dict[str, Any], required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    missing = [k for k in required if k not in obj]
    if missing:
        raise ValidationError(f"missing field(s): {', '.join(missing)}")
    extra = sorted(str(k) for k in obj if k not in required and k not in optional)
    if extra:
        raise ValidationError(f"unexpected field(s): {', '.join(extra)}")


def idempotency_key(value: Any) -> str:
    if not isinstance(value, str) or not IDEMPOTENCY_KEY.match(value):
        raise ValidationError("idempotency_key must be 8-128 characters of A-Z a-z 0-9 _ . : -")
    return value


def credential_id(value: Any) -> str:
    if not isinstance(value, str) or not CREDENTIAL_ID.match(value):
        raise ValidationError("credential id must be a lowercase UUID")
    return value


def did(value: Any) -> str:
    if not isinstance(value, str) or not DID.match(value):
        raise ValidationError("DID must be did:ethr:<network>:<0x address>")
    return value


def p256_jwk(value: Any, what: str) -> bytes:
    """A public P-256 JWK (RFC 7518 §6.2.1) → its uncompressed point; private members are refused."""
    try:
        return P256PublicKey.from_jwk(value).point
    except KeyFormatError as exc:
        raise ValidationError(f"{what}: {exc}") from exc


def card_serial(value: Any) -> bytes:
    if not isinstance(value, str) or not re.fullmatch(r"(?:[0-9a-fA-F]{2}){4,32}", value):
        raise ValidationError("card_serial must be 4-32 bytes of hex")
    return bytes.fromhex(value)


def b64url_bytes(value: Any, what: str, max_len: int = 1024) -> bytes:
    try:
        if not isinstance(value, str):
            raise JoseError("not a string")
        data = b64url_decode(value)
    except JoseError as exc:
        raise ValidationError(f"{what} must be base64url") from exc
    if not 0 < len(data) <= max_len:
        raise ValidationError(f"{what} must be 1-{max_len} bytes")
    return data
