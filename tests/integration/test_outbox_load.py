"""Load test of the chain outbox (issue 14, bounded, loopback only): four ``city-server serve`` instances on
one PostgreSQL and one anvil node, one registrar key. 1,000 concurrent enrollments spread over the instances,
the leading writer killed (SIGKILL) mid-run, then 1,000 concurrent revocations. Afterwards: every
credential issued once (0 lost), every card key published exactly once and every revocation on chain
(0 duplicated), no batch abandoned for its nonce and no nonce error in any log (0 nonce errors)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import create_engine, func, select

from server.models import BatchState, OutboxBatch, OutboxEntry, OutboxState
from terminal.server_client import ServerClient, ServerError
from tests.fixtures.anvil_node import AnvilNode
from tests.fixtures.serve_proc import start_serve
from tests.integration.outbox_support import build_city, key_events
from tests.unit.server_support import CLAIMS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

CLI = [sys.executable, "-m", "server.cli"]
N = int(os.environ.get("CITYID_OUTBOX_LOAD_N", "1000"))
INSTANCES = 4


def _point() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def _health(url: str) -> dict:
    return requests.get(f"{url}/health", timeout=5).json()


def _retrying(clients: list[ServerClient], dead: set[int], i: int, call):  # type: ignore[no-untyped-def]
    """Call on instance i % n; on an unreachable (killed) instance retry elsewhere (same idempotency key)."""
    for attempt in range(len(clients) * 3):
        k = (i + attempt) % len(clients)
        if k in dead:
            continue
        try:
            return call(clients[k])
        except ServerError as exc:
            if exc.status not in (0, 502, 503):
                raise
            time.sleep(0.05)
    raise AssertionError(f"request {i} failed on every instance")


@pytest.mark.slow
def test_four_instances_one_writer_under_load(postgres_db_url, tmp_path):
    node = AnvilNode()
    procs: list[subprocess.Popen] = []
    urls: list[str] = []
    try:
        city = build_city(node.url, tmp_path)
        env = {**os.environ, **city.env(postgres_db_url), "CITY_CHAIN_WINDOW_MS": "250"}
        subprocess.run([*CLI, "db", "init"], env=env, check=True, capture_output=True)
        tkey = ec.generate_private_key(ec.SECP256R1())
        (tmp_path / "t.pem").write_bytes(tkey.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
        add = [*CLI, "terminal", "add", "--name", "counter-1", "--public-key", str(tmp_path / "t.pem")]
        subprocess.run(add, env=env, check=True, capture_output=True)
        serve = [*CLI, "serve", "--threads", "8", "--no-access-log"]
        logs = [tmp_path / f"serve-{k}.log" for k in range(INSTANCES)]
        for log in logs:
            proc, url = start_serve(serve, env, log)
            procs.append(proc)
            urls.append(url)
        clients = [ServerClient(u, "counter-1", tkey, clerk="clerk-load", timeout=60) for u in urls]
        time.sleep(1.0)
        leaders = [k for k, u in enumerate(urls) if _health(u)["outbox"]["writer"]["leader"]]
        assert len(leaders) == 1, leaders  # exactly one writer active
        dead: set[int] = set()
        points = [_point() for _ in range(N)]

        def enroll(i: int):  # type: ignore[no-untyped-def]
            if i == N // 3 and not dead:  # kill the leading writer mid-run (SIGKILL: no clean-up at all)
                os.kill(procs[leaders[0]].pid, signal.SIGKILL)
                dead.add(leaders[0])
            return _retrying(clients, dead, i, lambda c: c.enroll(
                f"load-{i:06d}", CLAIMS, points[i], i.to_bytes(8, "big")))  # fmt: skip

        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=32) as pool:
            results = list(pool.map(enroll, range(N)))
        enroll_s = time.monotonic() - t0
        assert len({r.credential_id for r in results}) == N
        assert len({r.status_index for r in results}) == N
        live = [u for k, u in enumerate(urls) if k not in dead]

        def drained(timeout: float) -> dict:
            deadline = time.monotonic() + timeout
            while True:
                h = _health(live[0])["outbox"]
                if h["depth"] == 0 or time.monotonic() > deadline:
                    return h
                time.sleep(0.2)

        h = drained(120)
        assert h["depth"] == 0 and h["failed"] == 0, h
        new_leaders = [u for u in live if _health(u)["outbox"]["writer"]["leader"]]
        assert len(new_leaders) == 1  # a successor took over

        t1 = time.monotonic()
        with ThreadPoolExecutor(max_workers=32) as pool:
            revoked = list(pool.map(lambda i: _retrying(clients, dead, i, lambda c: c.revoke(
                [results[i].credential_id], "revoked")), range(N)))  # fmt: skip
        revoke_s = time.monotonic() - t1
        assert all(r == [results[i].credential_id] for i, r in enumerate(revoked))
        h = drained(120)
        assert h["depth"] == 0 and h["failed"] == 0, h

        # --- 0 lost, 0 duplicated, 0 nonce errors ---
        events = key_events(city)
        for r in results:
            assert events.get(r.citizen_did.rsplit(":", 1)[1].lower()) == 1, r.citizen_did
        statuses = city.registrar().status.statuses_of(1, [r.status_index for r in results])
        assert set(statuses) == {1}
        engine = create_engine(postgres_db_url.replace("postgresql://", "postgresql+psycopg://", 1))
        with engine.connect() as conn:
            nonces = conn.execute(
                select(OutboxBatch.nonce, func.count()).where(OutboxBatch.state != BatchState.ABANDONED.value)
                .group_by(OutboxBatch.nonce).having(func.count() > 1)
            ).all()  # fmt: skip
            abandoned = conn.scalar(
                select(func.count()).where(OutboxBatch.state == BatchState.ABANDONED.value)
            )
            unconfirmed = OutboxEntry.state != OutboxState.CONFIRMED.value
            open_rows = conn.scalar(select(func.count()).where(unconfirmed))
            batches = conn.execute(select(OutboxBatch.kind, OutboxBatch.items, OutboxBatch.gas_used)).all()
        engine.dispose()
        assert nonces == [] and abandoned == 0 and open_rows == 0
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            proc.wait(20)
        text = b"".join(log.read_bytes() for log in logs).decode(errors="replace")
        assert "nonce too" not in text.lower() and "Traceback" not in text, text[-3000:]
        enroll_gas = sum(g for k, n, g in batches if k == "enroll") / N
        status_gas = sum(g for k, n, g in batches if k == "status") / N
        print(
            f"\n{N} enrollments in {enroll_s:.1f}s ({N / enroll_s:.0f}/s), {N} revocations in "
            f"{revoke_s:.1f}s; {len(batches)} batches; gas/enrollment {enroll_gas:.0f}, "
            f"gas/revocation {status_gas:.0f}"
        )
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        node.stop()
