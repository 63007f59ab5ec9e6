"""Leadership of the chain writer: exactly one active writer per city (docs/server.md §Chain outbox).

PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``) held on a dedicated connection. If the
process dies or its connection drops, PostgreSQL releases the lock and another instance's next attempt (every
window, i.e. within about a second) takes it. SQLite: one process; a lock per database file (per engine for
an in-memory one) inside it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import zlib

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

logger = logging.getLogger(__name__)

#: Advisory lock key (a constant of this project: crc32 of its name).
LOCK_KEY = zlib.crc32(b"cityid-chain-writer")

_local_locks: dict[str, threading.Lock] = {}
_local_guard = threading.Lock()


class Leadership:
    """``acquire()`` (non-blocking) → held or not; ``check()`` before every broadcast; ``release()``."""

    def __init__(self, engine: Engine, key: int = LOCK_KEY) -> None:
        self.engine = engine
        self.key = key
        self._conn: Connection | None = None
        self._local: threading.Lock | None = None
        self.postgres = engine.dialect.name == "postgresql"

    @property
    def held(self) -> bool:
        return self._conn is not None or self._local is not None

    def acquire(self) -> bool:
        if self.held:
            return self.check()
        if not self.postgres:
            with _local_guard:
                url = self.engine.url
                file_db = url.database not in (None, "", ":memory:")
                name = url.render_as_string(hide_password=True) if file_db else f"memory:{id(self.engine)}"
                lock = _local_locks.setdefault(name, threading.Lock())
            if lock.acquire(blocking=False):
                self._local = lock
                return True
            return False
        try:
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except SQLAlchemyError:
            return False
        try:
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar())
        except SQLAlchemyError:
            conn.close()
            return False
        if not got:
            conn.close()
            return False
        self._conn = conn
        logger.info("chain writer: this instance is the leader")
        return True

    def check(self) -> bool:
        """Still the leader? (PostgreSQL: the lock connection is alive and still holds the lock.)"""
        if self._local is not None:
            return True
        if self._conn is None:
            return False
        try:
            ok = bool(
                self._conn.execute(
                    text(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                        "AND pid = pg_backend_pid() AND objid::bigint = :k"
                    ),
                    {"k": self.key & 0xFFFFFFFF},
                ).scalar()
            )
        except SQLAlchemyError:
            ok = False
        if not ok:
            logger.warning("chain writer: leadership lost")
            self._drop()
        return ok

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._conn.close()
            self._conn = None

    def release(self) -> None:
        if self._local is not None:
            self._local.release()
            self._local = None
        if self._conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            self._drop()
