"""Contracts on the embedded chain: access control, batch operations, status packing, trust, anchors."""

from __future__ import annotations

import os
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cityid.chain.bindings import name32
from cityid.chain.errors import TransactionRevertedError
from cityid.chain.merkle import build_tree, compute_root
from cityid.chain.resolver import identity_from_public_hash
from cityid.chain.view import CredentialStatus
from server.chain.registrar import CITIZEN_KEY_ATTR, Registrar, check_p256_point


def p256() -> bytes:
    return (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )


def new_identity() -> str:
    return identity_from_public_hash(os.urandom(32))


@pytest.fixture
def city(embedded_chain):
    return Registrar(embedded_chain.network, embedded_chain.client(), embedded_chain.accounts[0])


@pytest.fixture
def stranger(embedded_chain):
    return Registrar(embedded_chain.network, embedded_chain.client(), embedded_chain.accounts[1])


def test_enroll_batch_sets_owner_changed_and_events(city):
    ids = [new_identity() for _ in range(5)]
    keys = [[p256()] for _ in ids]
    (receipt,) = city.enroll_citizens(list(zip(ids, keys, strict=True)))
    for identity in ids:
        assert city.dids.identity_owner(identity) == city.address
        assert city.dids.changed(identity) == receipt.block_number
    events = [city.dids.decode_log(log) for log in receipt.logs]
    assert [e.name for e in events] == ["DIDOwnerChanged", "DIDAttributeChanged"] * 5
    attr = events[1].args
    assert attr["name"] == name32(CITIZEN_KEY_ATTR)
    assert attr["value"] == keys[0][0]
    assert attr["previousChange"] == 0


def test_enroll_needs_registrar_role(city, stranger):
    with pytest.raises(TransactionRevertedError, match="NotRegistrar"):
        stranger.enroll_citizens([(new_identity(), [p256()])])
    city.add_registrar(stranger.address)
    stranger.enroll_citizens([(new_identity(), [p256()])])
    city.add_registrar(stranger.address, False)
    with pytest.raises(TransactionRevertedError, match="NotRegistrar"):
        stranger.enroll_citizens([(new_identity(), [p256()])])


def test_only_admin_grants_registrars(stranger):
    with pytest.raises(TransactionRevertedError, match="NotAdmin"):
        stranger.add_registrar(stranger.address)


def test_registrar_cannot_claim_identity_owned_elsewhere(city, stranger):
    identity = new_identity()
    city.enroll_citizens([(identity, [p256()])])
    city.add_registrar(stranger.address)
    with pytest.raises(TransactionRevertedError, match="AlreadyClaimed"):
        stranger.enroll_citizens([(identity, [p256()])])
    # an identity that acted for itself (changed != 0, owner unset) cannot be claimed either
    own = stranger.address
    stranger.sender.send(stranger.dids.tx("setAttribute", own, name32("did/svc/Test"), b"x", 60))
    with pytest.raises(TransactionRevertedError, match="AlreadyClaimed"):
        city.enroll_citizens([(own, [p256()])])


def test_re_enroll_adds_keys_and_links_previous_change(city):
    identity = new_identity()
    (first,) = city.enroll_citizens([(identity, [p256()])])
    (second,) = city.enroll_citizens([(identity, [p256(), p256()])])
    events = [city.dids.decode_log(log) for log in second.logs]
    assert [e.name for e in events] == ["DIDAttributeChanged"] * 2
    assert all(e.args["previousChange"] == first.block_number for e in events)


def test_owner_only_attribute_changes(city, stranger):
    identity = new_identity()
    key = p256()
    city.enroll_citizens([(identity, [key])])
    with pytest.raises(TransactionRevertedError, match="NotOwner"):
        stranger.revoke_key(identity, key)
    receipt = city.revoke_key(identity, key)
    (ev,) = [city.dids.decode_log(log) for log in receipt.logs]
    assert ev.args["validTo"] == 0


def test_malformed_batch_and_bad_points_rejected(city):
    with pytest.raises(TransactionRevertedError, match="MalformedBatch"):
        city.sender.send(city.dids.tx("enrollBatch", name32(CITIZEN_KEY_ATTR), 60, bytes(21)))
    with pytest.raises(TransactionRevertedError, match="MalformedBatch"):
        city.sender.send(city.dids.tx("enrollBatch", name32(CITIZEN_KEY_ATTR), 60, os.urandom(20) + b"\x01"))
    with pytest.raises(ValueError, match="65 bytes"):
        city.enroll_citizens([(new_identity(), [b"\x04" + bytes(10)])])
    with pytest.raises(ValueError, match="not on the P-256 curve"):
        check_p256_point(b"\x04" + bytes(64))


