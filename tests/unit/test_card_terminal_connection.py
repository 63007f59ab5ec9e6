"""PcscConnection's mapping of PC/SC return codes (PC/SC part 5) to typed errors, its transaction handling
and the reconnect on SCARD_W_RESET_CARD, against a fake ``smartcard.scard`` (the real path runs through
pcscd + vpcd in tests/integration/test_card_terminal_pcsc.py)."""

from __future__ import annotations

from typing import Any

import pytest
from smartcard import scard

import terminal.pcsc.connection as mod
from cityid.errors import (
    CardRemovedError,
    NoCardError,
    NoReaderError,
    PcscUnavailableError,
    ReaderError,
)
from terminal.pcsc.connection import CardResetError, PcscConnection, match_reader, open_connection

ATR = [0x3B, 0x86, 0x80, 0x01, 0x80, 0x73, 0x00, 0x00, 0x40, 0x00]


class FakeScard:
    def __init__(self) -> None:
        self.readers = ["Reader A", "Reader B"]
        self.present = {"Reader B"}
        self.connect_rc = scard.SCARD_S_SUCCESS
        self.transmit: list[tuple[int, list[int]]] = []  # scripted results
        self.calls: list[str] = []
        self.context_rc = scard.SCARD_S_SUCCESS

    def SCardEstablishContext(self, scope: int) -> tuple[int, Any]:
        return self.context_rc, 1

    def SCardReleaseContext(self, ctx: Any) -> int:
        self.calls.append("release")
        return 0

    def SCardListReaders(self, ctx: Any, groups: list) -> tuple[int, list[str]]:
        return (0, list(self.readers)) if self.readers else (scard.SCARD_E_NO_READERS_AVAILABLE, [])

    def SCardGetStatusChange(self, ctx: Any, timeout: int, states: list) -> tuple[int, list]:
        reader = states[0][0]
        st = scard.SCARD_STATE_PRESENT if reader in self.present else scard.SCARD_STATE_EMPTY
        return 0, [(reader, st, ATR if reader in self.present else [])]

    def SCardConnect(self, ctx: Any, reader: str, share: int, proto: int) -> tuple[int, Any, int]:
        self.calls.append(f"connect {reader} {'excl' if share == scard.SCARD_SHARE_EXCLUSIVE else 'shared'}")
        return self.connect_rc, 7, scard.SCARD_PROTOCOL_T1

    def SCardStatus(self, h: Any) -> tuple[int, str, int, int, list[int]]:
        return 0, "Reader B", scard.SCARD_STATE_PRESENT, scard.SCARD_PROTOCOL_T1, ATR

    def SCardBeginTransaction(self, h: Any) -> int:
        self.calls.append("begin")
        return 0

    def SCardEndTransaction(self, h: Any, disposition: int) -> int:
        self.calls.append("end")
        return 0

    def SCardDisconnect(self, h: Any, disposition: int) -> int:
        self.calls.append("disconnect reset" if disposition == scard.SCARD_RESET_CARD else "disconnect leave")
        return 0

    def SCardReconnect(self, h: Any, share: int, proto: int, init: int) -> tuple[int, int]:
        self.calls.append("reconnect")
        return 0, scard.SCARD_PROTOCOL_T1

    def SCardTransmit(self, h: Any, pci: Any, apdu: list[int]) -> tuple[int, list[int]]:
        self.calls.append("transmit")
        return self.transmit.pop(0) if self.transmit else (0, [0x90, 0x00])

    def SCardControl(self, h: Any, code: int, data: list[int]) -> tuple[int, list[int]]:
        return 0, [0x06, 0x04, 0x42, 0x33, 0x00, 0x06]

    def SCardGetErrorMessage(self, rc: int) -> str:
        return f"error {rc & 0xFFFFFFFF:08X}"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeScard:
    fake = FakeScard()
    for name in dir(fake):
        if name.startswith("SCard"):
            monkeypatch.setattr(mod.scard, name, getattr(fake, name))
    return fake


