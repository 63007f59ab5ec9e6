"""ESC/POS receipt printer on a serial port, through python-escpos (docs/printer.md).

python-escpos builds the command stream (text, styles, raster images ``GS v 0``, native QR ``GS ( k``, cut)
and talks to the port through pyserial (``escpos.printer.Serial``). Korean has no code page in any
python-escpos printer profile (Epson's Korean models use a double-byte mode the library does not drive), so
a line with non-ASCII text is rendered with Pillow in the Nanum font (Debian ``fonts-nanum``) and printed as
a raster image; ASCII lines go as text in code page 437.

Status (Epson ESC/POS ``DLE EOT n``, real-time): n=1 printer (bit 3 offline), n=2 offline cause (bit 2 cover
open, bit 5 paper end stop), n=4 roll paper sensor (bits 2-3 near end, bits 5-6 paper end). No answer within
the timeout: the printer is off; an error on the port: the cable is pulled or the adapter is gone.
A job is checked before it is sent and after the printer consumed it (:meth:`ReceiptPrinter.print`):
anything but "ready" raises :class:`PrinterFault` with the status, and the caller keeps the document.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any

from cityid.errors import CityIdError

logger = logging.getLogger(__name__)

DLE_EOT = b"\x10\x04"
NANUM_FONT = Path("/usr/share/fonts/truetype/nanum/NanumGothic.ttf")
NANUM_BOLD = Path("/usr/share/fonts/truetype/nanum/NanumGothicBold.ttf")
#: Printable width in dots at 180 dpi for the common roll widths (Epson TM-T88: 72 mm of 80 mm paper).
PAPER_DOTS = {80: 512, 58: 360}
FLOW_CONTROLS = ("none", "rtscts", "xonxoff", "dsrdtr")


class PrinterState(StrEnum):
    """What the staff screen shows (catalogue keys ``printer.state.<value>``)."""

    READY = "ready"
    PAPER_OUT = "paper_out"
    COVER_OPEN = "cover_open"
    OFFLINE = "offline"  # powered but offline (error, feed button) — DLE EOT answered with the offline bit
    NO_ANSWER = "no_answer"  # printer off, or the wrong port: no status answer
    DISCONNECTED = "disconnected"  # the port is gone (cable pulled, USB-serial adapter unplugged)
    NOT_CONFIGURED = "not_configured"


@dataclass(frozen=True, slots=True)
class PrinterStatus:
    """One status poll. ``paper_near_end`` is a warning only (the job prints)."""

    state: PrinterState
    paper_near_end: bool = False
    detail: str = ""

    @property
    def ready(self) -> bool:
        return self.state is PrinterState.READY

    @property
    def message_key(self) -> str:
        return f"printer.state.{self.state.value}"


class PrinterFault(CityIdError):
    """The printer cannot print (or did not finish) a job; ``status`` says why, for the staff screen."""

    def __init__(self, status: PrinterStatus, during: str) -> None:
        self.status = status
        self.during = during  # "before" (nothing was sent) or "printing" (the receipt may be incomplete)
        super().__init__(
            f"printer {status.state.value} ({during}){': ' + status.detail if status.detail else ''}"
        )


@dataclass(frozen=True, slots=True)
class PrinterSettings:
    """``[printer]`` of the terminal config (terminal/config.py)."""

    port: str = ""
    baudrate: int = 115200
    flow_control: str = "none"
    profile: str = "TM-T88V"
    paper_width: int = 80  # mm

    @property
    def dots(self) -> int:
        return PAPER_DOTS[self.paper_width]


# --- what a receipt is ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Text:
    text: str
    bold: bool = False
    size: int = 1  # 1 normal, 2 double height and width
    align: str = "left"


@dataclass(frozen=True, slots=True)
class QrCode:
    data: str
    module_dots: int = 3  # dots per QR module (GS ( k function 167)


@dataclass(frozen=True, slots=True)
class Feed:
    lines: int = 1


Block = Text | QrCode | Feed


@lru_cache(maxsize=4)
def _font(bold: bool, px: int) -> Any:
    from PIL import ImageFont

    path = NANUM_BOLD if bold else NANUM_FONT
    if not path.is_file():
        raise CityIdError(f"Korean printing needs the Nanum font ({path}; Debian package fonts-nanum)")
    return ImageFont.truetype(str(path), px)


def render_line(block: Text, width_dots: int) -> Any:
    """A text line as a 1-bit Pillow image, as narrow as its text (at most ``width_dots``; the printer aligns
    it with ``ESC a``): Korean has no code page (module doc), and every blank dot costs line time."""
    from PIL import Image, ImageDraw

    px = 22 * block.size
    font = _font(block.bold, px)
    left, top, right, bottom = font.getbbox(block.text)
    height = 24 * block.size + 4
    width = min(width_dots, (right - left + 8) // 8 * 8)
    img = Image.new("1", (width, height), 1)
    ImageDraw.Draw(img).text((-left, (height - (bottom - top)) // 2 - top), block.text, font=font, fill=0)
    return img


def _columns(settings: PrinterSettings) -> int:
    return settings.dots // 12  # Font A is 12 dots wide


# --- the printer ----------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _serial_class() -> type:
    """python-escpos' Serial printer whose close() tolerates a port that is already dead (cable pulled)."""
    import termios

    import serial
    from escpos.printer import Serial

    class _Serial(Serial):  # type: ignore[misc]
        def close(self) -> None:
            try:
                super().close()
            except (OSError, termios.error, serial.SerialException):
                self._device = False

    return _Serial


