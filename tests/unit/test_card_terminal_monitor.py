"""ReaderMonitor logic against a fake PC/SC service (swap by ATR, swap by event counter, readers coming and
going, pcscd stopping and coming back). The real pcscd + vpcd path is in tests/integration."""

from __future__ import annotations

import queue
import threading
from typing import Any

import pytest
from smartcard import scard

import terminal.pcsc.connection as connection_mod
import terminal.pcsc.monitor as monitor_mod
from terminal.pcsc.monitor import (
    PNP_READER,
    CardInserted,
    CardRemoved,
    CardSwapped,
    ReaderAdded,
    ReaderEvent,
    ReaderMonitor,
    ReaderRemoved,
    ServiceLost,
    ServiceRestored,
)

R1, R2 = "Reader A 00 00", "Reader B 00 00"
ATR1, ATR2 = [0x3B, 0x01, 0x01], [0x3B, 0x01, 0x02]


class FakePcsc:
    """Enough of SCardEstablishContext/ListReaders/GetStatusChange/Cancel to drive the monitor."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.up = True
        self.pnp = True
        self.readers: dict[str, tuple[list[int] | None, int]] = {}  # reader -> (ATR or None, counter)
        self.generation = 0  # bumped on any change
        self.contexts = 0

    # state changes (test side)
    def set(self, reader: str, atr: list[int] | None, bump: int = 1) -> None:
        with self.cond:
            _, count = self.readers.get(reader, (None, 0))
            self.readers[reader] = (atr, count + bump)
            self.generation += 1
            self.cond.notify_all()

    def unplug(self, reader: str) -> None:
        with self.cond:
            del self.readers[reader]
            self.generation += 1
            self.cond.notify_all()

    def stop_service(self) -> None:
        with self.cond:
            self.up = False
            self.generation += 1
            self.cond.notify_all()

    def start_service(self) -> None:
        with self.cond:
            self.up = True
            self.generation += 1
            self.cond.notify_all()

    # the scard API
    def SCardEstablishContext(self, scope: int) -> tuple[int, Any]:
        if not self.up:
            return scard.SCARD_E_NO_SERVICE, None
        self.contexts += 1
        return scard.SCARD_S_SUCCESS, self.contexts

    def SCardReleaseContext(self, ctx: Any) -> int:
        return scard.SCARD_S_SUCCESS

    def SCardListReaders(self, ctx: Any, groups: list[str]) -> tuple[int, list[str]]:
        if not self.up:
            return scard.SCARD_E_NO_SERVICE, []
        if not self.readers:
            return scard.SCARD_E_NO_READERS_AVAILABLE, []
        return scard.SCARD_S_SUCCESS, list(self.readers)

    def SCardCancel(self, ctx: Any) -> int:
        with self.cond:
            self.generation += 1
            self.cond.notify_all()
        return scard.SCARD_S_SUCCESS

    def _state(self, reader: str) -> tuple[int, list[int]]:
        atr, count = self.readers[reader]
        st = scard.SCARD_STATE_PRESENT if atr else scard.SCARD_STATE_EMPTY
        return st | (count << 16), list(atr or [])

    def SCardGetStatusChange(self, ctx: Any, timeout: int, states: list[tuple]) -> tuple[int, list]:
        with self.cond:
            start = self.generation
            while True:
                if not self.up:
                    return scard.SCARD_E_NO_SERVICE, []
                out = []
                changed = False
                for reader, current, *_ in states:
                    if reader == PNP_READER:
                        if not self.pnp:
                            out.append((reader, scard.SCARD_STATE_UNKNOWN | scard.SCARD_STATE_CHANGED, []))
                            changed = True
                            continue
                        st = len(self.readers) << 16
                        if current != st:
                            changed = True
                        out.append((reader, st | (scard.SCARD_STATE_CHANGED if current != st else 0), []))
                        continue
                    if reader not in self.readers:
                        return scard.SCARD_E_UNKNOWN_READER, []
                    st, atr = self._state(reader)
                    if current != st:
                        changed = True
                    out.append((reader, st | (scard.SCARD_STATE_CHANGED if current != st else 0), atr))
                if changed or timeout == 0:
                    return (scard.SCARD_S_SUCCESS if changed else scard.SCARD_E_TIMEOUT), out
                if self.generation != start:
                    start = self.generation
                    if not self.up:
                        continue
                    return scard.SCARD_E_CANCELLED, []
                if not self.cond.wait(timeout / 1000):
                    return scard.SCARD_E_TIMEOUT, out


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakePcsc:
    fake = FakePcsc()
    for mod in (monitor_mod.scard, connection_mod.scard):
        for name in (
            "SCardEstablishContext",
            "SCardReleaseContext",
            "SCardListReaders",
            "SCardCancel",
            "SCardGetStatusChange",
        ):
            monkeypatch.setattr(mod, name, getattr(fake, name))
    return fake


def _next(q: queue.Queue[ReaderEvent], timeout: float = 3.0) -> ReaderEvent:
    return q.get(timeout=timeout)


def _drain_until(q: queue.Queue[ReaderEvent], want: ReaderEvent, timeout: float = 3.0) -> list[ReaderEvent]:
    got = []
    while True:
        ev = _next(q, timeout)
        got.append(ev)
        if ev == want:
            return got


@pytest.mark.parametrize("pnp", [True, False])
def test_insert_remove_swap_and_counter(fake: FakePcsc, pnp: bool) -> None:
    fake.pnp = pnp
    fake.set(R1, None)
    mon = ReaderMonitor(timeout_ms=200, poll=0.02)
    q = mon.events()
    with mon:
        assert _next(q) == ReaderAdded(R1)
        fake.set(R1, ATR1)
        assert _next(q) == CardInserted(R1, bytes(ATR1))
        fake.set(R1, ATR2, bump=2)  # removed + another card inserted between two observations
        assert _next(q) == CardSwapped(R1, bytes(ATR1), bytes(ATR2))
        fake.set(R1, ATR2, bump=2)  # same ATR, but the counter says it left and came back
        assert [_next(q), _next(q)] == [CardRemoved(R1), CardInserted(R1, bytes(ATR2))]
        fake.set(R1, None)
        assert _next(q) == CardRemoved(R1)
        fake.set(R2, ATR1)
        assert [_next(q), _next(q)] == [ReaderAdded(R2), CardInserted(R2, bytes(ATR1))]
        fake.unplug(R2)
        assert [_next(q), _next(q)] == [CardRemoved(R2), ReaderRemoved(R2)]
        assert mon.cards() == {}
        assert mon.readers() == [R1]


def test_service_lost_and_restored(fake: FakePcsc) -> None:
    fake.set(R1, ATR1)
    mon = ReaderMonitor(timeout_ms=200, poll=0.02)
    q = mon.events()
    with mon:
        assert [_next(q), _next(q)] == [ReaderAdded(R1), CardInserted(R1, bytes(ATR1))]
        fake.stop_service()
        lost = _next(q)
        assert isinstance(lost, ServiceLost)
        assert [_next(q), _next(q)] == [CardRemoved(R1), ReaderRemoved(R1)]
        with pytest.raises(queue.Empty):
            q.get(timeout=0.2)  # reported once while it stays down
        contexts = fake.contexts
        fake.set(R1, ATR2)
        fake.start_service()
        got = _drain_until(q, CardInserted(R1, bytes(ATR2)))
        assert got[0] == ServiceRestored()
        assert ReaderAdded(R1) in got
        assert fake.contexts > contexts  # a new context, same monitor, same application


def test_callback_errors_do_not_stop_the_monitor(fake: FakePcsc) -> None:
    fake.set(R1, None)
    seen: list[ReaderEvent] = []

    def bad(ev: ReaderEvent) -> None:
        raise RuntimeError("subscriber bug")

    mon = ReaderMonitor(bad, timeout_ms=200, poll=0.02)
    mon.subscribe(seen.append)
    with mon:
        assert mon.ready.wait(3)
        fake.set(R1, ATR1)
        q = mon.events()
        assert _next(q) == CardInserted(R1, bytes(ATR1))
    assert CardInserted(R1, bytes(ATR1)) in seen
