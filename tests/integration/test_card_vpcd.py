"""The vpcd transport through the real pcscd: insertion, chaining, removal, tear hooks."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from emulators.card.citizen_card import CITIZEN_ATR
from emulators.card.os import Applet, VirtualCard
from emulators.card.transport import TearPoint
from smartcard.System import readers

from cityid.apdu import CommandApdu, ResponseApdu, SmartCardProtocol
from cityid.piv import PIV_AID, pad_pin
from cityid.tlv import encode_tlv
from tests.emukit import Card
from tests.fixtures.pcsc import card_present, wait_for
from tests.processes import stop

pytestmark = pytest.mark.integration


class Echo(Applet):
    aid = bytes.fromhex("F0000000EC0101")
    name = "echo"

    def select(self) -> bytes:
        return b"echo"

    def process(self, cmd: CommandApdu) -> ResponseApdu:
        return ResponseApdu(cmd.data * cmd.p1 if cmd.p1 else cmd.data, 0x9000)


ATR = bytes.fromhex("3B8A80018045434820544553540100")


def _connect(name: str):
    reader = next(r for r in readers() if str(r) == name)
    conn = reader.createConnection()
    conn.connect()
    return conn


def test_echo_through_pcscd(vpcd_card_factory) -> None:
    handle = vpcd_card_factory(lambda: VirtualCard([Echo()], ATR))
    conn = _connect(handle.reader_name)
    assert bytes(conn.getATR()) == ATR
    data, sw1, sw2 = conn.transmit(list(bytes.fromhex("00A4040005F0000000EC")))
    assert bytes(data) == b"echo" and (sw1, sw2) == (0x90, 0x00)
    t0 = time.perf_counter()
    for _ in range(20):
        data, sw1, sw2 = conn.transmit([0x80, 0x01, 0x00, 0x00, 0x02, 0xAB, 0xCD, 0x00])
    per_apdu = (time.perf_counter() - t0) / 20
    assert bytes(data) == b"\xab\xcd" and (sw1, sw2) == (0x90, 0x00)
    print(f"round trip {per_apdu * 1000:.2f} ms")
    conn.disconnect()


class PyscardConnection:
    """Minimal SmartCardConnection over pyscard (kept here so these tests do not depend on terminal/)."""

    def __init__(self, reader: str) -> None:
        self.conn = _connect(reader)

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        data, sw1, sw2 = self.conn.transmit(list(apdu))
        return bytes(data), (sw1 << 8) | sw2

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.disconnect()


def _admin_protocol(reader: str) -> tuple[PyscardConnection, SmartCardProtocol]:
    conn = PyscardConnection(reader)
    p = SmartCardProtocol(conn)
    p.select(PIV_AID)
    card = Card.__new__(Card)  # reuse the host-side admin steps of the emukit over this protocol
    card.p = p
    assert card.authenticate() == 0x9000
    return conn, p


PUT = encode_tlv(0x5C, bytes.fromhex("5FC109")) + encode_tlv(0x53, b"printed information")


@pytest.mark.parametrize("point", [TearPoint.BEFORE_PROCESSING, TearPoint.AFTER_PROCESSING])
def test_card_pulled_during_put_data_leaves_old_or_new_state(virtual_card, point: TearPoint) -> None:
    conn, p = _admin_protocol(virtual_card.reader_name)
    before = virtual_card.state_path.read_bytes()
    virtual_card.tear_after(1, point)
    with pytest.raises(Exception):  # noqa: B017 - pyscard raises its own exception types for a pulled card
        p.send_apdu(0, 0xDB, 0x3F, 0xFF, PUT)
    virtual_card.wait_torn()
    conn.close()
    after = virtual_card.state_path.read_bytes()
    assert json.loads(after)
    if point is TearPoint.BEFORE_PROCESSING:
        assert after == before
    else:
        assert after != before
    # A new emulator process on the same file: the object is there exactly when the card processed it.
    virtual_card.restart()
    conn = PyscardConnection(virtual_card.reader_name)
    p = SmartCardProtocol(conn)
    p.select(PIV_AID)
    p.send_apdu(0, 0x20, 0, 0x80, pad_pin(b"123456"))
    data, sw = p.send_apdu_sw(0, 0xCB, 0x3F, 0xFF, bytes.fromhex("5C035FC109"))
    if point is TearPoint.BEFORE_PROCESSING:
        assert sw == 0x6A82
    else:
        assert (data, sw) == (encode_tlv(0x53, b"printed information"), 0x9000)
    conn.close()


def test_removal_and_reinsertion_keep_the_state(virtual_card) -> None:
    conn = PyscardConnection(virtual_card.reader_name)
    p = SmartCardProtocol(conn)
    p.select(PIV_AID)
    assert p.send_apdu_sw(0, 0x20, 0, 0x80, pad_pin(b"000000"))[1] == 0x63C2
    conn.close()
    virtual_card.stop()
    assert not card_present(virtual_card.reader_name)
    virtual_card.insert()
    conn = PyscardConnection(virtual_card.reader_name)
    p = SmartCardProtocol(conn)
    p.select(PIV_AID)
    assert p.send_apdu_sw(0, 0x20, 0, 0x80)[1] == 0x63C2
    conn.close()


def test_cardtool_emulate_citizen_shows_the_card(vpcd_slot, tmp_path: Path) -> None:
    """``cardtool emulate citizen`` in one process; the card is visible to PC/SC and OpenSC in another."""
    port, reader = vpcd_slot
    state = tmp_path / "card.json"
    exe = Path(sys.executable).with_name("cardtool")
    proc = subprocess.Popen(
        [str(exe), "emulate", "citizen", "--vpcd", f"127.0.0.1:{port}", "--state", str(state)],
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: card_present(reader), 15, f"the emulated card in {reader}")
        conn = _connect(reader)
        assert bytes(conn.getATR()) == CITIZEN_ATR
        conn.disconnect()
        out = subprocess.run(
            ["opensc-tool", "--reader", reader, "--name"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert "Personal Identity Verification Card" in out.stdout, out.stdout + out.stderr
        assert state.exists()
        # ... and ``cardtool info`` (the host tool) in another shell shows the card.
        info = subprocess.run(
            [str(exe), "info", "--reader", reader, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert info.returncode == 0, info.stdout + info.stderr
        shown = json.loads(info.stdout)
        assert shown["atr"] == CITIZEN_ATR.hex().upper()
        assert {"PIV", "citizen"} <= set(shown["applets"]) and shown["pin_tries"] == 3
    finally:
        output, _ = stop(proc, signal.SIGINT, timeout=15)  # Ctrl-C removes the card; killed past the deadline
    text = output.decode()
    assert proc.returncode == 0, text
    assert (
        f"ATR:    {CITIZEN_ATR.hex(' ').upper()}" in text
        and f"state:  {state}" in text
        and "card removed" in text
    )
    assert "Traceback" not in text
    wait_for(lambda: not card_present(reader), 10, f"{reader} to be empty")


def test_private_get_info_through_pcscd_tells_two_cards_apart_by_nothing(vpcd_card_factory, tmp_path) -> None:
    """Two personalized cards of one issuance in the private profile, both in readers: a kiosk's SELECT +
    GET INFO through pcscd gets the same bytes from both; after the PIN, GET IDENTITY tells them apart."""
    from emulators.card.citizen_card import make_citizen_card

    from cityid.citizen import CITIZEN_AID, Ins
    from terminal.pcsc.connection import PcscConnection
    from terminal.sessions.citizen import CitizenSession
    from tests.unit.test_card_private_info import DID, OTHER_DID, _personalize

    handles = []
    for name, did in (("a", DID), ("b", OTHER_DID)):
        state = tmp_path / f"{name}.json"
        _personalize(Card(state), did)  # written in process, then the card goes into a reader
        handles.append(vpcd_card_factory(lambda s=state: make_citizen_card(s, private_info=True), state))
    seen, identities = [], []
    for handle in handles:
        with PcscConnection(handle.reader_name) as conn:
            p = SmartCardProtocol(conn)
            seen.append(p.select(CITIZEN_AID) + p.send_apdu(0x80, Ins.GET_INFO, 0, 0))
            citizen = CitizenSession(conn)
            citizen.verify_pin("123456")
            identities.append(citizen.identity())
    assert seen[0] == seen[1]
    assert [i.did for i in identities] == [DID, OTHER_DID] and identities[0].serial != identities[1].serial
    for i in identities:
        assert bytes.fromhex(i.serial) not in seen[0] and i.did.encode() not in seen[0]
