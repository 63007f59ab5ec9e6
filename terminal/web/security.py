"""Security headers and CSRF protection for every response and state-changing request.

* Content-Security-Policy (CSP Level 3): only this origin; no inline script or style, no framing, forms
  post only here. Every asset is served locally (kiosks may be offline).
* CSRF: a per-browser-session random token (synchronizer-token pattern, OWASP) in every form as
  ``csrf_token`` or in the ``X-CSRF-Token`` header for scripts; checked on every POST with a constant-time
  compare. The session cookie is HttpOnly and SameSite=Strict.
* Host: every request's ``Host`` must be one of the configured names (DNS rebinding, docs/ui.md §Security).
* The kiosk screen (:class:`ScreenLock`): only the browser the kiosk launched on its own display may drive or
  read the citizen flow. A per-boot secret makes a one-time launch URL (``/screen/<key>``); opening it binds
  that browser's session cookie to the screen; every other client gets 403 and the attempt is logged.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import ssl
import tempfile
import threading
import time
from pathlib import Path

from flask import Flask, Response, abort, request, session

from terminal.config import TerminalConfig

logger = logging.getLogger(__name__)

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"


def csrf_token() -> str:
    """This browser session's CSRF token (created on first use)."""
    token = session.get(CSRF_FIELD)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session[CSRF_FIELD] = token
    return token


def _check_csrf() -> None:
    if request.method not in ("POST", "PUT", "PATCH", "DELETE"):
        return
    expected = session.get(CSRF_FIELD)
    sent = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD, "")
    if not isinstance(expected, str) or not hmac.compare_digest(expected.encode(), sent.encode()):
        abort(403)


def _add_headers(resp: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        resp.headers.setdefault(name, value)
    if not request.path.startswith("/static/"):
        resp.headers["Cache-Control"] = "no-store"
    return resp


class _RefusalLog:
    """At most ``burst`` refusal lines per minute, then one summary line (a flood must not fill the disk)."""

    def __init__(self, burst: int = 20) -> None:
        self.burst = burst
        self._lock = threading.Lock()
        self._window = 0.0
        self._count = 0
        self._dropped = 0

    def refused(self, why: str) -> None:
        """Log one refused request: method, endpoint and client address only (no form data, no path key)."""
        now = time.monotonic()
        with self._lock:
            if now - self._window >= 60:
                if self._dropped:
                    logger.warning("%d more refused requests in the last minute", self._dropped)
                self._window, self._count, self._dropped = now, 0, 0
            self._count += 1
            if self._count > self.burst:
                self._dropped += 1
                return
        logger.warning(
            "refused %s %s from %s: %s", request.method, request.endpoint or "?", request.remote_addr, why
        )


def refused(why: str) -> None:
    """Log a refused request through this app's rate-limited refusal log."""
    from flask import current_app

    current_app.extensions["cityid.refusals"].refused(why)


def host_name(host_header: str) -> str:
    """The name part of a ``Host`` header (no port; IPv6 without brackets; lower case)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else ""
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _check_host() -> None:
    from flask import current_app

    allowed: frozenset[str] = current_app.config["CITYID_ALLOWED_HOSTS"]
    if host_name(request.host) not in allowed:
        refused("Host not allowed")
        abort(400)


class ScreenLock:
    """The kiosk's own screen: a per-boot launch secret and the one browser session bound with it.

    ``rotate``: the launch key works once and is replaced after use (``kiosk serve``; the new launch URL is
    rewritten to ``url_file``); without it the key stays valid for this boot and each use re-binds (the demo,
    which prints its URL). Binding a new screen session ends the old one.
    """

    def __init__(self, *, rotate: bool = True, url_file: str = "") -> None:
        self.rotate = rotate
        self.url_file = url_file
        self._lock = threading.Lock()
        self._key = secrets.token_urlsafe(32)
        self._screen: str | None = None  # the bound screen session id
        self._base_url: str | None = None

    def launch_path(self) -> str:
        with self._lock:
            return f"/screen/{self._key}"

    def launch_url(self, base_url: str) -> str:
        """The launch URL under ``base_url``; also written to ``url_file`` (mode 0600) when configured."""
        with self._lock:
            self._base_url = base_url.rstrip("/")
        url = self._base_url + self.launch_path()
        self._write(url)
        return url

    def _write(self, url: str) -> None:
        if not self.url_file:
            return
        target = Path(self.url_file)
        fd, tmp = tempfile.mkstemp(prefix=".screen-", dir=target.parent)
        try:
            os.fchmod(fd, 0o640)  # the kiosk group: the browser unit's user reads it (docs/operations.md)
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(url + "\n")
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def redeem(self, key: str) -> str | None:
        """The new screen session id if ``key`` is the launch key (constant-time compare), else None."""
        with self._lock:
            if not hmac.compare_digest(self._key.encode(), key.encode()):
                return None
            self._screen = secrets.token_urlsafe(32)
            screen = self._screen
            if self.rotate:
                self._key = secrets.token_urlsafe(32)
            base = self._base_url
        if self.rotate and base is not None:
            self._write(base + self.launch_path())
        return screen

    def is_screen(self, screen: object) -> bool:
        with self._lock:
            bound = self._screen
        return isinstance(screen, str) and bound is not None and hmac.compare_digest(bound, screen)


SCREEN_FIELD = "screen"


def is_screen_request() -> bool:
    """Whether this request comes from the kiosk's bound screen browser."""
    from flask import current_app

    lock: ScreenLock | None = current_app.extensions.get("cityid.screen")
    return lock is not None and lock.is_screen(session.get(SCREEN_FIELD))


def require_screen() -> None:
    """``before_request`` of the citizen flow: 403 (and a log line) for anything but the kiosk's screen."""
    if not is_screen_request():
        refused("not the kiosk screen")
        abort(403)


def bind_screen(lock: ScreenLock, key: str) -> bool:
    """Redeem a launch key for this browser: a fresh session holding only the screen id (and CSRF token)."""
    screen = lock.redeem(key)
    if screen is None:
        refused("wrong or used screen launch key")
        return False
    session.clear()
    session[SCREEN_FIELD] = screen
    logger.info("kiosk screen bound from %s", request.remote_addr)
    return True


def ssl_context(config: TerminalConfig) -> ssl.SSLContext | None:
    """TLS 1.2+ with required client certificates from ``tls_client_ca`` (None when TLS is not configured)."""
    if not config.tls:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=config.tls_client_ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(config.tls_cert, config.tls_key)
    return ctx


def install(app: Flask, config: TerminalConfig) -> None:
    """Register the Host and CSRF checks and the headers on ``app``."""
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_NAME="cityid_session",
        SESSION_COOKIE_SECURE=config.tls,
        MAX_CONTENT_LENGTH=16 * 1024,
        CITYID_ALLOWED_HOSTS=config.allowed_hosts,
    )
    app.extensions["cityid.refusals"] = _RefusalLog()
    app.before_request(_check_host)
    app.before_request(_check_csrf)
    app.after_request(_add_headers)
    app.jinja_env.globals["csrf_token"] = csrf_token
