"""A kiosk that believes no chain node: a real anvil node behind a fault proxy that lies, lags, rewinds,
disagrees, drips or sends hostile JSON. Every case is a typed ChainError (the verifier's "this kiosk cannot
check right now") or the TRUE fact — never "valid" for a revoked, unknown or never-published fact, never a
crash of the kiosk process (docs/chain.md, "Proven reads", "Agreement", "Transport")."""

from __future__ import annotations

import logging
import os
import sys
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from eth_abi import encode

from cityid.chain.bindings import DIDRegistry, Multicall, name32, vct_hash
from cityid.chain.contracts import Events
from cityid.chain.errors import ChainConfigError, MalformedReplyError, RpcTimeoutError, StaleChainDataError
from cityid.chain.live import ClockSkewError, InconsistentHistoryError, LiveChainView, RewoundChainError
from cityid.chain.proof import ProofError, accreditation_slot, did_entry_slot, status_word_slot
from cityid.chain.quorum import NoQuorumError, QuorumChainView
from cityid.chain.resolver import address_of, identity_from_public_hash
from cityid.chain.rpc import HttpTransport, RpcClient, check_json_nesting
from cityid.chain.view import ChainError, CredentialStatus
from server.chain.registrar import Registrar
from tests.fixtures.fault_proxy import FaultProxy

pytestmark = [pytest.mark.integration, pytest.mark.anvil]
VCT = "urn:busan:citizen:1"


def p256() -> bytes:
    return (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )


class World:
    """City contracts on anvil, one citizen credential, and fault proxies in front of the node."""

    def __init__(self, anvil_chain) -> None:
        self.env = anvil_chain
        self.city = Registrar(anvil_chain.network, anvil_chain.client(), anvil_chain.accounts[0])
        holder = identity_from_public_hash(os.urandom(32))
        self.card = p256()
        self.city.enroll_citizens([(holder, [self.card])])
        self.issuer_key = p256()
        self.city.publish_issuer_key(self.issuer_key)
        self.city.accredit_issuer(self.city.did, VCT, int(time.time()) + 3600)
        self.ref = self.city.status_ref(self.city.create_status_list(), 300)
        self.holder_did = self.city.did_of(holder)
        self.proxies: list[FaultProxy] = []

    def proxy(self) -> FaultProxy:
        p = FaultProxy(self.env.network.rpc_url)
        self.proxies.append(p)
        return p

    def client(self, proxy: FaultProxy, timeout: float = 5.0) -> RpcClient:
        return RpcClient(HttpTransport(proxy.url, timeout=timeout))

    def facts(self, view):
        return view.verification_facts(self.city.did, self.holder_did, VCT, self.ref)

    def close(self) -> None:
        for p in self.proxies:
            p.close()


@pytest.fixture
def world(anvil_chain):
    w = World(anvil_chain)
    yield w
    w.close()


def _not_valid(world, view, error=ChainError):
    """The fault must end in a typed ChainError (never facts saying valid)."""
    with pytest.raises(error):
        world.facts(view)


# ---- proven reads ------------------------------------------------------------------------------------------


def test_proven_read_is_one_round_trip_and_matches_the_contracts(world):
    proxy = world.proxy()
    view = LiveChainView(world.client(proxy), world.city.network)
    assert view.proofs
    facts = world.facts(view)
    assert proxy.requests == 1 and facts.round_trips == 1
    assert facts.status is CredentialStatus.VALID and facts.issuer_trusted
    assert world.card in facts.holder_keys and world.issuer_key in facts.issuer_keys
    head = world.env.rpc("eth_getBlockByNumber", "latest", False)
    assert facts.block_number == int(head["number"], 16)
    assert facts.synced_at == int(head["timestamp"], 16)  # the head's own time, never "now"
    world.city.revoke(world.ref.list_id, [world.ref.index])
    assert world.facts(view).status is CredentialStatus.REVOKED


