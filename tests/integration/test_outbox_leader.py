"""Writer leadership on a real PostgreSQL (docs/server.md §Chain outbox): one session advisory lock, one
leader; a leader whose connection dies is replaced at the next attempt; a deposed leader notices."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text

from server.db import Database
from server.outbox.leader import Leadership

pytestmark = pytest.mark.integration


def test_one_leader_and_takeover_when_its_connection_dies(postgres_db_url):
    db_a, db_b = Database.from_url(postgres_db_url), Database.from_url(postgres_db_url)
    a, b = Leadership(db_a.engine), Leadership(db_b.engine)
    assert a.postgres and a.acquire()
    assert not b.acquire() and not b.held  # exactly one writer
    assert a.check()
    # the leader's session is killed (a crashed process, a dropped connection): PostgreSQL frees the lock
    assert a._conn is not None
    pid = a._conn.execute(text("SELECT pg_backend_pid()")).scalar()
    with db_b.engine.connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
    # pg_terminate_backend only signals the backend: the lock is free once it has exited (the writer
    # retries at its next window; here: poll for up to 10 s)
    deadline = time.monotonic() + 10
    while not b.acquire() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert b.held and b.check()
    assert not a.check() and not a.held  # the deposed leader finds out before its next batch
    assert not a.acquire()
    b.release()
    assert a.acquire()
    a.release()
    db_a.engine.dispose()
    db_b.engine.dispose()


def test_sqlite_one_writer_per_database_file(tmp_path):
    url = f"sqlite:///{tmp_path}/one.db"
    a, b = Leadership(Database.from_url(url).engine), Leadership(Database.from_url(url).engine)
    other = Leadership(Database.from_url(f"sqlite:///{tmp_path}/two.db").engine)
    assert a.acquire() and not b.acquire() and other.acquire()
    a.release()
    assert b.acquire()
    b.release()
    other.release()
