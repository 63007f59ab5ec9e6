"""The kiosk's "print my certificate" and the printer's state for staff (docs/certificates.md §Kiosk).

The verdict screen offers the button only for an accepted verdict, and only when a printer is configured;
the certificate holds the facts the service received and the screen showed — the verdict's ``printable``
(:func:`terminal.web.verdicts.view_for`), never more (:func:`cityid.certificate.issue` refuses more).

:class:`KioskPrinting` wraps a :class:`terminal.flows.certificate.CertificateDesk`:

* the first press asks the printer first (DLE EOT) and issues nothing while it cannot print — no anchoring
  for a certificate that cannot leave the kiosk; then it issues (queued for anchoring) and prints;
* after a fault the screen keeps the verdict and the job: the next press reprints the same document (never
  anchored twice); staff find the job in the desk for ``max_age_s``;
* :meth:`poll` is what the health monitor calls (a non-blocking warning in ``/health``, never out of service).

Nothing here raises to a citizen: every outcome is a :class:`PrintOutcome` with a catalogue key
(``print.*``, ``printer.state.*``).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cityid.errors import CityIdError
from terminal.flows.certificate import (
    AnchorUnavailable,
    CertificateDesk,
    JobState,
    ScanResult,
    enrollment_receipt_blocks,
    verify_line,
)
from terminal.flows.kiosk import SERVICES, Service
from terminal.peripherals.printer import PrinterFault, PrinterState, PrinterStatus, ReceiptPrinter

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PrintOutcome:
    """What the verdict screen shows after "print my certificate" (no personal data).

    ``state``: ``printed``, ``failed`` (printer fault: ``message`` is ``printer.state.*``, the verdict and any
    job are kept for another try) or ``unavailable`` (the city server did not take the certificate: nothing
    was printed). ``job_id``: the desk's job to reprint (None when nothing was issued).
    """

    state: str
    message: str
    job_id: str | None = None
    confirmation: str = ""
    printer: PrinterState | None = None

    @property
    def printed(self) -> bool:
        return self.state == "printed"


@dataclass(frozen=True, slots=True)
class StaffJob:
    """A kept print job as the staff page lists it: no printed fact, only what identifies the paper."""

    id: str
    service: str
    created_at: float
    state: str  # JobState value
    attempts: int
    confirmation: str
    fault: str | None  # ``printer.state.*`` of the last failure (None: not failed)


class KioskPrinting:
    """A kiosk's certificate desk as the web layer uses it (module doc)."""

    def __init__(self, desk: CertificateDesk, services: Mapping[str, Service] = SERVICES) -> None:
        self.desk = desk
        self.services = dict(services)
        self._lock = threading.Lock()
        self._last: PrinterStatus | None = None

    @property
    def last_status(self) -> PrinterStatus | None:
        """The printer's state at the last poll or print (None: not asked yet)."""
        with self._lock:
            return self._last

    def _remember(self, status: PrinterStatus | None) -> None:
        if status is None:
            return
        with self._lock:
            previous, self._last = self._last, status
        if previous is None or previous.state is not status.state:
            level = logging.INFO if status.ready else logging.WARNING
            logger.log(level, "printer: %s", status.state.value)

    def poll(self) -> PrinterStatus:
        """Ask the printer now (DLE EOT; waits for a print in progress)."""
        try:
            status = self.desk.printer_status()
        except CityIdError as exc:  # never let a printer problem stop the health monitor
            status = PrinterStatus(PrinterState.DISCONNECTED, detail=type(exc).__name__)
        self._remember(status)
        return status

    def failed_jobs(self) -> int:
        """Jobs kept for staff to reprint (a fault, not printed yet)."""
        return sum(1 for j in self.desk.jobs() if j.state is JobState.FAILED)

    def print_verdict(
        self, service_id: str, printable: Sequence[tuple[str, Any]], job_id: str | None = None
    ) -> PrintOutcome:
        """Issue (once) and print a certificate of ``printable`` for ``service_id``; reprint ``job_id``."""
        if job_id is not None:
            try:
                kept = self.desk.job(job_id)
                # staff may have reprinted it meanwhile (the staff page): no second paper for one press
                job = kept if kept.state is JobState.PRINTED else self.desk.reprint(job_id)
            except CityIdError:
                job_id = None  # forgotten (too old): issue anew below
            else:
                return self._outcome(job)
        service = self.services.get(service_id)
        if service is None or not printable:
            return PrintOutcome("unavailable", "print.unavailable")
        status = self.poll()
        if not status.ready:  # nothing issued, nothing anchored: the printer cannot print now
            return PrintOutcome("failed", status.message_key, printer=status.state)
        try:
            job = self.desk.issue_facts(service, dict(printable))
        except AnchorUnavailable:
            return PrintOutcome("unavailable", "print.unavailable")
        except CityIdError as exc:
            logger.warning("certificate not issued: %s", type(exc).__name__)
            return PrintOutcome("unavailable", "print.unavailable")
        return self._outcome(self.desk.print(job.id))

    def _outcome(self, job: Any) -> PrintOutcome:
        self._remember(job.status)
        state = job.status.state if job.status is not None else None
        if job.state is JobState.PRINTED:
            return PrintOutcome("printed", "print.done", job.id, job.certificate.confirmation, state)
        key = job.status.message_key if job.status is not None else "print.unavailable"
        return PrintOutcome("failed", key, job.id, "", state)

    def staff_jobs(self) -> list[StaffJob]:
        """The jobs the desk keeps (15 min), newest first, for the staff page."""
        out = []
        for j in reversed(self.desk.jobs()):
            fault = j.status.message_key if j.state is JobState.FAILED and j.status is not None else None
            out.append(StaffJob(j.id, str(j.certificate.payload["svc"]), j.created_at, j.state.value,
                                j.attempts, j.certificate.confirmation, fault))  # fmt: skip
        return out

    def reprint(self, job_id: str) -> PrintOutcome:
        """Staff reprint of a kept job: the same document (anchoring already queued once, never again);
        ``unavailable`` / ``staff.job_gone`` when the desk no longer holds it."""
        try:
            job = self.desk.reprint(job_id)
        except CityIdError:
            return PrintOutcome("unavailable", "staff.job_gone")
        return self._outcome(job)

    def health_json(self) -> dict[str, Any]:
        """The printer part of ``/health`` (staff; no personal data)."""
        status = self.last_status
        return {
            "state": None if status is None else status.state.value,
            "paper_near_end": None if status is None else status.paper_near_end,
            "failed_jobs": self.failed_jobs(),
        }


