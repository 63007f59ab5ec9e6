"""Production HTTP serving for ``kiosk serve`` and ``city-server serve`` (docs/operations.md §Serving).

Waitress (pure Python, a thread pool) runs the WSGI app: a long-lived response such as the kiosk's SSE stream
holds one worker thread and is flushed write by write. This module adds what a service needs around it:

* :func:`bind_listener` binds the port *first*, so "port in use" is one clear line before a long start-up;
* :class:`ServingLimits` — request body/header limits, idle-connection timeout, connection cap, thread count;
* :class:`AccessLog` — one line per request with the *route template* (``/v1/credentials/<cid>/status``),
  status, bytes and duration: no client address, no query string, no path values, no bodies;
* :class:`WsgiServer` — the server in a background thread with a graceful stop (stop accepting, run the app's
  shutdown hook so streams end, let in-flight requests finish within a grace period, close).
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from cityid.errors import CityIdError

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("cityid.access")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class PortInUseError(CityIdError, OSError):
    """The listening address is taken (another instance, or another service)."""


@dataclass(frozen=True, slots=True)
class ServingLimits:
    """Limits applied by the production server (waitress adjustments)."""

    threads: int = 8  # each open SSE stream holds one
    max_body_bytes: int = 64 * 1024  # bigger bodies: 413 before the app sees them
    max_header_bytes: int = 16 * 1024
    idle_timeout_s: int = 30  # an idle keep-alive connection is closed after this
    connection_limit: int = 100
    shutdown_grace_s: float = 5.0  # in-flight requests get this long to finish on stop

    def adjustments(self) -> dict[str, Any]:
        return {
            "threads": self.threads,
            "max_request_body_size": self.max_body_bytes,
            "max_request_header_size": self.max_header_bytes,
            "channel_timeout": self.idle_timeout_s,
            "connection_limit": self.connection_limit,
            "cleanup_interval": max(1, min(30, self.idle_timeout_s)),
            "ident": "",  # no Server: header naming the software
            "expose_tracebacks": False,
            "clear_untrusted_proxy_headers": True,
        }


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0: a free port); :class:`PortInUseError` if taken."""
    if not 0 <= port <= 65535:
        raise CityIdError(f"port {port} is not within 0..65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CityIdError(f"cannot bind to {host!r}: {exc.strerror}") from exc
    family, socktype, proto, _, addr = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(
                f"port {port} on {host} is already in use (see: ss -ltnp 'sport = :{port}')"
            ) from exc
        if exc.errno == errno.EACCES:
            raise CityIdError(
                f"no permission to listen on {host}:{port} (ports < 1024 need privileges)"
            ) from exc
        raise CityIdError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.setblocking(False)
    return sock


def flask_route_of(app: Any) -> Callable[[dict[str, Any]], str]:
    """``environ -> route template`` for a Flask app (``-`` when no route matches)."""
    url_map = app.url_map

    def route(environ: dict[str, Any]) -> str:
        try:
            adapter = url_map.bind("localhost")
            rule, _args = adapter.match(
                environ.get("PATH_INFO", "/"), environ.get("REQUEST_METHOD", "GET"), return_rule=True
            )
            return str(rule.rule)
        except Exception:  # NotFound, MethodNotAllowed, RequestRedirect: not a route
            return "-"

    return route


class AccessLog:
    """WSGI middleware: ``METHOD route status bytes ms`` per request on the ``cityid.access`` logger.

    Only the route template is logged — path values (credential ids, DIDs), query strings, client addresses,
    headers and bodies never are. Streaming responses are logged when they end.
    """

    def __init__(self, app: WsgiApp, route_of: Callable[[dict[str, Any]], str]) -> None:
        self.app = app
        self.route_of = route_of

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.perf_counter()
        status = ["-"]

        def _start(status_line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status[0] = status_line.split(" ", 1)[0]
            return start_response(status_line, headers, exc_info)

        method = str(environ.get("REQUEST_METHOD", "-"))[:10]
        route = self.route_of(environ)
        body = self.app(environ, _start)
        return _Logged(
            body,
            lambda n: access_logger.info(
                "%s %s %s %d %.1fms", method, route, status[0], n, (time.perf_counter() - started) * 1000
            ),
        )


class _Logged:
    """The response iterable, counting bytes and logging once on close."""

    def __init__(self, body: Iterable[bytes], done: Callable[[int], None]) -> None:
        self._body = body
        self._done = done
        self._bytes = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._body:
            self._bytes += len(chunk)
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._done(self._bytes)


class WsgiServer:
    """``app`` under waitress on ``sock`` (from :func:`bind_listener`) in a daemon thread.

    ``on_stop`` runs first in :meth:`stop` (the kiosk closes its event streams there), then in-flight
    requests get ``limits.shutdown_grace_s`` to finish.
    """

    def __init__(
        self,
        app: WsgiApp,
        sock: socket.socket,
        *,
        limits: ServingLimits | None = None,
        access_log: Callable[[dict[str, Any]], str] | None = None,
        on_stop: Callable[[], None] | None = None,
        name: str = "http",
    ) -> None:
        from waitress.server import create_server

        self.limits = limits or ServingLimits()
        wsgi: WsgiApp = AccessLog(app, access_log) if access_log is not None else app
        self._on_stop = on_stop
        self._server = create_server(wsgi, sockets=[sock], **self.limits.adjustments())
        host, port = sock.getsockname()[:2]
        self.host: str = host
        self.port: int = port
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._stopped = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _run(self) -> None:
        try:
            self._server.run()
        except Exception:  # the loop ends when its map empties; anything else is a bug worth a log line
            if not self._stopped:
                logger.exception("HTTP server loop failed")

    def start(self) -> WsgiServer:
        self._thread.start()
        logger.info("serving on %s (waitress, %d threads)", self.url, self.limits.threads)
        return self

    def stop(self) -> None:
        """Stop accepting, end streams (``on_stop``), drain in-flight requests, close every connection."""
        if self._stopped:
            return
        self._stopped = True
        server = self._server
        done = threading.Event()

        def _stop_accepting() -> None:
            from waitress import wasyncore

            server.accepting = False  # pyright: ignore[reportAttributeAccessIssue]  # wasyncore.dispatcher
            wasyncore.dispatcher.close(server)  # pyright: ignore[reportArgumentType]  # listening socket only
            done.set()

        self._in_loop(_stop_accepting, done)
        if self._on_stop is not None:
            self._on_stop()
        # Waits for the worker threads (in-flight requests) up to the grace period, then drops queued ones.
        server.task_dispatcher.shutdown(cancel_pending=True, timeout=int(self.limits.shutdown_grace_s))
        closed = threading.Event()

        def _close_all() -> None:
            for channel in list(server._map.values()):  # pyright: ignore[reportAttributeAccessIssue]  # wasyncore
                channel.handle_close()
            closed.set()

        self._in_loop(_close_all, closed)
        self._thread.join(timeout=5)

    def _in_loop(self, thunk: Callable[[], None], done: threading.Event) -> None:
        """Run ``thunk`` on the server's event-loop thread (waitress's socket map is not thread-safe)."""
        if self._thread.is_alive():
            try:
                self._server.trigger.pull_trigger(thunk)  # pyright: ignore[reportAttributeAccessIssue]  # wasyncore
            except OSError:  # the loop closed its trigger between the check and the pull: it is ending
                logger.debug("server loop already closing; running its stop step here")
            else:
                if done.wait(5):
                    return
        thunk()

    def __enter__(self) -> WsgiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
