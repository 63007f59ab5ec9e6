"""A serial QR/barcode scanner (the USB-serial / RS-232 kind that sends the decoded text and a terminator).

Read through pyserial (docs/printer.md §Scanner). Scanners send CR, LF or CR LF after each code; noise on the
line (a scanner plugged in while powered, a baud-rate mismatch) arrives as bytes that are not printable text.
:class:`SerialScanner` yields only whole, printable lines:

* a code split over several reads is joined (however the UART, USB or pty layers chunk it);
* control or undecodable bytes and everything before them on the line are dropped (noise glued to the front
  of a scan leaves the scan);
* a half line without terminator is dropped once ``idle_s`` passes with **no byte pending** (the scanner was
  unplugged mid-code) — never while bytes are waiting to be read (a reader that was busy or starved);
* a line longer than ``max_line`` is discarded entirely (whether or not its terminator came in the same read).

Every drop is counted in :attr:`SerialScanner.rejected` and logged (never the content: a code may carry
personal facts).

**Nothing that reached the port is discarded.** pyserial's ``open()`` flushes the input queue (TCIFLUSH);
a scan that arrived before the port was (re)opened — the counter screen still starting, the reader reopening
after the cable was pulled — would silently vanish (a socat pty, like a USB-serial adapter's driver, queues
what the scanner sent meanwhile). The port is opened with that flush left out. After a read error the port is
closed and :meth:`SerialScanner.read_line` reopens it by name on its next call (the cable is back: same
``/dev/ttyACM0``, or a udev symlink).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from cityid.errors import CityIdError

logger = logging.getLogger(__name__)

TERMINATORS = frozenset(b"\r\n")


class ScannerError(CityIdError):
    """The scanner port cannot be opened or went away."""


@lru_cache(maxsize=1)
def _keep_input_serial() -> type:
    """pyserial's ``Serial`` whose ``open()`` keeps what is already queued on the port (module doc).

    pyserial 3.5 (posix) calls ``_reset_input_buffer()`` at the end of ``open()``; later explicit
    ``reset_input_buffer()`` calls still flush. Pinned by tests/unit/test_scanner.py (queued before open).
    """
    import serial

    class KeepInputSerial(serial.Serial):
        _opening = False

        def open(self) -> None:
            self._opening = True
            try:
                super().open()
            finally:
                self._opening = False

        def _reset_input_buffer(self) -> None:
            if not self._opening:
                # pyserial's own (private) flush; the stubs do not list it
                super()._reset_input_buffer()  # pyright: ignore[reportAttributeAccessIssue]

    return KeepInputSerial


def open_keeping_input(port: str, baudrate: int, timeout: float) -> Any:
    """A pyserial port on ``port`` opened without discarding bytes already queued on it."""
    ser = _keep_input_serial()(None, baudrate, timeout=timeout)
    ser.port = port
    ser.open()
    return ser


class SerialScanner:
    """Lines from a serial scanner; ``read_line`` returns one code or None at the timeout.

    The constructor opens the port (:class:`ScannerError` if it cannot: a wrong ``[scanner] port`` is a
    start-up error); later failures close it and the next :meth:`read_line` tries to reopen it.
    """

    def __init__(
        self,
        port: str,
        baudrate: int = 9600,
        *,
        max_line: int = 4096,
        idle_s: float = 0.5,
        serial_factory: Any = None,
    ) -> None:
        self.port_name = port
        self.baudrate = baudrate
        self.max_line = max_line
        self.idle_s = idle_s
        self.rejected = 0
        self.reopened = 0
        self._factory = serial_factory or open_keeping_input
        self._buf = bytearray()
        self._last_byte = 0.0
        self._overflow = False
        self._closed = False
        self._read_lock = threading.Lock()
        self._port: Any = None
        self._open()

    @property
    def is_open(self) -> bool:
        """The port is open: whatever the scanner sends now is read (nothing queued is flushed)."""
        return self._port is not None

    def _open(self) -> None:
        import serial

        try:
            self._port = self._factory(self.port_name, self.baudrate, timeout=0.05)
        except (serial.SerialException, OSError) as exc:
            raise ScannerError(f"scanner port {self.port_name}: {type(exc).__name__}") from None

    def _lost(self) -> None:
        """The port failed: forget it; the next read reopens. The half line read so far is kept: the error
        may be a spurious one (a pty that reported readiness with no data, seen on Linux ptys) with the rest
        of the code still queued; after a real disconnect the idle rule drops it (reopening takes longer)."""
        import serial

        port, self._port = self._port, None
        if port is not None:
            with contextlib.suppress(serial.SerialException, OSError, TypeError):  # dead already (pulled)
                port.close()

    def close(self) -> None:
        """Close for good (no reopening; a reader blocked in ``read_line`` gets :class:`ScannerError`)."""
        self._closed = True
        port, self._port = self._port, None
        if port is not None:
            port.close()

    def _reject(self, why: str) -> None:
        self.rejected += 1
        logger.warning("scanner: dropped %s", why)  # never the content: a code may carry personal facts

    def _take_line(self) -> str | None:
        """Cut the first terminated line off the buffer (None: it was dropped or empty)."""
        i = next(i for i, b in enumerate(self._buf) if b in TERMINATORS)
        raw = bytes(self._buf[:i])
        del self._buf[: i + 1]
        overflow, self._overflow = self._overflow, False
        if overflow or len(raw) > self.max_line:
            self._reject(f"an over-long line (over {self.max_line} bytes)")
            return None
        if not raw:
            return None  # the LF of a CR LF, or an empty scan
        text = raw.decode("utf-8", errors="replace")
        if not text.isprintable() or "\ufffd" in text:
            # line noise glued to the front of a scan: keep what follows the last bad character
            bad = max(i for i, ch in enumerate(text) if ch == "\ufffd" or not ch.isprintable())
            self._reject("line noise before a code")
            text = text[bad + 1 :]
            if not text:
                return None
        return text

    def _has_line(self) -> bool:
        return any(b in TERMINATORS for b in self._buf)

    def read_line(self, timeout: float = 1.0) -> str | None:
        """The next whole printable line, or None when ``timeout`` passes first.

        :class:`ScannerError` when the port is gone (then closed; the next call tries to reopen it).
        One reader at a time: a second thread waits (two readers of one port split its bytes between them).
        """
        with self._read_lock:
            return self._read_line(timeout)

    def _read_line(self, timeout: float) -> str | None:
        import serial

        if self._port is None:
            if self._closed:
                raise ScannerError("scanner closed")
            self._open()
            self.reopened += 1
            logger.info("scanner: port %s reopened", self.port_name)
        deadline = time.monotonic() + timeout
        while True:
            while self._has_line():
                line = self._take_line()
                if line is not None:
                    return line
            port = self._port
            try:
                if port is None:
                    raise TypeError("closed meanwhile")
                chunk = port.read(port.in_waiting or 1)
                pending = port.in_waiting if not chunk else 0
            except (serial.SerialException, OSError, TypeError) as exc:
                # TypeError: pyserial reading a port another thread closed meanwhile (its fd is None)
                self._lost()
                raise ScannerError(f"scanner went away: {type(exc).__name__}: {exc}") from None
            now = time.monotonic()
            if chunk:
                self._buf += chunk
                self._last_byte = now
                if len(self._buf) > self.max_line and not self._has_line():
                    self._buf.clear()  # keep dropping until the terminator of this line
                    self._overflow = True
            elif pending:
                continue  # bytes came in just after the read timed out: not idle (a busy or starved reader)
            elif self._buf and now - self._last_byte > self.idle_s:
                self._buf.clear()
                self._reject("a half line (no terminator)")
            if now >= deadline:
                return None

    def lines(self, stop: Any = None) -> Iterator[str]:
        """Lines until ``stop`` (a ``threading.Event``) is set."""
        while stop is None or not stop.is_set():
            line = self.read_line(0.5)
            if line is not None:
                yield line
