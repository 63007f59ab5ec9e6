"""Serve the app from a background thread (werkzeug's threaded WSGI server; SSE needs one thread per stream).

Used by ``kiosk serve``/``kiosk demo``, the browser-test fixture and the UI benchmark.
"""

from __future__ import annotations

import logging
import threading

from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from terminal.web.app import shutdown, start
from terminal.web.security import ssl_context

logger = logging.getLogger(__name__)


class ServerThread:
    """``app`` on ``host:port`` (port 0: a free one) in a daemon thread; :meth:`stop` shuts all down."""

    def __init__(self, app: Flask, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.tls = ssl_context(app.config["CITYID"]) if "CITYID" in app.config else None
        self._server: BaseWSGIServer = make_server(host, port, app, threaded=True, ssl_context=self.tls)
        self.host = host
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="kiosk-http", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def start(self) -> ServerThread:
        start(self.app)
        self._thread.start()
        logger.info("serving on %s", self.url)
        return self

    def stop(self) -> None:
        shutdown(self.app)
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
