"""did:ethr resolver rules (ethr-did-resolver parity), views with one round trip, sync cache, staleness."""

from __future__ import annotations

import base64
import os
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cityid.chain.bindings import name32
from cityid.chain.errors import StaleChainDataError
from cityid.chain.live import LiveChainView, StatusListMismatchError
from cityid.chain.resolver import (
    DidEvent,
    DIDResolver,
    InvalidDidError,
    address_of,
    build_document,
    identity_from_public_hash,
    p256_keys,
    parse_did,
)
from cityid.chain.sync import SyncCache
from cityid.chain.view import CredentialStatus, StatusRef
from server.chain.registrar import Registrar

VCT = "urn:busan:citizen:1"


def p256() -> bytes:
    return (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )


@pytest.fixture
def city(embedded_chain):
    return Registrar(embedded_chain.network, embedded_chain.client(), embedded_chain.accounts[0])


def test_parse_did_forms():
    addr = "0x" + "ab" * 20
    p = parse_did(f"did:ethr:busan:{addr}")
    assert p.network == "busan" and p.address.lower() == addr and p.public_key is None
    assert parse_did(f"did:ethr:{addr}").network == "mainnet"
    assert parse_did(f"did:ethr:0x1f:{addr}#controller").network == "0x1f"
    for bad in ["did:web:x", f"did:ethr:busan:{addr[:-1]}", "did:ethr:busan:0xZZ", 7]:
        with pytest.raises(InvalidDidError):
            parse_did(bad)  # type: ignore[arg-type]


def test_address_of_checks_network(city):
    did = city.did
    assert address_of(city.network, did) == city.address
    assert address_of(city.network, f"did:ethr:{hex(city.network.chain_id)}:{city.address}") == city.address
    with pytest.raises(InvalidDidError, match="not on network"):
        address_of(city.network, f"did:ethr:other:{city.address}")


def test_document_rules_match_ethr_did_resolver():
    did = "did:ethr:busan:0x" + "11" * 20
    addr = "0x" + "11" * 20
    key = "04" + "22" * 64
    ev = [
        DidEvent(
            "DIDAttributeChanged",
            1,
            0,
            type_or_name="did/pub/Multikey/sigAuth/hex",
            delegate_or_value="0x" + key,
            valid_to=2000,
        ),
        DidEvent(
            "DIDDelegateChanged",
            2,
            0,
            type_or_name="veriKey",
            delegate_or_value="0x" + "33" * 20,
            valid_to=2000,
        ),
        DidEvent(
            "DIDAttributeChanged",
            3,
            0,
            type_or_name="did/svc/HubService",
            delegate_or_value="0x" + b"https://hub.example".hex(),
            valid_to=2000,
        ),
        DidEvent(
            "DIDAttributeChanged",
            4,
            0,
            type_or_name="did/pub/Multikey/veriKey/hex",
            delegate_or_value="0x" + key,
            valid_to=500,
        ),  # expired
        DidEvent(
            "DIDAttributeChanged",
            5,
            0,
            type_or_name="did/pub/Ed25519/enc/base64",
            delegate_or_value="0x" + "44" * 32,
            valid_to=2000,
        ),
    ]
    doc = build_document(did, addr, ev, 1, now=1000).document
    ids = [vm["id"].split("#")[1] for vm in doc["verificationMethod"]]
    # counters advance for expired entries too, exactly like the standard resolver
    assert ids == ["controller", "delegate-1", "delegate-2", "delegate-4"]
    assert doc["verificationMethod"][1] == {
        "id": f"{did}#delegate-1",
        "type": "Multikey",
        "controller": did,
        "publicKeyHex": key,
    }
    assert doc["authentication"] == [f"{did}#controller", f"{did}#delegate-1"]
    assert doc["assertionMethod"] == [f"{did}#controller", f"{did}#delegate-1", f"{did}#delegate-2"]
    assert doc["service"] == [
        {"id": f"{did}#service-1", "type": "HubService", "serviceEndpoint": "https://hub.example"}
    ]
    assert doc["keyAgreement"] == [f"{did}#delegate-4"]
    enc = doc["verificationMethod"][3]
    assert enc["type"] == "Ed25519"  # "Ed25519KeyAgreementKey2019" is not in the legacy map
    assert enc["publicKeyBase64"] == base64.b64encode(bytes([0x44] * 32)).decode()
    # revocation removes; owner change to zero deactivates
    revoked = [
        *ev,
        DidEvent(
            "DIDAttributeChanged",
            6,
            0,
            type_or_name="did/pub/Multikey/sigAuth/hex",
            delegate_or_value="0x" + key,
            valid_to=0,
        ),
    ]
    assert p256_keys(build_document(did, addr, revoked, 1, now=1000).document) == ()
    dead = build_document(
        did, addr, [*ev, DidEvent("DIDOwnerChanged", 7, 0, owner="0x" + "00" * 20)], 1, 1000
    )
    assert dead.deactivated and dead.document["verificationMethod"] == []