def test_change_owner_signed_follows_erc1056_digest_with_chain_id(embedded_chain, city):
    """A self-owned identity hands itself to the registrar with a meta-transaction (ERC-1056 *Signed, with
    the chain id added to the digest: docs/chain.md §DID registry)."""
    from eth_utils import keccak

    from cityid.chain.bindings import signed_digest

    holder = embedded_chain.accounts[3]
    nonce = city.dids.read("nonce", holder.address)[0]
    registry = bytes.fromhex(city.dids.address[2:])
    digest = keccak(
        b"\x19\x00"
        + registry
        + embedded_chain.network.chain_id.to_bytes(32, "big")
        + nonce.to_bytes(32, "big")
        + bytes.fromhex(holder.address[2:])
        + b"changeOwner"
        + bytes.fromhex(city.address[2:])
    )
    payload = b"changeOwner" + bytes.fromhex(city.address[2:])
    assert (
        signed_digest(city.dids.address, embedded_chain.network.chain_id, nonce, holder.address, payload)
        == digest
    )
    # the same call signed for another chain id (or with ERC-1056's digest, without one) is refused
    for wrong in (
        signed_digest(city.dids.address, embedded_chain.network.chain_id + 1, nonce, holder.address, payload),
        keccak(
            b"\x19\x00" + registry + nonce.to_bytes(32, "big") + bytes.fromhex(holder.address[2:]) + payload
        ),
    ):
        bad = holder.unsafe_sign_hash(wrong)
        with pytest.raises(TransactionRevertedError, match="BadSignature"):
            city.sender.send(
                city.dids.tx(
                    "changeOwnerSigned",
                    holder.address,
                    bad.v,
                    bad.r.to_bytes(32, "big"),
                    bad.s.to_bytes(32, "big"),
                    city.address,
                    gas=200_000,
                )
            )
    sig = holder.unsafe_sign_hash(digest)
    city.sender.send(
        city.dids.tx(
            "changeOwnerSigned",
            holder.address,
            sig.v,
            sig.r.to_bytes(32, "big"),
            sig.s.to_bytes(32, "big"),
            city.address,
        )
    )
    assert city.dids.identity_owner(holder.address) == city.address
    with pytest.raises(TransactionRevertedError, match="BadSignature"):  # replay: nonce moved on
        city.sender.send(
            city.dids.tx(
                "changeOwnerSigned",
                holder.address,
                sig.v,
                sig.r.to_bytes(32, "big"),
                sig.s.to_bytes(32, "big"),
                city.address,
                gas=200_000,
            )
        )


def test_status_lists_owned_and_packed(city, stranger):
    list_id = city.create_status_list()
    assert city.status.list_owner(list_id) == city.address
    with pytest.raises(TransactionRevertedError, match="NotListOwner"):
        stranger.revoke(list_id, [1])
    city.revoke(list_id, [1, 127, 128, 5000])
    city.set_status(list_id, [2, 129], CredentialStatus.SUSPENDED)
    got = city.status.statuses_of(list_id, [0, 1, 2, 127, 128, 129, 130, 5000])
    assert got == [0, 1, 2, 1, 1, 2, 0, 1]
    city.set_status(list_id, [2], CredentialStatus.VALID)  # suspension is reversible
    assert city.status.status_of(list_id, 2) == 0
    city.revoke(list_id, [1])  # idempotent
    with pytest.raises(TransactionRevertedError, match="RevokedIsFinal"):
        city.set_status(list_id, [1], CredentialStatus.VALID)
    with pytest.raises(TransactionRevertedError, match="BadStatus"):
        city.sender.send(city.status.tx("setStatus", list_id, [3], 3))
    other = stranger.create_status_list()
    assert other != list_id and city.status.list_owner(other) == stranger.address


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(0, 2000), min_size=1, max_size=40), st.sampled_from([1, 2]))
def test_status_batch_matches_model(embedded_chain, indexes, status):
    city = Registrar(embedded_chain.network, embedded_chain.client(), embedded_chain.accounts[0])
    list_id = city.create_status_list()
    # unsorted, duplicated input goes straight to the contract too
    city.sender.send(city.status.tx("setStatus", list_id, indexes, status))
    probe = sorted(set(indexes) | {i + 1 for i in indexes})
    expect = [status if i in set(indexes) else 0 for i in probe]
    assert city.status.statuses_of(list_id, probe) == expect


def test_status_event_carries_words(city):
    list_id = city.create_status_list()
    (receipt,) = city.revoke(list_id, [0, 3, 200])
    (ev,) = [city.status.decode_log(log) for log in receipt.logs]
    assert ev.name == "StatusWordsChanged"
    assert list(ev.args["wordIndexes"]) == [0, 1]
    assert list(ev.args["words"]) == [(1 << 0) | (1 << 6), 1 << ((200 - 128) * 2)]


