"""Clerk sign-in state kept server-side, in a small SQLite file beside the kiosk configuration
(docs/terminal.md §Clerk sessions; issue 11 item 2).

The browser's (signed) cookie holds only a random session token; the session itself — clerk, creation and
last activity — lives here, so logout and the idle timeout end it for every copy of the cookie. Failed
sign-ins per clerk id are counted here too, so a lockout survives a restart of the counter app.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS clerk_sessions (token_hash TEXT PRIMARY KEY, clerk TEXT NOT NULL, "
    "created REAL NOT NULL, last_seen REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS clerk_failures (clerk TEXT PRIMARY KEY, count INTEGER NOT NULL, "
    "since REAL NOT NULL)",
)


def _hash(token: str) -> str:
    """Tokens are stored hashed: a copy of the file does not sign anyone in."""
    return hashlib.sha256(token.encode()).hexdigest()


class ClerkSessions:
    """Server-side clerk sessions with idle timeout, and a persistent per-clerk-id lockout."""

    def __init__(
        self,
        path: str | Path = ":memory:",
        *,
        idle_seconds: float = 900.0,
        max_failures: int = 5,
        lockout_seconds: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = str(path)
        self.idle_seconds = idle_seconds
        self.max_failures = max_failures
        self.lockout_seconds = lockout_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        for stmt in _SCHEMA:
            self._db.execute(stmt)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- sessions ------------------------------------------------------------------------------------

    def start(self, clerk: str) -> str:
        """A new session for ``clerk``; returns the token the cookie carries."""
        token = secrets.token_urlsafe(32)
        now = self.clock()
        with self._lock:
            self._db.execute(
                "INSERT INTO clerk_sessions VALUES (?, ?, ?, ?)", (_hash(token), clerk, now, now)
            )
        return token

    def clerk(self, token: object) -> str | None:
        """The clerk of a live session (and its activity refreshed), or None: unknown, ended or idle."""
        if not isinstance(token, str) or not token:
            return None
        now = self.clock()
        h = _hash(token)
        with self._lock:
            row = self._db.execute(
                "SELECT clerk, last_seen FROM clerk_sessions WHERE token_hash = ?", (h,)
            ).fetchone()
            if row is None:
                return None
            if now - row[1] > self.idle_seconds:
                self._db.execute("DELETE FROM clerk_sessions WHERE token_hash = ?", (h,))
                logger.info("clerk session ended by the idle timeout")
                return None
            self._db.execute("UPDATE clerk_sessions SET last_seen = ? WHERE token_hash = ?", (now, h))
        return str(row[0])

    def end(self, token: object) -> None:
        """Logout: the session is gone for every copy of the cookie."""
        if isinstance(token, str) and token:
            with self._lock:
                self._db.execute("DELETE FROM clerk_sessions WHERE token_hash = ?", (_hash(token),))

    # --- lockout -------------------------------------------------------------------------------------

    def locked(self, clerk: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT count, since FROM clerk_failures WHERE clerk = ?", (clerk,)
            ).fetchone()
            if row is None or row[0] < self.max_failures:
                return False
            if self.clock() - row[1] < self.lockout_seconds:
                return True
            self._db.execute("DELETE FROM clerk_failures WHERE clerk = ?", (clerk,))
            return False

    def record(self, clerk: str, ok: bool) -> None:
        with self._lock:
            if ok:
                self._db.execute("DELETE FROM clerk_failures WHERE clerk = ?", (clerk,))
            else:
                self._db.execute(
                    "INSERT INTO clerk_failures VALUES (?, 1, ?) ON CONFLICT(clerk) DO UPDATE SET "
                    "count = count + 1, since = excluded.since",
                    (clerk[:64], self.clock()),
                )