# --- the counter -------------------------------------------------------------------------------------


@dataclass
class _PendingReceipt:
    credential_id: str
    issued_at: float
    revocation_password: str | None  # held in memory until printed (or ``max_age_s``), never logged
    held_at: float
    printed: bool = False


class CounterPrinting:
    """The counter's receipt printer: the enrollment receipt after an enrollment (no personal claim).

    :meth:`hold` keeps what the receipt prints — credential no., time and the revocation password the citizen
    chose — **server-side** under a random token (the browser's signed session cookie carries only the
    token: a cookie is readable, not encrypted). :meth:`print_held` prints it (again after a fault); once a
    receipt is printed the password is dropped, so a second copy prints :data:`REVOCATION_PASSWORD_SLOT`.
    Held receipts are forgotten after ``max_age_s`` (15 min, as the kiosk's print jobs) and beyond ``keep``.
    """

    def __init__(
        self,
        printer: ReceiptPrinter,
        counter_id: str,
        *,
        max_age_s: float = 900.0,
        keep: int = 20,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.printer = printer
        self.counter_id = counter_id
        self.max_age_s = max_age_s
        self.keep = keep
        self.clock = clock
        self._lock = threading.Lock()
        self._held: OrderedDict[str, _PendingReceipt] = OrderedDict()

    def _prune(self) -> None:
        cutoff = self.clock() - self.max_age_s
        for token in [t for t, r in self._held.items() if r.held_at < cutoff]:
            del self._held[token]
        while len(self._held) > self.keep:
            self._held.popitem(last=False)

    def hold(self, credential_id: str, issued_at: float, revocation_password: str | None = None) -> str:
        """Keep the receipt of an enrollment for printing; returns the token the clerk's session carries."""
        token = secrets.token_urlsafe(18)
        with self._lock:
            self._held[token] = _PendingReceipt(
                credential_id, issued_at, revocation_password or None, held_at=self.clock()
            )
            self._prune()
        return token

    def held(self, token: object) -> tuple[str, float] | None:
        """The credential no. and time of a held receipt (None: unknown or forgotten)."""
        with self._lock:
            self._prune()
            r = self._held.get(token) if isinstance(token, str) else None
            return None if r is None else (r.credential_id, r.issued_at)

    def print_held(self, token: object) -> PrintOutcome | None:
        """Print a held receipt (None: unknown or forgotten); after a fault it stays held, password too."""
        with self._lock:
            self._prune()
            r = self._held.get(token) if isinstance(token, str) else None
            if r is None:
                return None
            outcome = self._print(r.credential_id, r.issued_at, r.revocation_password)
            if outcome.printed:
                r.printed, r.revocation_password = True, None
            return outcome

    def forget(self, token: object) -> None:
        """Drop a held receipt (the clerk signed out): its password leaves memory now, not in 15 minutes."""
        with self._lock:
            if isinstance(token, str):
                self._held.pop(token, None)

    def print_enrollment(
        self, credential_id: str, issued_at: float, revocation_password: str | None = None
    ) -> PrintOutcome:
        """Print the receipt of ``credential_id`` (``printer.state.*`` on a fault; call again to reprint)."""
        with self._lock:
            return self._print(credential_id, issued_at, revocation_password)

    def _print(self, credential_id: str, issued_at: float, revocation_password: str | None) -> PrintOutcome:
        blocks = enrollment_receipt_blocks(credential_id, self.counter_id, issued_at, revocation_password)
        try:
            status = self.printer.print(blocks)
        except PrinterFault as exc:
            logger.warning("enrollment receipt not printed: %s", exc.status.state.value)
            return PrintOutcome("failed", exc.status.message_key, printer=exc.status.state)
        return PrintOutcome("printed", "counter.receipt.printed", printer=status.state)


@dataclass(frozen=True, slots=True)
class ScanView:
    """The last scan as the counter screen shows it; kept ``keep_s`` seconds (it holds printed facts)."""

    at: float
    result: ScanResult


class ScannerState(StrEnum):
    """The counter scanner as the clerk's scan page shows it (``#scanner-state[data-state]``)."""

    STARTING = "starting"  # the reader thread is not reading yet
    READY = "ready"  # the port is open and read: a scan now shows up on the page
    UNAVAILABLE = "unavailable"  # the port cannot be opened or went away (cable, power); retried every second


class CounterScanning:
    """Reads the counter's serial scanner in a thread and verifies each code (:func:`verify_line`).

    The thread never ends before :meth:`stop`: a port error closes the port and it is reopened every
    ``retry_s`` (the clerk's page says "scanner not connected" meanwhile); a failed verification is an
    ``unavailable`` result on the page, never a silent drop (docs/printer.md §Scanner).
    """

    def __init__(self, scanner: Any, verifier: Any, keep_s: float = 120.0, retry_s: float = 1.0) -> None:
        self.scanner = scanner
        self.verifier = verifier
        self.keep_s = keep_s
        self.retry_s = retry_s
        self._last: ScanView | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = ScannerState.STARTING
        self._down_logged_at = 0.0
        self.lines_read = 0  # codes read from the port (``scans``: verified and shown)
        self.scans = 0

    @property
    def state(self) -> ScannerState:
        return self._state

    def wait_ready(self, timeout: float) -> bool:
        """Block until the scanner is :attr:`ScannerState.READY` (True) or ``timeout`` passes (False)."""
        return self._ready.wait(timeout)

    def start(self) -> CounterScanning:
        """Start the reader thread; a second call is a no-op (``terminal.web.start(app)`` and
        :class:`terminal.web.server.ServerThread` may both call it: two readers on one port raced for its
        bytes — one read nothing and failed, or dropped the other's fresh code as a stale half line)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return self
            self._thread = threading.Thread(target=self._run, name="counter-scanner", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)
        with contextlib.suppress(CityIdError, OSError):
            self.scanner.close()

    def _set_state(self, state: ScannerState, why: str = "") -> None:
        previous, self._state = self._state, state
        if state is ScannerState.READY:
            self._ready.set()
            if previous is not ScannerState.READY:
                logger.info("counter scanner: ready")
            return
        self._ready.clear()
        now = time.monotonic()
        if previous is not state or now - self._down_logged_at > 60:  # once, then once a minute
            self._down_logged_at = now
            logger.warning("counter scanner: %s (%s)", state.value, why)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.scanner.is_open:
                    self._set_state(ScannerState.READY)
                line = self.scanner.read_line(0.5)
            except Exception as exc:  # ScannerError (unplugged) or anything else: retry, never end
                if self._stop.is_set():
                    break  # closed by stop() while reading
                # a ScannerError's message names the port and the failure (never data); others: the type only
                self._set_state(
                    ScannerState.UNAVAILABLE, str(exc) if isinstance(exc, CityIdError) else type(exc).__name__
                )
                self._stop.wait(self.retry_s)
                continue
            self._set_state(ScannerState.READY)
            if line is None:
                continue
            self.lines_read += 1
            t0 = time.perf_counter()
            result = verify_line(line, self.verifier)
            ms = 1e3 * (time.perf_counter() - t0)
            with self._lock:
                self._last = ScanView(time.time(), result)
                self.scans += 1
            if result.ok:
                logger.info("certificate scanned: valid (verified in %.0f ms)", ms)
            else:
                reason = result.rejected.reason.value if result.rejected is not None else "refused"
                logger.info("certificate scanned: %s (verified in %.0f ms)", reason, ms)

    def last(self) -> ScanView | None:
        """The last scan, or None (none yet, or older than ``keep_s``: forgotten)."""
        with self._lock:
            if self._last is not None and time.time() - self._last.at > self.keep_s:
                self._last = None
            return self._last
