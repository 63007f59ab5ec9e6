"""A serial QR/barcode scanner: writes each decoded code followed by its terminator, like the common
USB-serial / RS-232 scanners; can also send line noise and a half line (unplugged mid-code) for fault
tests."""

from __future__ import annotations

import time


class ScannerEmulator:
    """The device end of a serial port (a pty); ``terminator``: CR (most factory defaults), LF or CR LF."""

    def __init__(self, port: str, baudrate: int = 9600, terminator: bytes = b"\r") -> None:
        import serial

        self.port = serial.Serial(port, baudrate, timeout=1)
        self.terminator = terminator

    def scan(self, text: str, chunk: int = 0, gap_s: float = 0.0) -> None:
        """Send one decoded code; ``chunk`` > 0 splits it into pieces ``gap_s`` apart (a slow UART)."""
        data = text.encode("utf-8") + self.terminator
        if chunk <= 0:
            self.port.write(data)
        else:
            for i in range(0, len(data), chunk):
                self.port.write(data[i : i + chunk])
                self.port.flush()
                time.sleep(gap_s)
        self.port.flush()

    def noise(self, data: bytes = b"\x00\xff\x1b\x80garbage\x07") -> None:
        """Raw bytes (power-up glitch, wrong baud rate)."""
        self.port.write(data)
        self.port.flush()

    def half_line(self, text: str) -> None:
        """The start of a code and no terminator (the scanner was unplugged mid-code)."""
        self.port.write(text.encode("utf-8")[: max(1, len(text) // 2)])
        self.port.flush()

    def close(self) -> None:
        self.port.close()
