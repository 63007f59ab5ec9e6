"""Database access: engine set-up (SQLite default, PostgreSQL supported), schema creation, terminal admin."""

from __future__ import annotations

import logging
import re
import zlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, select, text
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool
from sqlalchemy.schema import CreateIndex

from cityid.errors import CityIdError
from cityid.keys import KeyFormatError, P256PublicKey
from server.models import AuditEntry, Base, StatusAllocator, Terminal, TerminalRole

logger = logging.getLogger(__name__)

#: Advisory lock key serialising schema creation across instances (crc32 of a project constant).
_INIT_LOCK = zlib.crc32(b"cityid-db-init")

_TERMINAL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def db_error_reason(exc: BaseException, limit: int = 200) -> str:
    """The first line of the driver's message for a database error (or its class name): one-line errors."""
    return str(getattr(exc, "orig", None) or type(exc).__name__).strip().splitlines()[0][:limit]


class StorageError(CityIdError):
    """The database is unreachable or refused an operation."""


class TerminalAdminError(CityIdError, ValueError):
    """A terminal registration request is invalid (bad name, bad key, duplicate, unknown)."""


def make_engine(url: str, pool_size: int | None = None) -> Engine:
    """Create an engine; SQLite gets a busy timeout and foreign keys, PostgreSQL uses psycopg 3.

    ``pool_size``: connections kept open (PostgreSQL): at least the serving threads plus the chain writer's
    two (its work and its lock), so a busy instance does not open and close overflow connections (a
    backend process each) between requests."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    kwargs: dict[str, Any] = {"future": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        if url in ("sqlite://", "sqlite:///:memory:"):
            kwargs["poolclass"] = StaticPool  # one shared in-memory database
    elif pool_size is not None:
        kwargs["pool_size"] = pool_size
    try:
        engine = create_engine(url, **kwargs)
    except (SQLAlchemyError, ImportError) as exc:
        raise StorageError(f"bad database URL: {exc}") from exc
    if engine.dialect.name != "sqlite":
        _ping_after_idle(engine)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            # Take the write lock at BEGIN so read-then-write transactions serialise (no lost updates).
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        # pysqlite's own transaction handling must be off for BEGIN IMMEDIATE to be ours.
        @event.listens_for(engine, "connect", insert=True)
        def _no_autobegin(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
            dbapi_conn.isolation_level = None

    return engine


#: A kept connection idle for longer than this is pinged before it is handed out (see ``_ping_after_idle``).
PING_AFTER_IDLE_S = 1.0


def _ping_after_idle(engine: Engine, idle_s: float = PING_AFTER_IDLE_S) -> None:
    """Pessimistic disconnect handling, but only for connections that sat idle in the pool.

    ``pool_pre_ping`` pings on every checkout: one more round trip and ~1.5 ms of CPU per transaction, on a
    path (request signature, enrollment) that checks out twice per request. A connection back in the pool
    for less than ``idle_s`` was working a moment ago; one idle longer may have outlived a database restart,
    a fail-over or a proxy's idle timeout, so it is pinged and, if dead, replaced before any statement runs
    (SQLAlchemy's documented recipe: ``DisconnectionError`` from a checkout handler makes the pool discard it
    and check out again). A database restart lasts longer than ``idle_s``, so every connection kept across
    one is pinged; a backend killed under a connection used less than ``idle_s`` ago fails that one
    transaction (503, the terminal retries with the same idempotency key) and SQLAlchemy invalidates the
    whole pool on that disconnect error (docs/server.md §Serving capacity)."""
    import time

    from sqlalchemy.exc import DisconnectionError

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn: DBAPIConnection | None, record: ConnectionPoolEntry) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn: DBAPIConnection, record: ConnectionPoolEntry, _proxy: object) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < idle_s:
            return  # new, or working a moment ago
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:  # any failure of SELECT 1: do not hand this connection out
            raise DisconnectionError("kept connection is dead") from exc


@dataclass
class Database:
    """An engine plus a session factory; ``init()`` creates the schema."""

    engine: Engine

    @classmethod
    def from_url(cls, url: str, pool_size: int | None = None) -> Database:
        return cls(make_engine(url, pool_size))

    def __post_init__(self) -> None:
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def init(self, status_list_id: int = 1, capacity: int = 1 << 20) -> None:
        """Create tables and indexes (idempotent: an index added later is built on an existing database)
        and the allocator row of the status list."""
        try:
            with self.engine.begin() as conn:
                if self.engine.dialect.name == "postgresql":
                    # Instances started together must not race on CREATE TABLE (pg_type unique violation):
                    # one at a time, the lock released at commit.
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _INIT_LOCK})
                Base.metadata.create_all(conn)
                for table in Base.metadata.sorted_tables:  # indexes added to tables that already existed
                    for index in table.indexes:
                        conn.execute(CreateIndex(index, if_not_exists=True))
            self._add_missing_columns()
            with self.sessions.begin() as s:
                if s.get(StatusAllocator, status_list_id) is None:
                    s.add(StatusAllocator(list_id=status_list_id, next_index=0, capacity=capacity))
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot initialise the database: {db_error_reason(exc)}") from exc

    def check_schema(self, status_list_id: int = 1) -> None:
        """Read-only: the schema ``init`` creates is all there (tables, later columns, the status list's
        allocator row); else :class:`StorageError` naming the fix. Serving checks instead of creating, so
        an app never writes DDL as a side effect (``city-server db init`` does, under a lock)."""
        try:
            insp = inspect(self.engine)
            have = set(insp.get_table_names())
            missing = sorted(set(Base.metadata.tables) - have)
            missing += [f"{t}.{c}" for t, c, _ddl in self._missing_columns(insp) if t in have]
            if not missing:
                with self.sessions() as s:
                    if s.get(StatusAllocator, status_list_id) is None:
                        missing.append(f"status list {status_list_id}")
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot read the database: {db_error_reason(exc)}") from exc
        if missing:
            shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
            raise StorageError(
                f"the database is not initialised or is out of date (missing {shown}): "
                "run `city-server db init` with the same settings"
            )

    #: Columns added after the first release: (table, column, DDL) — added in place by ``init``.
    _LATER_COLUMNS = (
        ("terminals", "office", "VARCHAR(64) NOT NULL DEFAULT 'main'"),
        ("terminals", "role", "VARCHAR(16) NOT NULL DEFAULT 'counter'"),
        ("audit_log", "clerk", "VARCHAR(64) NOT NULL DEFAULT ''"),
    )

    def _missing_columns(self, insp: Any) -> list[tuple[str, str, str]]:
        """The later columns an existing table lacks (tables not there yet are skipped)."""
        tables = set(insp.get_table_names())
        return [
            (table, column, ddl)
            for table, column, ddl in self._LATER_COLUMNS
            if table in tables and column not in {c["name"] for c in insp.get_columns(table)}
        ]

    def _add_missing_columns(self) -> None:
        for table, column, ddl in self._missing_columns(inspect(self.engine)):
            with self.engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}"))

    def session(self) -> Session:
        return self.sessions()

    # --- terminal administration (city-server terminal add|list|disable) ---------------------------

    def add_terminal(
        self, name: str, public_key_pem: str, office: str = "main", role: str = TerminalRole.COUNTER
    ) -> Terminal:
        if not _TERMINAL_NAME.match(name):
            raise TerminalAdminError("terminal name: 1-64 letters, digits, '.', '_' or '-'")
        if not _TERMINAL_NAME.match(office):
            raise TerminalAdminError("office: 1-64 letters, digits, '.', '_' or '-'")
        if role not in {r.value for r in TerminalRole}:
            raise TerminalAdminError(f"role must be one of {', '.join(r.value for r in TerminalRole)}")
        pem = normalise_terminal_key(public_key_pem)
        with self.sessions.begin() as s:
            if s.get(Terminal, name) is not None:
                raise TerminalAdminError(f"terminal {name!r} already exists")
            t = Terminal(name=name, public_key_pem=pem, active=True, office=office, role=str(role))
            s.add(t)
            detail = f"{name} office={office} role={role}"
            s.add(AuditEntry(actor="admin", action="terminal.add", outcome="ok", detail=detail))
        return t

    def list_terminals(self) -> list[Terminal]:
        with self.sessions() as s:
            return list(s.scalars(select(Terminal).order_by(Terminal.name)))

    def set_terminal_active(self, name: str, active: bool) -> None:
        with self.sessions.begin() as s:
            t = s.get(Terminal, name)
            if t is None:
                raise TerminalAdminError(f"no terminal named {name!r}")
            t.active = active
            action = "terminal.enable" if active else "terminal.disable"
            s.add(AuditEntry(actor="admin", action=action, outcome="ok", detail=name))


def normalise_terminal_key(public_key_pem: str) -> str:
    """Parse a P-256 public key PEM and return it re-encoded; raise :class:`TerminalAdminError`."""
    if not public_key_pem.lstrip().startswith("-----"):
        raise TerminalAdminError("public key is not a PEM SubjectPublicKeyInfo")
    try:
        return P256PublicKey.from_spki(public_key_pem.encode()).spki_pem()
    except KeyFormatError as exc:
        raise TerminalAdminError(
            f"terminal keys must be P-256 (ES256) PEM SubjectPublicKeyInfo: {exc}"
        ) from exc
