"""The server's storage suite on SQLite AND a real PostgreSQL server (tests/fixtures/postgres.py):
idempotent enrollment, concurrent retries, gap-free status indexes, revocation, nonce replay, audit."""

from __future__ import annotations

import threading

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, select

from server.models import AuditEntry, Citizen, Credential, OutboxEntry, StatusAllocator, UsedNonce
from server.service.enrollment import Enrollments
from terminal.server_client import ServerClient, ServerError
from tests.unit.server_support import CLAIMS, Card, FlaskTransport, make_rig

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/server.db"
    return request.getfixturevalue("postgres_db_url")


def _point() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def _reserved(rig, used: int) -> int:
    """The allocator row after ``used`` indexes: whole blocks on PostgreSQL (docs/server.md §Status indexes),
    exactly ``used`` on SQLite (block size 1)."""
    block = rig.service.ctx.index_block
    assert block == (256 if rig.db.engine.dialect.name == "postgresql" else 1)
    return -(-used // block) * block


def _client(rig) -> ServerClient:
    return ServerClient("http://city.test", "counter-1", rig.terminal_key, session=FlaskTransport(rig.app),
                        clerk="clerk-a")


def test_enroll_retry_revoke(db_url):
    rig = make_rig(db_url)
    card = _point()
    a = rig.client.enroll("key-db-000001", CLAIMS, card, b"\x01" * 8)
    b = rig.client.enroll("key-db-000001", CLAIMS, card, b"\x01" * 8)
    assert b.retried and b.credential_id == a.credential_id and b.status_index == a.status_index == 0
    assert rig.client.revoke([a.credential_id], "lost") == [a.credential_id]
    assert rig.client.status(a.credential_id)["state"] == "revoked"
    assert rig.transport.replay().status_code == 401
    with rig.db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(UsedNonce)) >= 4
        assert (
            s.scalar(select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "revoke")) == 1
        )


def test_a_new_citizen_writes_the_same_rows_on_both_databases(db_url, monkeypatch):
    """PostgreSQL runs a new citizen's enrollment as one writable-CTE statement, SQLite as the general
    transaction (docs/server.md §Serving capacity): the same rows either way, and the answer names the
    card key's outbox row."""
    rig = make_rig(db_url)
    one_statement = []
    fresh = Enrollments._enroll_fresh

    def spy(self, *args):  # type: ignore[no-untyped-def]
        one_statement.append(answer := fresh(self, *args))
        return answer

    monkeypatch.setattr(Enrollments, "_enroll_fresh", spy)
    card = _point()
    r = rig.client.enroll("key-rows-00001", CLAIMS, card, b"\x0a" * 8)
    assert len(one_statement) == (1 if rig.db.engine.dialect.name == "postgresql" else 0)
    assert all(a is not None for a in one_statement)  # answered by the one statement, not the fallback
    with rig.db.sessions() as s:
        citizen = s.get(Citizen, r.citizen_did)
        cred = s.get(Credential, r.credential_id)
        outbox = list(s.scalars(select(OutboxEntry).where(OutboxEntry.credential_id == r.credential_id)))
        audit = list(s.scalars(select(AuditEntry).where(AuditEntry.credential_id == r.credential_id)))
    assert citizen is not None and cred is not None
    assert (cred.state, cred.issue_count, cred.key_on_chain, cred.supersedes) == ("issued", 1, True, None)
    assert cred.citizen_did == r.citizen_did and cred.card_key == card.hex() and cred.terminal == "counter-1"
    assert cred.status_index == r.status_index and cred.credential_hash and cred.expires_at is not None
    assert cred.issued_at is not None and cred.updated_at is not None and cred.created_at is not None
    assert [(o.kind, o.identity, o.point) for o in outbox] == [("enroll", citizen.identity, card.hex())]
    assert r.chain["outbox_ids"] == [outbox[0].id]
    assert sorted((a.action, a.outcome, a.clerk, a.citizen_did) for a in audit) == [
        ("enroll.issue", "ok", "clerk-a", r.citizen_did),
        ("enroll.reserve", "ok", "clerk-a", r.citizen_did),
    ]
    # a retry answers from the row; a second card for the same serial retires the first (the general path)
    again = rig.client.enroll("key-rows-00001", CLAIMS, card, b"\x0a" * 8)
    assert again.retried and again.credential_id == r.credential_id
    other = rig.client.enroll("key-rows-00002", CLAIMS, _point(), b"\x0a" * 8)
    assert rig.client.status(r.credential_id)["state"] == "superseded"
    assert rig.client.status(other.credential_id)["state"] == "issued"


def test_concurrent_retries_issue_one_credential(db_url):
    rig = make_rig(db_url)
    card = _point()
    results, errors = [], []

    def worker() -> None:
        try:
            results.append(_client(rig).enroll("key-race-00001", CLAIMS, card, b"\x02" * 8))
        except ServerError as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len({r.credential_id for r in results}) == 1 and len(results) == 6
    with rig.db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Credential)) == 1
        assert s.get(StatusAllocator, 1).next_index == _reserved(rig, 1)


