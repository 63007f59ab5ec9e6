"""The demo kiosk's virtual receipt printer: the ESC/POS emulator on the far end of a real serial port.

With Debian ``socat`` the port is a pty pair (:class:`emulators.ptys.PtyPair`, host end linked as
``<workdir>/ttyPRN0``); without it, a pty pair from ``os.openpty()`` in this process (the kiosk opens the
slave end by its ``/dev/pts/N`` path, the emulator reads the master). Either way the kiosk's
:class:`terminal.peripherals.printer.ReceiptPrinter` talks ESC/POS through pyserial as it would to a TM-T88,
and the demo panel shows what came out (:meth:`VirtualPrinter.receipt_png`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import select
import termios
import tty
from pathlib import Path
from typing import Any

from emulators.printer import PrinterEmulator, Receipt
from emulators.ptys import PtyPair, PtyPairError

from terminal.peripherals.printer import PrinterSettings, ReceiptPrinter

logger = logging.getLogger(__name__)


class _MasterPort:
    """The master end of an ``os.openpty()`` pair as the emulator's serial port."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.timeout = 0.02

    def read(self, n: int) -> bytes:
        ready, _, _ = select.select([self.fd], [], [], self.timeout)
        return os.read(self.fd, n) if ready else b""

    def write(self, data: bytes) -> int:
        return os.write(self.fd, data)

    def reset_input_buffer(self) -> None:
        termios.tcflush(self.fd, termios.TCIFLUSH)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class VirtualPrinter:
    """A printer emulator on a serial port the kiosk opens; ``printer`` is the kiosk's side."""

    def __init__(self, workdir: Path, baudrate: int = 115200) -> None:
        self._pair: PtyPair | None = None
        self._slave: int | None = None
        try:
            self._pair = PtyPair(host_link=str(workdir / "ttyPRN0"))
            port, device = self._pair.host, self._pair.device
            self.transport = "socat pty pair"
            self.emulator = PrinterEmulator(device)
        except PtyPairError:
            master, slave = os.openpty()
            tty.setraw(master)
            tty.setraw(slave)
            self._slave = slave  # held open: a master read fails (EIO) while no one has the slave open
            port = os.ttyname(slave)
            self.transport = "in-process pty"
            self.emulator = PrinterEmulator(_MasterPort(master))
        self.port = port
        self.printer = ReceiptPrinter(PrinterSettings(port=port, baudrate=baudrate), status_timeout=0.5)

    @property
    def receipts(self) -> list[Receipt]:
        return list(self.emulator.receipts)

    def receipt_png(self, index: int) -> bytes:
        """Receipt ``index`` (0: the first printed) as PNG; IndexError when there is none."""
        buf = io.BytesIO()
        self.emulator.receipts[index].image().save(buf, format="PNG")
        return buf.getvalue()

    def close(self) -> None:
        self.printer.close()
        self.emulator.stop()
        if self._pair is not None:
            self._pair.close()
        if self._slave is not None:
            with contextlib.suppress(OSError):
                os.close(self._slave)


def make_printing(printer: VirtualPrinter, key: Any, kiosk_id: str, server_url: str, network: Any) -> Any:
    """The demo kiosk's certificate desk on ``printer`` (signed with ``key``, queued on the city server)."""
    from cityid.certificate import anchor_uri
    from terminal.certificate_client import ServerAnchorQueue
    from terminal.flows.certificate import CertificateDesk
    from terminal.web.printing import KioskPrinting

    anchor = anchor_uri(network.chain_id, network.address("anchor_registry"))
    queue = ServerAnchorQueue(server_url, kiosk_id, key)
    return KioskPrinting(CertificateDesk(key, kiosk_id, anchor, queue, printer.printer))
