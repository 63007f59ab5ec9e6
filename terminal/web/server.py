"""Serve the app from a background thread: waitress in production (``kiosk serve``), Werkzeug's development
server only when asked (``dev=True``, ``kiosk demo``). SSE needs one thread per open stream: both provide it.

Used by ``kiosk serve``/``kiosk demo``, the browser-test fixture and the UI benchmark (docs/operations.md).
"""

from __future__ import annotations

import logging
import socket
import threading

from flask import Flask

from cityid.serving import ServingLimits, WsgiServer, bind_listener, flask_route_of
from terminal.web.app import shutdown, start
from terminal.web.security import ssl_context

logger = logging.getLogger(__name__)

# The kiosk's own pages post tiny forms; one browser holds one SSE stream (+ a few requests beside it).
KIOSK_LIMITS = ServingLimits(threads=16, max_body_bytes=64 * 1024, idle_timeout_s=30)


class ServerThread:
    """``app`` on ``host:port`` (port 0: a free one) in a daemon thread; :meth:`stop` shuts all down.

    ``sock``: an already bound listener (``kiosk serve`` binds before the start-up so "port in use" comes
    first). ``dev``: Werkzeug's development server instead of waitress (the demo only).
    """

    def __init__(
        self,
        app: Flask,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        sock: socket.socket | None = None,
        dev: bool = False,
        limits: ServingLimits = KIOSK_LIMITS,
        access_log: bool = True,
    ) -> None:
        self.app = app
        self.tls = ssl_context(app.config["CITYID"]) if "CITYID" in app.config else None
        dev = dev or self.tls is not None  # TLS + client certificates: the ssl-capable server (docs/ui.md)
        self.host = host
        self._dev = None
        self._prod: WsgiServer | None = None
        if dev:
            from werkzeug.serving import make_server

            fd = sock.fileno() if sock else None
            self._dev = make_server(host, port, app, threaded=True, fd=fd, ssl_context=self.tls)
            self.port = self._dev.server_port
            self._thread = threading.Thread(target=self._dev.serve_forever, name="kiosk-http", daemon=True)
        else:
            listener = sock if sock is not None else bind_listener(host, port)
            self._prod = WsgiServer(
                app,
                listener,
                limits=limits,
                access_log=flask_route_of(app) if access_log else None,
                on_stop=lambda: shutdown(app),
                name="kiosk-http",
            )
            self.port = self._prod.port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def start(self) -> ServerThread:
        start(self.app)
        if self._prod is not None:
            self._prod.start()
        else:
            self._thread.start()
        logger.info("serving on %s", self.url)
        return self

    def stop(self) -> None:
        if self._prod is not None:
            self._prod.stop()  # stop accepting, then shutdown(app) closes the streams, then drain
            return
        shutdown(self.app)
        assert self._dev is not None
        self._dev.shutdown()
        self._dev.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
