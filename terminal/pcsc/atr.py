"""ATR parsing, only as far as the terminal needs it (ISO/IEC 7816-3 §8.2, ISO/IEC 7816-4 §12.1).

The terminal reads the historical bytes to learn whether the card accepts extended Lc/Le fields: the
"card capabilities" compact-TLV object (tag 7, third software function table, bit b7 — 7816-4 §12.1.1.9).
"""

from __future__ import annotations

from dataclasses import dataclass

from cityid.errors import DecodeError

#: Third byte of the card-capabilities object: "extended Lc and Le fields" (7816-4 Table 118).
_EXTENDED_LC_LE = 0x40
_CARD_CAPABILITIES = 0x7


@dataclass(frozen=True, slots=True)
class AtrInfo:
    """What the terminal learns from an ATR."""

    atr: bytes
    protocols: tuple[int, ...]
    historical: bytes
    extended_length: bool | None  # None: the card does not say


def parse_atr(atr: bytes) -> AtrInfo:
    """Split an ATR into interface and historical bytes (7816-3 §8.2.2); raise DecodeError if truncated."""
    if len(atr) < 2 or atr[0] not in (0x3B, 0x3F):
        raise DecodeError("ATR must start with TS 3B or 3F")
    y = atr[1] >> 4
    k = atr[1] & 0x0F
    i = 2
    protocols: list[int] = []
    while True:
        for bit in (0x1, 0x2, 0x4):  # TA, TB, TC
            if y & bit:
                i += 1
        if not y & 0x8:  # no TD
            break
        if i >= len(atr):
            raise DecodeError("ATR truncated in interface bytes")
        td = atr[i]
        i += 1
        protocols.append(td & 0x0F)
        y = td >> 4
    if i + k > len(atr):
        raise DecodeError("ATR truncated in historical bytes")
    historical = bytes(atr[i : i + k])
    return AtrInfo(bytes(atr), tuple(protocols) or (0,), historical, _extended_from_historical(historical))


def _extended_from_historical(hist: bytes) -> bool | None:
    """Find the card-capabilities compact-TLV object in category-00/80 historical bytes (7816-4 §12.1.1)."""
    if not hist or hist[0] not in (0x00, 0x80):
        return None
    body = hist[1:-3] if hist[0] == 0x00 else hist[1:]  # category 00 ends with a 3-byte status indicator
    i = 0
    while i < len(body):
        tag, length = body[i] >> 4, body[i] & 0x0F
        value = body[i + 1 : i + 1 + length]
        i += 1 + length
        if tag == _CARD_CAPABILITIES and len(value) >= 3:
            return bool(value[2] & _EXTENDED_LC_LE)
    return None
