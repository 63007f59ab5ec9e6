"""The kiosk's screen state machine: one citizen at a time, wiped on removal or idle timeout.

Screens: idle → services → consent → pin → (working) → verdict, plus blocked and out of service. The
controller lives in the server process (a kiosk has one screen: :class:`terminal.web.security.ScreenLock`);
pages render its state and every change of state is pushed on the event stream (``go``: where the browser
should be), so a card pulled, a timeout or the kiosk going out of service brings the screen along.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from cityid.errors import (
    BlockedPinError,
    CardRemovedError,
    CityIdError,
    PinNotSetError,
    PinPowerCycleError,
    UnusableTokenError,
    WrongPinError,
)
from terminal.web.backend import (
    BackendEvent,
    KioskBackend,
    ServiceInfo,
    SessionInfo,
    TokenPresent,
    TokenRemoved,
    VerdictView,
)
from terminal.web.events import EventHub, format_event

if TYPE_CHECKING:
    from terminal.web.printing import KioskPrinting, PrintOutcome

logger = logging.getLogger(__name__)


class Screen(StrEnum):
    """Kiosk screens (also their URL paths, see :data:`SCREEN_PATHS`)."""

    IDLE = "idle"
    SERVICES = "services"
    CONSENT = "consent"
    PIN = "pin"
    LAST_TRY = "last_try"  # before the final PIN attempt: what blocking means, where to unblock
    WORKING = "working"
    VERDICT = "verdict"
    BLOCKED = "blocked"
    OUT_OF_SERVICE = "out_of_service"
    REFUSED = "refused"  # a token the kiosk cannot use (blank, foreign, unregistered), until it leaves


SCREEN_PATHS = {
    Screen.IDLE: "/",
    Screen.SERVICES: "/services",
    Screen.CONSENT: "/consent",
    Screen.PIN: "/pin",
    Screen.LAST_TRY: "/last-try",
    Screen.WORKING: "/pin",
    Screen.VERDICT: "/verdict",
    Screen.BLOCKED: "/blocked",
    Screen.OUT_OF_SERVICE: "/out-of-service",
    Screen.REFUSED: "/refused",
}

#: Screens whose inactivity limit is :data:`LONG_FACTOR` times the base one (reading, typing a PIN).
LONG_SCREENS = frozenset({Screen.CONSENT, Screen.PIN, Screen.LAST_TRY})
LONG_FACTOR = 3.0

#: Why a token is refused at tap (catalogue ``refused.<reason>.*``); anything else is ``unusable``.
REFUSAL_REASONS = frozenset({"blank", "foreign", "unregistered_key", "unusable"})


class Notice(StrEnum):
    """Why the kiosk went back to idle (catalogue ``notice.<value>``)."""

    REMOVED = "removed"  # the card left mid-flow
    TIMEOUT = "timeout"  # idle timeout wiped the session
    ERROR = "error"  # the card could not be read
    DONE = "done"  # the citizen pressed "done" with the card still in the reader: take it


class FlowError(Exception):
    """A request that does not fit the current screen (stale page, double submit)."""


@dataclass(slots=True)
class _Session:
    info: SessionInfo
    screen: Screen = Screen.SERVICES
    service: ServiceInfo | None = None
    verdict: VerdictView | None = None
    pin_error: str | None = None  # catalogue key
    tries_left: int | None = None
    last_activity: float = 0.0
    notice: str | None = None  # catalogue key shown once on the next screen (e.g. consent declined)
    last_try_seen: bool = False
    busy: bool = False
    generation: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class KioskController:
    """State of the one kiosk screen, driven by card events and the citizen's choices."""

    def __init__(
        self,
        backend: KioskBackend,
        hub: EventHub,
        idle_timeout: float = 30.0,
        warning: float = 20.0,
        clock: Callable[[], float] = time.monotonic,
        services: tuple[str, ...] | None = None,
        printing: KioskPrinting | None = None,
    ) -> None:
        self.backend = backend
        self.printing = printing  # "print my certificate" on the verdict screen (None: no printer)
        self.hub = hub
        self.idle_timeout = idle_timeout  # seconds without activity before the countdown (base screens)
        self.warning = max(warning, 0.0)  # seconds the countdown runs before the wipe (WCAG 2.2.1: ≥ 20)
        self._clock = clock
        self._lock = threading.RLock()
        self._session: _Session | None = None
        self._opening: str | None = None  # reader whose session is being opened
        self._opening_removed = False
        self._generation = 0
        self._problems: frozenset[str] = frozenset()  # terminal.web.health.Problem values
        self._waiting: TokenPresent | None = None  # a token that arrived while out of service
        self._refused: tuple[str, str] | None = None  # (reader, reason) of a token refused at tap
        self._stop = threading.Event()
        self._idle_thread: threading.Thread | None = None
        offered = {s.id: s for s in backend.services()}
        wanted = services if services is not None else tuple(offered)
        missing = [s for s in wanted if s not in offered]
        if missing:
            raise CityIdError(f"service {missing[0]!r} is not offered by this terminal")
        self.services = tuple(offered[s] for s in wanted)
        self.last_event_latency: float | None = None  # card layer saw it -> event published (s)
        self.last_event_at: float | None = None  # time.monotonic() the card layer saw the last event

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the card layer and the idle clock; a second call while running does nothing (one reader
        loop per kiosk: two would both see every tap)."""
        with self._lock:
            if self._idle_thread is not None and self._idle_thread.is_alive():
                return
            self._stop.clear()
            self.backend.start(self.on_event)
            self._idle_thread = threading.Thread(target=self._idle_loop, name="kiosk-idle", daemon=True)
            self._idle_thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._wipe()
        self.backend.stop()
        if self._idle_thread is not None:
            self._idle_thread.join(timeout=2)
            self._idle_thread = None

    def _idle_loop(self) -> None:
        while not self._stop.wait(0.5):
            self.check_idle()

    # --- reading state ---------------------------------------------------------------------------

    @property
    def screen(self) -> Screen:
        with self._lock:
            if self._problems:
                return Screen.OUT_OF_SERVICE
            if self._session is None:
                return Screen.REFUSED if self._refused else Screen.IDLE
            return self._session.screen

    @property
    def problems(self) -> frozenset[str]:
        with self._lock:
            return self._problems

    def snapshot(self) -> dict[str, Any]:
        """What the current page needs to render (no PIN; claims only on the verdict screen)."""
        with self._lock:
            if self._problems:
                return {"screen": Screen.OUT_OF_SERVICE, "problems": sorted(self._problems)}
            s = self._session
            if s is None:
                if self._refused:
                    return {"screen": Screen.REFUSED, "refused": self._refused[1]}
                return {"screen": Screen.IDLE}
            limit = self.limit(s.screen)
            return {
                "screen": s.screen,
                "kind": s.info.kind,
                "service": s.service,
                "verdict": s.verdict,
                "pin_error": s.pin_error,
                "tries_left": s.tries_left,
                "can_print": self._can_print(s),
                "print": s.extra.get("print"),
                "printing": s.busy and s.screen is Screen.VERDICT,
                "notice": s.notice,
                "limit": limit,
                "warning": self.warning,
                "countdown_in": max(0.0, limit - (self._clock() - s.last_activity)),
            }

    def _can_print(self, s: _Session) -> bool:
        """The verdict screen offers "print my certificate": an accepted verdict, a printer, not printed."""
        outcome = s.extra.get("print")
        return (
            self.printing is not None
            and s.screen is Screen.VERDICT
            and s.verdict is not None
            and s.verdict.ok
            and bool(s.verdict.printable)
            and s.service is not None
            and not (outcome is not None and outcome.printed)
        )

    def limit(self, screen: Screen) -> float:
        """Seconds without activity on ``screen`` before the countdown starts (docs/ui.md §Time limits)."""
        return self.idle_timeout * (LONG_FACTOR if screen in LONG_SCREENS else 1.0)

    def take_notice(self) -> str | None:
        """The one-time notice of the current screen (shown once, then forgotten)."""
        with self._lock:
            s = self._session
            if s is None:
                return None
            notice, s.notice = s.notice, None
            return notice

    def go_path(self) -> str:
        """Where the screen should be; out of service names the problems, so a change of them reloads it."""
        with self._lock:
            screen = self.screen
            if screen is Screen.OUT_OF_SERVICE:
                return f"{SCREEN_PATHS[screen]}?problems={','.join(sorted(self._problems))}"
            return SCREEN_PATHS[screen]

    def sse_hello(self) -> str:
        """The first message on a new stream: where the page should be now."""
        return format_event("state", {"screen": self.screen.value, "go": self.go_path()})

    # --- card events -----------------------------------------------------------------------------

    def on_event(self, event: BackendEvent) -> None:
        """Handle a card arrival or removal (called from the card layer's thread)."""
        if isinstance(event, TokenPresent):
            self._on_present(event)
        elif isinstance(event, TokenRemoved):
            self._on_removed(event)

    def _on_present(self, event: TokenPresent) -> None:
        with self._lock:
            if self._problems:
                self._waiting = event  # served when the kiosk is back in service, if still there
                return
            if self._session is not None or self._opening is not None:
                return  # one citizen at a time: a second token is ignored until the first leaves
            self._opening = event.reader
            self._opening_removed = False
        # Card I/O outside the lock: pages keep rendering while the card answers.
        info: SessionInfo | None = None
        refusal = "unusable"
        try:
            info = self.backend.start_session(event.reader)
        except UnusableTokenError as exc:
            refusal = exc.reason if exc.reason in REFUSAL_REASONS else "unusable"
            logger.info("token in %s refused at tap: %s", event.reader, refusal)
        except CityIdError as exc:
            logger.warning("could not open a session with the token in %s: %s", event.reader, exc)
        with self._lock:
            self._opening = None
            if self._problems and info is not None and not self._opening_removed:
                self.backend.end()  # the kiosk went out of service meanwhile: serve it on return
                self._waiting = event
                return
            if info is None or self._opening_removed:
                self.backend.end()
                if info is None and not self._opening_removed:
                    # Refused until the token leaves: the screen says why and what to do (no session).
                    self._refused = (event.reader, refusal)
                    self._publish("error", {"go": SCREEN_PATHS[Screen.REFUSED]}, event)
                return
            self._generation += 1
            session = _Session(info=info, last_activity=self._clock(), generation=self._generation)
            session.tries_left = info.pin_tries
            if info.blocked:
                session.screen = Screen.BLOCKED
            self._session = session
            logger.info("session started (%s in %s)", info.kind, event.reader)
            self._publish("inserted", {"kind": info.kind.value, "go": SCREEN_PATHS[session.screen]}, event)

    def _on_removed(self, event: TokenRemoved) -> None:
        with self._lock:
            if self._waiting is not None and self._waiting.reader == event.reader:
                self._waiting = None
            if self._opening == event.reader:
                self._opening_removed = True
            s = self._session
            if s is None:
                if self._refused and self._refused[0] == event.reader:
                    self._refused = None
                # Whatever the idle screen says (timeout, done, refused) was for this citizen: clear it.
                if not self._problems:
                    self._publish("removed", {"go": "/"}, event)
                return
            if s.info.reader != event.reader:
                return
            mid_flow = s.screen not in (Screen.VERDICT, Screen.BLOCKED)
            self._wipe()
            logger.info("session ended: token removed%s", " mid-flow" if mid_flow else "")
            go = f"/?notice={Notice.REMOVED}" if mid_flow else "/"
            self._publish("removed", {"go": go}, event)

    def _publish(self, kind: str, data: dict[str, Any], event: BackendEvent | None = None) -> None:
        if event is not None and event.at:
            self.last_event_at = event.at
            self.last_event_latency = time.monotonic() - event.at
        self.hub.publish(kind, data)

    # --- out of service ----------------------------------------------------------------------------

    def set_problems(self, problems: frozenset[str]) -> None:
        """Out of service while ``problems`` is not empty (terminal.web.health); the screen follows over SSE.

        Going out of service wipes a citizen's session (nothing can be checked); coming back serves a token
        that arrived meanwhile and is still there.
        """
        waiting: TokenPresent | None = None
        with self._lock:
            was = bool(self._problems)
            if not was and not problems:
                return  # in service and staying so: nothing for the screen
            self._problems = frozenset(problems)
            if self._problems:
                if self._session is not None:
                    self._wipe()
                    logger.info("session ended: kiosk out of service")
                go = self.go_path()
            else:
                waiting, self._waiting = self._waiting, None
                go = "/"
            self.hub.publish("service", {"screen": self.screen.value, "go": go})
        if was and not problems and waiting is not None:
            threading.Thread(target=self._on_present, args=(waiting,), daemon=True).start()

    def _changed(self) -> None:
        """Push the screen the flow is on now (every state change reaches the screen over SSE)."""
        self.hub.publish("state", {"screen": self.screen.value, "go": self.go_path()})

    def check_idle(self) -> bool:
        """Wipe the session after ``idle_timeout`` seconds without activity; True if it did."""
        with self._lock:
            s = self._session
            if s is None or s.busy:
                return False
            if self._clock() - s.last_activity < self.limit(s.screen) + self.warning:
                return False
            self._wipe()
            logger.info("session ended: idle timeout")
        self.hub.publish("timeout", {"go": f"/?notice={Notice.TIMEOUT}"})
        return True

    def _wipe(self) -> None:
        """Forget everything about the current citizen and tell the backend to do the same."""
        s = self._session
        self._session = None
        if s is not None:
            s.verdict = None
            s.service = None
            s.extra.clear()
            try:
                self.backend.end()
            except CityIdError as exc:  # ending must never fail the wipe
                logger.warning("backend end failed: %s", exc)

    # --- the citizen's steps ---------------------------------------------------------------------

    def _require(self, *screens: Screen) -> _Session:
        s = self._session
        if s is None or s.screen not in screens:
            raise FlowError("not on this screen")
        s.last_activity = self._clock()
        return s

    def touch(self) -> None:
        """Any interaction on the page (touch, scroll, key, "more time") keeps the session alive."""
        with self._lock:
            if self._session is not None:
                self._session.last_activity = self._clock()

    def choose(self, service_id: str) -> None:
        with self._lock:
            s = self._require(Screen.SERVICES, Screen.VERDICT)
            service = next((x for x in self.services if x.id == service_id), None)
            if service is None:
                raise FlowError("unknown service")
            s.service = service
            s.verdict = None
            s.extra.pop("print", None)
            s.pin_error = None
            s.screen = Screen.CONSENT
            self._changed()

    def consent(self, agree: bool) -> None:
        with self._lock:
            s = self._require(Screen.CONSENT)
            if agree:
                s.screen = self._pin_screen(s)
            else:
                s.service = None
                s.notice = "consent.declined"
                s.screen = Screen.SERVICES
            self._changed()

    @staticmethod
    def _pin_screen(s: _Session) -> Screen:
        """PIN entry, or first the last-try screen when one wrong PIN more would block the token."""
        if s.tries_left == 1 and not s.last_try_seen:
            return Screen.LAST_TRY
        return Screen.PIN

    def last_try(self, go_on: bool) -> None:
        """The citizen read the last-try screen: enter the PIN once more, or stop (and keep the tries)."""
        with self._lock:
            s = self._require(Screen.LAST_TRY)
            if go_on:
                s.last_try_seen = True
                s.screen = Screen.PIN
            else:
                s.service = None
                s.pin_error = None
                s.screen = Screen.SERVICES
            self._changed()

    def back_to_services(self) -> None:
        with self._lock:
            s = self._require(Screen.CONSENT, Screen.PIN, Screen.LAST_TRY, Screen.VERDICT)
            s.service = None
            s.verdict = None
            s.extra.pop("print", None)
            s.pin_error = None
            s.screen = Screen.SERVICES
            self._changed()

    def submit_pin(self, pin: str) -> Screen:
        """Hand the PIN to the backend once; return the screen to show next.

        The PIN is neither stored nor logged; only the outcome is kept.
        """
        with self._lock:
            s = self._require(Screen.PIN)
            if s.busy or s.service is None:
                raise FlowError("already working")
            if not (pin.isascii() and pin.isdigit() and 4 <= len(pin) <= 8):
                s.pin_error = "pin.error.format"
                return Screen.PIN
            s.busy = True
            s.screen = Screen.WORKING
            generation = s.generation
            service_id = s.service.id
            self._changed()
        verdict: VerdictView | None = None
        kind = "error"
        tries_left: int | None = None
        try:
            verdict = self.backend.present(service_id, pin)
            kind = "verdict"
        except WrongPinError as exc:
            kind, tries_left = "wrong-pin", exc.attempts_remaining
        except PinPowerCycleError as exc:  # a FIDO key after 3 wrong PINs in a row: re-insert it
            kind, tries_left = "power-cycle", exc.attempts_remaining
        except BlockedPinError:
            kind = "blocked"
        except PinNotSetError:
            kind = "not-set"
        except CardRemovedError:
            kind = "removed"
        except CityIdError as exc:
            logger.warning("presentation failed: %s", type(exc).__name__)
            kind = "error"
        finally:
            del pin
        with self._lock:
            s2 = self._session
            if s2 is None or s2.generation != generation:
                return Screen.IDLE  # the card left while we were working: already wiped
            s2.busy = False
            s2.last_activity = self._clock()
            if kind == "verdict":
                s2.verdict = verdict
                s2.pin_error = None
                s2.screen = Screen.VERDICT
            elif kind == "wrong-pin":
                s2.tries_left = tries_left
                s2.pin_error = "pin.error.wrong"
                s2.screen = self._pin_screen(s2)
            elif kind == "power-cycle":
                s2.tries_left = tries_left
                s2.pin_error = "pin.error.power_cycle"
                s2.screen = Screen.PIN
            elif kind == "blocked":
                s2.tries_left = 0
                s2.screen = Screen.BLOCKED
            elif kind == "not-set":
                s2.pin_error = "pin.error.not_set"
                s2.screen = Screen.PIN
            elif kind == "removed":
                self._wipe()
                self.hub.publish("removed", {"go": f"/?notice={Notice.REMOVED}"})
                return Screen.IDLE
            else:
                s2.pin_error = "pin.error.technical"
                s2.screen = Screen.PIN
            self._changed()
            return s2.screen

    def print_certificate(self) -> PrintOutcome:
        """The citizen asked for a certificate on the verdict screen: print it (or try again after a fault).

        The verdict stays on screen whatever happens; the outcome (a catalogue key) is shown with it. Runs
        outside the lock (printing takes seconds) with the session marked busy, so the idle timeout waits.
        """
        with self._lock:
            s = self._require(Screen.VERDICT)
            if self.printing is None or s.busy or not self._can_print(s):
                raise FlowError("nothing to print")
            assert s.verdict is not None and s.service is not None  # _can_print
            previous = s.extra.get("print")
            job_id = previous.job_id if previous is not None else None
            service_id, printable, generation = s.service.id, s.verdict.printable, s.generation
            s.busy = True
            self._changed()
        try:
            outcome = self.printing.print_verdict(service_id, printable, job_id)
        finally:
            with self._lock:
                s2 = self._session
                if s2 is not None and s2.generation == generation:
                    s2.busy = False
                    s2.last_activity = self._clock()
        with self._lock:
            s2 = self._session
            if s2 is not None and s2.generation == generation:
                s2.extra["print"] = outcome
                self._changed()
        logger.info("certificate print: %s (%s)", outcome.state, outcome.message)
        return outcome

    def finish(self) -> bool:
        """The citizen pressed "done" on the verdict: wipe now, even before the card leaves; True if it did.

        The card is still in the reader then (its removal would have ended the session): the idle screen
        asks to take it (``notice.done``) until it leaves.
        """
        with self._lock:
            if self._session is not None and self._session.screen in (Screen.VERDICT, Screen.BLOCKED):
                self._wipe()
                self.hub.publish("state", {"screen": self.screen.value, "go": f"/?notice={Notice.DONE}"})
                return True
            return False
