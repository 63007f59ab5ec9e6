"""Ways to reach a :class:`VirtualCard`: in process (unit tests) and as a card in pcscd's vpcd reader.

vpcd wire protocol (vsmartcard ``vpcd``): the card is a TCP *client* of the reader driver (port 35963 for
reader ``Virtual PCD 00 00``, 35964 for ``… 00 01``). Every message is a 2-byte big-endian length and the
payload. A 1-byte payload is a control byte — ``00`` power off, ``01`` power on, ``02`` reset, ``04`` "send
your ATR" (answered with the ATR); any longer payload is a command APDU, answered with the response APDU.
Closing the socket means the card left the reader. The stream is parsed as a stream (vpcd may put several
messages in one segment). TCP_NODELAY plus TCP_QUICKACK re-armed before every receive avoid the ~40 ms
Nagle/delayed-ACK stall on loopback (see FIELD-NOTES).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import socket
import struct
import threading
from collections.abc import Callable

from cityid.errors import CardRemovedError, MalformedApduError
from emulators.card.os import VirtualCard

logger = logging.getLogger(__name__)

DEFAULT_VPCD_HOST = "127.0.0.1"
DEFAULT_VPCD_PORT = 35963


class VpcdControl(enum.IntEnum):
    """Control bytes of the vpcd protocol."""

    POWER_OFF = 0x00
    POWER_ON = 0x01
    RESET = 0x02
    GET_ATR = 0x04


class TearPoint(enum.Enum):
    """Where a simulated card removal happens relative to one APDU."""

    BEFORE_PROCESSING = "before"  # the card never saw the command
    AFTER_PROCESSING = "after"  # the card processed it, the answer never left


class InProcessConnection:
    """A :class:`cityid.apdu.SmartCardConnection` straight into a :class:`VirtualCard` (no daemons)."""

    def __init__(self, card: VirtualCard) -> None:
        self.card = card
        self.removed = False
        self.atr = card.power_on()

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        if self.removed:
            raise CardRemovedError("virtual card removed")
        raw = self.card.transmit(apdu)
        return raw[:-2], int.from_bytes(raw[-2:], "big")

    def remove(self) -> None:
        """Pull the card: power off; later commands raise :class:`CardRemovedError`."""
        self.removed = True
        self.card.remove()

    def insert(self) -> bytes:
        """Put the card back (cold reset); return the ATR."""
        self.removed = False
        self.atr = self.card.power_on()
        return self.atr

    def reset(self) -> bytes:
        self.atr = self.card.reset()
        return self.atr

    def close(self) -> None:
        """Nothing to release (connections in yubikit style are closable)."""


def _quickack(sock: socket.socket) -> None:
    if hasattr(socket, "TCP_QUICKACK"):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


class VpcdCard:
    """Connect ``card`` to a vpcd reader as its card; a background thread serves the reader.

    ``start()`` inserts the card (connects, retrying until vpcd listens), ``stop()`` removes it (closes the
    socket). With ``reconnect`` the card re-inserts itself when pcscd goes away and comes back; a torn card
    (test hooks) stays removed until ``start()`` is called again.
    """

    def __init__(
        self,
        card: VirtualCard,
        host: str = DEFAULT_VPCD_HOST,
        port: int = DEFAULT_VPCD_PORT,
        reconnect: bool = True,
    ) -> None:
        self.card = card
        self.host = host
        self.port = port
        self.reconnect = reconnect
        self.polls = 0  # ATR requests seen: pcscd polls a present card about every 400 ms
        #: Test hook: called with every raw command APDU; return a :class:`TearPoint` to remove the card
        #: there.
        self.on_apdu: Callable[[bytes], TearPoint | None] | None = None
        self.apdu_count = 0
        self.connected = threading.Event()
        self.torn = threading.Event()
        self._tear_at: tuple[int, TearPoint] | None = None
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # --- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Insert the card: connect to vpcd in a background thread (returns at once)."""
        if self._thread is not None and self._thread.is_alive():
            if not self._stop.is_set():
                return  # already inserted
            self._thread.join(5.0)  # a removal (tear/stop) is still winding down
        self._stop.clear()
        self.torn.clear()
        self._thread = threading.Thread(target=self._run, name=f"vpcd-card-{self.port}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Remove the card: close the socket and wait for the thread to end."""
        self._stop.set()
        self._close_socket()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wait_connected(self, timeout: float = 10.0) -> bool:
        return self.connected.wait(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --- test hooks ---------------------------------------------------------------------------------

    def tear_after(self, n_apdus: int, point: TearPoint = TearPoint.AFTER_PROCESSING) -> None:
        """Remove the card at the ``n_apdus``-th APDU from now (1 = the next one), at ``point``."""
        if n_apdus < 1:
            raise ValueError("n_apdus must be at least 1")
        with self._lock:
            self._tear_at = (self.apdu_count + n_apdus, point)

    def tear(self) -> None:
        """Remove the card now, as if pulled out (the thread ends; ``start()`` re-inserts it).

        The socket is reset (SO_LINGER 0) rather than closed gracefully: vpcd, waiting for the answer to an
        APDU, then sees an error and drops the connection, so it accepts the card again later.
        """
        self.torn.set()
        self._stop.set()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._close_socket()

    # --- the reader conversation --------------------------------------------------------------------

    def _close_socket(self) -> None:
        sock = self._sock
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sock = socket.create_connection((self.host, self.port), timeout=1.0)
            except OSError:
                if self._stop.wait(0.05):
                    break
                continue
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = sock
            if self._stop.is_set():  # stop() raced with connect
                self._close_socket()
                break
            self.connected.set()
            logger.info("card inserted into vpcd %s:%d", self.host, self.port)
            try:
                self._serve(sock)
            except OSError as exc:
                logger.debug("vpcd connection ended: %s", exc)
            except MalformedApduError as exc:
                logger.error("vpcd protocol error: %s", exc)
            finally:
                self.connected.clear()
                self._sock = None
                sock.close()
                self.card.remove()  # the socket is the card's presence in the reader
                logger.info("card removed from vpcd %s:%d", self.host, self.port)
            if not self.reconnect:
                break
            if self._stop.wait(0.05):
                break

    def _serve(self, sock: socket.socket) -> None:
        buf = bytearray()

        def read(n: int) -> bytes | None:
            while len(buf) < n:
                _quickack(sock)
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                buf.extend(chunk)
            out = bytes(buf[:n])
            del buf[:n]
            return out

        while True:
            head = read(2)
            if head is None:
                return
            length = int.from_bytes(head, "big")
            payload = read(length) if length else b""
            if payload is None:
                return
            if len(payload) == 1:
                self._control(sock, payload[0])
                continue
            if not payload:
                continue
            if not self._apdu(sock, payload):
                return

    def _control(self, sock: socket.socket, byte: int) -> None:
        if byte == VpcdControl.POWER_OFF:
            self.card.power_off()
        elif byte == VpcdControl.POWER_ON:
            self.card.power_on()
        elif byte == VpcdControl.RESET:
            self.card.reset()
        elif byte == VpcdControl.GET_ATR:
            self.polls += 1
            self._send(sock, self.card.atr)
        else:
            logger.warning("unknown vpcd control byte %02X", byte)

    def _apdu(self, sock: socket.socket, raw: bytes) -> bool:
        """Answer one APDU; return False when a test hook removed the card."""
        with self._lock:
            self.apdu_count += 1
            point: TearPoint | None = None
            if self._tear_at is not None and self._tear_at[0] == self.apdu_count:
                point = self._tear_at[1]
                self._tear_at = None
        if point is None and self.on_apdu is not None:
            point = self.on_apdu(raw)
        if point is TearPoint.BEFORE_PROCESSING:
            self.tear()
            return False
        response = self.card.transmit(raw)
        if point is TearPoint.AFTER_PROCESSING:
            self.tear()
            return False
        self._send(sock, response)
        return True

    @staticmethod
    def _send(sock: socket.socket, payload: bytes) -> None:
        sock.sendall(len(payload).to_bytes(2, "big") + payload)
