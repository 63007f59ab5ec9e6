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

from cityid.chain.errors import TransactionRevertedError
from cityid.chain.view import ChainError, StatusRef
from terminal.server_client import ServerClient, ServerError
from tests.unit.server_support import CLAIMS, Card

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
        "CITY_AUTHORIZATION_KEYSTORE": str(tmp_path / "authorization.p8"),  # a default deployment has one
        "CITY_AUTHORIZATION_KEY_PASSWORD": "an0ther-test-password",
        "CITY_SERVER_CHAIN": "embedded",
    }
    cli = [sys.executable, "-m", "server.cli"]
    subprocess.run([*cli, "issuer-key", "generate"], env=env, check=True, capture_output=True)
    subprocess.run([*cli, "authorization-key", "generate"], env=env, check=True, capture_output=True)
    subprocess.run([*cli, "db", "init"], env=env, check=True, capture_output=True)  # no implicit creation
    tkey = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "t.pem").write_bytes(
        tkey.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    subprocess.run(
        [*cli, "terminal", "add", "--name", "counter-9", "--public-key", str(tmp_path / "t.pem")],
        env=env,
        check=True,
        capture_output=True,
    )
    port = _free_port()
    proc = subprocess.Popen(
        [*cli, "serve", "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
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
        assert health["issuer_ready"] is True  # the embedded chain is set up in-process at start
        client = ServerClient(url, "counter-9", tkey, clerk="clerk-a")
        with pytest.raises(ServerError) as refused:  # the key is loaded; counter-9 is just not authorized
            client.terminal_certificate()
        assert refused.value.status == 403 and refused.value.code == "terminal_not_authorized"
        holder = Card()
        res = client.enroll("serve-enroll-1", CLAIMS, holder.point, b"\x05" * 8)
        assert client.status(res.credential_id)["state"] == "issued"
        here = holder.presence("counter-9", res.citizen_did, "fido.register")
        assert client.register_fido_key(res.citizen_did, _point(), b"fido-cred", presence=here) is True
        body = {"credential_ids": [res.credential_id], "reason": "lost"}
        r = requests.post(f"{url}/v1/revocations", json=body, timeout=5)
        assert r.status_code == 401 and r.json()["error"] == "unauthenticated"
        r = requests.post(f"{url}/v1/enrollments", data=b"x" * 70_000, timeout=5)
        assert r.status_code == 413  # refused by the server's body limit before the app reads it
    finally:
        proc.terminate()
        proc.wait(10)
    logs = proc.stderr.read().decode()
    assert proc.returncode == 0, logs[-2000:]  # SIGTERM: graceful stop
    assert "Traceback" not in logs and "no [authorization_key]" not in logs
    assert "waitress" in logs and "werkzeug" not in logs.lower()
    # The access log names routes, never their values (credential ids, DIDs) nor query strings.
    assert "GET /v1/credentials/<cid>/status 200" in logs
    assert "POST /v1/citizens/<path:did>/fido-keys" in logs
    for value in (
        "Minji",
        "1950-03-14",
        "BS-2026-000123",
        "s3cret-test-password",
        "an0ther-test-password",
        res.credential_id,
        res.citizen_did,
    ):
        assert value not in logs


def _tx_count(chain_env) -> tuple[int, ...]:  # type: ignore[no-untyped-def]
    from cityid.chain.rpc import as_int

    client = chain_env.client()
    block = as_int(client.request("eth_blockNumber"), "block")
    counts = [
        as_int(client.request("eth_getTransactionCount", [a.address, "latest"]), "nonce")
        for a in chain_env.accounts[:3]
    ]
    return (block, *counts)


def test_serve_port_in_use_is_one_line_before_startup(tmp_path):
    """A taken port fails at once with one line, before the keystore/chain/database start-up."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env = {
            **os.environ,
            "CITY_SERVER_DB_URL": f"sqlite:///{tmp_path}/s.db",
            "CITY_SERVER_CHAIN": "embedded",
        }
        t0 = time.monotonic()
        r = subprocess.run(
            [sys.executable, "-m", "server.cli", "serve", "--port", str(port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"city-server: error: port {port} on 127.0.0.1 is already in use (see: ss -ltnp 'sport = :{port}')"
    ]
    assert time.monotonic() - t0 < 10
    assert not (tmp_path / "s.db").exists()  # nothing was started


@pytest.mark.anvil
def test_network_config_path_on_anvil(anvil_chain, tmp_path, monkeypatch, capsys):
    """The production path: chain = a NetworkConfig file, the hot registrar key from the environment, the
    city root's key in an encrypted keystore used only by `city-server issuer publish` (docs/chain.md
    §Roles). Restarts send no transaction; a de-accredited issuer stays de-accredited."""
    import json

    from cryptography.hazmat.primitives import serialization as ser
    from eth_account import Account

    from cityid.chain.live import LiveChainView
    from server.app import create_app
    from server.chain.issuer import publish_issuer
    from server.chain.registrar import Registrar, deploy_all
    from server.cli import main
    from server.config import load_config
    from server.keys import KeystoreSigner
    from tests.unit.server_support import FlaskTransport

    # separate keys: the root deploys (admin, trusted-issuer root, issuer DID), the hot key is the registrar
    root_account, hot_account = anvil_chain.accounts[0], anvil_chain.accounts[1]
    network = deploy_all(
        anvil_chain.client(),
        root_account,
        name="anvil",
        rpc_url=anvil_chain.network.rpc_url,
        registrar=hot_account.address,
    )
    network.save(tmp_path / "network.json")
    env = {
        "CITY_SERVER_DB_URL": f"sqlite:///{tmp_path}/s.db",
        "CITY_SERVER_CHAIN": str(tmp_path / "network.json"),
        "CITY_CHAIN_PRIVATE_KEY": "0x" + bytes(hot_account.key).hex(),
        "CITY_ISSUER_KEYSTORE": str(tmp_path / "issuer.p8"),
        "CITY_ISSUER_KEY_PASSWORD": "pw",
    }
    root_file = tmp_path / "root.json"
    root_file.write_text(json.dumps(Account.encrypt(root_account.key, "root-pw")))
    for k, val in env.items():
        monkeypatch.setenv(k, val)
    monkeypatch.setenv("CITY_ROOT_PASSWORD", "root-pw")
    signer = KeystoreSigner.generate(tmp_path / "issuer.p8", "pw")
    assert main(["db", "init"]) == 0

    # without the status list and the ceremony, serve refuses / reports the issuer not ready — sending nothing
    before = _tx_count(anvil_chain)
    with pytest.raises(ChainError, match="status-list ensure"):
        create_app(load_config(None, env=env))
    assert main(["status-list", "ensure"]) == 0
    assert main(["status-list", "ensure"]) == 0
    assert "already exists" in capsys.readouterr().out
    app = create_app(load_config(None, env=env))
    assert app.test_client().get("/health").get_json()["issuer_ready"] is False

    # the hot key cannot publish the issuer key or accredit; publish never takes the environment key
    hot = Registrar(network, anvil_chain.client(), hot_account)
    with pytest.raises(TransactionRevertedError, match="NotOwner"):
        publish_issuer(
            hot,
            signer.public_point,
            "https://id.busan.go.kr/vct/citizen/v1",
            hot.did_of(root_account.address),
        )
    with pytest.raises(TransactionRevertedError, match="NotRoot"):
        hot.accredit_issuer(hot.did_of(root_account.address), "https://id.busan.go.kr/vct/citizen/v1", 2**40)
    with pytest.raises(SystemExit):
        main(["issuer", "publish"])  # --root-keystore is required
    capsys.readouterr()

    # the root's ceremony: sends what is missing, then nothing
    assert main(["issuer", "publish", "--root-keystore", str(root_file)]) == 0
    assert "sent publish issuer key, accredit issuer" in capsys.readouterr().out
    assert main(["issuer", "publish", "--root-keystore", str(root_file)]) == 0
    assert "nothing sent" in capsys.readouterr().out
    assert main(["issuer", "status"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["ready"] is True and status["key_published"] is True

    after_setup = _tx_count(anvil_chain)
    assert after_setup[0] > before[0]
    app = create_app(load_config(None, env=env))  # a restart
    assert _tx_count(anvil_chain) == after_setup
    assert app.test_client().get("/health").get_json()["issuer_ready"] is True
    db = app.extensions["cityid.db"]
    tkey = ec.generate_private_key(ec.SECP256R1())
    db.add_terminal(
        "c1", tkey.public_key().public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo).decode()
    )
    client = ServerClient("http://x", "c1", tkey, session=FlaskTransport(app), clerk="clerk-a")
    card = _point()
    res = client.enroll("anvil-net-00001", CLAIMS, card, b"\x07" * 8, wait=20)  # until on chain
    issuer = app.extensions["cityid.service"].issuer_did
    assert issuer == hot.did_of(root_account.address)  # the root's DID, not the hot key's
    view = LiveChainView(anvil_chain.client(), network)
    ref = StatusRef(network.chain_id, network.address("status_registry"), 1, res.status_index)
    facts = view.verification_facts(issuer, res.citizen_did, "https://id.busan.go.kr/vct/citizen/v1", ref)
    assert facts.issuer_trusted and card in facts.holder_keys
    assert signer.public_point in facts.issuer_keys

    # the root de-accredits; restarts neither undo it nor send anything; publish refuses to re-accredit
    root = Registrar(network, anvil_chain.client(), root_account)
    root.revoke_accreditation(issuer, "https://id.busan.go.kr/vct/citizen/v1")
    after_revoke = _tx_count(anvil_chain)
    for _ in range(2):
        app = create_app(load_config(None, env=env))
        assert app.test_client().get("/health").get_json()["issuer_ready"] is False
    assert _tx_count(anvil_chain) == after_revoke
    facts = view.verification_facts(issuer, res.citizen_did, "https://id.busan.go.kr/vct/citizen/v1", ref)
    assert not facts.issuer_trusted
    assert main(["issuer", "publish", "--root-keystore", str(root_file)]) != 0
    assert "final" in capsys.readouterr().err
    assert _tx_count(anvil_chain) == after_revoke

    with pytest.raises(ChainError, match="CITY_CHAIN_PRIVATE_KEY"):
        create_app(load_config(None, env={**env, "CITY_CHAIN_PRIVATE_KEY": ""}))
