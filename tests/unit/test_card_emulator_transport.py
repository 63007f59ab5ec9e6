"""VpcdCard against a scripted vpcd reader (a local TCP server playing pcscd's side): stream framing,
control bytes, several messages in one segment, tear hooks, reconnection. No daemons."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from emulators.card.citizen_card import CITIZEN_ATR
from emulators.card.os import Applet, VirtualCard
from emulators.card.transport import TearPoint, VpcdCard

from cityid.apdu import CommandApdu, ResponseApdu


class Counter(Applet):
    aid = bytes.fromhex("F0000000C00101")
    name = "counter"

    def __init__(self) -> None:
        self.n = 0

    def power_on(self) -> None:
        self.n = 0

    def process(self, cmd: CommandApdu) -> ResponseApdu:
        self.n += 1
        return ResponseApdu(bytes([self.n]), 0x9000)


SELECT = bytes.fromhex("00A4040005F0000000C0")
BUMP = bytes.fromhex("80010000")


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(2, "big") + payload


class FakeVpcd:
    """The reader side: listens, accepts the card, sends framed messages, reads framed answers."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(5)
        self.port = self.server.getsockname()[1]
        self.conn: socket.socket | None = None

    def accept(self) -> None:
        self.conn, _ = self.server.accept()
        self.conn.settimeout(5)

    def send(self, *payloads: bytes) -> None:
        assert self.conn is not None
        self.conn.sendall(b"".join(frame(p) for p in payloads))  # several messages in one segment

    def recv(self) -> bytes | None:
        assert self.conn is not None
        head = self._exact(2)
        if head is None:
            return None
        return self._exact(int.from_bytes(head, "big"))

    def _exact(self, n: int) -> bytes | None:
        assert self.conn is not None
        buf = b""
        while len(buf) < n:
            try:
                chunk = self.conn.recv(n - len(buf))
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            buf += chunk
        return buf

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.server.close()


@pytest.fixture
def rig() -> Iterator[tuple[FakeVpcd, VpcdCard, Counter]]:
    vpcd = FakeVpcd()
    applet = Counter()
    card = VpcdCard(VirtualCard([applet], CITIZEN_ATR), port=vpcd.port)
    card.start()
    vpcd.accept()
    assert card.wait_connected(5)
    yield vpcd, card, applet
    card.stop()
    vpcd.close()


def test_framing_controls_and_pipelined_messages(rig: tuple[FakeVpcd, VpcdCard, Counter]) -> None:
    vpcd, card, _ = rig
    vpcd.send(b"\x01", b"\x04")  # power on + ATR request in one segment
    assert vpcd.recv() == CITIZEN_ATR
    vpcd.send(SELECT, BUMP, BUMP)
    assert vpcd.recv() == b"\x90\x00"
    assert vpcd.recv() == b"\x01\x90\x00"
    assert vpcd.recv() == b"\x02\x90\x00"
    vpcd.send(b"\x02")  # reset clears volatile state and the selection
    vpcd.send(BUMP)
    assert vpcd.recv() == b"\x6d\x00"
    vpcd.send(b"\x00", b"\x04")  # power off, then ATR request
    assert vpcd.recv() == CITIZEN_ATR
    vpcd.send(b"\x0a\x0b")  # a 2-byte payload is an APDU: malformed -> 6700
    assert vpcd.recv() == b"\x67\x00"
    assert card.apdu_count == 5 and card.polls == 2


@pytest.mark.parametrize(
    ("point", "processed"), [(TearPoint.BEFORE_PROCESSING, 0), (TearPoint.AFTER_PROCESSING, 1)]
)
def test_tear_after(rig: tuple[FakeVpcd, VpcdCard, Counter], point: TearPoint, processed: int) -> None:
    vpcd, card, applet = rig
    vpcd.send(b"\x01", SELECT)
    assert vpcd.recv() == b"\x90\x00"
    card.tear_after(2, point)
    vpcd.send(BUMP)
    assert vpcd.recv() == b"\x01\x90\x00"
    vpcd.send(BUMP)
    assert vpcd.recv() is None  # the card left without answering
    assert card.torn.wait(5)
    assert applet.n == 1 + processed
    card.stop()
    assert not card.running


def test_on_apdu_hook_and_reinsertion(rig: tuple[FakeVpcd, VpcdCard, Counter]) -> None:
    vpcd, card, _ = rig
    card.on_apdu = lambda raw: TearPoint.BEFORE_PROCESSING if raw == BUMP else None
    vpcd.send(SELECT)
    assert vpcd.recv() == b"\x90\x00"
    vpcd.send(BUMP)
    assert vpcd.recv() is None
    card.on_apdu = None
    card.start()  # insert again
    vpcd.accept()
    vpcd.send(b"\x04")
    assert vpcd.recv() == CITIZEN_ATR


def test_reader_going_away_reconnects(rig: tuple[FakeVpcd, VpcdCard, Counter]) -> None:
    vpcd, card, _ = rig
    assert vpcd.conn is not None
    vpcd.conn.close()  # pcscd restarted
    vpcd.accept()  # the card comes back by itself
    vpcd.send(b"\x04")
    assert vpcd.recv() == CITIZEN_ATR
    assert not card.torn.is_set()
