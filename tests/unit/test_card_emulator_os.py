"""The emulator's card OS (ISO 7816-4 §5): decoding, class checks, SELECT routing, command and response
chaining, and the promise that no byte string makes it crash or answer anything but a proper status word."""

from __future__ import annotations

import pytest
from emulators.card.citizen_card import CITIZEN_ATR, build_atr
from emulators.card.os import Applet, VirtualCard
from emulators.card.transport import InProcessConnection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cityid.apdu import ApduFormat, CommandApdu, ResponseApdu, SmartCardProtocol
from cityid.citizen import CITIZEN_AID
from cityid.errors import ApduError, CardRemovedError
from cityid.piv import PIV_AID
from tests.emukit import Card

ECHO_AID = bytes.fromhex("F0000000EC0101")


class Echo(Applet):
    """Answers its command data repeated P1 times; INS EE raises a bug, INS E0 an ApduError."""

    aid = ECHO_AID
    name = "echo"

    def __init__(self) -> None:
        self.powered = 0
        self.deselected = 0

    def power_on(self) -> None:
        self.powered += 1

    def deselect(self) -> None:
        self.deselected += 1

    def select(self) -> bytes:
        return b"FCI"

    def process(self, cmd: CommandApdu) -> ResponseApdu:
        if cmd.ins == 0xEE:
            raise RuntimeError("applet bug")
        if cmd.ins == 0xE0:
            raise ApduError(0x6A80)
        return ResponseApdu(bytes([cmd.cla]) + cmd.data * max(cmd.p1, 1), 0x9000)


def _card() -> tuple[VirtualCard, Echo, InProcessConnection]:
    echo = Echo()
    card = VirtualCard([echo], CITIZEN_ATR)
    return card, echo, InProcessConnection(card)


def _tx(card: VirtualCard, hexstr: str) -> tuple[bytes, int]:
    raw = card.transmit(bytes.fromhex(hexstr.replace(" ", "")))
    return raw[:-2], int.from_bytes(raw[-2:], "big")


def test_atr_is_t1_with_busan_historical_bytes_and_valid_tck() -> None:
    atr = CITIZEN_ATR
    assert atr[0] == 0x3B and atr[2] == 0x01  # direct convention; TD1 offers T=1 only
    historical = atr[3 : 3 + (atr[1] & 0x0F)]
    assert historical[0] == 0x80  # compact-TLV objects follow
    objects, i = {}, 1
    while i < len(historical):
        tag, length = historical[i] >> 4, historical[i] & 0x0F
        objects[tag] = historical[i + 1 : i + 1 + length]
        i += 1 + length
    assert i == len(historical)
    assert objects[0x5].startswith(b"BUSANCID")  # card issuer's data
    assert objects[0x7][2] & 0xC0 == 0xC0  # card capabilities: command chaining, extended Lc/Le
    tck = 0
    for b in atr[1:]:
        tck ^= b
    assert tck == 0
    with pytest.raises(ValueError):
        build_atr(bytes(16))


def test_select_routing_prefix_and_unknown_aid() -> None:
    card, echo, _ = _card()
    assert _tx(card, "00A4040005F0000000EC") == (b"FCI", 0x9000)
    assert _tx(card, "00A404000CF0000000EC0101") == (b"", 0x6700)  # Lc says 12, 7 bytes follow
    assert _tx(card, "00A4040007F0000000EC0102")[1] == 0x6A82
    assert _tx(card, "80010000 02 ABCD")[1] == 0x9000  # failed SELECT keeps the current applet
    assert _tx(card, "00A4040C07F0000000EC0101") == (b"", 0x9000)  # P2 0C: no FCI
    assert _tx(card, "00A4040107F0000000EC0101")[1] == 0x6A86
    assert _tx(card, "00A4040003F00000")[1] == 0x6A82  # shorter than a RID
    assert echo.deselected == 0  # re-selecting the same applet keeps its state


def test_no_application_selected_and_power_cycle() -> None:
    card, echo, conn = _card()
    assert _tx(card, "80010000")[1] == 0x6D00
    assert _tx(card, "00A4040005F0000000EC")[1] == 0x9000
    assert echo.powered == 1
    assert conn.reset() == CITIZEN_ATR
    assert echo.powered == 2 and echo.deselected == 1
    assert _tx(card, "80010000")[1] == 0x6D00  # selection does not survive a reset


