"""An in-process USB HID (CTAPHID) FIDO device for python-fido2's :class:`~fido2.hid.CtapHidDevice`.

Implements the CTAPHID framing of CTAP 2.1 §11.2: 64-byte reports; initialization packets
(``CID(4) | 0x80|CMD | BCNT(2) | data``) and continuation packets (``CID | SEQ | data``); channel allocation
with CTAPHID_INIT on the broadcast channel; PING, MSG (answered "INS not supported": no U2F), WINK,
CBOR, CANCEL, KEEPALIVE (every 100 ms while the authenticator waits) and ERROR. Errors use the CTAPHID
codes (they share values with :class:`fido2.ctap.CtapError.ERR`): INVALID_CMD, INVALID_LEN, INVALID_SEQ,
MSG_TIMEOUT, CHANNEL_BUSY, INVALID_CHANNEL. One transaction at a time: a second channel gets CHANNEL_BUSY.
When the simulated user has a touch delay, CBOR requests run on a worker thread (KEEPALIVE, CANCEL,
CHANNEL_BUSY observable); without one they are answered on the caller's thread.

Usage::

    device = VirtualHidDevice(authenticator)
    ctap = CtapHidDevice(device.descriptor, device.open())   # python-fido2's own class

Sandboxes have no /dev/uhid, so this object stands in for the kernel HID device (FIELD-NOTES).
"""

from __future__ import annotations

import itertools
import logging
import queue
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from fido2.ctap import STATUS
from fido2.hid import CAPABILITY, CTAPHID, CtapHidDevice
from fido2.hid.base import CtapHidConnection, HidDescriptor

from emulators.fido.authenticator import Authenticator
from emulators.fido.ctap import ERR

logger = logging.getLogger(__name__)

REPORT_SIZE = 64
BROADCAST_CID = 0xFFFFFFFF
TYPE_INIT = 0x80
INIT_DATA = REPORT_SIZE - 7
CONT_DATA = REPORT_SIZE - 5
#: Largest CTAPHID message: one init packet and 128 continuation packets (CTAP 2.1 §11.2.4).
MAX_MESSAGE = INIT_DATA + 128 * CONT_DATA
#: A message whose continuation packets stop arriving is dropped after this long (§11.2.5.3).
TRANSACTION_TIMEOUT = 0.5
CTAPHID_PROTOCOL_VERSION = 2
DEVICE_VERSION = (1, 0, 0)
VENDOR_ID, PRODUCT_ID = 0x1209, 0xB05A  # pid.codes test VID
READ_TIMEOUT = 30.0


@dataclass
class _Assembly:
    """A request being reassembled from packets."""

    cid: int
    cmd: int
    length: int
    connection: VirtualHidConnection
    data: bytearray = field(default_factory=bytearray)
    seq: int = 0
    started: float = 0.0