def test_concurrent_enrollments_get_distinct_gap_free_indexes(db_url):
    rig = make_rig(db_url)
    indexes, errors = [], []

    def worker(i: int) -> None:
        try:
            indexes.append(
                _client(rig).enroll(f"key-many-{i:05d}", CLAIMS, _point(), bytes([i]) * 8).status_index
            )
        except ServerError as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(indexes) == list(range(12))
    with rig.db.sessions() as s:
        assert s.get(StatusAllocator, 1).next_index == _reserved(rig, 12)


def test_lifecycle_reissue_suspend_fido_supersede(db_url):
    rig = make_rig(db_url)
    holder = Card()
    card = holder.point
    a = rig.client.enroll("key-life-00001", CLAIMS, card, b"\x03" * 8)
    b = rig.client.reissue(a.credential_id, "key-life-00002", CLAIMS)
    assert rig.client.status(a.credential_id)["state"] == "superseded"
    assert rig.client.suspend(b.credential_id)["state"] == "suspended"
    assert rig.client.resume(b.credential_id)["state"] == "issued"
    here = holder.presence("counter-1", b.citizen_did, "fido.register")  # the citizen's card, present
    assert rig.client.register_fido_key(b.citizen_did, _point(), b"fido-1", presence=here) is True
    c = rig.client.enroll("key-life-00003", CLAIMS, _point(), b"\x03" * 8)  # same card, new key
    assert rig.client.status(b.credential_id)["state"] == "superseded"
    assert rig.client.status(c.credential_id)["state"] == "issued"
    with rig.db.sessions() as s:
        assert s.get(StatusAllocator, 1).next_index == _reserved(rig, 3)
        states = sorted(r.state for r in s.scalars(select(Credential)))
    assert states == ["issued", "superseded", "superseded"]


def test_instances_take_status_indexes_in_blocks_and_never_share_one(postgres_db_url):
    """Several instances on one PostgreSQL (docs/server.md §Status indexes): each reserves a block of the
    allocator row in a short transaction of its own and hands it out; no index is used twice, a rolled-back
    enrollment gives its index to the next one, and a restarted instance starts a new block (the rest of the
    old one stays a gap: never issued, so no credential ever points at it)."""
    from server.app import create_app
    from server.config import ServerConfig
    from server.db import Database

    rig = make_rig(postgres_db_url)

    def instance() -> tuple[object, ServerClient]:
        cfg = ServerConfig(database_url=postgres_db_url, management_key=rig.service.config.management_key,
                           chain_wait_ms=5000)  # fmt: skip
        app = create_app(cfg, chain=rig.chain, signer=rig.signer, db=Database.from_url(postgres_db_url),
                         start_writer=False)  # fmt: skip
        client = ServerClient("http://city.test", "counter-1", rig.terminal_key, session=FlaskTransport(app),
                              clerk="clerk-a")  # fmt: skip
        return app, client

    _app_b, client_b = instance()
    clients = {"a": _client(rig), "b": client_b}
    got: dict[str, list[int]] = {"a": [], "b": []}
    errors: list[Exception] = []

    def worker(i: int) -> None:
        name = "ab"[i % 2]
        try:
            res = clients[name].enroll(f"key-blk-{i:05d}", CLAIMS, _point(), bytes([i]) * 8)
            got[name].append(res.status_index)
        except ServerError as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    blocks = {name: {i // 256 for i in idx} for name, idx in got.items()}
    assert all(len(b) == 1 for b in blocks.values()) and blocks["a"] != blocks["b"]
    assert sorted(got["a"]) == [256 * min(blocks["a"]) + k for k in range(8)]  # in order, gap-free
    with rig.db.sessions() as s:
        assert s.get(StatusAllocator, 1).next_index == 512
        indexes = list(s.scalars(select(Credential.status_index)))
    assert len(indexes) == len(set(indexes)) == 16

    # a rolled-back enrollment (crash after signing, before the commit) returns its index to the pool
    def crash(step: str) -> None:
        if step == "signed":
            raise RuntimeError("crash")

    rig.service.fault = crash
    with pytest.raises(ServerError):
        clients["a"].enroll("key-blk-crash", CLAIMS, _point(), b"\x7f" * 8)
    rig.service.fault = lambda step: None
    again = clients["a"].enroll("key-blk-crash", CLAIMS, _point(), b"\x7f" * 8)
    assert again.status_index == 256 * min(blocks["a"]) + 8

    # a restarted instance reserves a new block: the rest of the old ones are gaps, never a reuse
    _app_c, client_c = instance()
    fresh = client_c.enroll("key-blk-restart", CLAIMS, _point(), b"\x7e" * 8)
    assert fresh.status_index == 512


def test_kept_connections_killed_while_idle_are_replaced(postgres_db_url):
    """Kept connections are pinged after a second idle, not on every checkout (docs/server.md §Serving
    capacity): backends killed under an idle pool (a PostgreSQL restart, a proxy's idle timeout) cost no
    request."""
    import time

    import psycopg

    rig = make_rig(postgres_db_url)
    rig.client.enroll("key-idle-00001", CLAIMS, _point(), b"\x0b" * 8)
    url = postgres_db_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(url, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert killed is not None and killed[0] >= 1
    time.sleep(1.2)
    r = rig.client.enroll("key-idle-00002", CLAIMS, _point(), b"\x0c" * 8)
    assert rig.client.status(r.credential_id)["state"] == "issued"
