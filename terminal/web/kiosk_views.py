"""Kiosk screens (unattended): idle → services → consent → PIN → verdict, driven by the controller.

Every GET renders the controller's current screen or redirects to it; every POST is one citizen step
(CSRF-checked) followed by a redirect (post/redirect/get), so reloads and stale pages are harmless.
"""

from __future__ import annotations

import contextlib

from flask import Blueprint, Response, current_app, redirect, render_template, request

from terminal.web.controller import FlowError, KioskController, Notice, Screen

bp = Blueprint("kiosk", __name__)


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
    return _page(Screen.SERVICES) or _render("services.html")


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


@bp.get("/verdict")
def verdict() -> Response | str:
    return _page(Screen.VERDICT) or _render("verdict.html")


@bp.get("/blocked")
def blocked() -> Response | str:
    return _page(Screen.BLOCKED) or _render("blocked.html")


@bp.post("/done")
def done() -> Response:
    _ctl().finish()
    return redirect(_ctl().go_path(), 303)


@bp.post("/touch")
def touch() -> tuple[str, int]:
    """The page reports activity (key presses) so the idle timeout counts from the last one."""
    _ctl().touch()
    return "", 204
