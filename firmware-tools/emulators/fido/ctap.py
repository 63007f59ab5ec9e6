"""CTAP 2.1 wire constants, strict CBOR request decoding and typed parameter access (CTAP 2.1 §6, §8).

Command bytes and status codes are python-fido2's enums (:class:`fido2.ctap2.Ctap2.CMD`,
:class:`fido2.ctap.CtapError.ERR`); errors are raised as :class:`fido2.ctap.CtapError` carrying the code.
Only the request/response map keys, which python-fido2 keeps positional, are defined here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from enum import IntEnum
from typing import Any, Literal, TypeVar, overload

from fido2 import cbor
from fido2.ctap import CtapError
from fido2.ctap2.base import Ctap2

logger = logging.getLogger(__name__)

ERR = CtapError.ERR
CMD = Ctap2.CMD

#: CTAP 2.1 §8: nested CBOR structures are limited to four levels for requests.
MAX_CBOR_DEPTH = 4

T = TypeVar("T")


def fail(code: ERR) -> CtapError:
    """A :class:`CtapError` for ``code`` (``raise fail(ERR.X)``)."""
    return CtapError(code)


class MakeCredentialParam(IntEnum):
    """authenticatorMakeCredential request keys (CTAP 2.1 §6.1)."""

    CLIENT_DATA_HASH = 1
    RP = 2
    USER = 3
    PUB_KEY_CRED_PARAMS = 4
    EXCLUDE_LIST = 5
    EXTENSIONS = 6
    OPTIONS = 7
    PIN_UV_AUTH_PARAM = 8
    PIN_UV_AUTH_PROTOCOL = 9
    ENTERPRISE_ATTESTATION = 10


class MakeCredentialResult(IntEnum):
    """authenticatorMakeCredential response keys (CTAP 2.1 §6.1)."""

    FMT = 1
    AUTH_DATA = 2
    ATT_STMT = 3
    EP_ATT = 4
    LARGE_BLOB_KEY = 5


class GetAssertionParam(IntEnum):
    """authenticatorGetAssertion request keys (CTAP 2.1 §6.2)."""

    RP_ID = 1
    CLIENT_DATA_HASH = 2
    ALLOW_LIST = 3
    EXTENSIONS = 4
    OPTIONS = 5
    PIN_UV_AUTH_PARAM = 6
    PIN_UV_AUTH_PROTOCOL = 7


class GetAssertionResult(IntEnum):
    """authenticatorGetAssertion response keys (CTAP 2.1 §6.2)."""

    CREDENTIAL = 1
    AUTH_DATA = 2
    SIGNATURE = 3
    USER = 4
    NUMBER_OF_CREDENTIALS = 5
    USER_SELECTED = 6
    LARGE_BLOB_KEY = 7


class InfoKey(IntEnum):
    """authenticatorGetInfo response keys (CTAP 2.1 §6.4)."""

    VERSIONS = 1
    EXTENSIONS = 2
    AAGUID = 3
    OPTIONS = 4
    MAX_MSG_SIZE = 5
    PIN_UV_AUTH_PROTOCOLS = 6
    MAX_CREDENTIAL_COUNT_IN_LIST = 7
    MAX_CREDENTIAL_ID_LENGTH = 8
    TRANSPORTS = 9
    ALGORITHMS = 10
    MAX_SERIALIZED_LARGE_BLOB_ARRAY = 11
    FORCE_PIN_CHANGE = 12
    MIN_PIN_LENGTH = 13
    FIRMWARE_VERSION = 14
    REMAINING_DISCOVERABLE_CREDENTIALS = 20


class ClientPinParam(IntEnum):
    """authenticatorClientPIN request keys (CTAP 2.1 §6.5.5)."""

    PIN_UV_AUTH_PROTOCOL = 1
    SUB_COMMAND = 2
    KEY_AGREEMENT = 3
    PIN_UV_AUTH_PARAM = 4
    NEW_PIN_ENC = 5
    PIN_HASH_ENC = 6
    PERMISSIONS = 9
    RP_ID = 10


class CredMgmtParam(IntEnum):
    """authenticatorCredentialManagement request keys (CTAP 2.1 §6.8)."""

    SUB_COMMAND = 1
    SUB_COMMAND_PARAMS = 2
    PIN_UV_AUTH_PROTOCOL = 3
    PIN_UV_AUTH_PARAM = 4


class LargeBlobsParam(IntEnum):
    """authenticatorLargeBlobs request keys (CTAP 2.1 §6.10)."""

    GET = 1
    SET = 2
    OFFSET = 3
    LENGTH = 4
    PIN_UV_AUTH_PARAM = 5
    PIN_UV_AUTH_PROTOCOL = 6


def _depth(value: Any) -> int:
    """Nesting depth in containers (maps/arrays); scalars are depth 0."""
    if isinstance(value, Mapping):
        return 1 + max((_depth(v) for kv in value.items() for v in kv), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def decode_cbor(data: bytes) -> Any:
    """Decode one canonical CTAP2 CBOR item (CTAP 2.1 §8); anything else is CTAP2_ERR_INVALID_CBOR.

    python-fido2's decoder is lenient (it reads floats/null as booleans, truncates short strings and
    keeps the last of duplicate keys), so the item must also re-encode to exactly the same bytes.
    """
    try:
        value = cbor.decode(data)
        canonical = cbor.encode(value) == bytes(data)
    except Exception as exc:  # the decoder raises IndexError, struct.error, KeyError, RecursionError, ...
        logger.debug("undecodable CBOR: %s", type(exc).__name__)
        raise fail(ERR.INVALID_CBOR) from None
    if not canonical:
        raise fail(ERR.INVALID_CBOR)
    if _depth(value) > MAX_CBOR_DEPTH:
        raise fail(ERR.INVALID_CBOR)
    return value


def encode_cbor(value: Any) -> bytes:
    """Canonical CTAP2 CBOR encoding."""
    return cbor.encode(value)


class Params:
    """Typed, checked access to a request map: wrong types give CTAP2_ERR_CBOR_UNEXPECTED_TYPE,
    missing required members CTAP2_ERR_MISSING_PARAMETER (CTAP 2.1 §6 "process" steps)."""

    def __init__(self, data: Mapping[Any, Any] | None) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise fail(ERR.CBOR_UNEXPECTED_TYPE)
        self.data = data

    @classmethod
    def decode(cls, payload: bytes) -> Params:
        """Decode a command's CBOR parameter map (empty payload = no parameters)."""
        if not payload:
            return cls({})
        return cls(decode_cbor(payload))

    def __contains__(self, key: int) -> bool:
        return key in self.data

    def _get(self, key: Any, kind: type | tuple[type, ...], required: bool) -> Any:
        if key not in self.data:
            if required:
                raise fail(ERR.MISSING_PARAMETER)
            return None
        value = self.data[key]
        if isinstance(value, bool) and kind is int:
            raise fail(ERR.CBOR_UNEXPECTED_TYPE)
        if not isinstance(value, kind):
            raise fail(ERR.CBOR_UNEXPECTED_TYPE)
        return value

    @overload
    def bytes_(self, key: Any, required: Literal[True]) -> bytes: ...
    @overload
    def bytes_(self, key: Any, required: bool = False) -> bytes | None: ...
    def bytes_(self, key: Any, required: bool = False) -> bytes | None:
        return self._get(key, bytes, required)

    @overload
    def text(self, key: Any, required: Literal[True]) -> str: ...
    @overload
    def text(self, key: Any, required: bool = False) -> str | None: ...
    def text(self, key: Any, required: bool = False) -> str | None:
        return self._get(key, str, required)

    @overload
    def uint(self, key: Any, required: Literal[True]) -> int: ...
    @overload
    def uint(self, key: Any, required: bool = False) -> int | None: ...
    def uint(self, key: Any, required: bool = False) -> int | None:
        value = self._get(key, int, required)
        if value is not None and value < 0:
            raise fail(ERR.CBOR_UNEXPECTED_TYPE)
        return value

    @overload
    def int_(self, key: Any, required: Literal[True]) -> int: ...
    @overload
    def int_(self, key: Any, required: bool = False) -> int | None: ...
    def int_(self, key: Any, required: bool = False) -> int | None:
        return self._get(key, int, required)

    @overload
    def bool_(self, key: Any, required: Literal[True]) -> bool: ...
    @overload
    def bool_(self, key: Any, required: bool = False) -> bool | None: ...
    def bool_(self, key: Any, required: bool = False) -> bool | None:
        return self._get(key, bool, required)

    @overload
    def map(self, key: Any, required: Literal[True]) -> Params: ...
    @overload
    def map(self, key: Any, required: bool = False) -> Params | None: ...
    def map(self, key: Any, required: bool = False) -> Params | None:
        value = self._get(key, Mapping, required)
        return None if value is None else Params(value)

    @overload
    def raw_map(self, key: Any, required: Literal[True]) -> Mapping[Any, Any]: ...
    @overload
    def raw_map(self, key: Any, required: bool = False) -> Mapping[Any, Any] | None: ...
    def raw_map(self, key: Any, required: bool = False) -> Mapping[Any, Any] | None:
        return self._get(key, Mapping, required)

    @overload
    def list_(self, key: Any, required: Literal[True]) -> list[Any]: ...
    @overload
    def list_(self, key: Any, required: bool = False) -> list[Any] | None: ...
    def list_(self, key: Any, required: bool = False) -> list[Any] | None:
        return self._get(key, list, required)

    def descriptors(self, key: Any) -> list[bytes]:
        """A list of PublicKeyCredentialDescriptors (WebAuthn §5.8.3): the ids of type "public-key"."""
        items = self.list_(key) or []
        ids: list[bytes] = []
        for item in items:
            desc = Params(item) if isinstance(item, Mapping) else None
            if desc is None:
                raise fail(ERR.CBOR_UNEXPECTED_TYPE)
            kind = desc.text("type", required=True)
            cred_id = desc.bytes_("id", required=True)
            if kind == "public-key" and cred_id is not None:
                ids.append(cred_id)
        return ids

    def options(self, key: Any) -> dict[str, bool]:
        """An options map: string keys to booleans (CTAP 2.1 §6.1.1 "options")."""
        raw = self.raw_map(key) or {}
        out: dict[str, bool] = {}
        for name, value in raw.items():
            if not isinstance(name, str) or not isinstance(value, bool):
                raise fail(ERR.CBOR_UNEXPECTED_TYPE)
            out[name] = value
        return out
