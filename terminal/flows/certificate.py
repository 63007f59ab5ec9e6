"""A verdict's printed certificate: issue → queue its hash for anchoring → print → reprint.

Format and rules: docs/certificates.md.

The API the kiosk screens call (not wired to terminal/web yet)::

    desk = CertificateDesk(terminal_key, "busan-kiosk-001", anchor_uri, queue, printer)
    job = desk.issue(verification.verdict, verification.service)   # after "print my certificate"
    job = desk.print(job.id)          # job.state: printed | failed; job.status: PrinterStatus for the screen
    job = desk.reprint(job.id)        # staff, after fixing paper/cover/cable: same document, no new anchor
    desk.printer_status()             # for the staff screen (DLE EOT poll)

Rules: the certificate holds only the facts the service requested (:func:`cityid.certificate.issue` refuses
more); nothing is printed before its hash is queued or anchored (``issue`` raises :class:`AnchorUnavailable`
and creates no job when the queue cannot be reached); a job keeps its document until :meth:`forget`, for
``max_age_s`` (15 min) and among the ``keep`` (10) most recent — long enough for staff to fix a fault and
reprint, short enough that an unattended kiosk does not hoard personal facts; a reprint reuses the document —
the hash is submitted once.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric import ec

from cityid import certificate as cert
from cityid.errors import CityIdError
from terminal.flows.kiosk import Service
from terminal.peripherals.printer import (
    Block,
    Feed,
    PrinterFault,
    PrinterState,
    PrinterStatus,
    QrCode,
    ReceiptPrinter,
    Text,
)
from terminal.verifier import Verdict

logger = logging.getLogger(__name__)
KST = dt.timezone(dt.timedelta(hours=9), "KST")


class AnchorQueueClient(Protocol):
    """The city server's anchoring queue as the kiosk sees it (``ServerAnchorQueue``)."""

    def submit(self, document_hash: bytes) -> cert.AnchorProof | None:
        """Queue the hash (idempotent); the proof if anchored already; ``CityIdError`` if unreachable."""
        ...

    def proof(self, document_hash: bytes) -> cert.AnchorProof | None: ...


class AnchorUnavailable(CityIdError):
    """The anchoring queue could not take the certificate: nothing was printed (try later)."""


class JobState(StrEnum):
    QUEUED = "queued"  # signed and queued for anchoring, not printed yet
    PRINTED = "printed"
    FAILED = "failed"  # a printer fault; the document is kept for a reprint


@dataclass
class PrintJob:
    """One certificate and its printing history (kept in memory only)."""

    id: str
    certificate: cert.Certificate
    state: JobState = JobState.QUEUED
    status: PrinterStatus | None = None
    attempts: int = 0
    printed_at: float | None = None
    created_at: float = 0.0
    history: list[str] = field(default_factory=list)


#: Receipt labels (Korean first; the paper is read in Korea).
SERVICE_TITLES = {
    "residence": ("거주 사실 확인서", "Residence confirmation"),
    "benefit-check": ("경로 우대 자격 확인서", "Senior benefit eligibility"),
}
FACT_LABELS = {
    "family_name": "성 Family name",
    "given_name": "이름 Given name",
    "district": "거주 구·군 District",
    "busan_resident": "부산 거주 Busan resident",
    "age_over_65": "65세 이상 Age 65+",
    "age_over_19": "19세 이상 Age 19+",
}


def _value(v: object) -> str:
    if v is True:
        return "예 (yes)"
    if v is False:
        return "아니오 (no)"
    return str(v)


def receipt_blocks(c: cert.Certificate) -> list[Block]:
    """The printed layout of a certificate (docs/printer.md §Layout)."""
    p = c.payload
    ko, en = SERVICE_TITLES.get(p["svc"], (p["svc"], p["svc"]))
    issued = dt.datetime.fromtimestamp(p["iat"], KST)
    until = dt.datetime.fromtimestamp(p["exp"], KST)
    blocks: list[Block] = [
        Text("부산광역시", bold=True, size=2, align="center"),
        Text("BUSAN METROPOLITAN CITY", align="center"),
        Feed(1),
        Text(ko, bold=True, align="center"),
        Text(en, align="center"),
        Feed(1),
    ]
    facts: dict[str, Any] = p["facts"]
    for name, value in facts.items():
        blocks += [Text(FACT_LABELS.get(name, name)), Text(f"  {_value(value)}", bold=True)]
    blocks += [
        Feed(1),
        Text(f"Kiosk     {p['kiosk']}"),
        Text(f"Issued    {issued:%Y-%m-%d %H:%M} KST"),
        Text(f"Valid to  {until:%Y-%m-%d %H:%M} KST"),
        Text("문서확인번호 Confirmation no."),
        Text(p["cno"], bold=True, size=2, align="center"),
        Feed(1),
        QrCode(c.qr_text()),
        Text("QR 코드로 진위를 확인하세요", align="center"),
        Text("Verify: city server /certificates/verify", align="center"),
    ]
    return blocks