def test_open_picks_the_reader_with_a_card_and_holds_a_transaction(fake: FakeScard) -> None:
    with open_connection() as conn:
        assert conn.reader == "Reader B"
        assert conn.atr == bytes(ATR)
        assert conn.extended is True  # ATR card capabilities: extended Lc/Le
        assert conn.send_and_receive(b"\x00\xa4\x04\x00") == (b"", 0x9000)
        assert conn.control(0x42000D48) == bytes([0x06, 0x04, 0x42, 0x33, 0x00, 0x06])
    assert fake.calls[:3] == ["release", "connect Reader B shared", "begin"]
    assert fake.calls[-3:] == ["end", "disconnect reset", "release"]


def test_reader_selection_errors(fake: FakeScard) -> None:
    assert match_reader(["Foo 00", "Bar 01"], "bar") == "Bar 01"
    with pytest.raises(NoReaderError):
        match_reader(["Reader 00", "Reader 01"], "reader")
    fake.present = set()
    with pytest.raises(NoCardError):
        open_connection()
    fake.readers = []
    with pytest.raises(NoReaderError):
        open_connection()
    fake.context_rc = scard.SCARD_E_NO_SERVICE
    with pytest.raises(PcscUnavailableError):
        open_connection()


def test_connect_errors(fake: FakeScard) -> None:
    fake.connect_rc = scard.SCARD_E_NO_SMARTCARD
    with pytest.raises(NoCardError):
        PcscConnection("Reader A").open()
    fake.connect_rc = scard.SCARD_E_SHARING_VIOLATION
    with pytest.raises(ReaderError, match="in use"):
        PcscConnection("Reader A", exclusive=True).open()
    assert "connect Reader A excl" in fake.calls


@pytest.mark.parametrize(
    ("rc", "error"),
    [
        (scard.SCARD_W_REMOVED_CARD, CardRemovedError),
        (scard.SCARD_E_NO_SMARTCARD, CardRemovedError),
        (scard.SCARD_E_READER_UNAVAILABLE, CardRemovedError),
        (scard.SCARD_E_NO_SERVICE, PcscUnavailableError),
        (scard.SCARD_E_SERVICE_STOPPED, PcscUnavailableError),
        (scard.SCARD_E_TIMEOUT, ReaderError),
    ],
)
def test_transmit_errors_are_typed(fake: FakeScard, rc: int, error: type[Exception]) -> None:
    conn = PcscConnection("Reader B").open()
    fake.transmit = [(rc, [])]
    with pytest.raises(error):
        conn.send_and_receive(b"\x00\x20\x00\x80")
    conn.close()


def test_empty_response_means_the_card_left(fake: FakeScard) -> None:
    conn = PcscConnection("Reader B").open()
    fake.transmit = [(0, [])]  # what pcscd reports when vpcd's card vanishes mid-command
    with pytest.raises(CardRemovedError):
        conn.send_and_receive(b"\x00\x20\x00\x80")
    with pytest.raises(CardRemovedError):  # the handle is gone
        conn.send_and_receive(b"\x00\x20\x00\x80")
    conn.close()


def test_reset_by_another_application_reconnects_once(fake: FakeScard) -> None:
    conn = PcscConnection("Reader B").open()
    fake.transmit = [(scard.SCARD_W_RESET_CARD, [])]
    with pytest.raises(CardResetError):
        conn.send_and_receive(b"\x80\x10\x00\x00\x00")
    assert fake.calls[-2:] == ["reconnect", "begin"]  # handle usable again, transaction re-taken
    assert conn.send_and_receive(b"\x00\xa4\x04\x00") == (b"", 0x9000)
    fake.transmit = [(scard.SCARD_W_RESET_CARD, [])]
    with pytest.raises(CardResetError):  # only once per connection: the second reset is an error
        conn.send_and_receive(b"\x80\x10\x00\x00\x00")
    assert fake.calls.count("reconnect") == 1
    conn.close()
