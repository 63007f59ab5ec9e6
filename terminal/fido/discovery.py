"""Finding security keys: FIDO applets on PC/SC cards and USB HID keys, reported as card events.

A PC/SC card is a FIDO key when SELECT of the FIDO AID succeeds (CTAP 2.1 §11.3.3) — also a citizen card
carrying the FIDO applet next to PIV. :class:`FidoKeyWatcher` listens to the smart-card
:class:`terminal.pcsc.monitor.ReaderMonitor` and polls HID, and emits :class:`FidoKeyInserted` /
:class:`FidoKeyRemoved` events like the monitor's card events. HID devices come from python-fido2
(``fido2.hid.list_devices``) or from any ``hid_lister`` passed in (tests pass the emulator's virtual HID
registry; the terminal never imports the emulator).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from fido2.ctap import CtapDevice

from cityid.apdu import SmartCardConnection, SmartCardProtocol
from cityid.errors import CardError, CityIdError
from terminal.fido.device import CtapSmartCardDevice, NotFidoError, select_fido

logger = logging.getLogger(__name__)

HidLister = Callable[[], Iterable[CtapDevice]]


@dataclass(frozen=True, slots=True)
class FidoKey:
    """A security key found on a transport: ``"pcsc"`` (reader name) or ``"hid"`` (device path)."""

    transport: str
    name: str
    version: str = ""
    atr: bytes = b""
    opener: Callable[[], CtapDevice] | None = field(default=None, compare=False, repr=False)

    def open(self) -> CtapDevice:
        """A python-fido2 CtapDevice for this key (PC/SC: a new connection to the reader)."""
        if self.opener is None:
            raise CityIdError(f"{self.name} cannot be opened")
        return self.opener()


@dataclass(frozen=True, slots=True)
class FidoKeyInserted:
    key: FidoKey


@dataclass(frozen=True, slots=True)
class FidoKeyRemoved:
    transport: str
    name: str


FidoKeyEvent = FidoKeyInserted | FidoKeyRemoved


def classify_connection(connection: SmartCardConnection) -> str | None:
    """The FIDO applet's version string if the card has one (SELECT FIDO AID), else None."""
    try:
        return select_fido(SmartCardProtocol(connection)).decode("ascii", "replace")
    except NotFidoError:
        return None


def _pcsc_opener(reader: str) -> Callable[[], CtapDevice]:
    def open_key() -> CtapDevice:
        from terminal.pcsc.connection import PcscConnection

        conn = PcscConnection(reader, reset_on_close=False).open()
        try:
            return CtapSmartCardDevice(conn, reader)
        except BaseException:
            conn.close()
            raise

    return open_key


def classify_reader(reader: str) -> FidoKey | None:
    """Connect to the card in ``reader`` and tell whether it is a FIDO key (leaves the card untouched)."""
    from terminal.pcsc.connection import PcscConnection

    try:
        with PcscConnection(reader, reset_on_close=False) as conn:
            version = classify_connection(conn)
            atr = conn.atr
    except CardError as exc:
        logger.debug("cannot classify the card in %r: %s", reader, exc)
        return None
    if version is None:
        return None
    return FidoKey("pcsc", reader, version, atr, _pcsc_opener(reader))


def discover_pcsc() -> list[FidoKey]:
    """FIDO keys in every PC/SC reader with a card."""
    from terminal.pcsc.connection import list_readers

    try:
        readers = list_readers()
    except CityIdError as exc:
        logger.debug("no PC/SC readers: %s", exc)
        return []
    keys = []
    for reader in readers:
        key = classify_reader(reader)
        if key is not None:
            keys.append(key)
    return keys


def system_hid_devices() -> list[CtapDevice]:
    """USB HID FIDO keys of the operating system (python-fido2); none when HID is unavailable."""
    try:
        from fido2.hid import CtapHidDevice

        return list(CtapHidDevice.list_devices())
    except Exception as exc:  # no hidraw access, no udev rules, ...
        logger.debug("USB HID enumeration failed: %s", exc)
        return []


