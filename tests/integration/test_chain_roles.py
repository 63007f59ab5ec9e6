"""Roles on chain, each the smallest power that does its job (docs/chain.md §Roles), on the embedded chain
and on anvil: every state-changing function called by an account that must not have that power reverts
with a typed error; the hot registrar key cannot publish an issuer key or change accreditation; two-step
transfers; a demoted registrar controls nothing; the multicall cannot act as anyone; a `*Signed` call made
for one chain id fails on another."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from eth_account.signers.local import LocalAccount

from cityid.chain.bindings import (
    AnchorRegistry,
    DIDRegistry,
    Multicall,
    StatusRegistry,
    TrustedIssuers,
    name32,
    signed_digest,
    vct_hash,
)
from cityid.chain.errors import TransactionRevertedError
from cityid.chain.resolver import identity_from_public_hash
from cityid.credential import VCT
from server.chain.issuer import publish_issuer
from server.chain.registrar import CITIZEN_KEY_ATTR, ISSUER_KEY_ATTR, Registrar, deploy_all
from server.chain.writer import TxSender

pytestmark = pytest.mark.integration

ZERO = "0x" + "00" * 20
HOUR = 3600


def p256() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def new_identity() -> str:
    return identity_from_public_hash(os.urandom(32))


@dataclass
class Roles:
    """Fresh contracts: root deploys (admin, trusted-issuer root, anchor admin); hot = the registrar."""

    env: Any
    root: LocalAccount
    hot: LocalAccount
    stranger: LocalAccount
    old: LocalAccount  # a registrar that enrolled citizens and was then demoted
    holder: LocalAccount  # a self-owned identity (signs meta-transactions)
    network: Any

    def send(self, who: LocalAccount, binding: type, fn: str, *args: Any) -> Any:
        client = self.env.client()
        key = {
            DIDRegistry: "did_registry",
            StatusRegistry: "status_registry",
            TrustedIssuers: "trusted_issuers",
            AnchorRegistry: "anchor_registry",
            Multicall: "multicall",
        }[binding]
        contract = binding(client, self.network.address(key))
        return TxSender(client, who, self.network.chain_id).send(contract.tx(fn, *args))

    def registrar(self, who: LocalAccount) -> Registrar:
        return Registrar(self.network, self.env.client(), who)


@pytest.fixture
def roles(chain_env) -> Roles:  # type: ignore[no-untyped-def]
    a = chain_env.accounts
    network = deploy_all(
        chain_env.client(),
        a[0],
        name=chain_env.network.name,
        rpc_url=chain_env.network.rpc_url,
        registrar=a[1].address,
    )
    return Roles(chain_env, a[0], a[1], a[2], a[3], a[4], network)


def refused(action: Callable[[], Any], error: str) -> None:
    with pytest.raises(TransactionRevertedError, match=rf"\b{error}\("):
        action()


def test_every_power_refused_to_the_wrong_role(roles: Roles) -> None:
    r = roles
    root, hot, stranger = r.root, r.hot, r.stranger
    citizen, key = new_identity(), p256()
    r.registrar(hot).enroll_citizens([(citizen, [key])])
    list_id = r.registrar(hot).create_status_list()
    issuer = r.registrar(root)
    publish_issuer(issuer, p256(), VCT)  # the root's ceremony on its own DID
    packed = bytes.fromhex(new_identity()[2:]) + b"\x01" + p256()[1:]
    name, value = name32(CITIZEN_KEY_ATTR), p256()
    delegate_type = name32("sigAuth")

    for who in (root, stranger):  # registrar powers
        refused(lambda w=who: r.send(w, DIDRegistry, "enrollBatch", name, HOUR, packed), "NotRegistrar")
    for who in (hot, stranger):  # DID registry admin powers
        refused(lambda w=who: r.send(w, DIDRegistry, "proposeAdmin", w.address), "NotAdmin")
        refused(lambda w=who: r.send(w, DIDRegistry, "setRegistrar", w.address, True), "NotAdmin")
        refused(lambda w=who: r.send(w, DIDRegistry, "reassignOwner", citizen, w.address), "NotAdmin")
    refused(lambda: r.send(stranger, DIDRegistry, "acceptAdmin"), "NotPendingAdmin")
    refused(lambda: r.send(root, DIDRegistry, "proposeAdmin", ZERO), "ZeroAddress")
    refused(lambda: r.send(root, DIDRegistry, "setRegistrar", ZERO, True), "ZeroAddress")
    refused(lambda: r.send(root, DIDRegistry, "reassignOwner", citizen, root.address), "NotDemoted")

    # a citizen DID: only the registrar that enrolled it; the issuer DID: only the root
    for identity, owner in ((citizen, hot), (root.address, root)):
        for who in [w for w in (root, hot, stranger) if w is not owner]:
            calls = [
                ("changeOwner", identity, who.address),
                ("setAttribute", identity, name32(ISSUER_KEY_ATTR), value, HOUR),
                ("revokeAttribute", identity, name, key),
                ("addDelegate", identity, delegate_type, who.address, HOUR),
                ("revokeDelegate", identity, delegate_type, who.address),
            ]
            for fn, *args in calls:
                refused(lambda w=who, f=fn, a=args: r.send(w, DIDRegistry, f, *a), "NotOwner")
        for who in [w for w in (root, hot, stranger) if w is not owner]:
            batch = bytes.fromhex(identity[2:]) + key[1:]
            refused(lambda w=who, b=batch: r.send(w, DIDRegistry, "revokeKeysBatch", name, b), "NotOwner")
    # the hot key cannot claim the root's identity (the issuer DID as deployed), even if untouched
    fresh = deploy_all(
        r.env.client(), root, name=r.network.name, rpc_url=r.network.rpc_url, registrar=hot.address
    )
    hot_fresh = Registrar(fresh, r.env.client(), hot)
    refused(lambda: hot_fresh.enroll_citizens([(root.address, [p256()])]), "AlreadyClaimed")

    # trusted issuers: root only; the hot key cannot accredit, revoke or take the root
    for who in (hot, stranger):
        refused(lambda w=who: r.send(w, TrustedIssuers, "accredit", w.address, VCT, 0, 2**40), "NotRoot")
        refused(
            lambda w=who: r.send(w, TrustedIssuers, "revokeAccreditation", root.address, vct_hash(VCT)),
            "NotRoot",
        )
        refused(lambda w=who: r.send(w, TrustedIssuers, "proposeRoot", w.address), "NotRoot")
    refused(lambda: r.send(hot, TrustedIssuers, "acceptRoot"), "NotPendingRoot")
    refused(lambda: r.send(root, TrustedIssuers, "proposeRoot", ZERO), "ZeroAddress")
    refused(lambda: r.send(root, TrustedIssuers, "accredit", ZERO, VCT, 0, 2**40), "ZeroAddress")

    # status lists: the owning (hot) key only
    for who in (root, stranger):
        refused(lambda w=who: r.send(w, StatusRegistry, "setStatus", list_id, [1], 1), "NotListOwner")
        refused(
            lambda w=who: r.send(w, StatusRegistry, "proposeListOwner", list_id, w.address), "NotListOwner"
        )
    refused(lambda: r.send(stranger, StatusRegistry, "acceptListOwner", list_id), "NotPendingListOwner")
    refused(lambda: r.send(hot, StatusRegistry, "proposeListOwner", list_id, ZERO), "ZeroAddress")

    # anchors: admin (root) manages anchorers; only anchorers anchor (deploy grants the hot key, which
    # anchors certificate batches; the root can withdraw that)
    for who in (hot, stranger):
        refused(lambda w=who: r.send(w, AnchorRegistry, "proposeAdmin", w.address), "NotAdmin")
        refused(lambda w=who: r.send(w, AnchorRegistry, "setAnchorer", w.address, True), "NotAdmin")
    refused(lambda: r.send(stranger, AnchorRegistry, "anchor", os.urandom(32), 1), "NotAnchorer")
    r.send(hot, AnchorRegistry, "anchor", os.urandom(32), 1)
    r.send(root, AnchorRegistry, "setAnchorer", hot.address, False)
    refused(lambda: r.send(hot, AnchorRegistry, "anchor", os.urandom(32), 1), "NotAnchorer")
    r.send(root, AnchorRegistry, "setAnchorer", hot.address, True)
    refused(lambda: r.send(stranger, AnchorRegistry, "acceptAdmin"), "NotPendingAdmin")
    refused(lambda: r.send(root, AnchorRegistry, "proposeAdmin", ZERO), "ZeroAddress")


def test_hot_key_cannot_publish_an_issuer_key_or_accredit(roles: Roles) -> None:
    r = roles
    hot = r.registrar(r.hot)
    point = p256()
    with pytest.raises(TransactionRevertedError, match="NotOwner"):
        publish_issuer(hot, point, VCT, r.registrar(r.root).did)
    with pytest.raises(TransactionRevertedError, match="NotRoot"):
        hot.accredit_issuer(hot.did, VCT, int(time.time()) + HOUR)  # its own DID: still not accredited
    assert not hot.issuers.is_trusted(hot.address, VCT)
    assert not hot.issuers.is_trusted(r.root.address, VCT)


def test_two_step_transfers(roles: Roles) -> None:
    r = roles
    new = r.stranger
    for binding, propose, accept, read in (
        (DIDRegistry, "proposeAdmin", "acceptAdmin", "admin"),
        (TrustedIssuers, "proposeRoot", "acceptRoot", "root"),
        (AnchorRegistry, "proposeAdmin", "acceptAdmin", "admin"),
    ):
        r.send(r.root, binding, propose, new.address)
        key = {
            DIDRegistry: "did_registry",
            TrustedIssuers: "trusted_issuers",
            AnchorRegistry: "anchor_registry",
        }
        contract = binding(r.env.client(), r.network.address(key[binding]))
        assert contract.read(read)[0].lower() == r.root.address.lower()  # nothing moves before acceptance
        refused(
            lambda b=binding, a=accept: r.send(r.hot, b, a),
            "NotPending" + ("Root" if read == "root" else "Admin"),
        )
        r.send(new, binding, accept)
        assert contract.read(read)[0].lower() == new.address.lower()
    # the old root lost its powers
    refused(lambda: r.send(r.root, DIDRegistry, "setRegistrar", r.root.address, True), "NotAdmin")
    refused(lambda: r.send(r.root, TrustedIssuers, "accredit", r.root.address, VCT, 0, 2**40), "NotRoot")
    # a status list moves the same way
    hot = r.registrar(r.hot)
    list_id = hot.create_status_list()
    r.send(r.hot, StatusRegistry, "proposeListOwner", list_id, new.address)
    assert hot.status.list_owner(list_id) == r.hot.address
    r.send(new, StatusRegistry, "acceptListOwner", list_id)
    assert hot.status.list_owner(list_id) == new.address
    refused(lambda: hot.set_status(list_id, [3], 1), "NotListOwner")


def test_demoted_registrar_loses_its_dids(roles: Roles) -> None:
    r = roles
    r.send(r.root, DIDRegistry, "setRegistrar", r.old.address, True)
    old = r.registrar(r.old)
    citizen, key = new_identity(), p256()
    old.enroll_citizens([(citizen, [key])])
    old.add_key(citizen, p256())  # works while it is a registrar
    r.send(r.root, DIDRegistry, "setRegistrar", r.old.address, False)
    for action in (
        lambda: old.add_key(citizen, p256()),
        lambda: old.revoke_key(citizen, key),
        lambda: old.revoke_keys([(citizen, key)]),
        lambda: old.sender.send(old.dids.tx("changeOwner", citizen, r.old.address)),
    ):
        refused(action, "DemotedRegistrar")
    refused(lambda: old.enroll_citizens([(new_identity(), [p256()])]), "NotRegistrar")
    # the root hands the DID to the current registrar, who can then revoke the key
    r.send(r.root, DIDRegistry, "reassignOwner", citizen, r.hot.address)
    assert old.dids.identity_owner(citizen) == r.hot.address
    r.registrar(r.hot).revoke_key(citizen, key)


def test_multicall_cannot_act_as_anyone(roles: Roles) -> None:
    r = roles
    mc = Multicall(r.env.client(), r.network.address("multicall"))
    status = StatusRegistry(r.env.client(), r.network.address("status_registry"))
    dids = DIDRegistry(r.env.client(), r.network.address("did_registry"))
    count = status.list_count()
    writes = [
        (status.address, status.encode("createList")),
        (dids.address, dids.encode("changeOwner", mc.address, r.stranger.address)),
        (
            dids.address,
            dids.encode("setAttribute", mc.address, name32(ISSUER_KEY_ATTR), p256(), HOUR),
        ),
    ]
    for target, data in writes:
        refused(
            lambda t=target, d=data: r.send(r.stranger, Multicall, "aggregate3", [(t, False, d)]),
            "CallFailed",
        )
        r.send(r.stranger, Multicall, "aggregate3", [(target, True, data)])  # allowed to fail: it does
    assert status.list_count() == count
    assert dids.identity_owner(mc.address) == mc.address
    assert dids.changed(mc.address) == 0
    # reads still batch
    block, _ts, (n,) = mc.aggregate([status._call("listCount")])
    assert n[0] == count and block > 0


def test_signature_for_another_chain_id_fails(roles: Roles) -> None:
    r = roles
    hot = r.registrar(r.hot)
    holder = r.holder
    nonce = hot.dids.read("nonce", holder.address)[0]
    payload = b"changeOwner" + bytes.fromhex(r.hot.address[2:])

    def send(digest: bytes) -> None:
        sig = holder.unsafe_sign_hash(digest)
        hot.sender.send(
            hot.dids.tx(
                "changeOwnerSigned",
                holder.address,
                sig.v,
                sig.r.to_bytes(32, "big"),
                sig.s.to_bytes(32, "big"),
                r.hot.address,
            )
        )

    chain_id = r.network.chain_id
    for other in (chain_id + 1, 1, 11155111):
        refused(
            lambda c=other: send(signed_digest(hot.dids.address, c, nonce, holder.address, payload)),
            "BadSignature",
        )
    assert hot.dids.identity_owner(holder.address) == holder.address
    send(signed_digest(hot.dids.address, chain_id, nonce, holder.address, payload))
    assert hot.dids.identity_owner(holder.address) == r.hot.address


@pytest.mark.anvil
def test_root_ceremonies_cli(anvil_chain, tmp_path, monkeypatch, capsys):  # type: ignore[no-untyped-def]
    """`city-server chain root …`: grant/demote registrars and rotate the root in two steps, with the root's
    encrypted keystore only (never an environment key)."""
    import json

    from eth_account import Account

    from server.cli import main

    a = anvil_chain.accounts
    root, hot, new_hot, new_root = a[0], a[1], a[2], a[3]
    network = deploy_all(
        anvil_chain.client(), root, name="anvil", rpc_url=anvil_chain.network.rpc_url, registrar=hot.address
    )
    net = tmp_path / "network.json"
    network.save(net)
    for name, account, pw in (("root.json", root, "old-pw"), ("new.json", new_root, "new-pw")):
        (tmp_path / name).write_text(json.dumps(Account.encrypt(account.key, pw)))
    monkeypatch.setenv("CITY_CHAIN_PRIVATE_KEY", "0x" + bytes(root.key).hex())  # must be ignored
    monkeypatch.setenv("CITY_ROOT_PASSWORD", "old-pw")
    old_ks, new_ks = (
        ["--root-keystore", str(tmp_path / "root.json")],
        ["--root-keystore", str(tmp_path / "new.json")],
    )

    citizen = new_identity()
    Registrar(network, anvil_chain.client(), hot).enroll_citizens([(citizen, [p256()])])
    assert main(["chain", "root", "grant-registrar", str(net), new_hot.address, *old_ks]) == 0
    assert main(["chain", "root", "demote-registrar", str(net), hot.address, *old_ks]) == 0
    old_hot = Registrar(network, anvil_chain.client(), hot)
    refused(lambda: old_hot.add_key(citizen, p256()), "DemotedRegistrar")
    Registrar(network, anvil_chain.client(), root).reassign_owner(citizen, new_hot.address)
    Registrar(network, anvil_chain.client(), new_hot).add_key(citizen, p256())

    with pytest.raises(SystemExit):  # no keystore: refused before anything is sent
        main(["chain", "root", "propose", str(net), new_root.address])
    assert main(["chain", "root", "propose", str(net), new_root.address, *old_ks]) == 0
    capsys.readouterr()
    assert main(["chain", "root", "show", str(net), new_hot.address, hot.address]) == 0
    shown = capsys.readouterr().out
    assert f"issuer_root\t{root.address}\tpending {new_root.address}" in shown
    assert f"registrar {new_hot.address}\tTrue" in shown and f"registrar {hot.address}\tFalse" in shown
    monkeypatch.setenv("CITY_ROOT_PASSWORD", "new-pw")
    assert main(["chain", "root", "accept", str(net), *new_ks]) == 0
    assert main(["chain", "root", "accept", str(net), *new_ks]) == 1  # nothing pending any more
    roles = Registrar(network, anvil_chain.client(), new_root).root_roles()
    assert {holder.lower() for holder, _pending in roles.values()} == {new_root.address.lower()}
    old_root = Registrar(network, anvil_chain.client(), root)
    refused(lambda: old_root.add_registrar(root.address), "NotAdmin")
    refused(lambda: old_root.accredit_issuer(old_root.did, VCT, int(time.time()) + HOUR), "NotRoot")
