"""The chain layer end to end — THE SAME tests on the embedded chain and on a real anvil node.

Also: a DID written by our code resolves to the same document through our resolver as through the standard
ethr-did-resolver (node, pinned in package.json) pointed at our registry; a reorg that drops a revocation.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cityid.chain.bindings import name32
from cityid.chain.errors import StaleChainDataError, TransactionRevertedError
from cityid.chain.live import LiveChainView
from cityid.chain.resolver import NULL_ADDRESS, DIDResolver, address_of, identity_from_public_hash, p256_keys
from cityid.chain.sync import SyncCache
from cityid.chain.view import CredentialStatus
from server.chain.registrar import Registrar

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
VCT = "urn:busan:citizen:1"


def p256() -> bytes:
    return (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )


@pytest.fixture
def city(chain_env):
    return Registrar(chain_env.network, chain_env.client(), chain_env.accounts[0])


def _credential(city):
    holder = identity_from_public_hash(os.urandom(32))
    card, fido, issuer_key = p256(), p256(), p256()
    city.enroll_citizens([(holder, [card])])
    city.add_key(holder, fido)
    city.publish_issuer_key(issuer_key)
    city.accredit_issuer(city.did, VCT, int(time.time()) + 3600)
    ref = city.status_ref(city.create_status_list(), 42)
    return city.did_of(holder), (card, fido), issuer_key, ref


def test_verification_reads_cold_and_warm(chain_env, city, tmp_path):
    holder_did, (card, fido), issuer_key, ref = _credential(city)
    view = LiveChainView(chain_env.client(), city.network)
    cache = SyncCache(chain_env.client(), city.network, tmp_path / "kiosk.sqlite", confirmations=0)
    cache.sync()
    for _round in range(2):
        cold = view.verification_facts(city.did, holder_did, VCT, ref)
        warm_before = cache.client.round_trips
        warm = cache.verification_facts(city.did, holder_did, VCT, ref)
        assert cold.round_trips == 1 and warm.round_trips == 0 and cache.client.round_trips == warm_before
        assert (cold.holder_keys, cold.issuer_keys, cold.issuer_trusted, cold.status) == (
            warm.holder_keys,
            warm.issuer_keys,
            warm.issuer_trusted,
            warm.status,
        )
        if _round == 0:
            assert cold.holder_keys == (card, fido) and cold.issuer_keys == (issuer_key,)
            assert cold.issuer_trusted and cold.status is CredentialStatus.VALID
            # lost card, revoked credential, suspended accreditation
            city.revoke_key(address_of(city.network, holder_did), card)
            city.revoke(ref.list_id, [ref.index])
            city.revoke_accreditation(city.did, VCT)
            cache.sync()
    assert cold.holder_keys == (fido,) and cold.status is CredentialStatus.REVOKED and not cold.issuer_trusted


def test_batch_enroll_and_status_batch(chain_env, city):
    citizens = [(identity_from_public_hash(os.urandom(32)), [p256()]) for _ in range(50)]
    (receipt,) = city.enroll_citizens(citizens)
    assert receipt.gas_used / 50 < 31_000
    resolver = DIDResolver(chain_env.client(), city.network)
    for identity, keys in citizens[::10]:
        assert p256_keys(resolver.document(city.did_of(identity))) == tuple(keys)
    list_id = city.create_status_list()
    city.revoke(list_id, range(0, 300, 3))
    got = city.status.statuses_of(list_id, range(0, 12))
    assert got == [1, 0, 0] * 4


def test_access_control(chain_env, city):
    other = Registrar(chain_env.network, chain_env.client(), chain_env.accounts[2])
    identity = identity_from_public_hash(os.urandom(32))
    key = p256()
    city.enroll_citizens([(identity, [key])])
    list_id = city.create_status_list()
    for action, error in [
        (
            lambda: other.enroll_citizens([(identity_from_public_hash(os.urandom(32)), [p256()])]),
            "NotRegistrar",
        ),
        (lambda: other.revoke_key(identity, key), "NotOwner"),
        (lambda: other.revoke(list_id, [1]), "NotListOwner"),
        (lambda: other.accredit_issuer(other.did, VCT, int(time.time()) + 60), "NotRoot"),
        (lambda: other.anchor_batch([os.urandom(32)]), "NotAnchorer"),
        (lambda: other.add_registrar(other.address), "NotAdmin"),
    ]:
        with pytest.raises(TransactionRevertedError, match=error):
            action()


def test_anchor_proofs(chain_env, city):
    docs = [os.urandom(32) for _ in range(10)]
    batch = city.anchor_batch(docs)
    assert all(city.verify_anchor_proof(batch.root, d, p) for d, p in zip(docs, batch.proofs, strict=True))
    assert not city.verify_anchor_proof(batch.root, docs[0], batch.proofs[1])


def test_reorg_drops_a_revocation(chain_env, city, tmp_path):
    holder_did, _keys, _k, ref = _credential(city)
    cache = SyncCache(chain_env.client(), city.network, tmp_path / "kiosk.sqlite", confirmations=0)
    cache.sync()
    snap = chain_env.snapshot()
    (receipt,) = city.revoke(ref.list_id, [ref.index])
    cache.sync()
    assert cache.verification_facts(city.did, holder_did, VCT, ref).status is CredentialStatus.REVOKED
    assert city.sender.still_canonical(receipt)
    chain_env.revert(snap)  # the revocation's block is replaced by a longer branch without it
    chain_env.mine(4)
    assert not city.sender.still_canonical(receipt)
    city.revoke(ref.list_id, [ref.index + 1])  # the writer carries on after the reorg (nonce resynced)
    cache.sync()
    assert cache.verification_facts(city.did, holder_did, VCT, ref).status is CredentialStatus.VALID
    live = LiveChainView(chain_env.client(), city.network).verification_facts(city.did, holder_did, VCT, ref)
    assert live.status is CredentialStatus.VALID and live.block_number == cache.synced_block


def test_reorg_within_confirmation_depth_never_reaches_cache(chain_env, city, tmp_path):
    _holder_did, _keys, _k, ref = _credential(city)
    cache = SyncCache(chain_env.client(), city.network, tmp_path / "kiosk.sqlite", confirmations=3)
    chain_env.mine(3)
    cache.sync()
    snap = chain_env.snapshot()
    city.revoke(ref.list_id, [ref.index])
    chain_env.mine(1)
    cache.sync()  # revocation is 1 block deep: not applied
    assert cache.status_of(ref.list_id, ref.index) is CredentialStatus.VALID
    rolled_back_from = cache.synced_block
    chain_env.revert(snap)
    chain_env.mine(5)
    cache.sync()
    assert cache.status_of(ref.list_id, ref.index) is CredentialStatus.VALID
    assert cache.synced_block >= rolled_back_from


def test_stale_cache_fails_closed(chain_env, city, tmp_path):
    """Past max_staleness the cache refuses to answer; a node that stops answering keeps it refusing."""
    holder_did, _keys, _k, ref = _credential(city)
    now = [time.time()]
    cache = SyncCache(
        chain_env.client(),
        city.network,
        tmp_path / "kiosk.sqlite",
        confirmations=0,
        max_staleness=30,
        clock=lambda: now[0],
    )
    cache.sync()
    cache.verification_facts(city.did, holder_did, VCT, ref)
    now[0] += 31
    with pytest.raises(StaleChainDataError):
        cache.verification_facts(city.did, holder_did, VCT, ref)
    cache.sync()  # a successful sync makes it current again
    assert cache.verification_facts(city.did, holder_did, VCT, ref).status is CredentialStatus.VALID


def standard_resolve(chain_env, rpc_url: str, dids: list[str]) -> tuple[dict, int]:
    """Resolve with ethr-did-resolver (node) at a fixed clock; returns (results, the unix time used).

    The clock is set past the newest block, so validity windows (a revocation's validTo is its block time,
    and nodes may run block time ahead of the wall clock) are judged the same way by both resolvers.
    """
    net = chain_env.network
    latest = chain_env.rpc("eth_getBlockByNumber", "latest", False)
    now = max(int(time.time()), int(latest["timestamp"], 16)) + 5
    proc = subprocess.run(
        [
            "node",
            str(ROOT / "tests/integration/ethr_resolve.cjs"),
            rpc_url,
            net.address("did_registry"),
            net.name,
            str(net.chain_id),
            *dids,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "ETHR_NOW": str(now)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout), now


@pytest.fixture
def rpc_url(chain_env):
    """An HTTP URL for the chain (the embedded node is served over loopback HTTP for the node tool)."""
    if chain_env.kind == "anvil":
        yield chain_env.network.rpc_url
        return
    from cityid.chain.embedded import serve_http

    server, url = serve_http(chain_env.client().provider)
    yield url
    server.shutdown()
    server.server_close()


def test_standard_resolver_gives_the_same_documents(chain_env, city, rpc_url):
    """ethr-did-resolver (the reference did:ethr resolver) and ours agree on DIDs our code wrote."""
    net = chain_env.network
    citizen = identity_from_public_hash(os.urandom(32))
    k1, k2, k3 = p256(), p256(), p256()
    city.enroll_citizens([(citizen, [k1, k2])])
    city.add_key(citizen, k3)
    city.revoke_keys([(citizen, k1)])  # lost card, through the batch entry point
    city.publish_issuer_key(p256())
    city.sender.send(
        city.dids.tx(
            "setAttribute",
            city.address,
            name32("did/svc/StatusService"),
            b'{"uri":"https://status.busan.example"}',
            86400,
        )
    )
    city.sender.send(
        city.dids.tx("addDelegate", city.address, name32("sigAuth"), chain_env.accounts[5].address, 86400)
    )
    city.sender.send(city.dids.tx("setAttribute", city.address, name32("did/svc/Expired"), b"x", 1))
    gone = identity_from_public_hash(os.urandom(32))
    city.enroll_citizens([(gone, [p256()])])
    city.sender.send(city.dids.tx("changeOwner", gone, NULL_ADDRESS))  # deactivated
    dids = [
        city.did_of(citizen),
        city.did,
        city.did_of(gone),
        f"did:ethr:{hex(net.chain_id)}:{citizen}",  # chain-id form
        f"did:ethr:{net.name}:{chain_env.accounts[7].address}",  # never touched
    ]
    standard, now = standard_resolve(chain_env, rpc_url, dids)
    ours = DIDResolver(chain_env.client(), net)
    for did in dids:
        assert ours.resolve(did, now=now) == standard[did], did
    assert p256_keys(standard[dids[0]]["didDocument"]) == (k2, k3)
    assert standard[dids[2]]["didDocumentMetadata"]["deactivated"] is True
    # the 1-second "Expired" service is gone for both resolvers (same fixed clock)
    assert [svc["type"] for svc in standard[dids[1]]["didDocument"]["service"]] == ["StatusService"]


@pytest.mark.anvil
def test_cli_deploy_to_a_real_node(anvil_url, tmp_path, monkeypatch, capsys):
    """``city-server chain deploy --rpc URL`` with the key from the environment writes a usable config."""
    from cityid.chain.network import NetworkConfig
    from cityid.chain.rpc import HttpTransport, RpcClient
    from server.cli import main as city_server
    from tests.fixtures.anvil_node import anvil_accounts

    deployer, hot = anvil_accounts(10)[9], anvil_accounts(10)[8]
    monkeypatch.setenv("CITY_CHAIN_PRIVATE_KEY", "0x" + deployer.key.hex().removeprefix("0x"))
    out = tmp_path / "busan.json"
    argv = [
        "chain",
        "deploy",
        "--rpc",
        anvil_url,
        "--network",
        "busan",
        "--out",
        str(out),
        "--registrar",
        hot.address,
        "--chain-id",
        "31337",
    ]
    assert city_server(argv) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "busan"
    network = NetworkConfig.load(out).require_complete()
    root = Registrar(network, RpcClient(HttpTransport(network.rpc_url)), deployer)
    assert root.issuers.root() == deployer.address and not root.dids.is_registrar(deployer.address)
    city = Registrar(network, RpcClient(HttpTransport(network.rpc_url)), hot)
    identity = identity_from_public_hash(os.urandom(32))
    key = p256()
    city.enroll_citizens([(identity, [key])])
    assert p256_keys(DIDResolver(city.client, network).document(city.did_of(identity))) == (key,)
    assert city_server([*argv[:-2], "--chain-id", "1"]) == 1
    assert "not the expected 1" in capsys.readouterr().err
    assert city_server(["chain", "check", str(out)]) == 0
    assert "all contracts present" in capsys.readouterr().out


@pytest.mark.anvil
def test_anvil_reorg_drops_a_revocation(anvil_chain, tmp_path):
    """A real node reorganisation (anvil_reorg replaces the last blocks) drops a revocation the cache saw."""
    city = Registrar(anvil_chain.network, anvil_chain.client(), anvil_chain.accounts[0])
    holder_did, _keys, _k, ref = _credential(city)
    cache = SyncCache(anvil_chain.client(), city.network, tmp_path / "kiosk.sqlite", confirmations=0)
    cache.sync()
    (receipt,) = city.revoke(ref.list_id, [ref.index])
    anvil_chain.mine(1)
    cache.sync()
    assert cache.verification_facts(city.did, holder_did, VCT, ref).status is CredentialStatus.REVOKED
    depth = anvil_chain.block_number() - receipt.block_number + 1
    anvil_chain.rpc("anvil_reorg", depth, [])  # same height, new hashes, the revocation is gone
    assert not city.sender.still_canonical(receipt)
    cache.sync()
    assert cache.verification_facts(city.did, holder_did, VCT, ref).status is CredentialStatus.VALID
    assert (
        LiveChainView(anvil_chain.client(), city.network)
        .verification_facts(city.did, holder_did, VCT, ref)
        .status
        is CredentialStatus.VALID
    )


_NAMES = [
    "did/pub/Multikey/sigAuth/hex",
    "did/pub/Multikey/veriKey/hex",
    "did/pub/Secp256k1/veriKey/hex",
    "did/pub/Ed25519/veriKey/base58",
    "did/pub/X25519/enc/base64",
    "did/pub/RSA/veriKey/pem",
    "did/pub/Multikey",
    "did/svc/HubService",
    "did/svc/Linked",
    "not/a/did/attribute",
]


def test_random_histories_resolve_like_the_standard_resolver(chain_env, city, rpc_url):
    """Random ERC-1056 histories (attributes of every kind, delegates, revocations, owner changes) written by
    our code: our resolver and ethr-did-resolver must return identical resolution results for every DID."""
    rng = random.Random(1056)
    net = chain_env.network
    identities = [identity_from_public_hash(rng.randbytes(32)) for _ in range(8)]
    city.enroll_citizens([(i, [p256()]) for i in identities])
    written: dict[str, list[tuple[bytes, bytes]]] = {i: [] for i in identities}
    reqs = []
    for identity in identities:
        for _ in range(rng.randint(1, 7)):
            op = rng.random()
            if op < 0.55:
                name = rng.choice(_NAMES)
                value = (
                    p256()
                    if "Multikey" in name
                    else json.dumps({"uri": f"https://svc{rng.randint(0, 9)}.example"}).encode()
                    if name.startswith("did/svc") and rng.random() < 0.5
                    else rng.choice(
                        [b"https://hub.example/x", rng.randbytes(rng.randint(1, 40)), b"\xff\xfe"]
                    )
                )
                written[identity].append((name32(name), value))
                reqs.append(city.dids.tx("setAttribute", identity, name32(name), value, 10**8))
            elif op < 0.75 and written[identity]:
                name, value = rng.choice(written[identity])
                reqs.append(city.dids.tx("revokeAttribute", identity, name, value))
            elif op < 0.9:
                kind = name32(rng.choice(["sigAuth", "veriKey", "other"]))
                reqs.append(
                    city.dids.tx("addDelegate", identity, kind, rng.choice(chain_env.accounts).address, 10**8)
                )
            else:
                kind = name32(rng.choice(["sigAuth", "veriKey"]))
                reqs.append(
                    city.dids.tx("revokeDelegate", identity, kind, rng.choice(chain_env.accounts).address)
                )
    reqs.append(
        city.dids.tx("setAttribute", identities[0], bytes.fromhex("ff" * 32), b"non-utf8 name", 10**8)
    )
    city.sender.send_many(reqs)
    city.sender.send(city.dids.tx("changeOwner", identities[1], chain_env.accounts[4].address))
    city.sender.send(city.dids.tx("changeOwner", identities[2], NULL_ADDRESS))
    dids = [city.did_of(i) for i in identities]
    standard, now = standard_resolve(chain_env, rpc_url, dids)
    ours = DIDResolver(chain_env.client(), net)
    for did in dids:
        assert ours.resolve(did, now=now) == standard[did], did
    assert standard[dids[2]]["didDocumentMetadata"]["deactivated"] is True
