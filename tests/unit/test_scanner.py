"""The counter's serial scanner on real ptys (socat): no scan that reached the port is lost (docs/printer.md
§Scanner) — queued before the port was opened, sent right after a replug, split over reads, any terminator —
and the reader thread survives what goes wrong (a pulled cable, a verifier failure, garbage, over-long lines).

The scanner end is :class:`emulators.scanner.ScannerEmulator` on the device end of a
:class:`emulators.ptys.PtyPair`; the kiosk end is :class:`terminal.peripherals.scanner.SerialScanner`.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cityid import certificate as c
from cityid.errors import CityIdError
from terminal.peripherals.scanner import ScannerError, SerialScanner
from terminal.web.printing import CounterScanning, ScannerState

pytestmark = pytest.mark.skipif(shutil.which("socat") is None, reason="socat (Debian package) makes the ptys")

FORWARD_S = 0.3  # time for socat to copy a write from one pty to the other


@pytest.fixture
def pair() -> Iterator[Any]:
    from emulators.ptys import PtyPair

    with PtyPair() as p:
        yield p


def _emulator(port: str, terminator: bytes = b"\r") -> Any:
    from emulators.scanner import ScannerEmulator

    return ScannerEmulator(port, terminator=terminator)


def _wait(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)
    return cond()


class RecordingVerifier:
    """Stands in for the chain verifier (tested elsewhere): records each line, refuses it as malformed;
    ``fail_first``: the first calls fail the way a bug or an error the verifier did not map would."""

    def __init__(self, *fail_first: BaseException) -> None:
        self.lines: list[str] = []
        self._fail = list(fail_first)

    def verify(self, line: str) -> Any:
        self.lines.append(line)
        if self._fail:
            raise self._fail.pop(0)
        raise c.CertificateRejected(c.Rejection.MALFORMED, "not a certificate")


def test_a_code_queued_before_the_port_was_opened_is_read(pair: Any) -> None:
    """The lost scan: socat (like a USB-serial driver) queues what the scanner sent while the kiosk had the
    port closed — pyserial's open() flushed it (TCIFLUSH). The scanner opens without that flush."""
    emu = _emulator(pair.device)
    try:
        emu.scan("SCANNED-WHILE-STARTING")
        time.sleep(FORWARD_S)
        scanner = SerialScanner(pair.host, idle_s=0.2)
        try:
            assert scanner.read_line(2.0) == "SCANNED-WHILE-STARTING"
            emu.scan("NEXT")
            assert scanner.read_line(2.0) == "NEXT"
            assert scanner.rejected == 0
        finally:
            scanner.close()
    finally:
        emu.close()


def test_a_replugged_scanner_is_reopened_and_its_first_scan_kept(tmp_path: Path) -> None:
    """Cable pulled: a typed error, the port is closed; the next read reopens it by name (a stable link, as
    udev gives) and reads the scan sent right after the replug, before the reader had reopened."""
    from emulators.ptys import PtyPair

    link = str(tmp_path / "ttyACM0")
    first = PtyPair(host_link=link)
    emu = _emulator(first.device)
    scanner = SerialScanner(link, idle_s=0.2)
    try:
        emu.scan("BEFORE-PULL")
        assert scanner.read_line(2.0) == "BEFORE-PULL"
        emu.close()
        first.close()  # pulled
        with pytest.raises(ScannerError):
            scanner.read_line(1.0)
        assert not scanner.is_open
        with PtyPair(host_link=link) as second:  # plugged in again, same name
            emu = _emulator(second.device)
            emu.scan("RIGHT-AFTER-REPLUG")
            time.sleep(FORWARD_S)
            assert scanner.read_line(2.0) == "RIGHT-AFTER-REPLUG"
            assert scanner.is_open and scanner.reopened == 1
            emu.close()
    finally:
        scanner.close()
        first.close()
    with pytest.raises(ScannerError):  # closed for good: no reopening after close()
        scanner.read_line(0.1)


