"""Two ``city-server serve`` processes (waitress) on one PostgreSQL database serve enrollments concurrently:
every enrollment succeeds once, status-list indexes and credential ids never collide, and an enrollment
retried on the other instance returns the same credential (the idempotency record is shared)."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from terminal.server_client import ServerClient
from tests.fixtures.serve_proc import start_serve
from tests.unit.server_support import CLAIMS

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "server.cli"]


def _point() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def test_two_instances_one_postgres(postgres_db_url, tmp_path):
    env = {
        **os.environ,
        "CITY_SERVER_DB_URL": postgres_db_url,
        "CITY_ISSUER_KEYSTORE": str(tmp_path / "issuer.p8"),
        "CITY_ISSUER_KEY_PASSWORD": "pw-two-instances",
        "CITY_SERVER_CHAIN": "embedded",
    }
    subprocess.run([*CLI, "issuer-key", "generate"], env=env, check=True, capture_output=True)
    subprocess.run([*CLI, "db", "init"], env=env, check=True, capture_output=True)
    tkey = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "t.pem").write_bytes(
        tkey.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    subprocess.run(
        [*CLI, "terminal", "add", "--name", "counter-1", "--public-key", str(tmp_path / "t.pem")],
        env=env,
        check=True,
        capture_output=True,
    )
    # Several threads each: requests only add outbox rows; the one chain writer (the instance holding
    # the advisory lock) owns the nonce, so nothing races on it (docs/server.md §Chain outbox).
    logs = [tmp_path / f"serve-{k}.log" for k in range(2)]
    procs: list[subprocess.Popen] = []
    urls: list[str] = []
    try:
        for log in logs:
            proc, url = start_serve([*CLI, "serve", "--threads", "4"], env, log)
            procs.append(proc)
            urls.append(url)
        clients = [ServerClient(u, "counter-1", tkey, clerk="clerk-1") for u in urls]

        points = [_point() for _ in range(16)]

        def enroll(i: int):  # type: ignore[no-untyped-def]
            return clients[i % 2].enroll(f"two-inst-{i:05d}", CLAIMS, points[i], i.to_bytes(8, "big"))

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(enroll, range(16)))
        assert len({r.credential_id for r in results}) == 16
        assert len({r.status_index for r in results}) == 16
        # Each instance sees the other's credentials (one database).
        for r in results[:4]:
            assert clients[0].status(r.credential_id)["state"] == "issued"
            assert clients[1].status(r.credential_id)["state"] == "issued"
        # A retry of instance 0's enrollment on instance 1 answers with the same credential.
        retried = clients[1].enroll("two-inst-00000", CLAIMS, points[0], (0).to_bytes(8, "big"))
        assert retried.credential_id == results[0].credential_id
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(15)
    for proc, log in zip(procs, logs, strict=True):
        text = log.read_text(errors="replace")
        assert proc.returncode == 0 and "Traceback" not in text, text[-2000:]
