"""Chain figures: gas per operation, and round trips + time per verification read (cold and warm).

Gas is measured on the embedded chain (py-evm; the same gas schedule as anvil for these operations) and
cross-checked on anvil; timings: LiveChainView over HTTP JSON-RPC on a real anvil node (cold, proven:
head header re-hashed + EIP-1186 proofs + event history checked), the same unproven, a quorum of three
connections queried in parallel, the SyncCache replica (warm), the cost of checking the proofs of one
verification on its own, and LiveChainView on the in-process embedded node.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bench._stats import summary_ms, timed
from cityid.chain.live import LiveChainView, ProvenRead
from cityid.chain.proof import _walk
from cityid.chain.quorum import QuorumChainView
from cityid.chain.resolver import identity_from_public_hash
from cityid.chain.rpc import HttpTransport, RpcClient
from cityid.chain.sync import SyncCache
from server.chain.registrar import Registrar, deploy_all, start_embedded
from tests.fixtures.anvil_node import AnvilNode

VCT = "urn:busan:citizen:1"


def _p256() -> bytes:
    return (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )


def _citizens(n: int) -> list[tuple[str, list[bytes]]]:
    return [(identity_from_public_hash(os.urandom(32)), [_p256()]) for _ in range(n)]


def _gas(city: Registrar, label: str) -> None:
    def row(name: str, gas: int, per: int = 1, unit: str = "") -> None:
        per_txt = f"   {gas / per:>9,.0f} per {unit}" if per > 1 else ""
        print(f"   {label:<8} {name:<44} {gas:>10,} gas{per_txt}")

    (r,) = city.enroll_citizens(_citizens(1))
    row("enroll 1 citizen (1 P-256 key)", r.gas_used)
    (r,) = city.enroll_citizens(_citizens(100))
    row("enroll 100 citizens in one batch", r.gas_used, 100, "citizen")
    identity, keys = _citizens(1)[0]
    city.enroll_citizens([(identity, keys)])
    row("add a FIDO key (setAttribute)", city.add_key(identity, _p256()).gas_used)
    row("revoke a lost card key (revokeAttribute)", city.revoke_key(identity, keys[0]).gas_used)
    batch = _citizens(100)
    city.enroll_citizens(batch)
    (r,) = city.revoke_keys([(i, k[0]) for i, k in batch])
    row("revoke 100 card keys in one batch", r.gas_used, 100, "key")
    list_id = city.create_status_list()
    (r,) = city.revoke(list_id, [7])
    row("revoke 1 credential", r.gas_used)
    (r,) = city.revoke(list_id, range(1000, 1100))
    row("revoke 100 credentials (consecutive indexes)", r.gas_used, 100, "credential")
    (r,) = city.revoke(list_id, random.sample(range(2000, 1_000_000), 100))
    row("revoke 100 credentials (random in 1M list)", r.gas_used, 100, "credential")
    (r,) = city.revoke(list_id, random.sample(range(2000, 14_800), 100))
    row("revoke 100 credentials (random in 12.8k window)", r.gas_used, 100, "credential")
    row(
        "accredit an issuer for a vct", city.accredit_issuer(city.did, VCT, int(time.time()) + 86400).gas_used
    )
    row("publish an issuer P-256 key", city.publish_issuer_key(_p256()).gas_used)
    row(
        "anchor a batch (root of 1000 doc hashes)",
        city.anchor_batch([os.urandom(32) for _ in range(1000)]).receipt.gas_used,
    )


def _timed(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.95))]


def _reads(
    city: Registrar, client_factory: Callable[[], RpcClient], label: str, runs: int, tmp: Path
) -> None:
    holder = identity_from_public_hash(os.urandom(32))
    city.enroll_citizens([(holder, [_p256()])])
    city.enroll_citizens(_citizens(100))  # some unrelated registry history
    city.publish_issuer_key(_p256())
    city.accredit_issuer(city.did, VCT, int(time.time()) + 86400)
    ref = city.status_ref(city.create_status_list(), 5)
    holder_did = city.did_of(holder)
    view = LiveChainView(client_factory(), city.network)
    before = view.client.round_trips
    med, p95 = _timed(lambda: view.verification_facts(city.did, holder_did, VCT, ref), runs)
    rt = (view.client.round_trips - before) / runs
    kind = "proven" if view.proofs else "trusted"
    print(
        f"   {label:<8} cold read (LiveChainView, {kind:<7}) {rt:.0f} round trip   median {med * 1e3:7.2f} ms"
        f"   p95 {p95 * 1e3:7.2f} ms   ({runs} runs)"
    )
    if view.proofs:
        _proof_figures(city, client_factory, label, runs, holder_did, ref)
    cache = SyncCache(client_factory(), city.network, tmp / f"{label}.sqlite", confirmations=0)
    t = time.perf_counter()
    cache.sync()
    sync_s = time.perf_counter() - t
    before = cache.client.round_trips
    med, p95 = _timed(lambda: cache.verification_facts(city.did, holder_did, VCT, ref), runs * 5)
    rt = (cache.client.round_trips - before) / (runs * 5)
    print(
        f"   {label:<8} warm read (SyncCache)         {rt:.0f} round trips  median {med * 1e3:7.3f} ms"
        f"   p95 {p95 * 1e3:7.3f} ms   ({runs * 5} runs; first sync {sync_s * 1e3:.0f} ms)"
    )
    cache.close()


def _proof_figures(
    city: Registrar,
    client_factory: Callable[[], RpcClient],
    label: str,
    runs: int,
    holder_did: str,
    ref: object,
) -> None:
    """Unproven vs proven, a parallel quorum, and the proof check alone (no I/O)."""
    unproven = LiveChainView(client_factory(), city.network, proofs=False)
    samples = timed(lambda: unproven.verification_facts(city.did, holder_did, VCT, ref), runs)
    print(f"   {label:<8} cold read, unproven (eth_call)   1 round trip   {summary_ms(samples, 2)}")
    clients = [client_factory() for _ in range(3)]
    quorum = QuorumChainView(clients, city.network, quorum=2)
    samples = timed(lambda: quorum.verification_facts(city.did, holder_did, VCT, ref), runs)
    per_node = [c.round_trips / (runs + 1) for c in clients]
    print(
        f"   {label:<8} cold read, quorum 2 of 3 (parallel) {max(per_node):.0f} round trip/node "
        f"{summary_ms(samples, 2)}"
    )
    quorum.close()
    plan = ProvenRead.plan(city.network, city.did, holder_did, VCT, ref)  # type: ignore[arg-type]
    replies = client_factory().batch(plan.calls())
    now = time.time()

    def check(memo: bool) -> None:
        if not memo:
            _walk.cache_clear()  # every trie walk from scratch (a new head block)
        plan.evaluate(plan.header(replies, None), replies, now)

    for memo, what in ((False, "new block"), (True, "same block, walks memoised")):
        cpu: list[float] = []

        def one(memo: bool = memo, cpu: list[float] = cpu) -> None:
            started = time.thread_time()
            check(memo)
            cpu.append(time.thread_time() - started)

        samples = timed(one, runs * 3)
        print(
            f"   {label:<8} proof check per verification ({what:<26}) {summary_ms(samples)}"
            f"   CPU median {statistics.median(cpu) * 1e3:.3f} ms"
        )


def _web3_overhead(city: Registrar, url: str, runs: int) -> None:
    """web3 (the project's client) against a minimal raw JSON-RPC reader (bench/raw_rpc.py), same run."""
    from bench.raw_rpc import RawReader
    from cityid.chain.contracts import Events

    raw = RawReader(url)
    client = RpcClient(HttpTransport(url))
    from cityid.chain.bindings import StatusRegistry

    status = StatusRegistry(client, city.network.address("status_registry"))
    list_id = city.create_status_list()
    holder = identity_from_public_hash(os.urandom(32))
    city.enroll_citizens([(holder, [_p256()])])
    city.publish_issuer_key(_p256())
    city.accredit_issuer(city.did, VCT, int(time.time()) + 86400)
    ref = city.status_ref(list_id, 5)
    print("   web3 overhead (same anvil node, same run; raw = bench/raw_rpc.py, no limits or checks)")
    web3_s = timed(lambda: status.status_of(list_id, 5), runs)
    raw_s = timed(
        lambda: raw.call(
            status.address, "statusOf(uint256,uint256)", ["uint256", "uint256"], [list_id, 5], ["uint8"]
        ),
        runs,
    )
    print(f"   anvil    statusOf() eth_call   web3 contract  {summary_ms(web3_s, 3)}")
    print(f"   anvil    statusOf() eth_call   raw reader     {summary_ms(raw_s, 3)}")
    plan = ProvenRead.plan(city.network, city.did, city.did_of(holder), VCT, ref)  # type: ignore[arg-type]
    now = time.time()

    def via(batch: Callable[[list], list]) -> None:
        replies = batch(plan.calls())
        plan.evaluate(plan.header(replies, None), replies, now)

    prov_s = timed(lambda: via(client.batch), runs)  # type: ignore[arg-type]
    raw_s = timed(lambda: via(raw.batch), runs)  # type: ignore[arg-type]
    print(f"   anvil    proven verification   bounded web3 provider {summary_ms(prov_s, 3)}")
    print(f"   anvil    proven verification   raw reader            {summary_ms(raw_s, 3)}")
    (receipt,) = city.enroll_citizens(_citizens(1))
    log = dict(receipt.logs[-1])
    events = Events.of("CityDIDRegistry")
    assert events.decode(log) == events.decode_with_web3(log)
    plan_s = timed(lambda: events.decode(log), runs * 3)
    web3_s = timed(lambda: events.decode_with_web3(log), runs * 3)
    print(f"   cpu      decode one DID log    web3 get_event_data   {summary_ms(web3_s, 3)}")
    print(f"   cpu      decode one DID log    plan on web3's codec  {summary_ms(plan_s, 3)}")
    fn = status.contract.functions.setStatus(list_id, [1, 2, 3], 1)
    account = city.sender.account
    fields = {"from": account.address, "chainId": city.network.chain_id, "nonce": 0, "gas": 100_000,
              "value": 0, "maxFeePerGas": 10**10, "maxPriorityFeePerGas": 10**9}
    data = status.encode("setStatus", list_id, [1, 2, 3], 1)

    def web3_build() -> None:
        client.w3.eth.account.sign_transaction(fn.build_transaction(fields), account.key)  # type: ignore[arg-type]

    def raw_build() -> None:
        tx = {k: v for k, v in fields.items() if k != "from"} | {"to": status.address, "data": data}
        account.sign_transaction(tx)

    print(f"   cpu      build + sign a tx     web3 build_transaction {summary_ms(timed(web3_build, runs))}")
    print(f"   cpu      build + sign a tx     dict + eth_account     {summary_ms(timed(raw_build, runs))}")
    raw.close()


def run(args: argparse.Namespace) -> None:
    runs = 30 if args.quick else 300
    print("   gas per operation (whole transaction incl. 21,000 base; goals: <=30k/citizen, <=3k/credential)")
    embedded = start_embedded()
    _gas(Registrar(embedded.network, embedded.client(), embedded.accounts[0]), "embedded")
    with tempfile.TemporaryDirectory() as tmp, AnvilNode() as node:
        account = node.accounts(1)[0]
        network = deploy_all(RpcClient(HttpTransport(node.url)), account, name="anvil", rpc_url=node.url)
        anvil_city = Registrar(network, RpcClient(HttpTransport(node.url)), account)
        if not args.quick:
            _gas(anvil_city, "anvil")
        _web3_overhead(anvil_city, node.url, runs)
        print("   verification read: issuer keys + trust + holder keys + status")
        _reads(anvil_city, lambda: RpcClient(HttpTransport(node.url)), "anvil", runs, Path(tmp))
        _reads(
            Registrar(embedded.network, embedded.client(), embedded.accounts[0]),
            embedded.client,
            "embedded",
            runs,
            Path(tmp),
        )
