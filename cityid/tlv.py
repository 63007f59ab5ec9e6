"""BER-TLV encoding as used by ISO 7816-4 (§6.3) and PIV (SP 800-73-4 §3 / Part 2).

Tags are kept as integers of their encoded bytes (``0x5FC102`` is the 3-byte tag 5F C1 02).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from cityid.errors import TlvError

MAX_LENGTH = 0xFFFFFF


def _read_tag(data: bytes | memoryview, offset: int) -> tuple[int, int]:
    if offset >= len(data):
        raise TlvError("truncated TLV: missing tag")
    first = data[offset]
    tag = first
    offset += 1
    if first & 0x1F == 0x1F:  # multi-byte tag: subsequent bytes while b8 set
        for _ in range(3):
            if offset >= len(data):
                raise TlvError("truncated TLV: multi-byte tag")
            b = data[offset]
            offset += 1
            tag = (tag << 8) | b
            if not b & 0x80:
                break
        else:
            raise TlvError("tag longer than 4 bytes")
    return tag, offset


def _read_length(data: bytes | memoryview, offset: int) -> tuple[int, int]:
    if offset >= len(data):
        raise TlvError("truncated TLV: missing length")
    first = data[offset]
    offset += 1
    if first < 0x80:
        return first, offset
    n = first & 0x7F
    if n == 0 or n > 3:
        raise TlvError(f"unsupported length encoding {first:02X}")
    if offset + n > len(data):
        raise TlvError("truncated TLV: length bytes")
    length = int.from_bytes(data[offset : offset + n], "big")
    return length, offset + n


def encode_tag(tag: int) -> bytes:
    """Encode an integer tag as its bytes."""
    if tag < 0:
        raise TlvError("negative tag")
    return tag.to_bytes(max(1, (tag.bit_length() + 7) // 8), "big")


def encode_length(length: int) -> bytes:
    """Encode a BER length (short form below 128, else 81/82/83 long forms)."""
    if length < 0 or length > MAX_LENGTH:
        raise TlvError(f"length {length} out of range")
    if length < 0x80:
        return bytes([length])
    if length <= 0xFF:
        return b"\x81" + bytes([length])
    if length <= 0xFFFF:
        return b"\x82" + length.to_bytes(2, "big")
    return b"\x83" + length.to_bytes(3, "big")


@dataclass(frozen=True, slots=True)
class Tlv:
    """One decoded TLV: its tag (as int) and raw value bytes."""

    tag: int
    value: bytes

    def __bytes__(self) -> bytes:
        return encode_tlv(self.tag, self.value)

    @property
    def constructed(self) -> bool:
        """True when the tag's first byte has bit 6 set (value holds nested TLVs)."""
        return bool(encode_tag(self.tag)[0] & 0x20)

    def children(self) -> list[Tlv]:
        """Parse the value as a list of nested TLVs."""
        return parse_tlv_list(self.value)

    @classmethod
    def parse(cls, data: bytes, offset: int = 0) -> tuple[Tlv, int]:
        """Parse one TLV at ``offset``; return it and the offset after it."""
        tag, offset = _read_tag(data, offset)
        length, offset = _read_length(data, offset)
        end = offset + length
        if end > len(data):
            raise TlvError(f"truncated TLV: tag {tag:X} wants {length} bytes, {len(data) - offset} left")
        return cls(tag, bytes(data[offset:end])), end

    @classmethod
    def unpack(cls, tag: int, data: bytes) -> bytes:
        """Parse ``data`` as exactly one TLV with ``tag`` and return its value."""
        tlv, end = cls.parse(data)
        if tlv.tag != tag:
            raise TlvError(f"expected tag {tag:X}, got {tlv.tag:X}")
        if end != len(data):
            raise TlvError(f"{len(data) - end} trailing bytes after tag {tag:X}")
        return tlv.value


def encode_tlv(tag: int, value: bytes = b"") -> bytes:
    """Encode one TLV."""
    return encode_tag(tag) + encode_length(len(value)) + bytes(value)


def iter_tlv(data: bytes) -> Iterator[Tlv]:
    """Iterate over consecutive TLVs filling ``data`` exactly."""
    offset = 0
    while offset < len(data):
        tlv, offset = Tlv.parse(data, offset)
        yield tlv


def parse_tlv_list(data: bytes) -> list[Tlv]:
    """Parse consecutive TLVs; raise :class:`TlvError` on any malformed or trailing byte."""
    return list(iter_tlv(data))


def parse_tlv_dict(data: bytes) -> dict[int, bytes]:
    """Parse consecutive TLVs into ``{tag: value}``; duplicate tags are an error."""
    result: dict[int, bytes] = {}
    for tlv in iter_tlv(data):
        if tlv.tag in result:
            raise TlvError(f"duplicate tag {tlv.tag:X}")
        result[tlv.tag] = tlv.value
    return result


def encode_tlvs(items: Iterable[tuple[int, bytes]]) -> bytes:
    """Encode several TLVs back to back."""
    return b"".join(encode_tlv(t, v) for t, v in items)
