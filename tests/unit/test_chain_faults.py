"""Fault injection: unreachable node, timeouts, JSON-RPC errors, malformed replies, lost sends, nonces."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from web3.providers.base import BaseProvider

from cityid.chain.embedded import EmbeddedProvider, forward
from cityid.chain.errors import (
    MalformedReplyError,
    NodeUnreachableError,
    RpcError,
    RpcTimeoutError,
    StaleChainDataError,
    TransactionRevertedError,
)
from cityid.chain.live import LiveChainView
from cityid.chain.resolver import identity_from_public_hash
from cityid.chain.rpc import HttpTransport, RpcClient
from cityid.chain.sync import SyncCache
from cityid.chain.view import ChainError, CredentialStatus
from server.chain.registrar import Registrar

VCT = "urn:busan:citizen:1"


def p256() -> bytes:
    return (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )


class FakeNode:
    """An HTTP JSON-RPC endpoint that forwards to the embedded node unless a fault mode is set."""

    def __init__(self, provider: Any) -> None:
        self.provider = provider
        self.mode = "ok"
        self.waiting = threading.Event()  # set while a "slow" request is being held
        # A "slow" request outlasts the client's default timeout with margin: the forwarded embedded-node
        # calls themselves can take most of a second on a loaded 2-core CI machine.
        self.slow_s = 3.0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                mode = fake.mode
                if mode == "slow":
                    fake.waiting.set()
                    time.sleep(fake.slow_s)
                if mode == "error":
                    reply: Any = {
                        "jsonrpc": "2.0",
                        "id": body.get("id") if isinstance(body, dict) else None,
                        "error": {"code": -32005, "message": "limit exceeded"},
                    }
                elif mode == "html":
                    self.send_response(502)
                    self.end_headers()
                    self.wfile.write(b"<html>bad gateway</html>")
                    return
                elif mode == "wrong-shape":
                    reply = forward(fake.provider, body)
                    for r in reply if isinstance(reply, list) else [reply]:
                        if isinstance(r.get("result"), str):
                            r["result"] = "0xnothex"
                        elif isinstance(r.get("result"), list):
                            r["result"] = [{"topics": "nope"}]
                elif mode == "short-batch":
                    reply = forward(fake.provider, body)
                    reply = reply[:1] if isinstance(body, list) else reply
                elif mode == "wrong-id":
                    reply = forward(fake.provider, body)
                    if isinstance(reply, dict):
                        reply["id"] = 999
                else:
                    reply = forward(fake.provider, body)
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def client(self, timeout: float = 1.5) -> RpcClient:
        return RpcClient(HttpTransport(self.url, timeout=timeout))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def setup(embedded_chain):
    node = embedded_chain.client().provider
    assert isinstance(node, EmbeddedProvider)
    fake = FakeNode(node)
    city = Registrar(embedded_chain.network, embedded_chain.client(), embedded_chain.accounts[0])
    holder = identity_from_public_hash(os.urandom(32))
    city.enroll_citizens([(holder, [p256()])])
    city.publish_issuer_key(p256())
    city.accredit_issuer(city.did, VCT, int(time.time()) + 3600)
    ref = city.status_ref(city.create_status_list(), 3)
    yield fake, city, city.did_of(holder), ref
    fake.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_node():
    client = RpcClient(HttpTransport(f"http://127.0.0.1:{_free_port()}", timeout=0.5))
    with pytest.raises(NodeUnreachableError) as err:
        client.request("eth_blockNumber")
    assert isinstance(err.value, ChainError)


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("slow", RpcTimeoutError),
        ("error", RpcError),
        ("html", MalformedReplyError),
        ("wrong-shape", MalformedReplyError),
        ("short-batch", MalformedReplyError),
    ],
)
def test_view_faults_are_typed(setup, mode, error):
    fake, city, holder_did, ref = setup
    view = LiveChainView(fake.client(), city.network, proofs=False)  # embedded: no eth_getProof
    assert view.verification_facts(city.did, holder_did, VCT, ref).status is CredentialStatus.VALID
    fake.mode = mode
    with pytest.raises(error):
        view.verification_facts(city.did, holder_did, VCT, ref)


def test_rpc_error_carries_code(setup):
    fake, *_ = setup
    fake.mode = "error"
    with pytest.raises(RpcError) as err:
        fake.client().request("eth_blockNumber")
    assert err.value.code == -32005 and "limit exceeded" in str(err.value)


def test_mismatched_response_id(setup):
    fake, *_ = setup
    fake.mode = "wrong-id"
    with pytest.raises(MalformedReplyError, match="does not match"):
        fake.client().request("eth_blockNumber")


def test_sync_cache_survives_faults_then_fails_closed(setup, tmp_path):
    fake, city, holder_did, ref = setup
    now = [time.time()]
    cache = SyncCache(
        fake.client(),
        city.network,
        tmp_path / "c.sqlite",
        confirmations=0,
        max_staleness=30,
        clock=lambda: now[0],
    )
    cache.sync()
    city.revoke(ref.list_id, [ref.index])
    for mode, error in [("slow", RpcTimeoutError), ("error", RpcError), ("wrong-shape", MalformedReplyError)]:
        fake.mode = mode
        with pytest.raises(error):
            cache.sync()
    # nothing half-applied: the replica is still the last good state, within the bound it still answers
    assert cache.verification_facts(city.did, holder_did, VCT, ref).status is CredentialStatus.VALID
    now[0] += 31
    with pytest.raises(StaleChainDataError):
        cache.verification_facts(city.did, holder_did, VCT, ref)
    fake.mode = "ok"
    cache.sync()
    assert cache.verification_facts(city.did, holder_did, VCT, ref).status is CredentialStatus.REVOKED


class Wrapped(BaseProvider):
    """A web3 provider forwarding to another one (the embedded chain), for fault injection."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner
        self.url = "wrapped://"

    def reply(self, method: str, params: Any) -> Any:
        return self.inner.make_request(method, params)

    def make_request(self, method: Any, params: Any) -> Any:
        return self.reply(method, params)

    def make_batch_request(self, requests: Any) -> Any:
        return [self.reply(m, p) for m, p in requests]

    def is_connected(self, show_traceback: bool = False) -> bool:
        return True


