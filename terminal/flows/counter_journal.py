"""The counter's enrollment journal on disk (issue 12 item 3; docs/server.md §Counter enrollment).

One row per card serial with the progress of an unfinished enrollment — identifiers and public material
only (idempotency key, card public key, DID, credential id, which steps are done), never claims, PINs, the
credential record or any key. A counter restarted mid-enrollment reads it back and resumes the *same*
enrollment (same idempotency key, so the server answers with the same credential id and DID).

Kept locally in SQLite beside ``counter-sessions.sqlite`` rather than on the server: the steps recorded
are card-side facts of the card in *this* counter's reader (key generated, written, PINs set) that the
server never sees, the server half (the enrollment under its idempotency key) is already persistent there,
and a local commit between two APDUs needs no network. WAL with ``synchronous=FULL``: a row written
before the counter dies is there after it restarts.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS enrollment_journal (
    serial TEXT PRIMARY KEY,
    progress TEXT NOT NULL,
    updated_at REAL NOT NULL
)
"""


class JournalStore:
    """Unfinished enrollments by card serial (``":memory:"``: in memory, for tests and ``cardtool``)."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)

    def get(self, serial: bytes) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT progress FROM enrollment_journal WHERE serial = ?", (serial.hex(),)
            ).fetchone()
        if row is None:
            return None
        try:
            data = json.loads(row[0])
        except ValueError:
            logger.error("unreadable journal entry for a card; starting its enrollment over")
            return None
        return data if isinstance(data, dict) else None

    def put(self, serial: bytes, progress: dict[str, Any]) -> None:
        text = json.dumps(progress, separators=(",", ":"), sort_keys=True)
        with self._lock:
            self._db.execute(
                "INSERT INTO enrollment_journal (serial, progress, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(serial) DO UPDATE SET progress = excluded.progress, "
                "updated_at = excluded.updated_at",
                (serial.hex(), text, time.time()),
            )

    def delete(self, serial: bytes) -> None:
        with self._lock:
            self._db.execute("DELETE FROM enrollment_journal WHERE serial = ?", (serial.hex(),))

    def serials(self) -> list[bytes]:
        """The cards with an unfinished enrollment, most recently touched first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT serial FROM enrollment_journal ORDER BY updated_at DESC"
            ).fetchall()
        return [bytes.fromhex(r[0]) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
