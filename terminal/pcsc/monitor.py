"""Reader and card monitoring: typed events from SCardGetStatusChange (PC/SC part 5 §3.1.4).

A background thread waits on every reader plus the ``\\\\?PnP?\\Notification`` pseudo-reader (reader
plugged/unplugged; pcsc-lite and Windows support it — otherwise the reader list is polled). It compares each
reader's (presence, ATR, event counter) with what it saw last:

* a card appearing → :class:`CardInserted`; disappearing → :class:`CardRemoved`;
* present before and after with another ATR → :class:`CardSwapped`; with the same ATR but pcsc-lite's event
  counter (upper 16 bits of the event state) moved by two or more → removed and inserted again;
* pcscd stopping → :class:`ServiceLost` (plus removals), then the context is rebuilt when it comes back
  → :class:`ServiceRestored` (plus what is present then), without restarting the application.

Subscribers get events through a callback (called on the monitor thread) or a :class:`queue.Queue`.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from smartcard import scard

from cityid.errors import PcscUnavailableError
from terminal.pcsc.connection import (
    SERVICE_GONE,
    establish_context,
    list_readers,
    pcsc_message,
    release_context,
)

logger = logging.getLogger(__name__)

PNP_READER = "\\\\?PnP?\\Notification"


@dataclass(frozen=True, slots=True)
class ReaderAdded:
    reader: str


@dataclass(frozen=True, slots=True)
class ReaderRemoved:
    reader: str


@dataclass(frozen=True, slots=True)
class CardInserted:
    reader: str
    atr: bytes


@dataclass(frozen=True, slots=True)
class CardRemoved:
    reader: str


@dataclass(frozen=True, slots=True)
class CardSwapped:
    reader: str
    old_atr: bytes
    new_atr: bytes


@dataclass(frozen=True, slots=True)
class ServiceLost:
    reason: str


@dataclass(frozen=True, slots=True)
class ServiceRestored:
    pass


ReaderEvent = (
    ReaderAdded | ReaderRemoved | CardInserted | CardRemoved | CardSwapped | ServiceLost | ServiceRestored
)


@dataclass
class _Seen:
    state: int  # last event state (CHANGED bit cleared), fed back as the current state
    atr: bytes | None  # None: no card


class ReaderMonitor:
    """Watch readers and cards on a background thread; deliver :data:`ReaderEvent` objects.

    ``timeout`` bounds one SCardGetStatusChange wait (ms); ``poll`` is the retry pause while pcscd is
    down and the reader-list period when PnP notification is unsupported (s).
    """

    def __init__(
        self,
        callback: Callable[[ReaderEvent], None] | None = None,
        *,
        timeout_ms: int = 1000,
        poll: float = 0.1,
    ) -> None:
        self.timeout_ms = timeout_ms
        self.poll = poll
        self._subscribers: list[Callable[[ReaderEvent], None]] = []
        if callback is not None:
            self._subscribers.append(callback)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._context: Any = None
        self._seen: dict[str, _Seen] = {}
        self._pnp: bool | None = None
        self._pnp_state = scard.SCARD_STATE_UNAWARE
        self._service_lost = False
        self.ready = threading.Event()  # set after the first full scan

    # --- subscription ------------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[ReaderEvent], None]) -> None:
        """Call ``callback(event)`` on the monitor thread for every event."""
        with self._lock:
            self._subscribers.append(callback)

    def unsubscribe(self, callback: Callable[[ReaderEvent], None]) -> None:
        with self._lock:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

    def events(self) -> queue.Queue[ReaderEvent]:
        """A new queue receiving every event from now on."""
        q: queue.Queue[ReaderEvent] = queue.Queue()
        self.subscribe(q.put)
        return q

    def cards(self) -> dict[str, bytes]:
        """Readers with a card and its ATR, as last seen."""
        with self._lock:
            return {r: s.atr for r, s in self._seen.items() if s.atr is not None}

    def readers(self) -> list[str]:
        with self._lock:
            return list(self._seen)

    @property
    def pnp(self) -> bool | None:
        """Whether pcscd supports reader hot-plug notification (None before the first scan)."""
        return self._pnp

    # --- life cycle ----------------------------------------------------------------------------------

    def start(self) -> ReaderMonitor:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="reader-monitor", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (SCardCancel wakes a pending wait)."""
        self._stop.set()
        ctx = self._context
        if ctx is not None:
            scard.SCardCancel(ctx)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> ReaderMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the loop ------------------------------------------------------------------------------------

    def _emit(self, event: ReaderEvent) -> None:
        logger.debug("reader event %s", event)
        with self._lock:
            subscribers = list(self._subscribers)
        for cb in subscribers:
            try:
                cb(event)
            except Exception:
                logger.exception("reader event subscriber failed")

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._context is None and not self._connect():
                    self._stop.wait(self.poll)
                    continue
                try:
                    self._step()
                except PcscUnavailableError as exc:
                    self._lose_service(str(exc))
        finally:
            if self._context is not None:
                release_context(self._context)
                self._context = None

    def _connect(self) -> bool:
        try:
            self._context = establish_context()
        except PcscUnavailableError as exc:
            if not self._service_lost:
                self._lose_service(str(exc))
            return False
        if self._service_lost:
            self._service_lost = False
            self._emit(ServiceRestored())
        self._pnp = None
        self._pnp_state = scard.SCARD_STATE_UNAWARE
        return True

    def _lose_service(self, reason: str) -> None:
        """Forget everything (emitting removals), drop the context, and report the loss once."""
        if self._context is not None:
            release_context(self._context)
            self._context = None
        first = not self._service_lost
        self._service_lost = True
        if first:
            self._emit(ServiceLost(reason))
        for reader in list(self._seen):
            self._forget(reader)
        self.ready.set()

    def _forget(self, reader: str) -> None:
        with self._lock:
            seen = self._seen.pop(reader, None)
        if seen is not None and seen.atr is not None:
            self._emit(CardRemoved(reader))
        if seen is not None:
            self._emit(ReaderRemoved(reader))

    def _pnp_supported(self) -> bool:
        if self._pnp is None:
            hr, states = scard.SCardGetStatusChange(
                self._context, 0, [(PNP_READER, scard.SCARD_STATE_UNAWARE)]
            )
            self._pnp = hr in (scard.SCARD_S_SUCCESS, scard.SCARD_E_TIMEOUT) and not (
                states and states[0][1] & scard.SCARD_STATE_UNKNOWN
            )
            if hr in SERVICE_GONE:
                raise PcscUnavailableError(pcsc_message(hr))
            logger.debug("PnP reader notification %s", "supported" if self._pnp else "not supported")
        return self._pnp

    def _step(self) -> None:
        readers = list_readers(self._context)
        for gone in [r for r in self._seen if r not in readers]:
            self._forget(gone)
        for new in readers:
            if new not in self._seen:
                with self._lock:
                    self._seen[new] = _Seen(scard.SCARD_STATE_UNAWARE, None)
                self._emit(ReaderAdded(new))
        pnp = self._pnp_supported()
        query = [(r, self._seen[r].state) for r in readers]
        if pnp:
            query.append((PNP_READER, self._pnp_state))
        if not query:  # no readers and no PnP: poll the list
            self.ready.set()
            self._stop.wait(self.poll)
            return
        timeout = self.timeout_ms if pnp else max(1, int(self.poll * 1000))
        hr, states = scard.SCardGetStatusChange(self._context, timeout, query)
        if hr in (scard.SCARD_E_TIMEOUT, scard.SCARD_E_CANCELLED):
            self.ready.set()
            return
        if hr in (scard.SCARD_E_UNKNOWN_READER, scard.SCARD_E_READER_UNAVAILABLE):
            return  # a reader vanished between listing and waiting: list again
        if hr in SERVICE_GONE:
            raise PcscUnavailableError(f"PC/SC service lost: {pcsc_message(hr)}")
        if hr != scard.SCARD_S_SUCCESS:
            logger.warning("SCardGetStatusChange failed: %s", pcsc_message(hr))
            self._stop.wait(self.poll)
            return
        for reader, event_state, atr in states:
            if reader == PNP_READER:
                self._pnp_state = event_state & ~scard.SCARD_STATE_CHANGED
                continue
            self._update(reader, event_state, bytes(atr))
        self.ready.set()

    def _update(self, reader: str, event_state: int, atr: bytes) -> None:
        with self._lock:
            seen = self._seen.get(reader)
        if seen is None:
            return
        if event_state & (scard.SCARD_STATE_UNAVAILABLE | scard.SCARD_STATE_UNKNOWN) and not (
            event_state & scard.SCARD_STATE_PRESENT
        ):
            present = False
        else:
            present = bool(event_state & scard.SCARD_STATE_PRESENT)
        old_count = (seen.state >> 16) & 0xFFFF
        new_count = (event_state >> 16) & 0xFFFF
        first = seen.state == scard.SCARD_STATE_UNAWARE
        with self._lock:
            seen.state = event_state & ~scard.SCARD_STATE_CHANGED
            old_atr, seen.atr = seen.atr, (atr if present else None)
        if present and old_atr is None:
            self._emit(CardInserted(reader, atr))
        elif present and old_atr is not None and atr != old_atr:
            self._emit(CardSwapped(reader, old_atr, atr))
        elif present and old_atr is not None and not first and (new_count - old_count) % 0x10000 >= 2:
            # removed and re-inserted between two observations (same ATR): a different card, maybe
            self._emit(CardRemoved(reader))
            self._emit(CardInserted(reader, atr))
        elif not present and old_atr is not None:
            self._emit(CardRemoved(reader))
