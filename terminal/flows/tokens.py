"""Where a citizen's token comes from: a card or a FIDO2 key in a reader, or a USB-HID key (docs/ui.md).

* :class:`TokenKind`, :class:`TokenPresent`, :class:`TokenRemoved` — what the kiosk screens react to;
* :class:`Tokens` — opens the token behind a reader name: PC/SC-style readers through a ``connect(reader)``
  factory (``pcsc_connect`` here, the demo's in-process slot, a test's ``nullcontext``), USB-HID keys
  registered by name from :class:`terminal.fido.discovery.FidoKeyWatcher` events; tells a citizen card
  (citizen applet: GET INFO) from a FIDO2 key (CTAP GetInfo + PIN retries);
* :class:`TokenWatcher` — PC/SC reader events (:class:`terminal.pcsc.monitor.ReaderMonitor`) and, when
  given a HID lister, USB-HID key events, as token events for one callback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cityid.apdu import SmartCardConnection
from cityid.citizen import CredentialState as CardCredentialState
from cityid.errors import ApplicationNotFoundError, CardNotFinishedError, NoCardError, UnusableTokenError
from terminal.fido.device import CtapSmartCardDevice, NotFidoError
from terminal.fido.session import FidoSession, PinState
from terminal.sessions.citizen import CitizenSession

logger = logging.getLogger(__name__)

#: ``connect(reader)`` → a connection to the card in ``reader`` (closed, with a card reset, on exit).
Connect = Callable[[str], AbstractContextManager[SmartCardConnection]]


class TokenKind(StrEnum):
    """What the citizen tapped."""

    CARD = "card"  # the citizen smart card (PIV + citizen applet)
    FIDO = "fido"  # a FIDO2 security key carrying the citizen credential


@dataclass(frozen=True, slots=True)
class TokenPresent:
    """A card or key arrived in ``reader``."""

    reader: str
    kind: TokenKind
    at: float = 0.0  # time.monotonic() when the card layer saw it (latency measurement)


@dataclass(frozen=True, slots=True)
class TokenRemoved:
    """The card or key left ``reader``."""

    reader: str
    at: float = 0.0


TokenEvent = TokenPresent | TokenRemoved


@dataclass(frozen=True, slots=True)
class TokenStatus:
    """What is known about a token before its PIN is asked for (no personal data)."""

    reader: str
    kind: TokenKind
    pin_tries: int | None  # None: unknown
    blocked: bool = False


def pcsc_connect(reader: str) -> AbstractContextManager[SmartCardConnection]:
    """A PC/SC connection to the card in ``reader`` (transaction held; card reset on close)."""
    from terminal.pcsc.connection import PcscConnection

    return PcscConnection(reader)


def pcsc_readers() -> list[str]:
    """The PC/SC readers present now."""
    from terminal.pcsc.connection import list_readers

    return list_readers()


def open_fido(connection: SmartCardConnection) -> FidoSession:
    """A FIDO session over a card connection; :class:`NoCardError` when the card has no FIDO applet."""
    try:
        return FidoSession(CtapSmartCardDevice(connection))
    except (NotFidoError, ApplicationNotFoundError):
        raise NoCardError("not a FIDO2 security key") from None


class Tokens:
    """The tokens a terminal reaches: cards/keys in readers through ``connect``, USB-HID keys by name."""

    HID_PREFIX = "HID "

    def __init__(self, connect: Connect) -> None:
        self.connect = connect
        self._hid: dict[str, Any] = {}  # "HID <name>" → terminal.fido.discovery.FidoKey

    # --- USB-HID keys ------------------------------------------------------------------------------

    def on_fido_key_event(self, event: object) -> TokenEvent | None:
        """A :mod:`terminal.fido.discovery` event as a token event (USB-HID keys only; PC/SC keys come
        from the reader monitor like cards)."""
        from terminal.fido.discovery import FidoKeyInserted, FidoKeyRemoved

        if isinstance(event, FidoKeyInserted) and event.key.transport == "hid":
            name = self.HID_PREFIX + event.key.name
            self._hid[name] = event.key
            return TokenPresent(name, TokenKind.FIDO, time.monotonic())
        if isinstance(event, FidoKeyRemoved) and event.transport == "hid":
            name = self.HID_PREFIX + event.name
            self._hid.pop(name, None)
            return TokenRemoved(name, time.monotonic())
        return None

    def is_hid(self, reader: str) -> bool:
        return reader in self._hid

    # --- opening -----------------------------------------------------------------------------------

    @contextmanager
    def fido(self, reader: str) -> Iterator[FidoSession]:
        """The FIDO key behind ``reader`` (HID key or a key in a reader), for one operation."""
        hid_key = self._hid.get(reader)
        if hid_key is not None:
            yield FidoSession(hid_key.open())
            return
        with self.connect(reader) as conn:
            yield open_fido(conn)

    def probe(self, reader: str) -> TokenStatus:
        """A citizen card (citizen applet: GET INFO) or else a FIDO2 key (CTAP GetInfo + PIN retries).

        :class:`UnusableTokenError` (a :class:`NoCardError`) for neither, for a card without an activated
        credential (GET INFO ``C7``), or for a key without a PIN (not registered at a counter).
        """
        if self.is_hid(reader):
            with self.fido(reader) as session:
                return self._key_status(reader, session)
        with self.connect(reader) as conn:
            try:
                info = CitizenSession(conn).info()
            except ApplicationNotFoundError:
                try:
                    session = FidoSession(CtapSmartCardDevice(conn))
                except (NotFidoError, ApplicationNotFoundError):
                    raise UnusableTokenError(
                        "foreign", "neither a Busan citizen card nor a FIDO2 security key"
                    ) from None
                return self._key_status(reader, session)
            state = info.credential_state
            if state == CardCredentialState.PRESENT:  # written, not activated (card-profile ACTIVATE)
                raise CardNotFinishedError()
            if state is not None and not state & CardCredentialState.ACTIVATED:
                raise UnusableTokenError("blank", "the card holds no usable credential")
            return TokenStatus(reader, TokenKind.CARD, info.pin_tries, info.pin_tries == 0)

    @staticmethod
    def _key_status(reader: str, session: FidoSession) -> TokenStatus:
        status = session.pin_status()
        if status.state is PinState.NOT_SET:
            raise UnusableTokenError(
                "unregistered_key", "this security key has no PIN: it was not registered at a counter"
            )
        blocked = status.state in (PinState.BLOCKED, PinState.POWER_CYCLE_REQUIRED)
        return TokenStatus(reader, TokenKind.FIDO, status.retries, blocked)


class TokenWatcher:
    """PC/SC reader events and USB-HID key events as :data:`TokenEvent` for ``on_event``.

    ``reader_filter`` limits PC/SC events to readers whose name contains it (empty: every reader);
    ``hid_lister`` lists USB-HID security keys (:func:`terminal.fido.discovery.system_hid_devices`),
    ``None`` watches PC/SC only. HID keys are registered in ``tokens`` so they can be opened by name.
    """

    def __init__(
        self,
        tokens: Tokens,
        on_event: Callable[[TokenEvent], None],
        reader_filter: str = "",
        hid_lister: Callable[[], Sequence[Any]] | None = None,
    ) -> None:
        self.tokens = tokens
        self.on_event = on_event
        self.reader_filter = reader_filter
        self.hid_lister = hid_lister
        self._monitor: Any = None
        self._hid_watcher: Any = None
        self._pcscd: bool | None = None  # from the monitor's ServiceLost / ServiceRestored

    def start(self, ready_timeout: float = 2.0) -> TokenWatcher:
        """Start watching; waits up to ``ready_timeout`` for the first reader scan (so health is known)."""
        from terminal.pcsc.monitor import ReaderMonitor

        self._monitor = ReaderMonitor(self._on_reader_event, timeout_ms=1000).start()
        self._monitor.ready.wait(ready_timeout)
        if self.hid_lister is not None:
            from terminal.fido.discovery import FidoKeyWatcher

            self._hid_watcher = FidoKeyWatcher(None, self.hid_lister)
            self._hid_watcher.subscribe(self._on_key_event)
            self._hid_watcher.start()
        return self

    def stop(self) -> None:
        if self._hid_watcher is not None:
            self._hid_watcher.stop()
            self._hid_watcher = None
        if self._monitor is not None:
            self._monitor.stop()
            self._monitor = None

    def pcsc_state(self) -> tuple[bool | None, tuple[str, ...]]:
        """(pcscd up — None before the first scan —, the readers matching ``reader_filter``)."""
        monitor = self._monitor
        pcscd, readers = self._pcscd, ()
        if monitor is not None:
            readers = tuple(r for r in monitor.readers() if self.reader_filter in r)
            if pcscd is None and monitor.ready.is_set():
                pcscd = True
        return pcscd, readers

    def _on_key_event(self, event: object) -> None:
        token_event = self.tokens.on_fido_key_event(event)
        if token_event is not None:
            self.on_event(token_event)

    def _on_reader_event(self, event: object) -> None:
        from terminal.pcsc.monitor import CardInserted, CardRemoved, CardSwapped, ServiceLost, ServiceRestored

        if isinstance(event, ServiceLost | ServiceRestored):
            self._pcscd = isinstance(event, ServiceRestored)
            return
        now = time.monotonic()
        reader = getattr(event, "reader", "")
        if self.reader_filter and self.reader_filter not in reader:
            return
        if isinstance(event, CardInserted):
            self.on_event(TokenPresent(reader, TokenKind.CARD, now))
        elif isinstance(event, CardRemoved):
            self.on_event(TokenRemoved(reader, now))
        elif isinstance(event, CardSwapped):
            self.on_event(TokenRemoved(reader, now))
            self.on_event(TokenPresent(reader, TokenKind.CARD, now))
