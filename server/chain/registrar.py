"""High-level chain API for the city server: deploy, enroll citizens, revoke keys and credentials,
accredit issuers, anchor document batches. All writes go through one :class:`TxSender`.

DID-control model (docs/chain.md): a citizen's identity address is derived from a public hash
(:func:`~cityid.chain.resolver.identity_from_public_hash`) and has no private key; the city registrar account
owns it (ERC-1056 owner = controller). The card/FIDO P-256 keys are attributes
``did/pub/Multikey/sigAuth/hex``; a lost card's key is revoked with ``revokeAttribute`` and resolvers drop it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address

from cityid.chain.bindings import (
    AnchorRegistry,
    DIDRegistry,
    StatusRegistry,
    TrustedIssuers,
    name32,
    vct_hash,
)
from cityid.chain.contracts import contract, decode_log, web3_errors
from cityid.chain.errors import ChainError
from cityid.chain.merkle import build_tree
from cityid.chain.network import NetworkConfig
from cityid.chain.resolver import address_of, did_for
from cityid.chain.rpc import RpcClient
from cityid.chain.tx import TxRequest
from cityid.chain.view import CredentialStatus, StatusRef
from cityid.keys import KeyFormatError, P256PublicKey
from server.chain.writer import Receipt, TxSender

if TYPE_CHECKING:
    from cityid.chain.embedded import EmbeddedChain

logger = logging.getLogger(__name__)

CITIZEN_KEY_ATTR = "did/pub/Multikey/sigAuth/hex"  # card / FIDO keys: authentication + assertion
ISSUER_KEY_ATTR = "did/pub/Multikey/veriKey/hex"  # issuer signing keys: assertion
DEFAULT_KEY_VALIDITY = 10 * 365 * 24 * 3600
ENROLL_CHUNK = 200  # citizens per transaction (~6 M gas)
STATUS_CHUNK = 1000  # indexes per transaction


def check_p256_point(point: bytes) -> bytes:
    """Validate an uncompressed SEC1 P-256 point (65 bytes, on the curve) with
    :class:`cityid.keys.P256PublicKey`; return it. Raises :class:`~cityid.keys.KeyFormatError`."""
    if not isinstance(point, bytes | bytearray):
        raise KeyFormatError("P-256 point must be 65 bytes, uncompressed (04 || x || y)")
    return P256PublicKey.from_point(point).point


def deploy_all(
    client: RpcClient,
    account: LocalAccount,
    *,
    name: str,
    rpc_url: str,
    multicall: str | None = None,
    registrar: str | None = None,
) -> NetworkConfig:
    """Deploy the registries (and a multicall unless one is given) from ``account`` — which becomes the city
    root: registry admin, trusted-issuer root, anchor admin — and grant the registrar role to ``registrar``
    (the server's hot key; default ``account`` itself, the single-key set-up of tests and the demo)."""
    with web3_errors():
        chain_id = client.w3.eth.chain_id
    sender = TxSender(client, account, chain_id)
    names = ["CityDIDRegistry", "CityStatusRegistry", "CityTrustedIssuers", "CityAnchorRegistry"]
    if multicall is None:
        names.append("CityMulticall")
    reqs = [TxRequest(contract(client.w3, n).constructor(), label=f"deploy {n}") for n in names]
    receipts = sender.send_many(reqs)
    addr = {n: to_checksum_address(r.contract_address or "") for n, r in zip(names, receipts, strict=True)}
    network = NetworkConfig(
        name=name,
        chain_id=chain_id,
        rpc_url=rpc_url,
        deploy_block=min(r.block_number for r in receipts),
        addresses={
            "did_registry": addr["CityDIDRegistry"],
            "status_registry": addr["CityStatusRegistry"],
            "trusted_issuers": addr["CityTrustedIssuers"],
            "anchor_registry": addr["CityAnchorRegistry"],
            "multicall": multicall or addr["CityMulticall"],
        },
    )
    hot = to_checksum_address(registrar or account.address)
    sender.send(DIDRegistry(client, addr["CityDIDRegistry"]).tx("setRegistrar", hot, True))
    # The hot key also anchors certificate batches (docs/certificates.md); the root grants and can revoke it.
    sender.send(AnchorRegistry(client, addr["CityAnchorRegistry"]).tx("setAnchorer", hot, True))
    return network


def start_embedded(name: str = "embedded", registrar_index: int = 0) -> EmbeddedChain:
    """An in-process chain with every city contract deployed (deployer and root = ``accounts[0]``, registrar
    = ``accounts[registrar_index]``)."""
    from cityid.chain.embedded import EmbeddedChain

    chain = EmbeddedChain.start(name)
    url = chain.network.rpc_url
    hot = chain.accounts[registrar_index].address
    chain.network = deploy_all(
        chain.client(), chain.accounts[0], name=name, rpc_url=url, registrar=hot
    )
    return chain


#: ``accounts[HOT_INDEX]`` is the server's hot registrar key on the embedded chain (``accounts[0]`` the root).
HOT_INDEX = 1


@dataclass(frozen=True, slots=True)
class EmbeddedRoles:
    """The accounts of an embedded chain by role (docs/chain.md §Roles)."""

    root: Registrar  # city root: admin of the registries, owner of the issuer DID and trusted-issuer list
    registrar: Registrar  # the server's hot key: citizen DIDs, citizen keys, status bits
    issuer_did: str


def bootstrap_embedded(chain: EmbeddedChain, issuer_point: bytes | None, list_id: int = 1) -> EmbeddedRoles:
    """Set up a fresh embedded chain (from :func:`start_embedded` with ``registrar_index=HOT_INDEX``) as the
    ceremonies would a real one: the hot key's status list and, with ``issuer_point``, the issuer key
    published and accredited by the root (idempotent). Root = ``accounts[0]``, hot key = ``accounts[1]``."""
    from cityid.credential import VCT
    from server.chain.issuer import ensure_status_list, publish_issuer

    client = chain.client()
    root = Registrar(chain.network, client, chain.accounts[0])
    registrar = Registrar(chain.network, client, chain.accounts[HOT_INDEX])
    if not root.dids.is_registrar(registrar.address):
        raise ChainError(
            "embedded chain was started without the hot registrar (start_embedded(…, HOT_INDEX))"
        )
    ensure_status_list(registrar, list_id)
    if issuer_point is not None:
        publish_issuer(root, issuer_point, VCT)
    return EmbeddedRoles(root, registrar, root.did)


@dataclass(frozen=True, slots=True)
class AnchoredBatch:
    """An anchored Merkle root and one proof per document hash (same order)."""

    root: bytes
    proofs: tuple[tuple[bytes, ...], ...]
    receipt: Receipt


class Registrar:
    """The city's write side (and the reads it needs to confirm its own work)."""

    def __init__(self, network: NetworkConfig, client: RpcClient, account: LocalAccount) -> None:
        self.network = network.require_complete()
        self.client = client
        self.sender = TxSender(client, account, network.chain_id)
        self.dids = DIDRegistry(client, network.address("did_registry"))
        self.status = StatusRegistry(client, network.address("status_registry"))
        self.issuers = TrustedIssuers(client, network.address("trusted_issuers"))
        self.anchors = AnchorRegistry(client, network.address("anchor_registry"))

    @property
    def address(self) -> str:
        return self.sender.address

    @property
    def did(self) -> str:
        """This account's own DID (the issuer DID when the server issues credentials)."""
        return did_for(self.network, self.address)

    def did_of(self, identity: str) -> str:
        return did_for(self.network, identity)

    def latest_timestamp(self) -> int:
        """Timestamp of the latest block (the clock contracts compare validity against)."""
        with web3_errors():
            return int(self.client.w3.eth.get_block("latest").get("timestamp", 0))

    # ---- DIDs ----
    def enroll_citizens(
        self,
        citizens: Sequence[tuple[str, Sequence[bytes]]],
        validity: int = DEFAULT_KEY_VALIDITY,
        chunk: int = ENROLL_CHUNK,
    ) -> list[Receipt]:
        """Enroll (identity address, P-256 points) pairs in batches (one tx per ``chunk`` citizens)."""
        packed: list[bytes] = []
        for identity, points in citizens:
            if not 1 <= len(points) <= 255:
                raise ValueError("each citizen needs 1 to 255 keys")
            ident = bytes.fromhex(to_checksum_address(identity)[2:])
            packed.append(ident + bytes([len(points)]) + b"".join(check_p256_point(p)[1:] for p in points))
        name = name32(CITIZEN_KEY_ATTR)
        reqs = [
            self.dids.tx("enrollBatch", name, validity, b"".join(packed[i : i + chunk]))
            for i in range(0, len(packed), chunk)
        ]
        return self.sender.send_many(reqs)

    def add_key(
        self,
        identity: str,
        point: bytes,
        validity: int = DEFAULT_KEY_VALIDITY,
        attribute: str = CITIZEN_KEY_ATTR,
    ) -> Receipt:
        """Publish one more P-256 key (e.g. a FIDO key) on an identity this account controls."""
        return self.sender.send(
            self.dids.tx("setAttribute", identity, name32(attribute), check_p256_point(point), validity)
        )

    def revoke_key(self, identity: str, point: bytes, attribute: str = CITIZEN_KEY_ATTR) -> Receipt:
        """Revoke a key (lost card): ``revokeAttribute`` → resolvers drop it from the DID document."""
        return self.sender.send(
            self.dids.tx("revokeAttribute", identity, name32(attribute), check_p256_point(point))
        )

    def revoke_keys(
        self,
        entries: Sequence[tuple[str, bytes]],
        attribute: str = CITIZEN_KEY_ATTR,
        chunk: int = ENROLL_CHUNK,
    ) -> list[Receipt]:
        """Revoke many (identity, point) keys in batches (``revokeKeysBatch``; standard events)."""
        packed = [bytes.fromhex(to_checksum_address(i)[2:]) + check_p256_point(p)[1:] for i, p in entries]
        reqs = [
            self.dids.tx("revokeKeysBatch", name32(attribute), b"".join(packed[k : k + chunk]))
            for k in range(0, len(packed), chunk)
        ]
        return self.sender.send_many(reqs)

    def publish_issuer_key(
        self, point: bytes, identity: str | None = None, validity: int = DEFAULT_KEY_VALIDITY
    ) -> Receipt:
        """Publish an issuer signing key (``did/pub/Multikey/veriKey/hex``) on the issuer identity."""
        return self.add_key(identity or self.address, point, validity, ISSUER_KEY_ATTR)

    def revoke_issuer_key(self, point: bytes, identity: str | None = None) -> Receipt:
        return self.revoke_key(identity or self.address, point, ISSUER_KEY_ATTR)

    def add_registrar(self, account: str, enabled: bool = True) -> Receipt:
        """Grant (or, ``enabled=False``, demote) the registrar role; admin (city root) only."""
        return self.sender.send(self.dids.tx("setRegistrar", account, enabled))

    def reassign_owner(self, identity: str, new_owner: str) -> Receipt:
        """Hand an identity of a demoted registrar to ``new_owner``; admin (city root) only."""
        return self.sender.send(self.dids.tx("reassignOwner", identity, new_owner))

    # ---- the city root's own roles (two-step transfers, docs/chain.md §Roles and keys) ----
    def root_roles(self) -> dict[str, tuple[str, str]]:
        """Current and pending holder of each root role: DID admin, trusted-issuer root, anchor admin."""

        def pair(
            binding: DIDRegistry | TrustedIssuers | AnchorRegistry, role: str, pending: str
        ) -> tuple[str, str]:
            return to_checksum_address(binding.read(role)[0]), to_checksum_address(binding.read(pending)[0])

        return {
            "did_admin": pair(self.dids, "admin", "pendingAdmin"),
            "issuer_root": pair(self.issuers, "root", "pendingRoot"),
            "anchor_admin": pair(self.anchors, "admin", "pendingAdmin"),
        }

    def propose_root(self, new_root: str) -> list[Receipt]:
        """Step 1 of a root rotation: propose ``new_root`` for all three root roles."""
        return self.sender.send_many(
            [
                self.dids.tx("proposeAdmin", new_root),
                self.issuers.tx("proposeRoot", new_root),
                self.anchors.tx("proposeAdmin", new_root),
            ]
        )

    def accept_root(self) -> list[Receipt]:
        """Step 2, sent by the new root: take every root role proposed to this account."""
        me = self.address.lower()
        roles = self.root_roles()
        reqs = []
        if roles["did_admin"][1].lower() == me:
            reqs.append(self.dids.tx("acceptAdmin"))
        if roles["issuer_root"][1].lower() == me:
            reqs.append(self.issuers.tx("acceptRoot"))
        if roles["anchor_admin"][1].lower() == me:
            reqs.append(self.anchors.tx("acceptAdmin"))
        if not reqs:
            raise ChainError(f"no root role is pending for {self.address}")
        return self.sender.send_many(reqs)

    # ---- status lists ----
    def create_status_list(self) -> int:
        """Create a list owned by this account; returns its id."""
        receipt = self.sender.send(self.status.tx("createList"))
        for log in receipt.logs:
            if str(log.get("address", "")).lower() != self.status.address.lower():
                continue
            ev = decode_log("CityStatusRegistry", log)
            if ev is not None and ev.name == "ListCreated":
                return int(ev.args["listId"])
        raise ChainError("createList receipt has no ListCreated event")

    def status_ref(self, list_id: int, index: int) -> StatusRef:
        return StatusRef(self.network.chain_id, self.status.address, list_id, index)

    def set_status(
        self, list_id: int, indexes: Sequence[int], status: CredentialStatus | int, chunk: int = STATUS_CHUNK
    ) -> list[Receipt]:
        """Set one status for many indexes (sorted, so each storage word is written once per batch)."""
        status = CredentialStatus(status)
        ordered = sorted(set(int(i) for i in indexes))
        if any(i < 0 for i in ordered):
            raise ValueError("status indexes are non-negative")
        reqs = [
            self.status.tx("setStatus", list_id, ordered[i : i + chunk], int(status))
            for i in range(0, len(ordered), chunk)
        ]
        return self.sender.send_many(reqs)

    def revoke(self, list_id: int, indexes: Sequence[int]) -> list[Receipt]:
        return self.set_status(list_id, indexes, CredentialStatus.REVOKED)

    # ---- trusted issuers ----
    def accredit_issuer(
        self, issuer_did: str, vct: str, valid_until: int, valid_from: int | None = None
    ) -> Receipt:
        """Accredit an issuer DID of this network for ``vct`` until ``valid_until`` (unix time)."""
        start = int(time.time()) - 60 if valid_from is None else valid_from
        return self.sender.send(
            self.issuers.tx("accredit", address_of(self.network, issuer_did), vct, start, valid_until)
        )

    def revoke_accreditation(self, issuer_did: str, vct: str) -> Receipt:
        return self.sender.send(
            self.issuers.tx("revokeAccreditation", address_of(self.network, issuer_did), vct_hash(vct))
        )

    # ---- anchors ----
    def anchor_batch(self, document_hashes: Sequence[bytes]) -> AnchoredBatch:
        """Anchor the Merkle root of a batch; returns root and per-document proofs."""
        root, proofs = build_tree(list(document_hashes))
        receipt = self.sender.send(self.anchors.tx("anchor", root, len(document_hashes)))
        return AnchoredBatch(root, tuple(tuple(p) for p in proofs), receipt)

    def verify_anchor_proof(self, root: bytes, document_hash: bytes, proof: Sequence[bytes]) -> bool:
        """On-chain check: ``root`` anchored and ``proof`` links ``document_hash`` to it."""
        return self.anchors.verify_proof(root, document_hash, proof)
