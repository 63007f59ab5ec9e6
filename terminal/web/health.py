"""Out of service, visibly: what the kiosk needs to work, checked every second (docs/ui.md §Out of service).

The kiosk cannot serve a citizen when pcscd is gone, no reader is connected, the chain facts are unknown past
the staleness bound, or the kernel says the clock is not synchronised. :class:`HealthMonitor` polls the
backend (:meth:`terminal.web.backend.KioskBackend.health`) and the clock, logs one line per change, tells the
controller (which shows the out-of-service screen over SSE and recovers by itself) and serves ``/health``.

Chain health comes from the chain view through a small interface: a view with ``chain_health()`` (returning
:class:`ChainHealth`) answers for itself; for :class:`cityid.chain.live.LiveChainView` the head block is read
with ``eth_getBlockByNumber("latest")`` on a client of its own (so verification round-trip counts stay
exact), and a view with ``staleness()`` (the sync cache) reports its lag.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from cityid.errors import CityIdError
from terminal.web.backend import BackendHealth, ChainHealth, KioskBackend

logger = logging.getLogger(__name__)


class Problem(StrEnum):
    """Why the kiosk is out of service (catalogue ``oos.<value>.*``: what it means, what staff check)."""

    PCSCD = "pcscd"  # the smart-card service is not running
    READER = "reader"  # no card reader connected
    CHAIN = "chain"  # the city registry cannot be reached, or its data is too old
    CLOCK = "clock"  # the system clock is not synchronised
    AUTHORIZATION = "authorization"  # no valid terminal certificate: cards would refuse this kiosk


class ChainHealthSource(Protocol):
    """A chain view that can say how current it is (the interface the chain layer may implement)."""

    def chain_health(self) -> ChainHealth: ...


def chain_health(view: Any, clock: Callable[[], float] = time.time) -> ChainHealth:
    """How current ``view``'s facts are: its own ``chain_health()``, else the node's head block."""
    own = getattr(view, "chain_health", None)
    try:
        if callable(own):
            result = own()
            if isinstance(result, ChainHealth):
                return result
            return ChainHealth(error="chain view returned no health")
        lag = None
        staleness = getattr(view, "staleness", None)
        if callable(staleness):
            raw = staleness()
            if not isinstance(raw, int | float | str):
                raise TypeError("staleness() returned no number")
            lag = float(raw)
        client = getattr(view, "client", None)
        transport = getattr(client, "transport", None)
        if transport is None:
            return ChainHealth(cache_lag=lag)
        from cityid.chain.rpc import RpcClient, as_dict, as_int

        head = as_dict(RpcClient(transport).request("eth_getBlockByNumber", ["latest", False]), "block")
        number = as_int(head.get("number"), "block number")
        stamp = as_int(head.get("timestamp"), "block timestamp")
        return ChainHealth(head_block=number, head_age=max(0.0, clock() - stamp), cache_lag=lag)
    except CityIdError as exc:
        return ChainHealth(error=f"{type(exc).__name__}: {exc}"[:200])
    except Exception as exc:  # a malformed reply must never stop the monitor
        return ChainHealth(error=f"{type(exc).__name__}"[:200])


# --- the clock (adjtimex(2): TIME_ERROR / STA_UNSYNC mean "not synchronised") -----------------------


class _Timex(ctypes.Structure):
    _fields_ = [  # struct timex, <sys/timex.h>
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_pad", ctypes.c_int * 11),
    ]


_TIME_ERROR = 5
_STA_UNSYNC = 0x0040


def kernel_clock_synced() -> bool | None:
    """Whether the kernel's clock discipline (NTP/chrony via adjtimex) says the clock is synchronised.

    None when it cannot be asked (not Linux). Read-only: ``modes = 0`` changes nothing.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        tx = _Timex()
        state = libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != _TIME_ERROR and not tx.status & _STA_UNSYNC


def version() -> str:
    try:
        return importlib.metadata.version("busan-citizen-id")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# --- the monitor -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HealthReport:
    """One check: the problems found and what was measured (no personal data)."""

    problems: frozenset[Problem]
    backend: BackendHealth
    clock_synced: bool | None
    checked_at: float
    details: dict[str, str] = field(default_factory=dict)
    printer: dict[str, Any] | None = None  # KioskPrinting.health_json(); None: no printer configured
    warnings: tuple[str, ...] = ()  # staff should look (catalogue keys), the kiosk still serves

    def to_json(self) -> dict[str, Any]:
        chain = self.backend.chain
        return {
            "status": "out_of_service" if self.problems else "ok",
            "problems": sorted(self.problems),
            "readers": list(self.backend.readers),
            "pcscd": self.backend.pcscd,
            "chain": None
            if chain is None
            else {
                "head_block": chain.head_block,
                "head_age_s": None if chain.head_age is None else round(chain.head_age, 1),
                "cache_lag_s": None if chain.cache_lag is None else round(chain.cache_lag, 1),
                "error": chain.error,
            },
            "clock_synced": self.clock_synced,
            "printer": self.printer,
            "warnings": list(self.warnings),
            "checked_at": round(self.checked_at, 3),
            "version": version(),
        }