def test_trusted_issuers(city, stranger):
    vct = "urn:busan:citizen:1"
    assert not city.issuers.is_trusted(stranger.address, vct)
    with pytest.raises(TransactionRevertedError, match="NotRoot"):
        stranger.accredit_issuer(stranger.did, vct, int(time.time()) + 3600)
    city.accredit_issuer(stranger.did, vct, int(time.time()) + 3600)
    assert city.issuers.is_trusted(stranger.address, vct)
    assert not city.issuers.is_trusted(stranger.address, vct + "x")
    with pytest.raises(TransactionRevertedError, match="NotRoot"):
        stranger.revoke_accreditation(stranger.did, vct)
    city.revoke_accreditation(stranger.did, vct)
    assert not city.issuers.is_trusted(stranger.address, vct)
    with pytest.raises(TransactionRevertedError, match="AccreditationRevokedIsFinal"):  # final
        city.accredit_issuer(stranger.did, vct, int(time.time()) + 3600)
    assert not city.issuers.is_trusted(stranger.address, vct)
    other = vct + ":expired"
    city.accredit_issuer(stranger.did, other, int(time.time()) - 10, valid_from=int(time.time()) - 100)
    assert not city.issuers.is_trusted(stranger.address, other)  # expired
    with pytest.raises(TransactionRevertedError, match="BadValidity"):
        city.accredit_issuer(stranger.did, vct, 5, valid_from=10)


def test_anchor_batch_and_proofs(city, stranger):
    docs = [os.urandom(32) for _ in range(13)]
    batch = city.anchor_batch(docs)
    for doc, proof in zip(docs, batch.proofs, strict=True):
        assert compute_root(doc, proof) == batch.root
        assert city.verify_anchor_proof(batch.root, doc, proof)
    assert not city.verify_anchor_proof(batch.root, os.urandom(32), batch.proofs[0])
    assert not city.verify_anchor_proof(os.urandom(32), docs[0], batch.proofs[0])  # not anchored
    ts, block, who = city.anchors.anchor_of(batch.root)
    assert block == batch.receipt.block_number and who == city.address and ts > 0
    with pytest.raises(TransactionRevertedError, match="AlreadyAnchored"):
        city.anchor_batch(docs)
    with pytest.raises(TransactionRevertedError, match="NotAnchorer"):
        stranger.anchor_batch([os.urandom(32)])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=33))
def test_merkle_proofs_roundtrip(docs):
    root, proofs = build_tree(docs)
    for doc, proof in zip(docs, proofs, strict=True):
        assert compute_root(doc, proof) == root


def test_revoke_keys_batch(city, stranger, embedded_chain):
    from cityid.chain.resolver import DIDResolver, p256_keys

    ids = [new_identity() for _ in range(3)]
    keys = [[p256(), p256()] for _ in ids]
    city.enroll_citizens(list(zip(ids, keys, strict=True)))
    (receipt,) = city.revoke_keys([(ids[0], keys[0][0]), (ids[1], keys[1][1]), (ids[1], keys[1][0])])
    events = [city.dids.decode_log(log) for log in receipt.logs]
    assert [e.args["validTo"] for e in events] == [0, 0, 0]
    resolver = DIDResolver(embedded_chain.client(), city.network)
    assert p256_keys(resolver.document(city.did_of(ids[0]))) == (keys[0][1],)
    assert p256_keys(resolver.document(city.did_of(ids[1]))) == ()
    assert p256_keys(resolver.document(city.did_of(ids[2]))) == tuple(keys[2])
    with pytest.raises(TransactionRevertedError, match="NotOwner"):
        stranger.revoke_keys([(ids[2], keys[2][0])])
    with pytest.raises(TransactionRevertedError, match="MalformedBatch"):
        city.sender.send(city.dids.tx("revokeKeysBatch", name32(CITIZEN_KEY_ATTR), bytes(83)))


def test_calldata_and_event_decoding_match_web3s_own(city):
    """The per-function / per-event plans give exactly what web3's encode_abi / get_event_data give."""
    from cityid.chain.contracts import Events

    multicall = city.dids  # any binding
    identity = new_identity()
    calls = [
        ("setAttribute", (identity, name32(CITIZEN_KEY_ATTR), p256(), 3600)),
        ("changed", (identity,)),
        ("enrollBatch", (name32(CITIZEN_KEY_ATTR), 60, bytes(85))),
    ]
    for fn, args in calls:
        assert multicall.encode(fn, *args).hex() == multicall.contract.encode_abi(fn, args=list(args))[2:]
    (receipt,) = city.enroll_citizens([(identity, [p256(), p256()])])
    events = Events.of("CityDIDRegistry")
    decoded = [events.decode(dict(log)) for log in receipt.logs]
    assert [e.name for e in decoded if e] == ["DIDOwnerChanged", "DIDAttributeChanged", "DIDAttributeChanged"]
    assert decoded == [events.decode_with_web3(dict(log)) for log in receipt.logs]
    assert decoded[1] is not None and decoded[1].args["identity"] == identity


def test_clients_go_through_web3_with_per_client_round_trips(embedded_chain):
    """RpcClient is a web3 handle: web3 calls and raw batches both count, per client, on one provider."""
    one, two = embedded_chain.client(), embedded_chain.client()
    assert one.provider is two.provider  # the same in-process EthereumTesterProvider
    assert one.w3.eth.chain_id == embedded_chain.network.chain_id  # a web3 call: 1 round trip
    one.batch([("eth_blockNumber", []), ("eth_chainId", [])])  # a provider batch: 1 round trip
    assert (one.round_trips, two.round_trips) == (2, 0)