def test_resolver_on_chain(city, embedded_chain):
    identity = identity_from_public_hash(os.urandom(32))
    k1, k2 = p256(), p256()
    (receipt,) = city.enroll_citizens([(identity, [k1, k2])])
    resolver = DIDResolver(embedded_chain.client(), city.network)
    did = city.did_of(identity)
    result = resolver.resolve(did)
    doc = result["didDocument"]
    assert doc["@context"][0] == "https://www.w3.org/ns/did/v1"
    assert doc["verificationMethod"][0]["blockchainAccountId"].endswith(city.address)  # registrar controls
    assert p256_keys(doc) == (k1, k2)
    assert result["didDocumentMetadata"]["versionId"] == str(receipt.block_number)
    city.revoke_key(identity, k1)
    assert p256_keys(resolver.document(did)) == (k2,)
    assert (
        resolver.resolve("did:ethr:elsewhere:" + identity)["didResolutionMetadata"]["error"]
        == "unknownNetwork"
    )
    assert resolver.resolve("did:nope")["didResolutionMetadata"]["error"] == "invalidDid"
    assert "@context" not in resolver.resolve(did, accept="application/did+json")["didDocument"]


def _setup_credential(city):
    holder = identity_from_public_hash(os.urandom(32))
    card = p256()
    issuer_key = p256()
    city.enroll_citizens([(holder, [card])])
    city.publish_issuer_key(issuer_key)
    city.accredit_issuer(city.did, VCT, int(time.time()) + 3600)
    list_id = city.create_status_list()
    return city.did_of(holder), card, issuer_key, city.status_ref(list_id, 7)


def test_live_view_one_round_trip(city, embedded_chain):
    holder_did, card, issuer_key, ref = _setup_credential(city)
    view = LiveChainView(embedded_chain.client(), city.network)
    facts = view.verification_facts(city.did, holder_did, VCT, ref)
    assert facts.round_trips == 1 and view.client.round_trips == 1
    assert facts.holder_keys == (card,) and facts.issuer_keys == (issuer_key,)
    assert facts.issuer_trusted and facts.status is CredentialStatus.VALID
    city.revoke(ref.list_id, [ref.index])
    facts = view.verification_facts(city.did, holder_did, VCT, ref)
    assert facts.status is CredentialStatus.REVOKED and facts.round_trips == 1
    assert not view.verification_facts(city.did, holder_did, VCT + "2", ref).issuer_trusted
    wrong = StatusRef(ref.chain_id + 1, ref.registry, ref.list_id, ref.index)
    with pytest.raises(StatusListMismatchError):
        view.verification_facts(city.did, holder_did, VCT, wrong)


def test_sync_cache_warm_zero_round_trips_and_follows(city, embedded_chain, tmp_path):
    holder_did, card, _issuer_key, ref = _setup_credential(city)
    cache = SyncCache(embedded_chain.client(), city.network, tmp_path / "c.sqlite", confirmations=0)
    cache.sync()
    before = cache.client.round_trips
    facts = cache.verification_facts(city.did, holder_did, VCT, ref)
    assert cache.client.round_trips == before and facts.round_trips == 0
    live = LiveChainView(embedded_chain.client(), city.network).verification_facts(
        city.did, holder_did, VCT, ref
    )
    assert (facts.holder_keys, facts.issuer_keys, facts.issuer_trusted, facts.status) == (
        live.holder_keys,
        live.issuer_keys,
        live.issuer_trusted,
        live.status,
    )
    city.revoke(ref.list_id, [ref.index])
    city.revoke_key(address_of(city.network, holder_did), card)
    city.revoke_accreditation(city.did, VCT)
    assert (
        cache.verification_facts(city.did, holder_did, VCT, ref).status is CredentialStatus.VALID
    )  # not yet
    cache.sync()
    facts = cache.verification_facts(city.did, holder_did, VCT, ref)
    assert facts.status is CredentialStatus.REVOKED and facts.holder_keys == () and not facts.issuer_trusted
    resolved = DIDResolver(embedded_chain.client(), city.network).document(holder_did)
    resolved.pop("@context")
    assert cache.did_document(holder_did) == resolved
    cache.close()
    # persisted: a new cache on the same file answers without syncing
    again = SyncCache(embedded_chain.client(), city.network, tmp_path / "c.sqlite", confirmations=0)
    assert again.verification_facts(city.did, holder_did, VCT, ref).status is CredentialStatus.REVOKED
    assert again.client.round_trips == 0


def test_confirmation_depth(city, embedded_chain, tmp_path):
    _holder_did, _card, _k, ref = _setup_credential(city)
    cache = SyncCache(embedded_chain.client(), city.network, tmp_path / "c.sqlite", confirmations=3)
    cache.sync()
    city.revoke(ref.list_id, [ref.index])
    cache.sync()
    assert cache.status_of(ref.list_id, ref.index) is CredentialStatus.VALID  # 0 confirmations so far
    embedded_chain.mine(2)
    cache.sync()
    assert cache.status_of(ref.list_id, ref.index) is CredentialStatus.VALID
    embedded_chain.mine(1)
    cache.sync()
    assert cache.status_of(ref.list_id, ref.index) is CredentialStatus.REVOKED