class VirtualHidDevice:
    """One virtual FIDO HID device in front of an :class:`Authenticator` (CTAP 2.1 §11.2)."""

    _serials = itertools.count(1)

    def __init__(
        self,
        authenticator: Authenticator,
        product: str = "Busan City ID Virtual FIDO2 (HID)",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.authenticator = authenticator
        self.clock = clock
        self.serial = f"VFIDO{next(self._serials):04d}"
        self.descriptor = HidDescriptor(
            f"virtual-hid:{self.serial}", VENDOR_ID, PRODUCT_ID, REPORT_SIZE, REPORT_SIZE, product,
            self.serial,
        )
        self._lock = threading.RLock()
        self._channels: set[int] = set()
        self._next_cid = 1
        self._assembly: _Assembly | None = None
        self._busy: tuple[int, threading.Event] | None = None
        self._worker: threading.Thread | None = None

    def open(self) -> VirtualHidConnection:
        """A new connection (a process opening the hidraw node)."""
        return VirtualHidConnection(self)

    def replug(self) -> None:
        """USB re-plug: a power cycle of the authenticator; all channels forgotten."""
        with self._lock:
            self._channels.clear()
            self._assembly = None
            self.authenticator.power_on()

    # --- output ---------------------------------------------------------------------------------

    @staticmethod
    def _frames(cid: int, cmd: int, data: bytes) -> list[bytes]:
        packets = [struct.pack(">IBH", cid, TYPE_INIT | cmd, len(data)) + data[:INIT_DATA]]
        rest = data[INIT_DATA:]
        for seq in itertools.count():
            if not rest:
                break
            packets.append(struct.pack(">IB", cid, seq) + rest[:CONT_DATA])
            rest = rest[CONT_DATA:]
        return [p.ljust(REPORT_SIZE, b"\0") for p in packets]

    def _send(self, conn: VirtualHidConnection, cid: int, cmd: int, data: bytes) -> None:
        for packet in self._frames(cid, cmd, data):
            conn.queue.put(packet)

    def _error(self, conn: VirtualHidConnection, cid: int, code: ERR) -> None:
        logger.debug("CTAPHID error 0x%02x on channel %08x", code, cid)
        self._send(conn, cid, CTAPHID.ERROR, bytes((code,)))

    # --- input ----------------------------------------------------------------------------------

    def handle_packet(self, conn: VirtualHidConnection, packet: bytes) -> None:
        """One output report from the host. Never raises; protocol errors go back as CTAPHID_ERROR."""
        with self._lock:
            try:
                self._handle(conn, bytes(packet))
            except Exception:
                logger.exception("CTAPHID device failure")
                if len(packet) >= 4:
                    self._error(conn, struct.unpack_from(">I", packet)[0], ERR.OTHER)

    def _expire(self) -> None:
        asm = self._assembly
        if asm is not None and self.clock() - asm.started > TRANSACTION_TIMEOUT:
            self._assembly = None
            self._error(asm.connection, asm.cid, ERR.TIMEOUT)

    def _handle(self, conn: VirtualHidConnection, packet: bytes) -> None:
        if len(packet) < 5:
            logger.debug("dropped a %d-byte report", len(packet))
            return
        cid = struct.unpack_from(">I", packet)[0]
        if len(packet) != REPORT_SIZE:
            self._error(conn, cid, ERR.INVALID_LENGTH)
            return
        self._expire()
        head = packet[4]
        if not head & TYPE_INIT:
            self._continuation(cid, head, packet[5:])
            return
        cmd = head & 0x7F
        length = struct.unpack_from(">H", packet, 5)[0]
        data = packet[7 : 7 + length]
        if cid == 0:
            self._error(conn, cid, ERR.INVALID_CHANNEL)
        elif cmd == CTAPHID.INIT:
            self._init(conn, cid, length, data)
        elif cid == BROADCAST_CID or cid not in self._channels:
            self._error(conn, cid, ERR.INVALID_CHANNEL)
        elif self._busy is not None:
            busy_cid, cancel = self._busy
            if cmd == CTAPHID.CANCEL and busy_cid == cid:
                cancel.set()
            elif cmd != CTAPHID.CANCEL:
                self._error(conn, cid, ERR.CHANNEL_BUSY)
        elif cmd == CTAPHID.CANCEL:
            return  # nothing to cancel: CANCEL has no response (§11.2.9.1.5)
        elif self._assembly is not None and self._assembly.cid != cid:
            self._error(conn, cid, ERR.CHANNEL_BUSY)
        elif self._assembly is not None:
            self._assembly = None
            self._error(conn, cid, ERR.INVALID_SEQ)
        elif length > MAX_MESSAGE:
            self._error(conn, cid, ERR.INVALID_LENGTH)
        else:
            asm = _Assembly(cid, cmd, length, conn, bytearray(data), started=self.clock())
            self._assembly = asm
            if len(asm.data) >= length:
                self._complete(asm)

    def _continuation(self, cid: int, seq: int, data: bytes) -> None:
        asm = self._assembly
        if asm is None or asm.cid != cid:
            return  # spurious continuation packets are ignored (§11.2.4)
        if seq != asm.seq:
            self._assembly = None
            self._error(asm.connection, cid, ERR.INVALID_SEQ)
            return
        asm.seq += 1
        asm.data += data
        if len(asm.data) >= asm.length:
            self._complete(asm)

    def _init(self, conn: VirtualHidConnection, cid: int, length: int, nonce: bytes) -> None:
        """CTAPHID_INIT (§11.2.9.1.3): allocate a channel (broadcast) or resynchronise one."""
        if length != 8:
            self._error(conn, cid, ERR.INVALID_LENGTH)
            return
        if cid == BROADCAST_CID:
            new_cid = self._next_cid
            self._next_cid = self._next_cid % 0xFFFFFFFE + 1
            self._channels.add(new_cid)
        elif cid in self._channels:
            new_cid = cid
            if self._assembly is not None and self._assembly.cid == cid:
                self._assembly = None
        else:
            self._error(conn, cid, ERR.INVALID_CHANNEL)
            return
        caps = CAPABILITY.WINK | CAPABILITY.CBOR | CAPABILITY.NMSG
        payload = nonce + struct.pack(">IBBBBB", new_cid, CTAPHID_PROTOCOL_VERSION, *DEVICE_VERSION, caps)
        self._send(conn, cid, CTAPHID.INIT, payload)

    def _complete(self, asm: _Assembly) -> None:
        self._assembly = None
        data = bytes(asm.data[: asm.length])
        conn, cid, cmd = asm.connection, asm.cid, asm.cmd
        if cmd == CTAPHID.PING:
            self._send(conn, cid, cmd, data)
        elif cmd == CTAPHID.WINK:
            self._send(conn, cid, cmd, b"")
        elif cmd == CTAPHID.MSG:
            self._send(conn, cid, cmd, b"\x6d\x00")  # CTAP1/U2F not supported: SW_INS_NOT_SUPPORTED
        elif cmd == CTAPHID.CBOR:
            if not data:
                self._error(conn, cid, ERR.INVALID_LENGTH)
                return
            cancel = threading.Event()
            if self.authenticator.up.delay <= 0:
                # Nothing will wait for a touch: answer on the caller's thread (no thread hand-over).
                self._send(conn, cid, CTAPHID.CBOR, self.authenticator.process(data, cancel=cancel))
                return
            self._busy = (cid, cancel)
            self._worker = threading.Thread(
                target=self._run_cbor, args=(conn, cid, data, cancel), name="ctaphid-cbor", daemon=True
            )
            self._worker.start()
        else:
            self._error(conn, cid, ERR.INVALID_COMMAND)

    def _run_cbor(self, conn: VirtualHidConnection, cid: int, data: bytes, cancel: threading.Event) -> None:
        def keepalive(status: STATUS) -> None:
            self._send(conn, cid, CTAPHID.KEEPALIVE, bytes((status,)))

        try:
            response = self.authenticator.process(data, cancel=cancel, keepalive=keepalive)
        finally:
            with self._lock:
                self._busy = None
        self._send(conn, cid, CTAPHID.CBOR, response)


class VirtualHidConnection(CtapHidConnection):
    """The host side of one open handle (:class:`fido2.hid.base.CtapHidConnection`)."""

    def __init__(self, device: VirtualHidDevice) -> None:
        self.device = device
        self.queue: queue.Queue[bytes] = queue.Queue()
        self.closed = False

    def write_packet(self, data: bytes) -> None:
        if self.closed:
            raise OSError("HID connection closed")
        self.device.handle_packet(self, data)

    def read_packet(self) -> bytes:
        if self.closed:
            raise OSError("HID connection closed")
        try:
            return self.queue.get(timeout=READ_TIMEOUT)
        except queue.Empty:
            raise OSError("timed out reading from the virtual HID device") from None

    def close(self) -> None:
        self.closed = True


# --- list / open, like fido2.hid.list_devices / open_device -------------------------------------------

_registry: dict[str, VirtualHidDevice] = {}
_registry_lock = threading.Lock()


def register(device: VirtualHidDevice) -> VirtualHidDevice:
    """Plug ``device`` in: it shows up in :func:`list_devices`."""
    with _registry_lock:
        _registry[str(device.descriptor.path)] = device
    return device


def unregister(device: VirtualHidDevice) -> None:
    """Unplug ``device``."""
    with _registry_lock:
        _registry.pop(str(device.descriptor.path), None)


def list_descriptors() -> list[HidDescriptor]:
    with _registry_lock:
        return [d.descriptor for d in _registry.values()]


def open_device(path: str) -> CtapHidDevice:
    """Open a plugged-in virtual device as python-fido2's :class:`CtapHidDevice`."""
    with _registry_lock:
        device = _registry.get(path)
    if device is None:
        raise OSError(f"no virtual HID device {path}")
    return CtapHidDevice(device.descriptor, device.open())


def list_devices() -> Iterator[CtapHidDevice]:
    """Every plugged-in virtual device, opened (like :meth:`CtapHidDevice.list_devices`)."""
    for descriptor in list_descriptors():
        yield open_device(str(descriptor.path))
