"""An ESC/POS thermal receipt printer on the far end of a serial port (docs/printer.md §Emulator).

It parses the byte stream python-escpos sends — text (code page via ``ESC t``), styles (``ESC ! E a M -``,
``GS ! B``), feeds (``LF``, ``ESC d J``), raster images (``GS v 0``), QR codes (``GS ( k`` functions
65/67/69/80/81), graphic data (``GS ( L``, skipped), cut (``GS V``) — and renders each receipt (up to a cut)
into a Pillow image. It answers real-time status requests ``DLE EOT n`` (n = 1 printer, 2 offline cause,
3 error cause, 4 paper) with the Epson bit layout, so paper end, cover open and offline can be switched
on demand; ``power_off()`` stops reading and answering altogether.

Line model (for benchmarks): ``baudrate`` paces reading at 10 bits per byte (8N1), and ``print_speed_mm_s``
(Epson TM-T88V: 300 mm/s at 180 dpi) advances the paper; when the mechanism lags more than ``buffer_s`` behind
the received data, the emulator stops reading (as a full receive buffer with flow control would).
While paper is out, the cover open or the printer offline, printable data is discarded (``lost_rows``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DPI = 180
FONT_A = (12, 24)  # dots
MONO_FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf")
MONO_BOLD = Path("/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf")
#: ESC t n → Python codec (the pages python-escpos' profiles use most).
CODE_PAGES = {0: "cp437", 1: "cp932", 2: "cp850", 3: "cp860", 4: "cp863", 5: "cp865", 16: "cp1252",
              17: "cp866", 19: "cp858"}  # fmt: skip
_QR_ECC = {48: "L", 49: "M", 50: "Q", 51: "H"}


class Incomplete(Exception):
    """The buffer ends inside a command: wait for more bytes."""


@dataclass
class Receipt:
    """One receipt (bytes up to a cut) as rendered rows."""

    rows: list[Any] = field(default_factory=list)  # Pillow "1" images, paper width each
    lost_rows: int = 0  # printable rows discarded (paper out, cover open, offline)
    text: list[str] = field(default_factory=list)  # decoded text lines (for tests)
    qr_payloads: list[str] = field(default_factory=list)
    cut: bool = False

    def image(self) -> Any:
        from PIL import Image

        width = self.rows[0].width if self.rows else 512
        height = sum(r.height for r in self.rows) or 1
        img = Image.new("1", (width, height), 1)
        y = 0
        for row in self.rows:
            img.paste(row, (0, y))
            y += row.height
        return img

    @property
    def complete(self) -> bool:
        return self.cut and self.lost_rows == 0


class PrinterEmulator:
    """Reads an ESC/POS stream from ``port`` in a thread; :attr:`receipts` holds the finished ones."""

    def __init__(
        self,
        port: str | Any,
        *,
        paper_dots: int = 512,
        baudrate: int | None = None,
        print_speed_mm_s: float | None = None,
        buffer_s: float = 0.5,
        paper_rows: int | None = None,
    ) -> None:
        import serial

        # a path (a pty end, a UART) or an open serial-like object (read/write/reset_input_buffer/close)
        self.port = serial.Serial(port, baudrate or 115200, timeout=0.02) if isinstance(port, str) else port
        self.paper_dots = paper_dots
        self.baudrate = baudrate
        self.dots_per_s = print_speed_mm_s * DPI / 25.4 if print_speed_mm_s else None
        self.buffer_s = buffer_s
        self.paper_rows = paper_rows  # dots of paper left (None: endless roll)
        self.paper_end = False
        self.paper_near_end = False
        self.cover_open = False
        self.offline = False
        self.powered = True
        self.receipts: list[Receipt] = []
        self.current = Receipt()
        self.unknown: list[bytes] = []
        self.bytes_received = 0
        self.first_byte_at: float | None = None
        self.last_byte_at: float | None = None
        self.mech_done_at = 0.0
        self.status_requests = 0
        self._buf = bytearray()
        self._line = bytearray()
        self._reset_modes()
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="printer-emulator", daemon=True)
        self._thread.start()

    # --- switches ---
    def power_off(self) -> None:
        self.powered = False

    def power_on(self) -> None:
        """Power back on: what was sent while off never arrived; a fresh printer has its modes reset."""
        self.port.reset_input_buffer()
        self._buf.clear()
        self._line.clear()
        self._reset_modes()
        self.powered = True

    def load_paper(self, rows: int | None = None) -> None:
        self.paper_rows, self.paper_end = rows, False

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self.port.close()

    def wait_receipts(self, n: int, timeout: float = 10.0) -> list[Receipt]:
        """Block until ``n`` receipts are cut (or timeout); return them."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.receipts) < n and time.monotonic() < deadline:
                self._changed.wait(0.05)
        return list(self.receipts)

    def wait_idle(self, quiet_s: float = 0.2, timeout: float = 30.0) -> None:
        """Block until no byte arrived for ``quiet_s``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = self.last_byte_at or 0.0
            if time.perf_counter() - last > quiet_s and not self._buf:
                return
            time.sleep(0.02)

    # --- status (Epson ESC/POS DLE EOT) ---
    @property
    def _stopped(self) -> bool:
        return self.paper_end or self.cover_open or self.offline

    def status_byte(self, n: int) -> int:
        base = 0x12
        if n == 1:
            return base | (0x08 if self._stopped else 0)
        if n == 2:
            return base | (0x04 if self.cover_open else 0) | (0x20 if self.paper_end else 0) | (
                0x40 if self.offline else 0)  # fmt: skip
        if n == 4:
            return base | (0x0C if self.paper_near_end else 0) | (0x60 if self.paper_end else 0)
        return base

    # --- reading ---
    def _run(self) -> None:
        import serial

        while not self._stop.is_set():
            if not self.powered:
                time.sleep(0.02)
                continue
            self._pace()
            try:
                chunk = self.port.read(64 if self.baudrate else 4096)
            except (serial.SerialException, OSError):
                return  # the cable is gone
            if not chunk or not self.powered:  # switched off while the read was waiting: lost
                continue
            now = time.perf_counter()
            self.first_byte_at = self.first_byte_at or now
            self.last_byte_at = now
            self.bytes_received += len(chunk)
            self._buf += chunk
            self._parse()

    def _pace(self) -> None:
        """Serial line speed and print mechanism speed (see module doc)."""
        now = time.perf_counter()
        if self.baudrate and self.first_byte_at is not None:
            due = self.first_byte_at + self.bytes_received * 10 / self.baudrate
            if due > now:
                time.sleep(due - now)
        if self.dots_per_s and self.mech_done_at - time.perf_counter() > self.buffer_s:
            time.sleep(self.mech_done_at - time.perf_counter() - self.buffer_s)

    def _parse(self) -> None:
        while self._buf:
            try:
                used = self._command(self._buf)
            except Incomplete:
                return
            del self._buf[:used]

    # --- the command set ---
    def _reset_modes(self) -> None:
        self.codepage = "cp437"
        self.align = 0
        self.bold = False
        self.width_mul = self.height_mul = 1
        self.qr_size = 3
        self.qr_ecc = "L"
        self.qr_data = b""

    @staticmethod
    def _need(buf: bytearray, n: int) -> None:
        if len(buf) < n:
            raise Incomplete

    def _command(self, b: bytearray) -> int:
        c = b[0]
        if c == 0x0A:
            if not self._line:
                self._feed(FONT_A[1] + 6)  # LF on an empty line feeds one line
            self._print_line()
            return 1
        if c == 0x0D:
            return 1
        if c == 0x10:  # DLE
            self._need(b, 3)
            if b[1] == 0x04:
                self.status_requests += 1
                self.port.write(bytes([self.status_byte(b[2])]))
                return 3
            self.unknown.append(bytes(b[:2]))
            return 2
        if c == 0x1B:  # ESC
            self._need(b, 2)
            op = b[1]
            if op == ord("@"):
                self._reset_modes()
                return 2
            if op in b"2":
                return 2
            if op in b"taE!-MdJ3GVb{pr":
                self._need(b, 3)
                n = b[2]
                if op == ord("t"):
                    self.codepage = CODE_PAGES.get(n, "cp437")
                elif op == ord("a"):
                    self.align = n % 48 if n >= 48 else n
                elif op == ord("E"):
                    self.bold = bool(n & 1)
                elif op == ord("!"):
                    self.bold = bool(n & 0x08)
                    self.height_mul = 2 if n & 0x10 else 1
                    self.width_mul = 2 if n & 0x20 else 1
                elif op == ord("d"):
                    self._print_line()
                    self._feed(n * FONT_A[1] + 6 * n)
                elif op == ord("J"):
                    self._print_line()
                    self._feed(n)
                elif op == ord("p"):
                    self._need(b, 5)
                    return 5
                return 3
            self.unknown.append(bytes(b[:2]))
            return 2
        if c == 0x1D:  # GS
            self._need(b, 2)
            op = b[1]
            if op == ord("!"):
                self._need(b, 3)
                self.width_mul = (b[2] >> 4) + 1
                self.height_mul = (b[2] & 0x0F) + 1
                return 3
            if op in b"Bbh":
                self._need(b, 3)
                return 3
            if op in b"LW":
                self._need(b, 4)
                return 4
            if op == ord("V"):
                self._need(b, 3)
                used = 4 if b[2] in (65, 66) else 3
                self._need(b, used)
                self._print_line()
                self._cut()
                return used
            if op == ord("v"):
                self._need(b, 8)
                xb, yb = b[4] | b[5] << 8, b[6] | b[7] << 8
                self._need(b, 8 + xb * yb)
                self._print_line()
                self._raster(bytes(b[8 : 8 + xb * yb]), xb, yb)
                return 8 + xb * yb
            if op == ord("("):
                self._need(b, 5)
                length = b[3] | b[4] << 8
                self._need(b, 5 + length)
                if b[2] == ord("k"):
                    self._two_d(bytes(b[5 : 5 + length]))
                return 5 + length
            self.unknown.append(bytes(b[:2]))
            return 2
        self._line.append(c)
        return 1

    # --- rendering ---
    def _emit(self, row: Any) -> None:
        if self._stopped:
            self.current.lost_rows += 1
            return
        if self.paper_rows is not None:
            if row.height > self.paper_rows:
                self.paper_rows, self.paper_end = 0, True
                self.current.lost_rows += 1
                return
            self.paper_rows -= row.height
        self.current.rows.append(row)
        if self.dots_per_s:
            self.mech_done_at = max(self.mech_done_at, time.perf_counter()) + row.height / self.dots_per_s

    def _blank(self, height: int) -> Any:
        from PIL import Image

        return Image.new("1", (self.paper_dots, max(1, height)), 1)

    def _feed(self, dots: int) -> None:
        if dots > 0:
            self._emit(self._blank(dots))

    def _place(self, img: Any) -> Any:
        row = self._blank(img.height)
        x = {0: 0, 1: (self.paper_dots - img.width) // 2, 2: self.paper_dots - img.width}.get(self.align, 0)
        row.paste(img, (max(0, x), 0))
        return row

    def _print_line(self) -> None:
        from PIL import ImageDraw, ImageFont

        if not self._line:
            return
        text = bytes(self._line).decode(self.codepage, errors="replace")
        self._line.clear()
        self.current.text.append(text)
        w, h = FONT_A[0] * self.width_mul, FONT_A[1] * self.height_mul
        img = self._blank(h + 6)
        img = img.crop((0, 0, min(self.paper_dots, w * len(text)), h + 6))
        path = MONO_BOLD if self.bold else MONO_FONT
        font = (
            ImageFont.truetype(str(path), 20 * self.height_mul)
            if path.is_file()
            else ImageFont.load_default()
        )
        ImageDraw.Draw(img).text((0, 2), text, font=font, fill=0)
        self._emit(self._place(img))

    def _raster(self, data: bytes, width_bytes: int, height: int) -> None:
        from PIL import Image, ImageOps

        img = Image.frombytes("1", (width_bytes * 8, height), data)
        img = ImageOps.invert(img.convert("L")).convert("1")  # ESC/POS: bit 1 = black dot
        self._emit(self._place(img.crop((0, 0, min(img.width, self.paper_dots), height))))

    def _two_d(self, body: bytes) -> None:
        if len(body) < 2 or body[0] != ord("1"):  # cn 49 = QR
            return
        fn, args = body[1], body[2:]
        if fn == 67 and args:
            self.qr_size = max(1, min(16, args[0]))
        elif fn == 69 and args:
            self.qr_ecc = _QR_ECC.get(args[0], "L")
        elif fn == 80 and args:
            self.qr_data = bytes(args[1:])  # m = '0'
        elif fn == 81:
            self._print_qr()

    def _print_qr(self) -> None:
        import qrcode
        from qrcode.constants import ERROR_CORRECT_H, ERROR_CORRECT_L, ERROR_CORRECT_M, ERROR_CORRECT_Q

        levels = {"L": ERROR_CORRECT_L, "M": ERROR_CORRECT_M, "Q": ERROR_CORRECT_Q, "H": ERROR_CORRECT_H}
        text = self.qr_data.decode("utf-8", errors="replace")
        self.current.qr_payloads.append(text)
        code = qrcode.QRCode(error_correction=levels[self.qr_ecc], box_size=self.qr_size, border=4)
        code.add_data(self.qr_data)
        code.make(fit=True)
        img = code.make_image().get_image().convert("1")
        if img.width > self.paper_dots:  # a real printer prints nothing when the code does not fit
            self.unknown.append(b"QR too wide")
            return
        self._emit(self._place(img))

    def _cut(self) -> None:
        self.current.cut = True
        with self._changed:
            self.receipts.append(self.current)
            self.current = Receipt()
            self._changed.notify_all()

    def save(self, folder: str | Path) -> list[Path]:
        """Write every finished receipt as PNG (``receipt-001.png`` …); return the paths."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, r in enumerate(self.receipts, 1):
            p = out / f"receipt-{i:03d}.png"
            r.image().save(p)
            paths.append(p)
        return paths