class HealthMonitor:
    """Poll the backend and the clock; on every change of the problem set log one line and call ``notify``.

    ``max_staleness``: seconds of chain age (head block timestamp vs the kiosk clock, or time since the chain
    was last reachable) after which the kiosk is out of service; ``check_head_age`` is off for the embedded
    demo chain, which mines only when something is written. ``clock_probe`` None: the clock is not checked.
    ``printer`` (:class:`terminal.web.printing.KioskPrinting`) is polled every ``printer_interval`` seconds;
    a printer that cannot print is a warning for staff (``printer.state.*`` in ``warnings``), never out of
    service: verification works without paper (docs/printer.md §Status).
    """

    def __init__(
        self,
        backend: KioskBackend,
        notify: Callable[[frozenset[Problem]], None],
        *,
        max_staleness: float = 300.0,
        check_head_age: bool = True,
        clock_probe: Callable[[], bool | None] | None = kernel_clock_synced,
        interval: float = 1.0,
        clock: Callable[[], float] = time.time,
        printer: Any = None,
        printer_interval: float = 10.0,
    ) -> None:
        self.backend = backend
        self.printer = printer
        self.printer_interval = printer_interval
        self._printer_polled_at: float | None = None
        self.notify = notify
        self.max_staleness = max_staleness
        self.check_head_age = check_head_age
        self.clock_probe = clock_probe
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._report: HealthReport | None = None
        self._chain_seen_at: float | None = None  # last time the chain answered
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def report(self) -> HealthReport | None:
        with self._lock:
            return self._report

    def start(self) -> HealthReport:
        """Check once now (so ``kiosk serve`` can say what is missing), then every ``interval`` seconds;
        called again while running it only checks (one polling thread)."""
        report = self.check()
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return report
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="kiosk-health", daemon=True)
            self._thread.start()
        return report

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # the monitor must outlive any probe failure
                logger.exception("health check failed")

    def check(self) -> HealthReport:
        """Run every check; log and notify when the set of problems changed."""
        now = self._clock()
        try:
            backend = self.backend.health()
        except CityIdError as exc:
            logger.warning("backend health failed: %s", type(exc).__name__)
            backend = BackendHealth(pcscd=None, readers=())
        clock_synced = self.clock_probe() if self.clock_probe is not None else None
        problems: set[Problem] = set()
        details: dict[str, str] = {}
        if backend.pcscd is False:
            problems.add(Problem.PCSCD)
        elif backend.pcscd is True and not backend.readers:
            problems.add(Problem.READER)
        chain = backend.chain
        if chain is not None:
            if chain.error is None:
                self._chain_seen_at = now
            seen = self._chain_seen_at
            if chain.error is not None and (seen is None or now - seen > self.max_staleness):
                # never reached since start, or unreachable past the bound: the facts are unknown
                problems.add(Problem.CHAIN)
                details[Problem.CHAIN] = f"unreachable: {chain.error}"
            elif self.check_head_age and chain.head_age is not None and chain.head_age > self.max_staleness:
                problems.add(Problem.CHAIN)
                details[Problem.CHAIN] = f"head block {chain.head_age:.0f}s old"
            elif chain.cache_lag is not None and chain.cache_lag > self.max_staleness:
                problems.add(Problem.CHAIN)
                details[Problem.CHAIN] = f"cache {chain.cache_lag:.0f}s behind"
        if clock_synced is False:
            problems.add(Problem.CLOCK)
        if backend.authorized is False:
            problems.add(Problem.AUTHORIZATION)
        printer, warnings = self._printer(now)
        report = HealthReport(frozenset(problems), backend, clock_synced, now, details, printer, warnings)
        with self._lock:
            previous, self._report = self._report, report
        if previous is None or previous.problems != report.problems:
            self._log_change(previous, report)
            self.notify(report.problems)
        return report

    def _printer(self, now: float) -> tuple[dict[str, Any] | None, tuple[str, ...]]:
        """The printer's state (polled every ``printer_interval``; else the last print's) and its warnings."""
        if self.printer is None:
            return None, ()
        polled = self._printer_polled_at
        if polled is None or now - polled >= self.printer_interval:
            self._printer_polled_at = now
            self.printer.poll()
        status = self.printer.last_status
        warnings: list[str] = []
        if status is not None and not status.ready:
            warnings.append(status.message_key)
        if status is not None and status.paper_near_end:
            warnings.append("printer.paper_near_end")
        return self.printer.health_json(), tuple(warnings)

    @staticmethod
    def _log_change(previous: HealthReport | None, report: HealthReport) -> None:
        if report.problems:
            what = "; ".join(
                f"{p.value}" + (f" ({report.details[p]})" if p in report.details else "")
                for p in Problem
                if p in report.problems
            )
            logger.warning("kiosk out of service: %s", what)
        elif previous is not None:
            logger.warning("kiosk back in service")
        else:
            logger.info("kiosk in service")


#: What ``kiosk serve`` prints at start-up for each problem (docs/ui.md §Out of service).
STARTUP_HINTS: dict[Problem, str] = {
    Problem.PCSCD: "pcscd (the smart-card service) is not running: start it (systemctl start pcscd.socket)",
    Problem.READER: "no card reader is connected (or none matches terminal.reader)",
    Problem.CHAIN: "the chain cannot be read or its head is older than chain.max_staleness",
    Problem.CLOCK: "the system clock is not synchronised (check NTP/chrony; see terminal.require_clock_sync)",
    Problem.AUTHORIZATION: "a valid terminal certificate: the city server did not issue one (check [server] "
    "url, and that the city authorized this terminal: `city-server terminal authorize; see kiosk doctor)",
}


def startup_lines(report: HealthReport) -> list[str]:
    """One line per missing thing, for ``kiosk serve`` to print."""
    return [f"missing: {STARTUP_HINTS[p]}" + (f" [{report.details[p]}]" if p in report.details else "")
            for p in Problem if p in report.problems]  # fmt: skip
