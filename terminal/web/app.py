"""Flask app factory for the kiosk and counter screens.

``create_app(config, kiosk=..., counter=..., demo=...)`` builds the app around the backends (see
:mod:`terminal.web.backend`); :func:`start` / :func:`shutdown` start and stop the card watching and the
event streams. Kiosk mode serves the citizen screens at ``/``; counter mode the clerk screens at
``/counter/``; the demo serves both plus the demo panel at ``/demo``.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, abort, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response

from terminal.config import LANGUAGES, Mode, TerminalConfig, check_bind
from terminal.web import counter_views, demo_views, events, kiosk_views, security, staff_views
from terminal.web.backend import CounterBackend, KioskBackend
from terminal.web.catalog import catalogue, translate
from terminal.web.controller import KioskController
from terminal.web.events import EventHub
from terminal.web.health import HealthMonitor, kernel_clock_synced, startup_lines
from terminal.web.printing import CounterPrinting, CounterScanning, KioskPrinting
from terminal.web.security import ScreenLock

logger = logging.getLogger(__name__)


def current_language(default: str) -> str:
    lang = session.get("lang")
    return lang if lang in LANGUAGES else default


def safe_next(target: str | None, fallback: str = "/") -> str:
    """A local path to go back to (never another origin)."""
    if not target:
        return fallback
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return fallback
    return target


def create_app(
    config: TerminalConfig,
    *,
    kiosk: KioskBackend | None = None,
    counter: CounterBackend | None = None,
    demo: demo_views.DemoPanel | None = None,
    screen: ScreenLock | None = None,
    printing: KioskPrinting | None = None,
    counter_printing: CounterPrinting | None = None,
    scanning: CounterScanning | None = None,
) -> Flask:
    """The terminal app. Needs ``kiosk`` in kiosk mode, ``counter`` in counter mode (both in the demo).

    ``screen``: the kiosk screen's launch secret (default: a one-time key, rotated after each use and
    written to ``terminal.screen_url_file`` when set). Refuses a bind beyond loopback without TLS and client
    authentication (:func:`terminal.config.check_bind`). ``printing``: the kiosk's certificate printer
    (terminal.web.printing; None: no "print my certificate"); ``counter_printing`` and ``scanning``: the
    counter's receipt printer (enrollment receipt) and certificate scanner.
    """
    check_bind(config)
    app = Flask(__name__, static_folder="static", template_folder="templates")
    app.secret_key = config.secret_key
    app.config["CITYID"] = config
    security.install(app, config)
    hub = EventHub()
    app.extensions["cityid.hub"] = hub
    app.register_blueprint(events.bp)

    if kiosk is not None:
        controller = KioskController(
            kiosk, hub, config.idle_timeout, services=config.services, printing=printing
        )
        app.extensions["cityid.kiosk"] = controller
        app.extensions["cityid.sse_first"] = controller.sse_hello
        app.extensions["cityid.screen"] = screen or ScreenLock(rotate=True, url_file=config.screen_url_file)
        app.extensions["cityid.health"] = HealthMonitor(
            kiosk,
            controller.set_problems,
            max_staleness=config.chain.max_staleness,
            check_head_age=not config.chain.embedded,  # the demo chain mines only when written to
            clock_probe=kernel_clock_synced if config.require_clock_sync else None,
            printer=printing,
        )
        app.register_blueprint(kiosk_views.bp)
        app.register_blueprint(kiosk_views.screen_bp)
        app.extensions["cityid.printing"] = printing
        app.register_blueprint(staff_views.bp, url_prefix="/staff")  # printer state, reprints (staff only)
    elif config.mode is Mode.KIOSK:
        raise ValueError("kiosk mode needs a kiosk backend")
    if counter is not None:
        app.extensions["cityid.counter"] = counter
        app.extensions["cityid.counter_printing"] = counter_printing
        app.extensions["cityid.counter_scanning"] = scanning
        app.register_blueprint(counter_views.bp, url_prefix="/counter")
        if kiosk is None:
            app.add_url_rule("/", "root", lambda: redirect(url_for("counter.home")))
    elif config.mode is Mode.COUNTER:
        raise ValueError("counter mode needs a counter backend")
    if demo is not None:
        app.extensions["cityid.demo"] = demo
        app.register_blueprint(demo_views.bp, url_prefix="/demo")

    @app.context_processor
    def _inject() -> dict[str, Any]:
        lang = current_language(config.language)
        return {
            "lang": lang,
            "languages": LANGUAGES,
            "t": lambda key, **kw: translate(lang, key, **kw),
            "t_in": lambda language, key, **kw: translate(language, key, **kw),
            "known": lambda key: key in catalogue(lang),
            "terminal_id": config.terminal_id,
            "demo_enabled": demo is not None,
            "staff_enabled": kiosk is not None and printing is not None,
        }

    @app.post("/lang")
    def set_language() -> Response:
        lang = request.form.get("lang", "")
        if lang not in LANGUAGES:
            abort(400)
        session["lang"] = lang
        ctl = app.extensions.get("cityid.kiosk")
        if ctl is not None and security.is_screen_request():
            ctl.touch()  # only the citizen's own input counts for the idle timer
        return redirect(safe_next(request.form.get("next")), 303)

    @app.errorhandler(400)
    @app.errorhandler(403)
    @app.errorhandler(404)
    @app.errorhandler(405)
    @app.errorhandler(413)
    @app.errorhandler(500)
    def _error(exc: Any) -> tuple[str, int]:
        code = getattr(exc, "code", 500) or 500
        key = f"error.{code}" if code in (400, 403, 404, 405, 413) else "error.500"
        return render_template("error.html", message_key=key, code=code), code

    return app


def start(app: Flask) -> None:
    """Start watching readers and the kiosk's health (kiosk mode)."""
    controller: KioskController | None = app.extensions.get("cityid.kiosk")
    if controller is not None:
        controller.start()
        app.extensions["cityid.health"].start()
    scanning: CounterScanning | None = app.extensions.get("cityid.counter_scanning")
    if scanning is not None:
        scanning.start()


def shutdown(app: Flask) -> None:
    """Close event streams, wipe the session and stop the card layer."""
    app.extensions["cityid.hub"].close()
    monitor: HealthMonitor | None = app.extensions.get("cityid.health")
    if monitor is not None:
        monitor.stop()
    scanning: CounterScanning | None = app.extensions.get("cityid.counter_scanning")
    if scanning is not None:
        scanning.stop()
    controller: KioskController | None = app.extensions.get("cityid.kiosk")
    if controller is not None:
        controller.stop()


def screen_launch_url(app: Flask, base_url: str) -> str | None:
    """The kiosk screen's launch URL under ``base_url`` (also written to ``terminal.screen_url_file``)."""
    lock: ScreenLock | None = app.extensions.get("cityid.screen")
    return None if lock is None else lock.launch_url(base_url)


def announce(app: Flask, base_url: str) -> list[str]:
    """What ``kiosk serve`` prints once serving: where the screen's browser opens, and what is missing."""
    lines: list[str] = []
    url = screen_launch_url(app, base_url)
    if url is not None:
        config: TerminalConfig = app.config["CITYID"]
        if config.screen_url_file:
            lines.append(f"screen launch URL written to {config.screen_url_file} (one use; rewritten after)")
        else:
            lines.append(f"open the kiosk screen (once, on this machine's display): {url}")
    monitor: HealthMonitor | None = app.extensions.get("cityid.health")
    report = monitor.report if monitor is not None else None
    if report is not None:
        lines += startup_lines(report) or ["in service: readers, pcscd, chain and clock are ready"]
    return lines