@pytest.mark.parametrize(
    ("apdu", "sw"),
    [
        ("00", 0x6700),
        ("000102", 0x6700),
        ("8001000005AA", 0x6700),
        ("80010000000003AABB", 0x6700),
        ("FF010000", 0x6E00),
        ("01010000", 0x6881),
        ("0C010000", 0x6882),
        ("40010000", 0x6881),
        ("A0010000", 0x6E00),
        ("80EE0000", 0x6F00),
        ("80E00000", 0x6A80),
        ("00C00000", 0x6985),
    ],
)
def test_malformed_and_out_of_order(apdu: str, sw: int) -> None:
    card, _, _ = _card()
    _tx(card, "00A4040005F0000000EC")
    assert _tx(card, apdu) == (b"", sw)


@pytest.mark.parametrize("cla", ["00", "80"])
def test_get_response_with_iso_and_proprietary_class(cla: str) -> None:
    """libfido2 >= 1.16 sends GET RESPONSE as 80 C0 00 00 00 (Yubico/libfido2 PR #817): both classes work,
    the chaining bit and wrong P1P2 do not, and nothing pending is 6985 for both."""
    card, _, _ = _card()
    _tx(card, "00A4040005F0000000EC")
    assert _tx(card, cla + "C0000000")[1] == 0x6985
    data, sw = _tx(card, "80010200 FF" + "CD" * 255 + "00")  # 1 + 510 bytes
    assert (sw, len(data)) == (0x61FF, 256)
    more, sw = _tx(card, cla + "C0000000")
    assert (sw, len(more)) == (0x9000, 255)
    assert data + more == b"\x80" + b"\xcd" * 510
    _tx(card, "80010200 FF" + "CD" * 255 + "00")
    assert _tx(card, "%02XC0000000" % (int(cla, 16) | 0x10))[1] == 0x6884
    _tx(card, "80010200 FF" + "CD" * 255 + "00")
    assert _tx(card, cla + "C0010000")[1] == 0x6A86
    assert _tx(card, cla + "C0000000")[1] == 0x6985  # a wrong GET RESPONSE drops what was pending


def test_command_chaining_reassembles_and_rejects_interleaving() -> None:
    card, _, _ = _card()
    _tx(card, "00A4040005F0000000EC")
    assert _tx(card, "90010000 02 0102") == (b"", 0x9000)
    assert _tx(card, "90010000 02 0304") == (b"", 0x9000)
    assert _tx(card, "80010000 01 05") == (bytes([0x80, 1, 2, 3, 4, 5]), 0x9000)
    # A different command in the middle of a chain: the chain is dropped with 6883.
    assert _tx(card, "90010000 01 01")[1] == 0x9000
    assert _tx(card, "80020000 01 01")[1] == 0x6883
    assert _tx(card, "80010000 01 09") == (b"\x80\x09", 0x9000)  # fresh, not appended to the old chain
    assert _tx(card, "90010000 01 01")[1] == 0x9000
    assert _tx(card, "00C0000000")[1] == 0x6883
    assert _tx(card, "90010000 01 01")[1] == 0x9000
    assert _tx(card, "00A4040005F0000000EC")[1] == 0x9000  # SELECT abandons the chain
    assert _tx(card, "80010000 01 07") == (b"\x80\x07", 0x9000)


def test_response_chaining_short_and_extended() -> None:
    card, _, conn = _card()
    _tx(card, "00A4040005F0000000EC")
    data, sw = _tx(card, "80010300 FF" + "AB" * 255 + "00")  # 1 + 765 bytes of answer
    assert sw == 0x6100 and len(data) == 256
    data2, sw = _tx(card, "00C0000000")
    assert sw == 0x61FE and len(data2) == 256
    data3, sw = _tx(card, "00C0000010")
    assert sw == 0x61EE and len(data3) == 16
    data4, sw = _tx(card, "00C00000EE")
    assert sw == 0x9000 and len(data + data2 + data3 + data4) == 766
    assert _tx(card, "00C0000000")[1] == 0x6985  # nothing left
    # An extended APDU gets everything at once.
    raw = card.transmit(bytes.fromhex("80010300 0000FF" + "AB" * 255 + "0000"))
    assert raw[-2:] == b"\x90\x00" and len(raw) == 768
    # The shared pipeline handles both.
    p = SmartCardProtocol(conn)
    assert p.send_apdu(0x80, 1, 4, 0, bytes(300)) == b"\x80" + bytes(1200)
    p.configure(ApduFormat.EXTENDED)
    assert p.send_apdu(0x80, 1, 4, 0, bytes(300)) == b"\x80" + bytes(1200)