def test_staleness_fails_closed(city, embedded_chain, tmp_path):
    holder_did, _card, _k, ref = _setup_credential(city)
    now = [1000.0]
    cache = SyncCache(
        embedded_chain.client(),
        city.network,
        tmp_path / "c.sqlite",
        confirmations=0,
        max_staleness=60,
        clock=lambda: now[0],
    )
    with pytest.raises(StaleChainDataError):  # never synced
        cache.verification_facts(city.did, holder_did, VCT, ref)
    cache.sync()
    assert cache.staleness() == 0
    now[0] += 59
    cache.verification_facts(city.did, holder_did, VCT, ref)
    now[0] += 2
    with pytest.raises(StaleChainDataError) as err:
        cache.verification_facts(city.did, holder_did, VCT, ref)
    assert err.value.age_seconds == pytest.approx(61) and err.value.bound_seconds == 60


def test_reorg_dropping_a_revocation(city, embedded_chain, tmp_path):
    """A revocation seen by the cache vanishes in a reorg: the cache rolls back and follows the new chain."""
    _holder_did, _card, _k, ref = _setup_credential(city)
    cache = SyncCache(embedded_chain.client(), city.network, tmp_path / "c.sqlite", confirmations=0)
    cache.sync()
    snap = embedded_chain.snapshot()
    city.revoke(ref.list_id, [ref.index])
    cache.sync()
    assert cache.status_of(ref.list_id, ref.index) is CredentialStatus.REVOKED
    embedded_chain.revert(snap)
    embedded_chain.mine(3)  # the new branch is longer and has no revocation
    other = Registrar(city.network, embedded_chain.client(), embedded_chain.accounts[0])
    other.set_status(ref.list_id, [ref.index + 1], CredentialStatus.SUSPENDED)
    cache.sync()
    assert cache.status_of(ref.list_id, ref.index) is CredentialStatus.VALID
    assert cache.status_of(ref.list_id, ref.index + 1) is CredentialStatus.SUSPENDED


def test_cache_for_another_network_starts_over(city, embedded_chain, tmp_path):
    cache = SyncCache(embedded_chain.client(), city.network, tmp_path / "c.sqlite", confirmations=0)
    cache.sync()
    assert cache.synced_block >= 1
    cache.close()
    other = SyncCache(
        embedded_chain.client(),
        city.network,
        tmp_path / "c.sqlite",
        confirmations=0,
        start_block=city.network.deploy_block + 1,
    )
    assert other.synced_block == city.network.deploy_block and other.synced_at is None


def test_name32_rejects_long_names():
    with pytest.raises(ValueError, match="longer than 32"):
        name32("did/pub/Multikey/veriKey/hex/and-more")


def test_sync_in_small_ranges_gives_the_same_replica(city, embedded_chain, tmp_path):
    holder_did, card, issuer_key, ref = _setup_credential(city)
    city.revoke(ref.list_id, [ref.index])
    small = SyncCache(
        embedded_chain.client(), city.network, tmp_path / "a.sqlite", confirmations=0, max_range=1
    )
    big = SyncCache(embedded_chain.client(), city.network, tmp_path / "b.sqlite", confirmations=0)
    assert small.sync() == big.sync()
    a = small.verification_facts(city.did, holder_did, VCT, ref)
    b = big.verification_facts(city.did, holder_did, VCT, ref)
    assert (a.holder_keys, a.issuer_keys, a.issuer_trusted, a.status, a.block_number) == (
        b.holder_keys,
        b.issuer_keys,
        b.issuer_trusted,
        b.status,
        b.block_number,
    )
    assert (
        a.holder_keys == (card,) and a.issuer_keys == (issuer_key,) and a.status is CredentialStatus.REVOKED
    )


def test_background_following(city, embedded_chain, tmp_path):
    _holder_did, _card, _k, ref = _setup_credential(city)
    cache = SyncCache(embedded_chain.client(), city.network, tmp_path / "c.sqlite", confirmations=0)
    cache.start(interval=0.05)
    try:
        city.revoke(ref.list_id, [ref.index])
        deadline = time.monotonic() + 10
        while cache.status_of(ref.list_id, ref.index) is not CredentialStatus.REVOKED:
            assert time.monotonic() < deadline, "the background sync never applied the revocation"
            time.sleep(0.02)
        # a range's rows are visible when it commits; "synced at" is recorded when the whole sync ends
        while cache.staleness() >= 5:
            assert time.monotonic() < deadline, "the background sync never recorded a completed sync"
            time.sleep(0.02)
    finally:
        cache.close()
    assert cache._thread is None
