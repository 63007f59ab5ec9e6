"""Chain-outbox fault tests against a real anvil node (docs/server.md §Chain outbox, issue 14):

* the node is restarted from an older state dump after revocations were confirmed → the writer notices the
  lost blocks, re-sends the same signed transactions, and a kiosk's chain view refuses the card again within
  one batch window; a certificate anchor root lost with the same blocks is anchored again (same root, so
  the printed proofs stay valid);
* the chain is reset under the running server (the account nonce falls back) → new writes recover without a
  server restart: no stale nonce, no 60 s timeouts.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cityid.chain.live import LiveChainView
from cityid.chain.view import CredentialStatus, StatusRef
from tests.fixtures.anvil_node import AnvilNode
from tests.integration.outbox_support import build_city, in_process_server, key_events
from tests.unit.server_support import CLAIMS, Card

pytestmark = pytest.mark.integration

WINDOW_MS = 300


def _dump(node: AnvilNode, path: Path) -> None:
    from cityid.chain.rpc import HttpTransport, RpcClient

    raw = RpcClient(HttpTransport(node.url)).request("anvil_dumpState", [])
    data = bytes.fromhex(raw[2:])
    path.write_bytes(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)


def _server(city, tmp_path):  # type: ignore[no-untyped-def]
    return in_process_server(city, f"sqlite:///{tmp_path}/server.db", WINDOW_MS)


def _statuses(city, creds) -> list[int]:  # type: ignore[no-untyped-def]
    return [int(city.registrar().status.status_of(1, c.status_index)) for c in creds]


def test_node_restored_from_older_state_gets_the_revocations_again(tmp_path):
    node = AnvilNode()
    port = node.port
    app = None
    try:
        city = build_city(node.url, tmp_path)
        app, client = _server(city, tmp_path)
        writer = app.extensions["cityid.outbox"]
        creds = [client.enroll(f"fault-key-{i:04d}", CLAIMS, Card().point, bytes([i]) * 8, wait=20)
                 for i in range(6)]  # fmt: skip
        assert all(c.on_chain for c in creds)
        _dump(node, tmp_path / "older.json")  # the snapshot the node will come back from
        anchors = app.extensions["cityid.certificates"].queue
        documents = [bytes([0xA0 + i]) * 32 for i in range(3)]
        for d in documents:  # certificates printed after the snapshot: their anchor root is lost with it
            anchors.submit(d, "kiosk-1")
        anchors.flush(force=True)
        tickets = [anchors.lookup(d) for d in documents]
        assert all(t is not None and t.proof is not None for t in tickets)
        root = tickets[0].proof.root  # type: ignore[union-attr]
        assert city.registrar().anchors.anchor_of(root)[1] > 0
        client.revoke([c.credential_id for c in creds[:3]], "lost")
        assert client.outbox(client.last_chain["outbox_ids"], wait=20)["state"] == "confirmed"
        assert _statuses(city, creds[:3]) == [CredentialStatus.REVOKED] * 3
        events_before = key_events(city)

        node.stop()  # the node dies and is restored from the older dump, on the same address
        node = AnvilNode(port=port, extra_args=("--load-state", str(tmp_path / "older.json")))
        # (the revocations are gone from the node now; the writer's `reapplied` count below proves it)
        view = LiveChainView(city.client(), city.network)
        registry = city.network.address("status_registry")
        ref = StatusRef(city.network.chain_id, registry, 1, creds[0].status_index)
        t0 = time.monotonic()
        while city.registrar().status.status_of(1, creds[0].status_index) != CredentialStatus.REVOKED:
            assert time.monotonic() - t0 < 10, "revocation not re-applied"
            time.sleep(0.02)
        reapplied_after = time.monotonic() - t0  # from the node's return to the kiosk refusing again
        facts = view.verification_facts(app.extensions["cityid.service"].issuer_did, creds[0].citizen_did,
                                        creds[0].record.vct, ref)  # fmt: skip
        assert facts.status == CredentialStatus.REVOKED  # the kiosk refuses the card again
        # "within one batch window": the writer's next window after the loss (plus its receipt poll)
        assert reapplied_after < 2 * WINDOW_MS / 1000 + 1.0, reapplied_after
        deadline = time.monotonic() + 10
        while writer.reapplied < 1 or _statuses(city, creds[:3]) != [CredentialStatus.REVOKED] * 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert key_events(city) == events_before  # keys revoked once again, nothing twice
        deadline = time.monotonic() + 10  # the lost anchor root is anchored again: same root, same proofs
        while city.registrar().anchors.anchor_of(root)[1] == 0:
            assert time.monotonic() < deadline, "lost certificate anchor not re-sent"
            time.sleep(0.05)
        again = [anchors.lookup(d) for d in documents]
        assert [t.proof for t in again] == [t.proof for t in tickets]  # type: ignore[union-attr]
        assert all(t is not None and t.block == city.registrar().anchors.anchor_of(root)[1] for t in again)
        health = app.test_client().get("/health").get_json()
        assert health["outbox"]["writer"]["reapplied"] >= 1

        # chain reset under the running server: the node forgets even more (back to right after set-up)
        # and the writer just carries on with the next enrollment
        late = client.enroll("fault-key-late", CLAIMS, Card().point, b"\x77" * 8, wait=20)
        assert late.on_chain
        assert "nonce" not in writer.last_error
    finally:
        if app is not None:
            app.extensions["cityid.outbox"].stop()
        node.stop()


def test_chain_reset_under_a_running_server_recovers_without_restart(tmp_path):
    node = AnvilNode()
    port = node.port
    app = None
    try:
        city = build_city(node.url, tmp_path)
        _dump(node, tmp_path / "fresh.json")  # right after the ceremonies: contracts, list, issuer
        app, client = _server(city, tmp_path)
        first = [client.enroll(f"reset-key-{i:04d}", CLAIMS, Card().point, bytes([i]) * 8, wait=20)
                 for i in range(4)]  # fmt: skip
        assert all(c.on_chain for c in first)
        node.stop()
        node = AnvilNode(port=port, extra_args=("--load-state", str(tmp_path / "fresh.json")))
        t0 = time.monotonic()
        after = client.enroll("reset-key-after", CLAIMS, Card().point, b"\x55" * 8, wait=20)
        assert after.on_chain, after.chain
        assert time.monotonic() - t0 < 10  # no 60 s nonce timeout
        # everything enrolled before the reset is back too (same signed bytes), each key once
        events = key_events(city)
        for c in [*first, after]:
            assert events.get(c.citizen_did.rsplit(":", 1)[1].lower()) == 1
        checked = subprocess.run(
            [sys.executable, "-m", "server.cli", "chain", "check", str(city.network_path),
             "--db", f"sqlite:///{tmp_path}/server.db"], capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        out = checked.stdout + checked.stderr
        assert checked.returncode == 0 and "0 disagreement(s)" in checked.stdout, out
    finally:
        if app is not None:
            app.extensions["cityid.outbox"].stop()
        node.stop()
