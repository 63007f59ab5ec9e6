"""``/citizen`` — the citizen-facing lost-card report (docs/server.md §Lost-card report): no terminal
signature, its own rate limit per client address, and one answer whether or not the details match."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from server.api import validate as v
from server.api.v1 import LOST_CARD_ANSWER
from server.service import IssuerService, ValidationError

bp = Blueprint("citizen", __name__, url_prefix="/citizen")


class RateLimit:
    """At most ``per_minute`` requests per key in any 60 s (sliding window, in memory)."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._lock = threading.Lock()
        self._hits: dict[str, deque[float]] = {}

    def allow(self, key: str) -> bool:
        now = self.clock()
        with self._lock:
            if len(self._hits) > 10_000:  # bounded memory under a spray of addresses
                self._hits = {k: d for k, d in self._hits.items() if d and now - d[-1] < 60}
            hits = self._hits.setdefault(key, deque())
            while hits and now - hits[0] >= 60:
                hits.popleft()
            if len(hits) >= self.per_minute:
                return False
            hits.append(now)
            return True


@bp.post("/lost-card")
def lost_card() -> ResponseReturnValue:
    limit: RateLimit = current_app.extensions["cityid.lost_card_limit"]
    if not limit.allow(request.remote_addr or "?"):
        return jsonify(error="rate_limited", message="too many reports; try again in a minute"), 429
    data = request.get_json(silent=True)
    if data is None:
        raise ValidationError("request body must be JSON (Content-Type: application/json)")
    body = v.body_object(data)
    v.only_keys(body, ("family_name", "given_name", "birthdate", "password"))
    service: IssuerService = current_app.extensions["cityid.service"]
    service.report_lost(
        "citizen", body["family_name"], body["given_name"], body["birthdate"], body["password"]
    )
    return jsonify(LOST_CARD_ANSWER), 200