def test_storage_slots_are_the_contracts_own(world):
    """The proven slots hold what the contracts' views return (guards the storage layout assumption)."""
    net, rpc = world.city.network, world.env.rpc
    issuer = address_of(net, world.city.did)
    holder = address_of(net, world.holder_did)

    def slot(contract: str, key: bytes) -> int:
        return int(rpc("eth_getStorageAt", net.address(contract), "0x" + key.hex(), "latest"), 16)

    world.city.revoke(world.ref.list_id, [world.ref.index])
    word = slot("status_registry", status_word_slot(world.ref.list_id, world.ref.index >> 7))
    assert (
        (word >> ((world.ref.index & 127) * 2)) & 3
        == world.city.status.status_of(world.ref.list_id, world.ref.index)
        == 1
    )
    acc = slot("trusted_issuers", accreditation_slot(issuer, vct_hash(VCT)))
    assert (
        acc & (2**64 - 1),
        (acc >> 64) & (2**64 - 1),
        bool(acc >> 128),
    ) == world.city.issuers.accreditation(issuer, VCT)
    registry = DIDRegistry(world.env.client(), net.address("did_registry"))
    for identity in (issuer, holder):
        entry = slot("did_registry", did_entry_slot(identity))
        assert entry >> 160 == registry.changed(identity) > 0
        assert entry & (2**160 - 1) == int(registry.read("owners", identity)[0], 16)


def test_rewritten_proof_or_header_fails_closed(world):
    proxy = world.proxy()
    view = LiveChainView(world.client(proxy), world.city.network)
    world.city.revoke(world.ref.list_id, [world.ref.index])

    def zero_values(call, result):  # the node claims the status word is 0 (valid)
        if call["method"] == "eth_getProof":
            for entry in result["storageProof"]:
                entry["value"] = "0x0"
        return result

    proxy.rewrite = zero_values
    assert world.facts(view).status is CredentialStatus.REVOKED  # values come from the proof, not the claim

    def flip_node(call, result):
        if call["method"] == "eth_getProof" and call["params"][0] == world.city.network.address(
            "status_registry"
        ):
            last = result["storageProof"][0]["proof"][-1]
            result["storageProof"][0]["proof"][-1] = last[:-2] + ("00" if last[-2:] != "00" else "01")
        return result

    proxy.rewrite = flip_node
    _not_valid(world, view, ProofError)

    def fake_root(call, result):
        if call["method"] == "eth_getBlockByNumber":
            result["stateRoot"] = "0x" + "11" * 32
        return result

    proxy.rewrite = fake_root
    _not_valid(world, view, ProofError)  # header no longer hashes to its hash


def test_rewritten_eth_call_is_not_believed(world):
    """A node rewriting aggregate3 answers fools an unproven view; the proven view never uses eth_call."""
    world.city.revoke(world.ref.list_id, [world.ref.index])
    proxy = world.proxy()
    mc = Multicall(world.env.client(), world.city.network.address("multicall"))

    def status_zero(call, result):
        if call["method"] != "eth_call":
            return result
        (results,) = mc.decoder("aggregate3")(bytes.fromhex(result[2:]))
        forged = [results[0], results[1], (True, encode(["uint8"], [0])), results[3]]
        return "0x" + encode(["(bool,bytes)[]"], [forged]).hex()

    proxy.rewrite = status_zero
    unproven = LiveChainView(world.client(proxy), world.city.network, proofs=False)
    assert world.facts(unproven).status is CredentialStatus.VALID  # the attack is real without proofs
    assert (
        world.facts(LiveChainView(world.client(proxy), world.city.network)).status is CredentialStatus.REVOKED
    )


def _attribute_log(world, identity: str, key: bytes, block: int, previous: int) -> dict:
    abi = Events.of("CityDIDRegistry")
    data = encode(
        ["bytes32", "bytes", "uint256", "uint256"],
        [name32("did/pub/Multikey/sigAuth/hex"), key, int(time.time()) + 86400, previous],
    )
    return {
        "address": world.city.network.address("did_registry").lower(),
        "topics": [
            "0x" + abi.topics["DIDAttributeChanged"].hex(),
            "0x" + bytes(12).hex() + identity[2:].lower(),
        ],
        "data": "0x" + data.hex(),
        "blockNumber": hex(block),
        "blockHash": "0x" + "ab" * 32,
        "logIndex": "0x63",
        "transactionHash": "0x" + "cd" * 32,
        "transactionIndex": "0x0",
        "removed": False,
    }


