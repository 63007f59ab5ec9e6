"""A serial QR/barcode scanner (the USB-serial / RS-232 kind that sends the decoded text and a terminator).

Read through pyserial. Scanners send CR, LF or CR LF after each code; noise on the line (a scanner plugged in
while powered, a baud-rate mismatch) arrives as bytes that are not printable text. :class:`SerialScanner`
yields only whole, printable lines: control or undecodable bytes and everything before them on the line
are dropped (counted in :attr:`SerialScanner.rejected`; noise glued to the front of a scan leaves the scan),
a half line without terminator is dropped when ``idle_s`` passes without more bytes (the scanner was
unplugged mid-code; the caller keeps polling :meth:`SerialScanner.read_line`), and a line longer than
``max_line`` is discarded entirely.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from cityid.errors import CityIdError

logger = logging.getLogger(__name__)

TERMINATORS = (b"\r", b"\n")


class ScannerError(CityIdError):
    """The scanner port cannot be opened or went away."""


class SerialScanner:
    """Lines from a serial scanner; ``read_line`` returns one code or None at the timeout."""

    def __init__(
        self,
        port: str,
        baudrate: int = 9600,
        *,
        max_line: int = 4096,
        idle_s: float = 0.5,
        serial_factory: Any = None,
    ) -> None:
        import serial

        self.max_line = max_line
        self.idle_s = idle_s
        self.rejected = 0
        self._buf = bytearray()
        self._last_byte = 0.0
        self._overflow = False
        try:
            self._port = (serial_factory or serial.Serial)(port, baudrate, timeout=0.05)
        except (serial.SerialException, OSError) as exc:
            raise ScannerError(f"scanner port {port}: {type(exc).__name__}") from None

    def close(self) -> None:
        self._port.close()

    def _reject(self, why: str) -> None:
        self.rejected += 1
        logger.info("scanner: dropped %s", why)  # never the content: a code may carry personal facts

    def _take_line(self) -> str | None:
        for i, byte in enumerate(self._buf):
            if bytes([byte]) in TERMINATORS:
                raw = bytes(self._buf[:i])
                del self._buf[: i + 1]
                overflow, self._overflow = self._overflow, False
                if overflow:
                    self._reject("an over-long line")
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
        return None

    def read_line(self, timeout: float = 1.0) -> str | None:
        """The next whole printable line, or None when ``timeout`` passes first."""
        import serial

        deadline = time.monotonic() + timeout
        while True:
            while any(bytes([b]) in TERMINATORS for b in self._buf):
                line = self._take_line()
                if line is not None:
                    return line
            try:
                chunk = self._port.read(self._port.in_waiting or 1)
            except (serial.SerialException, OSError, TypeError) as exc:
                # TypeError: pyserial reading a port another thread closed meanwhile (its fd is None)
                raise ScannerError(f"scanner went away: {type(exc).__name__}") from None
            now = time.monotonic()
            if chunk:
                self._buf += chunk
                self._last_byte = now
                if len(self._buf) > self.max_line and not any(bytes([b]) in TERMINATORS for b in self._buf):
                    self._buf.clear()  # keep dropping until the terminator of this line
                    self._overflow = True
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
