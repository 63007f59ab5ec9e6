"""The demo's virtual printer without socat: an in-process pty pair (issue 13)."""

from __future__ import annotations

from pathlib import Path

import pytest

from terminal.peripherals.printer import PrinterState, Text


def test_virtual_printer_falls_back_to_an_in_process_pty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import emulators.ptys
    from citydemo.printer import VirtualPrinter

    monkeypatch.setattr(emulators.ptys.shutil, "which", lambda _name: None)  # no socat on this machine
    printer = VirtualPrinter(tmp_path)
    try:
        assert printer.transport == "in-process pty" and printer.port.startswith("/dev/pts/")
        assert printer.printer.status().state is PrinterState.READY
        printer.emulator.cover_open = True
        assert printer.printer.status().state is PrinterState.COVER_OPEN
        printer.emulator.cover_open = False
        printer.printer.print([Text("DEMO RECEIPT"), Text("부산")])
        (receipt,) = printer.emulator.wait_receipts(1)
        assert receipt.complete and "DEMO RECEIPT" in receipt.text
        assert printer.receipt_png(0).startswith(b"\x89PNG")
    finally:
        printer.close()
