"""Kiosk screens (unattended): idle → services → consent → PIN → verdict, driven by the controller.

Every GET renders the controller's current screen or redirects to it; every POST is one citizen step
(CSRF-checked) followed by a redirect (post/redirect/get), so reloads and stale pages are harmless.

Only the kiosk's own screen may use these pages (:func:`terminal.web.security.require_screen`: 403 for any
other client). ``screen_bp`` holds what is open to others: the one-time launch URL that binds the screen and
the ``/health`` endpoint for monitoring (JSON, no personal data).
"""

from __future__ import annotations

import contextlib

from flask import Blueprint, abort, current_app, jsonify, redirect, render_template, request
from werkzeug.wrappers import Response

from terminal.web import security
from terminal.web.controller import FlowError, KioskController, Notice, Screen
from terminal.web.health import HealthMonitor, Problem
from terminal.web.verdicts import outcome_and_next_step

bp = Blueprint("kiosk", __name__)
bp.before_request(security.require_screen)
screen_bp = Blueprint("screen", __name__)


@screen_bp.get("/screen/<key>")
def launch(key: str) -> Response:
    """The launch URL the kiosk's browser opens once: binds this browser session to the screen."""
    lock: security.ScreenLock = current_app.extensions["cityid.screen"]
    if not security.bind_screen(lock, key):
        abort(403)
    return redirect("/", 303)


@screen_bp.get("/health")
def health() -> tuple[Response, int]:
    """Readers, pcscd, chain head age, cache lag, clock, version; 503 while out of service."""
    monitor: HealthMonitor = current_app.extensions["cityid.health"]
    report = monitor.report or monitor.check()
    return jsonify(report.to_json()), 503 if report.problems else 200


def _ctl() -> KioskController:
    return current_app.extensions["cityid.kiosk"]


def _page(*screens: Screen) -> Response | None:
    """Redirect when the controller is not on one of ``screens``."""
    ctl = _ctl()
    if ctl.screen not in screens:
        return redirect(ctl.go_path(), 303)
    return None


def _render(template: str, **extra: object) -> str:
    ctl = _ctl()
    return render_template(template, kiosk=True, state=ctl.snapshot(), services=ctl.services, **extra)


@bp.get("/")
def idle() -> Response | str:
    if (r := _page(Screen.IDLE)) is not None:
        return r
    notice = request.args.get("notice", "")
    notice_key = f"notice.{notice}" if notice in set(Notice) else None
    return _render("idle.html", notice_key=notice_key)


@bp.get("/services")
def services() -> Response | str:
    return _page(Screen.SERVICES) or _render("services.html", notice_key=_ctl().take_notice())


@bp.post("/services")
def choose() -> Response:
    with contextlib.suppress(FlowError):
        _ctl().choose(request.form.get("service", ""))
    return redirect(_ctl().go_path(), 303)


@bp.get("/consent")
def consent() -> Response | str:
    return _page(Screen.CONSENT) or _render("consent.html")


@bp.post("/consent")
def consent_post() -> Response:
    with contextlib.suppress(FlowError):
        _ctl().consent(request.form.get("decision") == "agree")
    return redirect(_ctl().go_path(), 303)


@bp.get("/pin")
def pin() -> Response | str:
    return _page(Screen.PIN, Screen.WORKING) or _render("pin.html")


@bp.post("/pin")
def pin_post() -> Response:
    # The PIN is read once from the form and handed to the controller → backend → card; not kept here.
    with contextlib.suppress(FlowError):
        _ctl().submit_pin(request.form.get("pin", ""))
    ctl = _ctl()
    if ctl.screen is Screen.IDLE:
        return redirect(f"/?notice={Notice.REMOVED}", 303)
    return redirect(ctl.go_path(), 303)


@bp.post("/back")
def back() -> Response:
    with contextlib.suppress(FlowError):
        _ctl().back_to_services()
    return redirect(_ctl().go_path(), 303)


@bp.get("/last-try")
def last_try() -> Response | str:
    return _page(Screen.LAST_TRY) or _render("last_try.html")


@bp.post("/last-try")
def last_try_post() -> Response:
    with contextlib.suppress(FlowError):
        _ctl().last_try(request.form.get("decision") == "try")
    return redirect(_ctl().go_path(), 303)


@bp.get("/refused")
def refused() -> Response | str:
    return _page(Screen.REFUSED) or _render("refused.html")


@bp.get("/verdict")
def verdict() -> Response | str:
    if (r := _page(Screen.VERDICT)) is not None:
        return r
    view = _ctl().snapshot().get("verdict")
    if view is None:
        return redirect(_ctl().go_path(), 303)
    outcome, next_step = outcome_and_next_step(view)
    return _render("verdict.html", outcome=outcome, next_step=next_step)


@bp.post("/print")
def print_certificate() -> Response:
    """Print my certificate (terminal.web.printing): the verdict stays on screen."""
    with contextlib.suppress(FlowError):
        _ctl().print_certificate()
    return redirect(_ctl().go_path(), 303)


@bp.get("/out-of-service")
def out_of_service() -> Response | str:
    if (r := _page(Screen.OUT_OF_SERVICE)) is not None:
        return r
    problems = [p for p in Problem if p.value in _ctl().problems]
    return _render("out_of_service.html", problems=problems)


@bp.get("/blocked")
def blocked() -> Response | str:
    return _page(Screen.BLOCKED) or _render("blocked.html")


@bp.post("/done")
def done() -> Response:
    ctl = _ctl()
    if ctl.finish() and ctl.screen is Screen.IDLE:
        return redirect(f"/?notice={Notice.DONE}", 303)
    return redirect(ctl.go_path(), 303)


@bp.post("/touch")
def touch() -> tuple[str, int]:
    """The page reports activity (key presses) so the idle timeout counts from the last one."""
    _ctl().touch()
    return "", 204
