"""authenticatorLargeBlobs: the serialized large-blob array, read and written in fragments (CTAP 2.1 §6.10).

The array is stored whole in the ``fido_large_blobs`` section. A write arrives in fragments with increasing
offsets; it is kept in memory until the last fragment, then its trailing LEFT(SHA-256, 16) is checked and it
replaces the stored array in one atomic write (a torn write leaves the old array: §6.10.3 step 14).
Once a PIN is set, writes need a pinUvAuthParam with the ``lbw`` permission over
``32×0xff || 0x0c 0x00 || uint32LE(offset) || SHA-256(fragment)``, and reads see the stored array only while
a pinUvAuthToken from this power cycle is live; before that they see the empty array (a deviation, see
:meth:`Authenticator.large_blob_array_for_reading`).
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any

from emulators.fido.clientpin import PERMISSION, pin_protocol
from emulators.fido.ctap import ERR, LargeBlobsParam, Params, fail

if TYPE_CHECKING:
    from emulators.fido.authenticator import Authenticator

logger = logging.getLogger(__name__)

#: Smallest valid serialized array: CBOR [] plus the 16-byte hash.
MIN_ARRAY = 17


class LargeBlobHandler:
    """The large-blob command of one :class:`Authenticator`."""

    def __init__(self, auth: Authenticator, max_fragment: int, max_size: int) -> None:
        self.auth = auth
        self.max_fragment = max_fragment
        self.max_size = max_size
        self.clear()

    def clear(self) -> None:
        """Drop a write in progress."""
        self._expected_length: int | None = None
        self._next_offset = 0
        self._buffer = bytearray()

    def process(self, p: Params) -> dict[int, Any] | None:
        P = LargeBlobsParam  # noqa: N806
        get = p.uint(P.GET)
        data = p.bytes_(P.SET)
        offset = p.uint(P.OFFSET, required=True) or 0
        length = p.uint(P.LENGTH)
        if (get is None) == (data is None):
            raise fail(ERR.INVALID_PARAMETER)
        if get is not None:
            if length is not None:
                raise fail(ERR.INVALID_PARAMETER)
            if get > self.max_fragment:
                raise fail(ERR.INVALID_LENGTH)
            stored = self.auth.large_blob_array_for_reading()
            if offset > len(stored):
                raise fail(ERR.INVALID_PARAMETER)
            return {1: stored[offset : offset + get]}
        assert data is not None
        if len(data) > self.max_fragment:
            raise fail(ERR.INVALID_LENGTH)
        if offset == 0:
            if length is None:
                raise fail(ERR.INVALID_PARAMETER)
            if length > self.max_size:
                raise fail(ERR.LARGE_BLOB_STORAGE_FULL)
            if length < MIN_ARRAY:
                raise fail(ERR.INVALID_PARAMETER)
            self.clear()
            self._expected_length = length
        elif length is not None:
            raise fail(ERR.INVALID_PARAMETER)
        if self._expected_length is None or offset != self._next_offset:
            raise fail(ERR.INVALID_SEQ)
        param = p.bytes_(P.PIN_UV_AUTH_PARAM)
        if self.auth.state.pin_set or param is not None:
            if param is None:
                raise fail(ERR.PUAT_REQUIRED)
            protocol = pin_protocol(p.uint(P.PIN_UV_AUTH_PROTOCOL))
            digest = hashlib.sha256(data).digest()
            message = b"\xff" * 32 + b"\x0c\x00" + offset.to_bytes(4, "little") + digest
            self.auth.pin.verify_token(protocol, param, message, PERMISSION.LARGE_BLOB_WRITE, None)
        if offset + len(data) > self._expected_length:
            raise fail(ERR.INVALID_PARAMETER)
        self._buffer += data
        self._next_offset += len(data)
        if self._next_offset == self._expected_length:
            blob = bytes(self._buffer)
            self.clear()
            if hashlib.sha256(blob[:-16]).digest()[:16] != blob[-16:]:
                raise fail(ERR.INTEGRITY_FAILURE)
            self.auth.state.save_large_blob_array(blob)
            logger.info("large-blob array written (%d bytes)", len(blob))
        return None
