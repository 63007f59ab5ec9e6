"""The kiosk's staff pages: printer state and the kept print jobs, reprinted on request (issue 13 item 5).

A certificate whose printing failed (paper out, cover open, printer off, cable pulled) stays in the
kiosk's :class:`terminal.flows.certificate.CertificateDesk` for 15 minutes; here staff see the printer's state
and those jobs — service, time, state, confirmation number, never the printed facts — and reprint one: the
**same** signed document, its hash queued for anchoring once (docs/certificates.md §Staff reprint).

Staff only: every page but the sign-in needs a clerk session (the ``[counter.clerks]`` accounts, the counter's
scrypt check and lockout, :func:`terminal.web.counter_views.check_clerk`), kept server-side with a short idle
timeout (:data:`IDLE_SECONDS`: the kiosk is a public place). Signing in on the kiosk's own screen keeps its
screen binding (:mod:`terminal.web.security`), so the citizen flow resumes after "sign out". Forms are
CSRF-checked like every POST.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from flask import Blueprint, current_app, g, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response

from terminal.config import TerminalConfig
from terminal.flows.certificate import KST
from terminal.web.clerk_sessions import ClerkSessions
from terminal.web.counter_views import LOCKOUT_SECONDS, MAX_FAILURES, sign_in_attempt
from terminal.web.printing import KioskPrinting, PrintOutcome

logger = logging.getLogger(__name__)

bp = Blueprint("staff", __name__)

#: A staff session on a kiosk ends after two minutes without a request (a counter's lasts 15).
IDLE_SECONDS = 120.0
SESSION_FIELD = "staff_sid"  # beside the screen binding and the counter's "sid" in the same cookie


def _config() -> TerminalConfig:
    return current_app.config["CITYID"]


def _sessions() -> ClerkSessions:
    """Staff sessions and lockouts in a SQLite file beside the configuration (in memory without one)."""
    store = current_app.extensions.get("cityid.staff_sessions")
    if store is None:
        source = _config().source
        path = (
            Path(source).with_name("staff-sessions.sqlite")
            if not source.startswith("<") and Path(source).parent.is_dir()
            else ":memory:"
        )
        store = ClerkSessions(
            current_app.config.get("CITYID_STAFF_DB", path),
            idle_seconds=float(current_app.config.get("CITYID_STAFF_IDLE_SECONDS", IDLE_SECONDS)),
            max_failures=MAX_FAILURES,
            lockout_seconds=LOCKOUT_SECONDS,
            **({"clock": current_app.config["CITYID_CLOCK"]} if "CITYID_CLOCK" in current_app.config else {}),
        )
        current_app.extensions["cityid.staff_sessions"] = store
    return store


def _printing() -> KioskPrinting | None:
    return current_app.extensions.get("cityid.printing")


def _staff() -> str | None:
    """The signed-in staff member: a live staff session of a configured clerk id."""
    cached = g.get("cityid_staff")
    if cached is not None:
        return cached or None
    clerk = _sessions().clerk(session.get(SESSION_FIELD))
    clerk = clerk if clerk is not None and clerk in _config().clerks else None
    g.cityid_staff = clerk or ""
    return clerk


@bp.before_request
def _require_staff() -> Response | None:
    if request.endpoint in ("staff.login", "staff.login_post"):
        return None
    if _staff() is None:
        return redirect(url_for("staff.login"), 303)
    return None


@bp.get("/login")
def login() -> str:
    return render_template("staff_login.html", error_key=None, clerk_id="")


@bp.post("/login")
def login_post() -> Response | tuple[str, int]:
    store = _sessions()
    clerk, refused = sign_in_attempt(store, _config().clerks, "staff_login.html")
    if refused is not None:
        return refused
    old = session.pop(SESSION_FIELD, None)
    store.end(old)
    session[SESSION_FIELD] = store.start(clerk)  # the screen binding and the CSRF token stay
    logger.info("staff %s signed in at the kiosk", clerk)
    return redirect(url_for("staff.printer"), 303)


@bp.post("/logout")
def logout() -> Response:
    _sessions().end(session.pop(SESSION_FIELD, None))
    return redirect("/", 303)


@bp.get("/")
def home() -> Response:
    return redirect(url_for("staff.printer"), 303)


def _printer_page(outcome: PrintOutcome | None = None, status: int = 200) -> tuple[str, int]:
    printing = _printing()
    state = printing.poll() if printing is not None else None
    jobs = printing.staff_jobs() if printing is not None else []
    times = {j.id: f"{dt.datetime.fromtimestamp(j.created_at, KST):%Y-%m-%d %H:%M:%S} KST" for j in jobs}
    html = render_template(
        "staff_printer.html", staff=_staff(), configured=printing is not None, printer=state, jobs=jobs,
        times=times, outcome=outcome,
    )  # fmt: skip
    return html, status


@bp.get("/printer")
def printer() -> tuple[str, int]:
    """The printer's state (asked now) and the jobs the desk keeps, newest first."""
    return _printer_page()


@bp.post("/printer/reprint")
def reprint() -> tuple[str, int]:
    """Reprint one kept job: the same document, never a new certificate or a second anchor submission."""
    printing = _printing()
    if printing is None:
        return _printer_page(status=409)
    outcome = printing.reprint(request.form.get("job", ""))
    logger.info("staff %s reprinted a certificate: %s", _staff(), outcome.state)
    code = 200 if outcome.printed else (410 if outcome.state == "unavailable" else 503)
    return _printer_page(outcome, code)