def test_fabricated_attribute_log_never_publishes_a_key(world):
    """A DIDAttributeChanged log the registry never emitted (its block is not in the proven change chain)."""
    proxy = world.proxy()
    view = LiveChainView(world.client(proxy), world.city.network)
    rogue = p256()
    holder = address_of(world.city.network, world.holder_did)
    never = identity_from_public_hash(os.urandom(32))  # an identity never touched on chain
    head = world.env.block_number()
    changed = DIDRegistry(world.env.client(), world.city.network.address("did_registry")).changed(holder)

    def inject(log_of):
        def rewrite(call, result):
            if call["method"] == "eth_getLogs":
                return [*result, log_of()]
            return result

        return rewrite

    for forged in (
        lambda: _attribute_log(world, holder, rogue, head, changed),  # a later "change" at the head
        lambda: _attribute_log(world, holder, rogue, changed - 1, 0),  # an earlier block outside the chain
    ):
        proxy.rewrite = inject(forged)
        _not_valid(world, view, InconsistentHistoryError)
    # the log of a never-touched identity (changed == 0): any event is fabricated
    proxy.rewrite = inject(lambda: _attribute_log(world, never, rogue, head, 0))
    with pytest.raises(InconsistentHistoryError):
        view.verification_facts(world.city.did, world.city.did_of(never), VCT, world.ref)
    # withholding the holder's logs is caught too (a revoked key cannot be hidden by dropping its event)
    proxy.rewrite = lambda call, result: [] if call["method"] == "eth_getLogs" else result
    _not_valid(world, view, InconsistentHistoryError)
    proxy.reset()
    facts = world.facts(view)
    assert rogue not in facts.holder_keys and world.card in facts.holder_keys


# ---- freshness, rewind, agreement --------------------------------------------------------------------------


def test_stale_head_fails_closed(world):
    """A node stuck before a revocation: past max_chain_age by the head's OWN timestamp → stale, typed."""
    before = world.env.block_number()
    world.city.revoke(world.ref.list_id, [world.ref.index])
    proxy = world.proxy()
    proxy.pin_latest = before
    head_time = int(world.env.rpc("eth_getBlockByNumber", hex(before), False)["timestamp"], 16)
    later = [head_time + 301.0]
    view = LiveChainView(world.client(proxy), world.city.network, clock=lambda: later[0], max_chain_age=300)
    with pytest.raises(StaleChainDataError) as err:
        world.facts(view)
    assert err.value.age_seconds >= 301
    # a head dated far in the kiosk's future is a clock/node fault, not "fresh"
    later[0] = head_time - 3600
    _not_valid(world, view, ClockSkewError)


def test_rewound_node_fails_closed(world):
    proxy = world.proxy()
    view = LiveChainView(world.client(proxy), world.city.network)
    snap = world.env.snapshot()
    world.city.revoke(world.ref.list_id, [world.ref.index])
    assert world.facts(view).status is CredentialStatus.REVOKED
    world.env.revert(snap)  # the node is rewound to an older snapshot: the revocation is gone
    with pytest.raises(RewoundChainError):
        world.facts(view)


def test_two_nodes_disagreeing_never_give_valid(world):
    before = world.env.block_number()
    world.city.revoke(world.ref.list_id, [world.ref.index])
    honest, liar, other = world.proxy(), world.proxy(), world.proxy()
    liar.pin_latest = before  # a lagging (or lying) node that does not know the revocation
    two = QuorumChainView([world.client(honest), world.client(liar)], world.city.network, quorum=2)
    _not_valid(world, two, NoQuorumError)
    assert (
        LiveChainView(world.client(liar), world.city.network)
        .verification_facts(world.city.did, world.holder_did, VCT, world.ref)
        .status
        is CredentialStatus.VALID
    )  # alone, the liar would have said valid (within the age bound)
    three = QuorumChainView(
        [world.client(honest), world.client(liar), world.client(other)], world.city.network, quorum=2
    )
    facts = world.facts(three)
    assert facts.status is CredentialStatus.REVOKED and facts.round_trips == 1
    assert other.requests == 1  # the two honest nodes agreed at once: one round trip per node


def test_quorum_catches_a_log_fabricated_inside_a_real_change(world):
    """A forged event in the block of a real change passes the consistency check alone; nodes must agree."""
    honest, liar = world.proxy(), world.proxy()
    holder = address_of(world.city.network, world.holder_did)
    changed = DIDRegistry(world.env.client(), world.city.network.address("did_registry")).changed(holder)
    rogue = p256()
    liar.rewrite = lambda call, result: (
        [*result, _attribute_log(world, holder, rogue, changed, changed)]
        if call["method"] == "eth_getLogs"
        else result
    )
    view = QuorumChainView([world.client(honest), world.client(liar)], world.city.network, quorum=2)
    _not_valid(world, view, NoQuorumError)
    started = time.perf_counter()
    facts = QuorumChainView([world.client(honest), world.client(world.proxy())], world.city.network, 2)
    assert rogue not in world.facts(facts).holder_keys
    assert time.perf_counter() - started < 5