def test_split_reads_and_every_terminator(pair: Any) -> None:
    """CR, LF and CR LF each end one code (no empty codes from CR LF); a code trickling in over many reads
    (a slow UART) is joined."""
    emu = _emulator(pair.device, terminator=b"\r\n")
    scanner = SerialScanner(pair.host, idle_s=0.5)
    try:
        code = "BC1:" + "x" * 300
        emu.scan(code, chunk=7, gap_s=0.005)
        assert scanner.read_line(3.0) == code
        emu.port.write(b"CR-ENDED\rLF-ENDED\nCRLF-ENDED\r\n")
        emu.port.flush()
        assert [scanner.read_line(2.0) for _ in range(3)] == ["CR-ENDED", "LF-ENDED", "CRLF-ENDED"]
        emu.port.write(b"SPLIT-CR")
        emu.port.flush()
        time.sleep(0.1)
        emu.port.write(b"LF\r")  # the terminator in a later read than the text
        emu.port.flush()
        assert scanner.read_line(2.0) == "SPLIT-CRLF"
        assert scanner.read_line(0.3) is None and scanner.rejected == 0
    finally:
        scanner.close()
        emu.close()


def test_garbage_half_lines_and_over_long_lines_are_dropped_with_a_log_line(
    pair: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "terminal.peripherals.scanner")
    emu = _emulator(pair.device)
    scanner = SerialScanner(pair.host, idle_s=0.2, max_line=100)
    try:
        emu.port.write(b"A" * 150 + b"\r" + b"GOOD-1\r")  # over-long *with* its terminator in the same read
        emu.port.flush()
        assert scanner.read_line(2.0) == "GOOD-1"
        emu.port.write(b"B" * 300)  # over-long, terminator later
        emu.port.flush()
        time.sleep(0.1)
        emu.scan("TAIL")
        emu.scan("GOOD-2")
        assert scanner.read_line(2.0) == "GOOD-2"
        emu.noise()
        emu.scan("GOOD-3")  # noise glued to the front is cut off
        assert scanner.read_line(2.0) == "GOOD-3"
        emu.half_line("PERSONAL-FACTS-HALF")  # unplugged mid-code: dropped after idle_s of silence
        assert scanner.read_line(0.6) is None
        emu.scan("GOOD-4")
        assert scanner.read_line(2.0) == "GOOD-4"
        assert scanner.rejected == 4
        drops = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
        assert len(drops) == 4 and sum("over-long" in d for d in drops) == 2
        assert all(r.levelno == logging.WARNING for r in caplog.records if "dropped" in r.getMessage())
        assert "PERSONAL" not in caplog.text and "GOOD" not in caplog.text  # never a code's content
    finally:
        scanner.close()
        emu.close()


def test_no_half_line_drop_while_bytes_are_pending() -> None:
    """A read that timed out just before the rest of the code arrived (the reader thread then starved past
    ``idle_s``) must not drop the half line: the rest is already waiting. A port double replays that race."""

    class RacyPort:
        def __init__(self) -> None:
            self.reads = [b"CODE-", b"", b"REST\r"]
            self.in_waiting = 0

        def read(self, n: int) -> bytes:
            chunk = self.reads.pop(0) if self.reads else b""
            self.in_waiting = 5 if chunk == b"" and self.reads else 0  # arrived right after the timeout
            return chunk

        def close(self) -> None:
            pass

    scanner = SerialScanner("racy", idle_s=0.0, serial_factory=lambda *a, **k: RacyPort())
    assert scanner.read_line(0.5) == "CODE-REST" and scanner.rejected == 0