#: Printed instead of the revocation password when none was chosen at enrollment, or when it is no longer held
#: (a copy printed after the first one, or after the counter forgot it: it is never kept beyond the receipt).
REVOCATION_PASSWORD_SLOT = "[ 해지 비밀번호 Revocation password: 없음 / none on this receipt ]"  # noqa: S105 - a label
#: Characters per printed line of the password (fits 58 mm paper at font A with the indent; never truncated).
PASSWORD_LINE = 24
#: How a lost card is reported (docs/server.md §Lost-card report): with the revocation password the counter's
#: "lost card" form needs nothing else from the citizen; without it, a clerk revokes by the credential no.
LOST_CARD_HELP = (
    Text("분실·도난 신고 Lost or stolen card"),
    Text("  부산 120 콜센터 / 가까운 우체국 창구"),
    Text("  Busan 120 call centre or any post-office counter:"),
    Text("  give your name, date of birth and the"),
    Text("  revocation password above (no card needed),"),
    Text("  or show ID and give the credential no. above"),
)


def revocation_password_blocks(revocation_password: str | None) -> list[Block]:
    """The password the citizen chose, on lines of :data:`PASSWORD_LINE` characters (never cut short)."""
    if not revocation_password:
        return [Text(REVOCATION_PASSWORD_SLOT)]
    pw = revocation_password
    return [
        Text("해지 비밀번호 (분실 신고용)"),
        Text("Revocation password (for a lost card):"),
        *(Text(f"  {pw[i : i + PASSWORD_LINE]}", bold=True) for i in range(0, len(pw), PASSWORD_LINE)),
        Text("  Keep this receipt apart from the card."),
    ]


def enrollment_receipt_blocks(
    credential_id: str, counter_id: str, issued_at: float, revocation_password: str | None = None
) -> list[Block]:
    """The counter's enrollment receipt (docs/printer.md §Enrollment receipt): what was issued, when, where,
    the revocation password the citizen chose (separation of duties, docs/server.md §Lost-card report) and how
    to report a lost card — no personal claim (no name, birthdate, district). ``credential_id`` is what a
    clerk revokes by (counter "revoke"); the password is what the citizen's own report needs ("lost")."""
    when = dt.datetime.fromtimestamp(issued_at, KST)
    return [
        Text("부산광역시", bold=True, size=2, align="center"),
        Text("BUSAN METROPOLITAN CITY", align="center"),
        Feed(1),
        Text("시민증 발급 확인증", bold=True, align="center"),
        Text("Citizen ID enrollment receipt", align="center"),
        Feed(1),
        Text("발급 Issued: citizen card + credential"),
        Text("Credential no."),
        Text(f"  {credential_id}", bold=True),
        Text(f"Counter   {counter_id}"),
        Text(f"Date      {when:%Y-%m-%d %H:%M} KST"),
        Feed(1),
        *revocation_password_blocks(revocation_password),
        Feed(1),
        *LOST_CARD_HELP,
        Feed(1),
        Text("이 확인증에는 개인 정보가 없습니다", align="center"),
        Text("No personal data on this receipt", align="center"),
    ]


def verify_scan(scanner: Any, verifier: cert.CertificateVerifier, timeout: float = 1.0) -> ScanResult | None:
    """The counter: wait for one scanned code and verify it (None: nothing scanned within ``timeout``).

    ``scanner`` is a :class:`terminal.peripherals.scanner.SerialScanner`; garbage and half lines never reach
    the verifier (the scanner drops them), and any other text is refused as ``malformed``.
    """
    line = scanner.read_line(timeout)
    return None if line is None else verify_line(line, verifier)


def verify_line(line: str, verifier: cert.CertificateVerifier) -> ScanResult:
    """Verify one scanned code; never raises: a failure that is not a refusal (a bug, a lost connection
    the verifier did not map) is ``unavailable`` — no verdict, never "valid" (docs/certificates.md)."""
    try:
        return ScanResult(verifier.verify(line), None)
    except cert.CertificateRejected as exc:
        return ScanResult(None, exc)
    except Exception as exc:  # the counter's reader thread must survive any scan
        logger.warning("scanned code not verified: %s", type(exc).__name__)  # never the code: personal facts
        return ScanResult(None, cert.CertificateRejected(cert.Rejection.UNAVAILABLE, type(exc).__name__))


