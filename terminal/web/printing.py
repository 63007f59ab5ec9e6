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

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cityid.errors import CityIdError
from terminal.flows.certificate import AnchorUnavailable, CertificateDesk, JobState
from terminal.flows.kiosk import SERVICES, Service
from terminal.peripherals.printer import PrinterState, PrinterStatus

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
            status = PrinterStatus(PrinterState.DISCONNECTED, type(exc).__name__)
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
                job = self.desk.reprint(job_id)
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

    def health_json(self) -> dict[str, Any]:
        """The printer part of ``/health`` (staff; no personal data)."""
        status = self.last_status
        return {
            "state": None if status is None else status.state.value,
            "paper_near_end": None if status is None else status.paper_near_end,
            "failed_jobs": self.failed_jobs(),
        }