def test_in_process_removal() -> None:
    _, _, conn = _card()
    conn.remove()
    with pytest.raises(CardRemovedError):
        conn.send_and_receive(bytes.fromhex("00A4040005F0000000EC"))
    assert conn.insert() == CITIZEN_ATR
    assert conn.send_and_receive(bytes.fromhex("00A4040005F0000000EC")) == (b"FCI", 0x9000)


# --- property tests: random bytes in, only proper status words out ----------------------------------------

#: Every status word the emulator may legitimately answer (ISO 7816-4 §5.6; 61xx/63Cx families below).
LEGIT_SW = {
    0x9000, 0x6581, 0x6700, 0x6881, 0x6882, 0x6883, 0x6884, 0x6982, 0x6983, 0x6984, 0x6985, 0x6986,
    0x6A80, 0x6A81, 0x6A82, 0x6A84, 0x6A86, 0x6A88, 0x6D00, 0x6E00,
}  # fmt: skip


def _legit(raw: bytes) -> bool:
    if len(raw) < 2:
        return False
    sw = int.from_bytes(raw[-2:], "big")
    if sw & 0xFF00 == 0x6100 or sw & 0xFFF0 == 0x63C0:
        return True
    if sw != 0x9000 and sw & 0xFF00 != 0x6100 and len(raw) != 2:
        return False  # errors carry no data
    return sw in LEGIT_SW


_CLAS = st.sampled_from([0x00, 0x10, 0x80, 0x90, 0x0C, 0x01, 0xFF, 0x84])
_INSES = st.sampled_from([0xA4, 0x20, 0x24, 0x2C, 0x47, 0x87, 0xCB, 0xDB, 0xC0, 0x10, 0x50, 0xD0, 0xD2, 0xDE,
                          0xFD, 0xF8, 0xFF, 0x00, 0x44])  # fmt: skip


@st.composite
def apdus(draw: st.DrawFn) -> bytes:
    """Random bytes, or plausible headers with random bodies (reaching deep into the applets)."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=300))
    header = bytes([draw(_CLAS), draw(_INSES), draw(st.integers(0, 255)), draw(st.integers(0, 255))])
    if draw(st.booleans()):
        header = header[:2] + draw(st.sampled_from([b"\x3f\xff", b"\x00\x80", b"\x00\x9a", b"\x03\x9b",
                                                    b"\x11\x9a", b"\x00\x00", b"\x04\x00"]))  # fmt: skip
    body = draw(st.binary(max_size=280))
    form = draw(st.integers(0, 3))
    if form == 0 or not body:
        return header + body[:1]
    if form == 1:
        return header + bytes([len(body[:255])]) + body[:255]
    if form == 2:
        return header + bytes([len(body[:255])]) + body[:255] + b"\x00"
    return header + b"\x00" + len(body).to_bytes(2, "big") + body + b"\x00\x00"


@pytest.fixture(scope="module")
def fuzz_card() -> Card:
    return Card(None)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(apdus(), min_size=1, max_size=8),
    st.sampled_from([PIV_AID, CITIZEN_AID, b""]),
    st.booleans(),
)
def test_random_apdus_only_get_proper_status_words(
    fuzz_card: Card, cmds: list[bytes], aid: bytes, admin: bool
) -> None:
    card = fuzz_card.card
    card.reset()
    if aid:
        assert card.transmit(b"\x00\xa4\x04\x00" + bytes([len(aid)]) + aid)[-2:] == b"\x90\x00"
        if admin:  # reach the admin-only code paths with random bodies too
            assert fuzz_card.authenticate() == 0x9000
            fuzz_card.verify()
    for raw in cmds:
        out = card.transmit(raw)
        assert _legit(out), (raw.hex(), out.hex())
        if int.from_bytes(out[-2:], "big") == 0x6F00:
            pytest.fail(f"internal error on {raw.hex()}")
