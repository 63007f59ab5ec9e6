"""The terminal's PC/SC layer through real pcscd + vpcd with pyscard: connection, errors, reader monitor.

A small test applet (echo / long answers) keeps these independent of the citizen card; the citizen-card
flows are in test_card_terminal_sessions.py.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

import pytest
from emulators.card.os import Applet, VirtualCard

from cityid.apdu import ApduFormat, CommandApdu, ResponseApdu, SmartCardProtocol
from cityid.errors import ApduError, CardRemovedError, NoCardError, NoReaderError
from terminal.pcsc.connection import PcscConnection, list_readers, open_connection
from terminal.pcsc.monitor import (
    CardInserted,
    CardRemoved,
    ReaderAdded,
    ReaderEvent,
    ReaderMonitor,
)

pytestmark = pytest.mark.integration

ECHO_AID = bytes.fromhex("F0000000CA7E57")
ATR_A = bytes.fromhex("3B8880018073C0400000009000")[:2] + bytes.fromhex("80018073C04000")
ATR_B = bytes.fromhex("3B0100")


class EchoApplet(Applet):
    """INS 01 echoes its data; INS 02 answers P1*256+P2 bytes."""

    aid = ECHO_AID
    name = "echo"

    def process(self, cmd: CommandApdu) -> ResponseApdu:
        if cmd.ins == 0x01:
            return ResponseApdu(cmd.data, 0x9000)
        if cmd.ins == 0x02:
            n = cmd.p1 * 256 + cmd.p2
            return ResponseApdu(bytes(i & 0xFF for i in range(n)), 0x9000)
        raise ApduError(0x6D00)


def echo_card(atr: bytes = ATR_A) -> VirtualCard:
    return VirtualCard([EchoApplet()], atr)


def _atr_a() -> bytes:
    # 3B 86 80 01 | historical 80 73 00 00 40 00 : T=1, card capabilities with "extended Lc/Le"
    return bytes([0x3B, 0x86, 0x80, 0x01]) + bytes.fromhex("807300004000")


def test_connection_round_trip_and_chaining(vpcd_card_factory: Callable) -> None:
    handle = vpcd_card_factory(lambda: echo_card(_atr_a()))
    assert handle.reader_name in list_readers()
    with open_connection(handle.reader_name) as conn:
        assert conn.atr == _atr_a()
        assert conn.extended is True
        proto = SmartCardProtocol(conn)
        proto.select(ECHO_AID)
        assert proto.send_apdu(0x80, 0x01, 0, 0, b"hello") == b"hello"
        long = bytes(range(256)) * 4
        assert proto.send_apdu(0x80, 0x01, 0, 0, long) == long  # chained command + 61xx answer
        assert proto.send_apdu(0x80, 0x02, 0x07, 0xD0) == bytes(i & 0xFF for i in range(2000))
        proto.configure(ApduFormat.EXTENDED)
        assert proto.send_apdu(0x80, 0x01, 0, 0, long * 3) == long * 3  # one extended APDU


def test_open_connection_picks_a_reader_with_a_card(vpcd_card_factory: Callable) -> None:
    handle = vpcd_card_factory(echo_card)
    with open_connection() as conn:  # the other vpcd reader may hold another session's card
        assert conn.atr
    with pytest.raises(NoReaderError):
        open_connection("no such reader here")
    handle.stop()
    with pytest.raises(NoCardError):
        open_connection(handle.reader_name)


def test_card_pulled_mid_session_raises_card_removed(vpcd_card_factory: Callable) -> None:
    handle = vpcd_card_factory(echo_card)
    with open_connection(handle.reader_name) as conn:
        proto = SmartCardProtocol(conn)
        proto.select(ECHO_AID)
        handle.tear_after(1)
        with pytest.raises(CardRemovedError):
            proto.send_apdu(0x80, 0x01, 0, 0, b"x")
        with pytest.raises(CardRemovedError):
            proto.send_apdu(0x80, 0x01, 0, 0, b"x")
    handle.wait_torn()


def test_transaction_excludes_other_applications(vpcd_card_factory: Callable) -> None:
    """A second application's session waits until the first one's transaction ends."""
    handle = vpcd_card_factory(echo_card)
    opened = threading.Event()
    errors: list[BaseException] = []

    def second() -> None:
        try:
            with PcscConnection(handle.reader_name, reset_on_close=False) as other:
                SmartCardProtocol(other).select(ECHO_AID)
                opened.set()
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    first = open_connection(handle.reader_name, reset_on_close=False)
    try:
        SmartCardProtocol(first).select(ECHO_AID)
        t = threading.Thread(target=second, daemon=True)
        t.start()
        assert not opened.wait(0.5), "second session ran inside the first one's transaction"
        assert SmartCardProtocol(first).send_apdu(0x80, 0x01, 0, 0, b"still mine") == b"still mine"
    finally:
        first.close()
    assert opened.wait(10), errors
    t.join(5)
    assert not errors


def _expect(q: queue.Queue[ReaderEvent], kind: type, reader: str, timeout: float = 5.0) -> ReaderEvent:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {kind.__name__} within {timeout}s")
        ev = q.get(timeout=left)
        if isinstance(ev, kind) and getattr(ev, "reader", reader) == reader:
            return ev


def test_monitor_insert_remove_and_another_card(vpcd_card_factory: Callable) -> None:
    cards = iter([_atr_a(), ATR_B, ATR_B])
    handle = vpcd_card_factory(lambda: echo_card(next(cards)))
    with ReaderMonitor(timeout_ms=500) as monitor:
        q = monitor.events()
        assert monitor.ready.wait(5)
        # already present at start (the queue subscribed after the first scan may have missed it)
        assert monitor.cards().get(handle.reader_name) == _atr_a()
        assert handle.reader_name in monitor.readers()
        handle.stop()
        _expect(q, CardRemoved, handle.reader_name)
        handle.card = echo_card(ATR_B)
        handle.vpcd.card = handle.card
        t0 = time.monotonic()
        handle.insert()
        ev = _expect(q, CardInserted, handle.reader_name)
        assert ev.atr == ATR_B
        assert time.monotonic() - t0 < 5
        # another card: pcscd reports the removal, then the new card with its ATR (a swap faster than
        # pcscd's polling is invisible to every PC/SC client; CardSwapped is unit-tested with a fake)
        handle.stop()
        _expect(q, CardRemoved, handle.reader_name)
        handle.card = echo_card(_atr_a())
        handle.vpcd.card = handle.card
        handle.insert()
        ev = _expect(q, CardInserted, handle.reader_name)
        assert ev.atr == _atr_a()
        assert monitor.cards()[handle.reader_name] == _atr_a()


def test_monitor_reports_initial_state_to_callbacks(vpcd_card_factory: Callable) -> None:
    handle = vpcd_card_factory(echo_card)
    got: list[ReaderEvent] = []
    with ReaderMonitor(got.append, timeout_ms=200) as monitor:
        assert monitor.ready.wait(5)
        assert monitor.pnp is True  # pcsc-lite supports the \\?PnP?\Notification pseudo-reader
    assert ReaderAdded(handle.reader_name) in got
    assert any(isinstance(e, CardInserted) and e.reader == handle.reader_name for e in got)
