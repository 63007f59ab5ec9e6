"""Server-sent events (HTML Living Standard §9.2): card events pushed to the kiosk page.

:class:`EventHub` fans events out to every open stream; the ``events`` blueprint serves ``GET /events`` as
``text/event-stream``. Each message is ``event: <type>`` + ``data: <JSON>``; a comment line keeps idle
connections open. Events carry no personal data — only what the screen should do next.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from flask import Blueprint, Response, current_app

logger = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 15.0
_CLOSE = object()


def format_event(event_type: str, data: dict[str, Any], event_id: int | None = None) -> str:
    """One SSE message (§9.2.6: field lines, blank line terminator; data is one JSON line)."""
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"event: {event_type}")
    lines.append("data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False))
    return "\n".join(lines) + "\n\n"


class EventHub:
    """Fan-out of events to subscriber queues (one per open page)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[queue.SimpleQueue[object]] = []
        self._next_id = 1
        self._closed = False

    def subscribe(self) -> queue.SimpleQueue[object]:
        q: queue.SimpleQueue[object] = queue.SimpleQueue()
        with self._lock:
            if self._closed:
                q.put(_CLOSE)
            self._subscribers.append(q)
        return q

    def unsubscribe(self, q: queue.SimpleQueue[object]) -> None:
        with self._lock:
            if q in self._subscribers:
                self._subscribers.remove(q)

    @property
    def subscriber_count(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def publish(self, event_type: str, data: dict[str, Any]) -> None:
        with self._lock:
            message = format_event(event_type, data, self._next_id)
            self._next_id += 1
            for q in self._subscribers:
                q.put(message)

    def close(self) -> None:
        """End every open stream (server shutdown)."""
        with self._lock:
            self._closed = True
            for q in self._subscribers:
                q.put(_CLOSE)

    def stream(
        self, first: Callable[[], str] | None = None, keepalive: float = KEEPALIVE_SECONDS
    ) -> Iterator[str]:
        """Yield SSE text: ``retry``, then ``first()`` (current state), then events until closed."""
        q = self.subscribe()
        try:
            yield "retry: 1000\n\n"
            if first is not None:
                yield first()
            while True:
                try:
                    item = q.get(timeout=keepalive)
                except queue.Empty:
                    yield ": keepalive\n\n"
                    continue
                if item is _CLOSE:
                    return
                yield str(item)
        finally:
            self.unsubscribe(q)


bp = Blueprint("events", __name__)


@bp.before_request
def _only_the_screen() -> None:
    """The kiosk's event stream is the screen's alone (terminal.web.security.ScreenLock)."""
    if "cityid.screen" in current_app.extensions:
        from terminal.web.security import require_screen

        require_screen()


@bp.get("/events")
def events() -> Response:
    """The kiosk page's event stream."""
    hub: EventHub = current_app.extensions["cityid.hub"]
    first = current_app.extensions.get("cityid.sse_first")
    resp = Response(hub.stream(first), mimetype="text/event-stream")
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["X-Accel-Buffering"] = "no"
    return resp