@dataclass(frozen=True, slots=True)
class ScanResult:
    """What the counter screen shows for one scan: the verified facts, or why the certificate is refused."""

    verified: cert.VerifiedCertificate | None
    rejected: cert.CertificateRejected | None

    @property
    def ok(self) -> bool:
        return self.verified is not None


class CertificateDesk:
    """Issue, print and reprint certificates for verdicts at one kiosk (see module doc)."""

    def __init__(
        self,
        key: ec.EllipticCurvePrivateKey,
        kiosk_id: str,
        anchor: str,
        queue: AnchorQueueClient,
        printer: ReceiptPrinter | None,
        *,
        validity_s: int = cert.DEFAULT_VALIDITY_S,
        keep: int = 10,
        max_age_s: float = 900.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = key
        self.kiosk_id = kiosk_id
        self.anchor = anchor
        self.queue = queue
        self.printer = printer
        self.validity_s = validity_s
        self.keep = keep
        self.max_age_s = max_age_s
        self.clock = clock
        self._jobs: OrderedDict[str, PrintJob] = OrderedDict()
        self._lock = threading.Lock()  # one print at a time, jobs table consistent

    # --- jobs ---
    def _prune(self) -> None:
        """Forget jobs older than ``max_age_s`` or beyond the ``keep`` newest: they hold personal facts."""
        cutoff = self.clock() - self.max_age_s
        for job_id in [j.id for j in self._jobs.values() if j.created_at < cutoff]:
            del self._jobs[job_id]
        while len(self._jobs) > self.keep:
            self._jobs.popitem(last=False)

    def job(self, job_id: str) -> PrintJob:
        self._prune()
        try:
            return self._jobs[job_id]
        except KeyError:
            raise CityIdError("no such print job (it was printed and forgotten, or never issued)") from None

    def jobs(self) -> list[PrintJob]:
        self._prune()
        return list(self._jobs.values())

    def forget(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)

    # --- issue ---
    def issue_facts(self, service: Service, facts: dict[str, Any]) -> PrintJob:
        """Sign a certificate of the service's facts and queue its hash (no job if unreachable)."""
        c = cert.issue(
            self._key, kiosk=self.kiosk_id, service=service.id,
            facts={k: facts[k] for k in service.claims if k in facts}, requested=service.claims,
            anchor=self.anchor, now=self.clock(), validity_s=self.validity_s,
        )  # fmt: skip
        try:
            proof = self.queue.submit(c.document_hash)
        except CityIdError as exc:
            logger.warning("certificate not queued for anchoring: %s", type(exc).__name__)
            raise AnchorUnavailable(
                "the city server did not take the certificate; nothing was printed"
            ) from exc
        if proof is not None:
            c = c.with_proof(proof)
        job = PrintJob(secrets.token_urlsafe(9), c, created_at=self.clock())
        job.history.append("queued")
        with self._lock:
            self._jobs[job.id] = job
            self._prune()
        return job

    def issue(self, verdict: Verdict, service: Service) -> PrintJob:
        """A certificate for an accepted verdict (call before the verdict is wiped)."""
        if not verdict.ok:
            raise CityIdError("only an accepted verdict gets a certificate")
        return self.issue_facts(service, dict(verdict.claims))

    # --- print ---
    def printer_status(self) -> PrinterStatus:
        if self.printer is None:
            return PrinterStatus(PrinterState.NOT_CONFIGURED)
        with self._lock:
            return self.printer.status()

    def print(self, job_id: str) -> PrintJob:
        """Print a queued (or failed) job; the job records the outcome, the document stays for a reprint."""
        job = self.job(job_id)
        if self.printer is None:
            job.state, job.status = JobState.FAILED, PrinterStatus(PrinterState.NOT_CONFIGURED)
            return job
        if job.state is not JobState.PRINTED and job.certificate.proof is None:
            try:  # a retry after the batch was anchored: print the proof in the QR
                proof = self.queue.proof(job.certificate.document_hash)
            except CityIdError:
                proof = None
            if proof is not None:
                job.certificate = job.certificate.with_proof(proof)
        with self._lock:
            job.attempts += 1
            try:
                job.status = self.printer.print(receipt_blocks(job.certificate))
            except PrinterFault as exc:
                job.state, job.status = JobState.FAILED, exc.status
                job.history.append(f"failed:{exc.status.state.value}:{exc.during}")
                logger.warning("certificate print failed: %s", exc)
                return job
        job.state, job.printed_at = JobState.PRINTED, self.clock()
        job.history.append("printed")
        return job

    def reprint(self, job_id: str) -> PrintJob:
        """Print the same document again (after a fault, or a second copy); never anchored again."""
        job = self.job(job_id)
        if job.state is JobState.PRINTED:
            job.state = JobState.QUEUED
        return self.print(job_id)