# ---- transport -------------------------------------------------------------------------------------------


def test_200k_deep_reply_is_a_typed_error_not_a_crash(world):
    import py_ecc  # noqa: F401  # raises the recursion limit, as in the kiosk process

    assert sys.getrecursionlimit() >= 100_000
    proxy = world.proxy()
    proxy.raw = b"[" * 200_000 + b"]" * 200_000
    _not_valid(world, LiveChainView(world.client(proxy), world.city.network), MalformedReplyError)
    proxy.raw = b'{"jsonrpc":"2.0","id":1,"result":' + b'{"a":' * 200_000 + b"1" + b"}" * 200_001
    with pytest.raises(MalformedReplyError):
        world.client(proxy).request("eth_blockNumber")
    check_json_nesting(b'["[[[[[[[[", {"a": [1, 2]}]')  # brackets inside strings do not count


def test_dripping_reply_hits_one_deadline(world):
    proxy = world.proxy()
    proxy.drip = 0.05  # every byte "arrives" well within a per-read timeout
    view = LiveChainView(world.client(proxy, timeout=1.0), world.city.network)
    started = time.monotonic()
    _not_valid(world, view, RpcTimeoutError)
    assert time.monotonic() - started < 2.5


def test_oversized_reply_is_refused(world):
    proxy = world.proxy()
    proxy.raw = b'{"jsonrpc":"2.0","id":1,"result":"0x' + b"0" * 2_000_000 + b'"}'
    client = RpcClient(HttpTransport(proxy.url, max_reply_bytes=1_000_000))
    with pytest.raises(MalformedReplyError, match="exceeds"):
        client.request("eth_blockNumber")


@pytest.mark.parametrize(
    "edit",
    [
        lambda reply: [{**r, "id": [r["id"]]} for r in reply],  # unhashable ids
        lambda reply: [{**r, "id": {"x": 1}} for r in reply],
        lambda reply: [{**r, "result": {"topics": 7}} if isinstance(r["result"], list) else r for r in reply],
        lambda reply: [
            {**r, "result": [{"topics": 7}]} if isinstance(r["result"], list) else r for r in reply
        ],
        lambda reply: [{**r, "result": 12} for r in reply],
        lambda reply: [
            {**r, "result": {**r["result"], "number": 5}} if "stateRoot" in str(r["result"]) else r
            for r in reply
        ],
        lambda reply: [
            {**r, "result": {"accountProof": "0x00", "storageProof": 3}}
            if "accountProof" in str(r["result"])
            else r
            for r in reply
        ],
        lambda reply: {"jsonrpc": "2.0", "id": None, "result": reply},
        lambda reply: [None] * len(reply),
    ],
)
def test_malformed_replies_are_typed(world, edit):
    proxy = world.proxy()
    proxy.edit_reply = edit
    _not_valid(world, LiveChainView(world.client(proxy), world.city.network), ChainError)


def test_plain_http_off_the_loopback_is_refused(caplog):
    with pytest.raises(ChainConfigError, match="https"):
        HttpTransport("http://10.0.0.7:8545")
    HttpTransport("https://10.0.0.7:8545")
    HttpTransport("http://[::1]:8545")
    with caplog.at_level(logging.WARNING):
        HttpTransport("http://10.0.0.7:8545", allow_plain=True)
    assert "INSECURE" in caplog.text


# ---- kiosk sync cache -----------------------------------------------------------------------------------


def _cache(world, tmp_path, **kw):
    from cityid.chain.sync import SyncCache

    kw.setdefault("proofs", True)  # the kiosk's setting: applied events spot-checked with eth_getProof
    return SyncCache(world.env.client(), world.city.network, tmp_path / "kiosk.sqlite", confirmations=0, **kw)


