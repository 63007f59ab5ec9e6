"""``city-server serve`` as a real process: keystore from env, embedded chain, terminal registered with the
CLI, signed requests over HTTP (enroll, FIDO key on the DID, status), unsigned ones refused."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from terminal.server_client import ServerClient
from tests.unit.server_support import CLAIMS

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _point() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def test_serve_end_to_end(tmp_path):
    env = {
        **os.environ,
        "CITY_SERVER_DB_URL": f"sqlite:///{tmp_path}/server.db",
        "CITY_ISSUER_KEYSTORE": str(tmp_path / "issuer.p8"),
        "CITY_ISSUER_KEY_PASSWORD": "s3cret-test-password",
        "CITY_SERVER_CHAIN": "embedded",
    }
    cli = [sys.executable, "-m", "server.cli"]
    subprocess.run([*cli, "issuer-key", "generate"], env=env, check=True, capture_output=True)
    tkey = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "t.pem").write_bytes(tkey.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    subprocess.run([*cli, "terminal", "add", "--name", "counter-9", "--public-key", str(tmp_path / "t.pem")],
                   env=env, check=True, capture_output=True)  # fmt: skip
    port = _free_port()
    proc = subprocess.Popen([*cli, "serve", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = requests.get(f"{url}/health", timeout=1).json()
                break
            except requests.RequestException:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"serve did not come up: {proc.stderr.read().decode()[-2000:]}")
                time.sleep(0.1)
        assert health["issuer_did"].startswith("did:ethr:embedded:0x")
        client = ServerClient(url, "counter-9", tkey)
        res = client.enroll("serve-enroll-1", CLAIMS, _point(), b"\x05" * 8)
        assert client.status(res.credential_id)["state"] == "issued"
        assert client.register_fido_key(res.citizen_did, _point(), b"fido-cred") is True
        body = {"credential_ids": [res.credential_id], "reason": "lost"}
        r = requests.post(f"{url}/v1/revocations", json=body, timeout=5)
        assert r.status_code == 401 and r.json()["error"] == "unauthenticated"
        r = requests.post(f"{url}/v1/enrollments", data=b"x" * 70_000, timeout=5)
        assert r.status_code in (401, 413)
    finally:
        proc.terminate()
        proc.wait(10)
    logs = proc.stderr.read().decode()
    assert "Traceback" not in logs
    for value in ("Minji", "1950-03-14", "BS-2026-000123", "s3cret-test-password"):
        assert value not in logs