class ReceiptPrinter:
    """An ESC/POS printer on ``settings.port``; one job at a time (the caller serialises)."""

    def __init__(self, settings: PrinterSettings, *, status_timeout: float = 0.5) -> None:
        if not settings.port:
            raise PrinterFault(PrinterStatus(PrinterState.NOT_CONFIGURED), "before")
        self.settings = settings
        self.status_timeout = status_timeout
        self._printer: Any = None

    # --- port ---
    def _open(self) -> Any:
        if self._printer is not None:
            return self._printer
        from escpos.exceptions import DeviceNotFoundError

        s = self.settings
        printer = _serial_class()(
            devfile=s.port,
            baudrate=s.baudrate,
            timeout=self.status_timeout,
            xonxoff=s.flow_control == "xonxoff",
            dsrdtr=s.flow_control == "dsrdtr",
            profile=s.profile,
        )
        try:
            printer.open()
        except DeviceNotFoundError as exc:
            raise PrinterFault(
                PrinterStatus(PrinterState.DISCONNECTED, detail=type(exc).__name__), "before"
            ) from None
        device = printer.device
        device.rtscts = s.flow_control == "rtscts"
        # a printer that stops reading (off mid-print) must not block the kiosk forever
        device.write_timeout = max(5.0, 4096 * 10 / s.baudrate)
        self._printer = printer
        return printer

    def close(self) -> None:
        printer, self._printer = self._printer, None
        if printer is not None:
            printer.close()

    def _drop(self) -> None:
        """Forget a port that failed (reopened on the next call: the cable may be back)."""
        self.close()

    # --- status ---
    def _query(self, device: Any, n: int, timeout: float) -> int | None:
        device.reset_input_buffer()
        device.timeout = timeout
        device.write(DLE_EOT + bytes([n]))
        answer = device.read(1)
        return answer[0] if answer else None

    def status(self, wait_s: float | None = None) -> PrinterStatus:
        """Poll DLE EOT 1, 2 and 4; ``wait_s`` allows for data still being consumed (after a print)."""
        import serial

        try:
            device = self._open().device
            first = self._query(device, 1, wait_s or self.status_timeout)
            if first is None:  # one lost answer is not yet "off" (a busy host, a line glitch): ask again
                first = self._query(device, 1, self.status_timeout)
            if first is None:
                return PrinterStatus(PrinterState.NO_ANSWER, detail="no answer to DLE EOT")
            cause = self._query(device, 2, self.status_timeout) or 0
            paper = self._query(device, 4, self.status_timeout) or 0
        except PrinterFault as exc:
            return exc.status
        except (serial.SerialException, OSError) as exc:
            self._drop()
            return PrinterStatus(PrinterState.DISCONNECTED, detail=type(exc).__name__)
        near_end = bool(paper & 0x0C)
        if paper & 0x60 or cause & 0x20:
            return PrinterStatus(PrinterState.PAPER_OUT, paper_near_end=near_end)
        if cause & 0x04:
            return PrinterStatus(PrinterState.COVER_OPEN, paper_near_end=near_end)
        if first & 0x08:
            return PrinterStatus(PrinterState.OFFLINE, paper_near_end=near_end)
        return PrinterStatus(PrinterState.READY, paper_near_end=near_end)

    # --- printing ---
    def encode(self, blocks: Sequence[Block]) -> bytes:
        """The ESC/POS bytes of a receipt (python-escpos ``Dummy`` printer with the same profile)."""
        from escpos.printer import Dummy

        d = Dummy(profile=self.settings.profile)
        self._compose(d, blocks)
        return d.output

    def _compose(self, p: Any, blocks: Sequence[Block]) -> None:
        from escpos.constants import QR_ECLEVEL_M

        p.hw("INIT")
        p.charcode("CP437")
        width = self.settings.dots
        for block in blocks:
            if isinstance(block, Feed):
                p.ln(block.lines)
            elif isinstance(block, QrCode):
                p.set(align="center")
                p.qr(block.data, ec=QR_ECLEVEL_M, size=block.module_dots, native=True)
                p.ln()
                p.set(align="left")
            elif block.text.isascii():
                big = block.size > 1
                p.set(align=block.align, bold=block.bold, double_width=big, double_height=big,
                      normal_textsize=not big)  # fmt: skip
                p.textln(block.text[: _columns(self.settings) // block.size])
                p.set(align="left", bold=False, normal_textsize=True)
            else:
                p.set(align=block.align)
                p.image(render_line(block, width), impl="bitImageRaster")
                p.set(align="left")
        p.cut()

    def print(self, blocks: Sequence[Block]) -> PrinterStatus:
        """Print a receipt: status before, send, status after; :class:`PrinterFault` on any fault."""
        import serial

        before = self.status()
        if not before.ready:
            raise PrinterFault(before, "before")
        data = self.encode(blocks)
        t0 = time.perf_counter()
        try:
            self._printer._raw(data)
            self._printer.device.flush()
        except (serial.SerialException, OSError) as exc:
            self._drop()
            state = PrinterState.NO_ANSWER if isinstance(exc, serial.SerialTimeoutException) else (
                PrinterState.DISCONNECTED)  # fmt: skip
            raise PrinterFault(PrinterStatus(state, detail=type(exc).__name__), "printing") from None
        # the printer answers DLE EOT once it consumed what came before: allow for the line speed
        after = self.status(wait_s=self.status_timeout + 1.5 * len(data) * 10 / self.settings.baudrate)
        logger.info("receipt of %d bytes sent in %.0f ms: %s", len(data), 1e3 * (time.perf_counter() - t0),
                    after.state.value)  # fmt: skip
        if not after.ready:
            raise PrinterFault(after, "printing")
        return after