def test_poisoned_list_and_huge_values_neither_stop_sync_nor_hide_a_revocation(world, tmp_path):
    from cityid.chain.sync import FOREVER

    attacker = Registrar(world.city.network, world.env.client(), world.env.accounts[3])
    rogue_list = attacker.create_status_list()
    attacker.revoke(rogue_list, [2**70])  # any account may do this to its own list
    world.city.accredit_issuer(world.city.did, VCT, 2**64 - 1)  # "no end" — beyond SQLite's INTEGER
    every = _cache(world, tmp_path)  # follows every list: the poisoned event is rejected, sync goes on
    (tmp_path / "x").mkdir()
    scoped = _cache(world, tmp_path / "x", status_lists=[world.ref.list_id], issuers=[world.city.address])
    for cache in (every, scoped):
        cache.sync()
        facts = world.facts(cache)
        assert facts.status is CredentialStatus.VALID and facts.issuer_trusted
    assert every.rejected_events == 1 and scoped.rejected_events == 0
    assert every._accreditation(world.city.address, "0x" + vct_hash(VCT).hex())[1] == FOREVER
    world.city.revoke(world.ref.list_id, [world.ref.index])  # a later revocation is not hidden
    attacker.revoke(rogue_list, [2**70 + 1])
    for cache in (every, scoped):
        cache.sync()
        assert world.facts(cache).status is CredentialStatus.REVOKED
    # a credential on a list the kiosk does not follow is an error, never "valid" from an empty table
    with pytest.raises(ChainError):
        scoped.verification_facts(world.city.did, world.holder_did, VCT, world.city.status_ref(rogue_list, 1))


def test_cache_refuses_after_a_rewind_until_resynced(world, tmp_path, caplog):
    from cityid.chain.sync import ChainResetError

    cache = _cache(world, tmp_path)
    snap = world.env.snapshot()
    world.city.revoke(world.ref.list_id, [world.ref.index])
    world.env.mine(2)
    cache.sync()
    assert world.facts(cache).status is CredentialStatus.REVOKED
    world.env.revert(snap)  # node reset to an older snapshot: head below the checkpoint
    with caplog.at_level(logging.ERROR):
        cache.sync()
    assert "ALARM" in caplog.text
    assert cache.resyncing
    with pytest.raises(ChainResetError):
        world.facts(cache)
    world.env.mine(5)  # the chain grows past the old checkpoint: resynced, answers the chain's truth
    cache.sync()
    assert not cache.resyncing
    assert world.facts(cache).status is CredentialStatus.VALID


def test_cache_behind_a_stuck_node_goes_stale(world, tmp_path):
    from cityid.chain.sync import SyncCache

    proxy = world.proxy()
    now = [time.time()]
    cache = SyncCache(
        world.client(proxy),
        world.city.network,
        tmp_path / "k.sqlite",
        confirmations=0,
        max_staleness=60,
        max_chain_age=60,
        clock=lambda: now[0],
    )
    cache.sync()
    assert world.facts(cache).status is CredentialStatus.VALID
    proxy.pin_latest = world.env.block_number()  # the node stops following the chain
    world.city.revoke(world.ref.list_id, [world.ref.index])
    now[0] += 120
    with pytest.raises(StaleChainDataError):
        cache.sync()  # the head is 120 s old by its own timestamp: not current
    with pytest.raises(StaleChainDataError):
        world.facts(cache)  # past max_staleness: fail closed


def test_cache_spot_checks_events_against_proofs(world, tmp_path):
    """A forged log in an eth_getLogs reply (a key never published, a revocation "undone") is caught by
    eth_getProof of the storage it claims to change; nothing of that range is applied."""
    from cityid.chain.sync import SyncCache

    proxy = world.proxy()
    cache = SyncCache(
        world.client(proxy), world.city.network, tmp_path / "k.sqlite", confirmations=0, proofs=True
    )
    cache.sync()
    assert world.facts(cache).status is CredentialStatus.VALID
    holder = address_of(world.city.network, world.holder_did)
    rogue = p256()
    world.env.mine(1)

    def forge(call, result):
        if call["method"] == "eth_getLogs" and "fromBlock" in call["params"][0]:
            start = int(call["params"][0]["fromBlock"], 16)
            log = _attribute_log(world, holder, rogue, start, 0)
            log["blockHash"] = world.env.rpc("eth_getBlockByNumber", hex(start), False)["hash"]
            return [*result, log]
        return result

    proxy.rewrite = forge
    synced = cache.synced_block
    with pytest.raises(ProofError):
        cache.sync()
    assert cache.synced_block == synced and rogue not in world.facts(cache).holder_keys
    proxy.reset()
    world.city.revoke(world.ref.list_id, [world.ref.index])
    cache.sync()
    assert world.facts(cache).status is CredentialStatus.REVOKED