def test_counter_scanning_is_ready_survives_failures_and_reconnects(tmp_path: Path) -> None:
    """The reader thread: ready once the port is open (the clerk's page says so); a verifier failure is an
    ``unavailable`` result, never a dead thread; a pulled cable is ``unavailable`` until the replug, and the
    scan sent right after the replug is read."""
    from emulators.ptys import PtyPair

    link = str(tmp_path / "ttyACM0")
    first = PtyPair(host_link=link)
    emu = _emulator(first.device)
    verifier = RecordingVerifier(RuntimeError("a bug in the verifier"), CityIdError("an unmapped error"))
    scanning = CounterScanning(SerialScanner(link, idle_s=0.2), verifier, retry_s=0.2)
    crashes: list[Any] = []
    previous, threading.excepthook = threading.excepthook, crashes.append
    try:
        assert scanning.state is ScannerState.STARTING
        scanning.start()
        assert scanning.wait_ready(5) and scanning.state is ScannerState.READY
        emu.scan("FIRST")
        assert _wait(lambda: scanning.scans == 1)
        last = scanning.last()
        assert last is not None and not last.result.ok
        assert last.result.rejected is not None and last.result.rejected.reason is c.Rejection.UNAVAILABLE
        emu.scan("SECOND")  # the thread lived on; an unmapped CityIdError is not "the scanner went away"
        assert _wait(lambda: scanning.scans == 2)
        last = scanning.last()
        assert last is not None and last.result.rejected is not None
        assert last.result.rejected.reason is c.Rejection.UNAVAILABLE and scanning.state is ScannerState.READY
        emu.close()
        first.close()  # pulled
        assert _wait(lambda: scanning.state is ScannerState.UNAVAILABLE)
        with PtyPair(host_link=link) as second:
            emu = _emulator(second.device)
            emu.scan("AFTER-REPLUG")
            assert _wait(lambda: scanning.scans == 3)
            assert scanning.state is ScannerState.READY
            emu.close()
        assert verifier.lines == ["FIRST", "SECOND", "AFTER-REPLUG"]
    finally:
        threading.excepthook = previous
        scanning.stop()
        first.close()
    assert crashes == []


def test_a_port_error_mid_code_keeps_the_half_line_for_the_rest() -> None:
    """Seen on this project's ptys: pyserial's "device reports readiness to read but returned no data" in the
    middle of a code, the rest still queued. The port is reopened and the code joined, not cut in two."""
    import serial

    class Port:
        def __init__(self, reads: list[Any]) -> None:
            self.reads = reads
            self.in_waiting = 0

        def read(self, n: int) -> bytes:
            item = self.reads.pop(0) if self.reads else b""
            if isinstance(item, BaseException):
                raise item
            return item

        def close(self) -> None:
            pass

    spurious = serial.SerialException("device reports readiness to read but returned no data")
    ports = [Port([b"HALF-", spurious]), Port([b"AND-REST\r"])]
    scanner = SerialScanner("racy", idle_s=0.5, serial_factory=lambda *a, **k: ports.pop(0))
    with pytest.raises(ScannerError, match="readiness"):
        scanner.read_line(0.5)
    assert scanner.read_line(0.5) == "HALF-AND-REST" and scanner.reopened == 1 and scanner.rejected == 0


def test_two_readers_of_one_scanner_lose_nothing(pair: Any) -> None:
    """The lost scan of the UI test: ``start(app)`` and the ServerThread both started the counter's reader,
    so two threads read one port and one buffer — a thread found nothing to read ("readiness to read but
    returned no data") or dropped the code the other had just read as a stale half line."""
    emu = _emulator(pair.device)
    scanner = SerialScanner(pair.host, idle_s=0.2)
    got: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                line = scanner.read_line(0.1)
            except ScannerError:
                continue
            if line is not None:
                got.append(line)

    threads = [threading.Thread(target=reader, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    codes = [f"CODE-{i:02d}-" + "q" * 400 for i in range(25)]
    try:
        for i, code in enumerate(codes):
            emu.scan(code)
            time.sleep(0.25 + 0.01 * (i % 5))  # past idle_s: the buffered time of the last byte is stale
        assert _wait(lambda: len(got) >= len(codes), 5)
        time.sleep(0.3)
        assert sorted(got) == codes and scanner.rejected == 0
    finally:
        stop.set()
        for t in threads:
            t.join(2)
        scanner.close()
        emu.close()


def test_counter_scanning_started_twice_has_one_reader(pair: Any) -> None:
    scanning = CounterScanning(SerialScanner(pair.host), RecordingVerifier())
    try:
        scanning.start()
        scanning.start()  # terminal.web.start(app), then ServerThread.start() does it again
        assert sum(t.name == "counter-scanner" for t in threading.enumerate()) == 1
    finally:
        scanning.stop()