class LosingTransport(Wrapped):
    """Forwards to the node but loses the reply of the first eth_sendRawTransaction (like a timeout)."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.url = "lossy://"
        self.sent: list[str] = []
        self.lost = False

    def reply(self, method: str, params: Any) -> Any:
        reply = self.inner.make_request(method, params)
        if method == "eth_sendRawTransaction":
            self.sent.append(params[0])
            if not self.lost:
                self.lost = True
                raise RpcTimeoutError(self.url, 0.1)
        return reply


def test_retry_after_lost_reply_never_double_applies(embedded_chain):
    lossy = LosingTransport(embedded_chain.client().provider)
    city = Registrar(embedded_chain.network, RpcClient(lossy), embedded_chain.accounts[0])
    before = city.status.list_count()
    list_id = city.create_status_list()
    assert len(lossy.sent) == 2 and lossy.sent[0] == lossy.sent[1]  # the same signed bytes went twice
    assert city.status.list_count() == before + 1 == list_id  # ...and created exactly one list


def test_many_in_flight_nonces(embedded_chain):
    city = Registrar(embedded_chain.network, embedded_chain.client(), embedded_chain.accounts[0])
    reqs = [city.status.tx("createList") for _ in range(8)]
    receipts = city.sender.send_many(reqs)
    assert len({r.tx_hash for r in receipts}) == 8
    assert city.status.list_count() == 8
    # someone else used the account (e.g. a second server process): the sender resyncs and carries on
    other = Registrar(embedded_chain.network, embedded_chain.client(), embedded_chain.accounts[0])
    other.create_status_list()
    assert city.create_status_list() == 10
    assert city.create_status_list() == 11


def test_revert_reasons_decoded_before_and_after_mining(embedded_chain):
    city = Registrar(embedded_chain.network, embedded_chain.client(), embedded_chain.accounts[0])
    stranger = Registrar(embedded_chain.network, embedded_chain.client(), embedded_chain.accounts[1])
    list_id = city.create_status_list()
    with pytest.raises(TransactionRevertedError, match=r"NotListOwner\(listId=1"):
        stranger.revoke(list_id, [1])
    # with a fixed gas limit nothing is estimated: the revert happens on chain and is explained afterwards
    with pytest.raises(TransactionRevertedError, match="NotListOwner") as err:
        stranger.sender.send(stranger.status.tx("setStatus", list_id, [1], 1, gas=100_000))
    assert err.value.tx_hash is not None


def test_wrong_node_or_addresses_are_refused(embedded_chain, tmp_path):
    from dataclasses import replace

    from cityid.chain.errors import ChainConfigError
    from cityid.chain.network import check_network

    net = embedded_chain.network
    assert check_network(embedded_chain.client(), net) >= net.deploy_block
    view = LiveChainView(embedded_chain.client(), replace(net, chain_id=net.chain_id + 1))
    with pytest.raises(ChainConfigError, match="serves chain"):
        view.check()
    empty = replace(net, addresses={**net.addresses, "status_registry": embedded_chain.accounts[5].address})
    cache = SyncCache(embedded_chain.client(), empty, tmp_path / "c.sqlite")
    with pytest.raises(ChainConfigError, match="no contract code at status_registry"):
        cache.sync()
    assert cache.synced_at is None


def test_reads_answer_while_a_sync_waits_on_a_slow_node(setup, tmp_path):
    fake, city, holder_did, ref = setup
    cache = SyncCache(fake.client(timeout=5), city.network, tmp_path / "c.sqlite", confirmations=0)
    cache.sync()
    fake.mode, fake.slow_s = "slow", 1.0  # the node takes 1 s per request
    syncing = threading.Thread(target=cache.sync)
    fake.waiting.clear()
    syncing.start()
    assert fake.waiting.wait(5)  # the sync is now blocked on the node
    t = time.perf_counter()
    assert cache.verification_facts(city.did, holder_did, VCT, ref).status is CredentialStatus.VALID
    assert time.perf_counter() - t < 0.5  # not blocked behind the network I/O
    syncing.join()


def test_unreadable_cache_file_is_a_clear_error(embedded_chain, tmp_path):
    from cityid.chain.errors import ChainConfigError

    bad = tmp_path / "c.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ChainConfigError, match="cannot open the chain cache"):
        SyncCache(embedded_chain.client(), embedded_chain.network, bad)


class PreLondonView(Wrapped):
    """Presents the node as a pre-London chain (no baseFeePerGas in blocks), like some geth forks."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.raw: list[str] = []

    def reply(self, method: str, params: Any) -> Any:
        rep = dict(self.inner.make_request(method, params))
        if method == "eth_getBlockByNumber" and isinstance(rep.get("result"), dict):
            rep["result"] = {k: v for k, v in rep["result"].items() if k != "baseFeePerGas"}
        if method == "eth_sendRawTransaction":
            self.raw.append("0x" + bytes(params[0]).hex() if isinstance(params[0], bytes) else params[0])
        return rep


def test_legacy_gas_pricing_without_base_fee(embedded_chain):
    transport = PreLondonView(embedded_chain.client().provider)
    city = Registrar(embedded_chain.network, RpcClient(transport), embedded_chain.accounts[0])
    list_id = city.create_status_list()
    assert city.status.list_owner(list_id) == city.address
    assert transport.raw and all(raw[:4] in ("0xf8", "0xf9") for raw in transport.raw)  # legacy RLP list


@pytest.mark.parametrize("escaped", [False, True])
def test_nesting_bound_ignores_brackets_in_strings_only(escaped):
    """Both scanning paths (no escapes: split on quotes; escapes: regex) count only structural brackets."""
    from cityid.chain.provider import check_json_nesting

    quote = '\\"' if escaped else ""
    ok = json.dumps({"a": "]]]]" + quote + "[[[[", "b": [[[1]]]}).encode()
    check_json_nesting(ok, 4)
    with pytest.raises(MalformedReplyError):
        check_json_nesting(ok, 3)
    hiding = ('["' + quote + "]" * 100 + '",' + "[" * 70 + "]" * 70 + "]").encode()  # closers in a string
    with pytest.raises(MalformedReplyError):
        check_json_nesting(hiding, 64)