def _hid_name(device: Any) -> str:
    descriptor = getattr(device, "descriptor", None)
    return str(getattr(descriptor, "path", repr(device)))


def discover_hid(hid_lister: HidLister = system_hid_devices) -> list[FidoKey]:
    """FIDO keys on USB HID (each already opened: HID has no separate "connect")."""
    keys = []
    for device in hid_lister():
        name = _hid_name(device)
        keys.append(FidoKey("hid", name, "FIDO_2_0", b"", lambda d=device: d))
    return keys


def discover_keys(hid_lister: HidLister = system_hid_devices) -> list[FidoKey]:
    """Every security key on PC/SC and USB HID."""
    return discover_pcsc() + discover_hid(hid_lister)


class FidoKeyWatcher:
    """Turn smart-card monitor events (and HID polling) into :data:`FidoKeyEvent` objects.

    ``monitor`` is a :class:`terminal.pcsc.monitor.ReaderMonitor` (or None for HID only); ``classify``
    decides whether the card in a reader is a FIDO key (default: SELECT the FIDO AID over PC/SC).
    """

    def __init__(
        self,
        monitor: Any | None = None,
        hid_lister: HidLister | None = None,
        *,
        classify: Callable[[str], FidoKey | None] = classify_reader,
        poll: float = 0.5,
    ) -> None:
        self.monitor = monitor
        self.hid_lister = hid_lister
        self.classify = classify
        self.poll = poll
        self._keys: dict[tuple[str, str], FidoKey] = {}
        self._subscribers: list[Callable[[FidoKeyEvent], None]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def subscribe(self, callback: Callable[[FidoKeyEvent], None]) -> None:
        with self._lock:
            self._subscribers.append(callback)

    def events(self) -> queue.Queue[FidoKeyEvent]:
        q: queue.Queue[FidoKeyEvent] = queue.Queue()
        self.subscribe(q.put)
        return q

    def keys(self) -> list[FidoKey]:
        with self._lock:
            return list(self._keys.values())

    def _emit(self, event: FidoKeyEvent) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for cb in subscribers:
            try:
                cb(event)
            except Exception:
                logger.exception("FIDO key event subscriber failed")

    def _added(self, key: FidoKey) -> None:
        with self._lock:
            new = (key.transport, key.name) not in self._keys
            self._keys[(key.transport, key.name)] = key
        if new:
            self._emit(FidoKeyInserted(key))

    def _removed(self, transport: str, name: str) -> None:
        with self._lock:
            gone = self._keys.pop((transport, name), None)
        if gone is not None:
            self._emit(FidoKeyRemoved(transport, name))

    def on_card_event(self, event: Any) -> None:
        """Feed one :mod:`terminal.pcsc.monitor` event (subscribed automatically by :meth:`start`)."""
        from terminal.pcsc.monitor import CardInserted, CardRemoved, CardSwapped, ReaderRemoved

        if isinstance(event, CardRemoved | ReaderRemoved | CardSwapped):
            self._removed("pcsc", event.reader)
        if isinstance(event, CardInserted | CardSwapped):
            key = self.classify(event.reader)
            if key is not None:
                self._added(key)

    def scan_hid(self) -> None:
        """Poll HID once: new devices → inserted, vanished ones → removed."""
        if self.hid_lister is None:
            return
        found = {k.name: k for k in discover_hid(self.hid_lister)}
        with self._lock:
            known = [name for (t, name) in self._keys if t == "hid"]
        for name in known:
            if name not in found:
                self._removed("hid", name)
        for key in found.values():
            if ("hid", key.name) not in self._keys:
                self._added(key)

    def start(self) -> FidoKeyWatcher:
        if self.monitor is not None:
            self.monitor.subscribe(self.on_card_event)
        if self.hid_lister is not None and (self._thread is None or not self._thread.is_alive()):
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="fido-hid-watch", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self.monitor is not None:
            self.monitor.unsubscribe(self.on_card_event)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.scan_hid()
            except Exception:
                logger.exception("HID scan failed")
            self._stop.wait(self.poll)