@pytest.mark.parametrize(
    "fault",
    [
        ("raw", b"[" * 200_000 + b"]" * 200_000),
        ("edit", lambda reply: [{**r, "id": [r["id"]]} for r in reply] if isinstance(reply, list) else reply),
        (
            "edit",
            lambda reply: (
                [{**r, "result": {"topics": 7}} for r in reply] if isinstance(reply, list) else reply
            ),
        ),
        ("edit", lambda reply: [{**r, "result": None} for r in reply] if isinstance(reply, list) else reply),
        ("drip", 0.05),
    ],
    ids=["deep", "unhashable-id", "numeric-topics", "null-results", "drip"],
)
def test_cache_sync_faults_are_typed_and_keep_the_last_good_state(world, tmp_path, fault):
    from cityid.chain.sync import SyncCache

    proxy = world.proxy()
    cache = SyncCache(
        world.client(proxy, timeout=1.0),
        world.city.network,
        tmp_path / "k.sqlite",
        confirmations=0,
        proofs=True,
    )
    cache.sync()
    world.city.revoke(world.ref.list_id, [world.ref.index])
    kind, value = fault
    setattr(proxy, {"raw": "raw", "edit": "edit_reply", "drip": "drip"}[kind], value)
    with pytest.raises(ChainError):
        cache.sync()
    assert world.facts(cache).status is CredentialStatus.VALID  # last good state, within the bound
    proxy.reset()
    cache.sync()
    assert world.facts(cache).status is CredentialStatus.REVOKED


def _self_signed(tmp_path):
    import datetime
    import ipaddress
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    client = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    return server, client


def test_https_node_proven_read_and_deadline(world, tmp_path):
    """The same transport over TLS: proven read through an https proxy, one deadline, unknown cert refused."""
    import ssl

    from cityid.chain.errors import NodeUnreachableError

    server_ctx, client_ctx = _self_signed(tmp_path)
    proxy = world.proxy()
    proxy.server.socket = server_ctx.wrap_socket(proxy.server.socket, server_side=True)
    url = proxy.url.replace("http://", "https://")
    view = LiveChainView(RpcClient(HttpTransport(url, ssl_context=client_ctx)), world.city.network)
    assert world.facts(view).status is CredentialStatus.VALID and world.facts(view).round_trips == 1
    with pytest.raises(NodeUnreachableError, match="TLS"):
        RpcClient(HttpTransport(url, ssl_context=ssl.create_default_context())).request("eth_blockNumber")
    proxy.drip = 0.05
    started = time.monotonic()
    with pytest.raises(RpcTimeoutError):
        RpcClient(HttpTransport(url, timeout=1.0, ssl_context=client_ctx)).request("eth_chainId")
    assert time.monotonic() - started < 2.5


def test_cache_with_peers_needs_agreeing_events(world, tmp_path):
    """A forged event inside a real change block is consistent with the proven `changed` block; with peers the
    range's events must be identical on a quorum of nodes, and alone the block's receipts must match."""
    from cityid.chain.sync import SyncCache

    honest, liar = world.proxy(), world.proxy()
    cache = SyncCache(
        world.client(liar),
        world.city.network,
        tmp_path / "k.sqlite",
        confirmations=0,
        proofs=True,
        peers=[world.client(honest)],
        quorum=2,
    )
    cache.sync()
    holder = address_of(world.city.network, world.holder_did)
    rogue = p256()
    world.city.add_key(holder, p256())  # a real change of the holder in a new block
    changed = DIDRegistry(world.env.client(), world.city.network.address("did_registry")).changed(holder)
    block_hash = world.env.rpc("eth_getBlockByNumber", hex(changed), False)["hash"]

    def forge(call, result):
        if call["method"] == "eth_getLogs" and int(call["params"][0]["fromBlock"], 16) <= changed:
            log = _attribute_log(world, holder, rogue, changed, changed)
            log["blockHash"] = block_hash
            return [*result, log]
        return result

    liar.rewrite = forge
    with pytest.raises(ChainError, match="agree"):
        cache.sync()
    assert rogue not in world.facts(cache).holder_keys
    alone = SyncCache(
        world.client(liar), world.city.network, tmp_path / "alone.sqlite", confirmations=0, proofs=True
    )
    with pytest.raises(ProofError, match="receipts"):
        alone.sync()  # alone, the forged log is consistent with `changed` — but not with the block's receipts
    with pytest.raises(StaleChainDataError):  # it never synced: fail closed, no key from the forged log
        world.facts(alone)
    liar.reset()
    cache.sync()
    assert rogue not in world.facts(cache).holder_keys
