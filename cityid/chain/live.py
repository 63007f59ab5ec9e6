"""LiveChainView: every chain fact one verification needs in ONE JSON-RPC round trip, proven and fresh.

Proven path (any node reached over the network; docs/chain.md, "Proven reads"): one JSON-RPC batch
(JSON-RPC 2.0 §6) carries
1. ``eth_getBlockByNumber(latest)`` — the head header, re-hashed (:func:`~cityid.chain.proof.verify_header`):
   its ``timestamp`` is checked against the kiosk clock (``max_chain_age``), its ``stateRoot`` anchors 2-4;
2. ``eth_getProof`` (EIP-1186) of the status word, of the issuer's accreditation and of the issuer's and
   holder's DID-registry entries (owner + ``changed`` block), verified with the ``trie`` package;
3. ``eth_getLogs`` of the DID registry for both identities (ERC-1056 attributes live only in events). The
   events must form exactly the ``previousChange`` chain that ends at the PROVEN ``changed`` block, and the
   last owner they name must be the proven owner: a fabricated or withheld log fails closed.
If the head moved between the batch's requests, the batch is repeated once pinned at the header's number.

Unproven path (``proofs=False``: a node without ``eth_getProof``; the embedded chain, trusted by
construction): one ``eth_call`` of Multicall ``aggregate3`` + the ``eth_getLogs``, as before; the head's own
timestamp still bounds the age unless the transport is the in-process chain.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from cityid.chain.bindings import Multicall, StatusRegistry, TrustedIssuers, vct_hash
from cityid.chain.contracts import Events
from cityid.chain.errors import ChainError, MalformedReplyError, StaleChainDataError
from cityid.chain.network import NetworkConfig, check_network, checksum
from cityid.chain.proof import (
    Header,
    ProofError,
    accreditation_slot,
    did_entry_slot,
    proof_request,
    status_word_slot,
    unpack_accreditation,
    unpack_did_entry,
    verify_account_proof,
    verify_header,
)
from cityid.chain.resolver import (
    DidEvent,
    address_of,
    build_document,
    did_event,
    did_logs_filter,
    p256_keys,
)
from cityid.chain.rpc import RpcClient, as_dict, as_list
from cityid.chain.view import CredentialStatus, StatusRef, VerificationFacts

logger = logging.getLogger(__name__)
UINT256 = 1 << 256
DEFAULT_MAX_CHAIN_AGE = 300.0  # seconds; the city chain must seal blocks (empty ones too) more often
DEFAULT_MAX_CLOCK_SKEW = 30.0  # a head timestamp further ahead of the kiosk clock is a clock/node fault


class StatusListMismatchError(ChainError):
    """The credential's status list is not the configured registry on this chain (fail closed)."""


class ClockSkewError(ChainError):
    """The head block is dated in the kiosk's future: the kiosk clock or the node is wrong (fail closed)."""


class RewoundChainError(ChainError):
    """The node's head went below a block this kiosk already saw from it (rewound or reset node)."""


class InconsistentHistoryError(ProofError):
    """DID-registry events do not match the proven ``changed`` block / owner (fabricated or withheld logs)."""


def check_status_ref(network: NetworkConfig, ref: StatusRef) -> None:
    """The status uri must name this network's chain id and status registry, with in-range numbers."""
    registry = network.address("status_registry")
    if ref.chain_id != network.chain_id or checksum(ref.registry) != registry:
        raise StatusListMismatchError(
            f"status list {ref.uri} is not the status registry eip155:{network.chain_id}:{registry}"
        )
    if not (0 <= ref.list_id < UINT256 and 0 <= ref.index < UINT256):
        raise StatusListMismatchError("status list id or index out of the uint256 range")


def trusted_now(valid_from: int, valid_until: int, revoked: bool, now: float) -> bool:
    """Accreditation rule of CityTrustedIssuers.isTrusted, evaluated at ``now``."""
    return not revoked and valid_from <= now < valid_until


def check_fresh(
    timestamp: float, now: float, max_age: float, max_skew: float = DEFAULT_MAX_CLOCK_SKEW
) -> None:
    """The head block's OWN timestamp against the kiosk clock (never "now" for "when was this true")."""
    age = now - timestamp
    if age > max_age:
        raise StaleChainDataError(age, max_age)
    if -age > max_skew:
        raise ClockSkewError(f"head block is dated {-age:.0f}s in the future (kiosk clock or node wrong)")


def status_value(word: int, index: int) -> CredentialStatus:
    value = (word >> ((index & 127) * 2)) & 3
    if value > CredentialStatus.SUSPENDED:
        raise ChainError(f"status entry has the reserved value {value}")
    return CredentialStatus(value)


_DID_EVENTS = ("DIDOwnerChanged", "DIDDelegateChanged", "DIDAttributeChanged")


@dataclass(frozen=True, slots=True)
class IdentityEvents:
    history: list[DidEvent]  # what the resolver replays (names that are not UTF-8 are skipped there)
    links: list[tuple[int, int, int]]  # (block, log index, previousChange) of EVERY ERC-1056 event
    last_owner: int | None  # owner named by the last DIDOwnerChanged (None: never changed)


def identity_events(network: NetworkConfig, logs: Any, identity: str, head: int) -> IdentityEvents:
    """The registry events of one identity in order; logs beyond ``head`` mean the head moved (raise)."""
    abi = Events.of("CityDIDRegistry")
    registry = network.address("did_registry")
    topic = "0x" + bytes(12).hex() + identity[2:].lower()
    decoded = []
    for raw in as_list(logs, "eth_getLogs result"):
        log = as_dict(raw, "log")
        topics = as_list(log.get("topics"), "log topics")
        if len(topics) < 2 or not isinstance(topics[1], str) or topics[1].lower() != topic:
            continue
        if not isinstance(log.get("address"), str) or log["address"].lower() != registry.lower():
            raise MalformedReplyError("eth_getLogs returned a log of another contract")
        ev = abi.decode(log)
        if ev is None or ev.name not in _DID_EVENTS:
            continue
        if ev.block_number > head:
            raise _HeadMoved()
        decoded.append(ev)
    decoded.sort(key=lambda e: (e.block_number, e.log_index))
    history = [d for d in (did_event(e) for e in decoded) if d is not None]
    links = [(e.block_number, e.log_index, int(e.args["previousChange"])) for e in decoded]
    owners = [int(e.args["owner"], 16) for e in decoded if e.name == "DIDOwnerChanged"]
    return IdentityEvents(history, links, owners[-1] if owners else None)


def check_history(events: IdentityEvents, changed: int, owner: int, what: str) -> None:
    """Events must be exactly the ERC-1056 ``previousChange`` chain ending at the proven ``changed`` block.

    Per block, the smallest ``previousChange`` below it links to the earlier block (several changes in one
    block point at that block itself); a block in the chain without events means withheld logs, an event in
    a block outside it means a fabricated log. The last DIDOwnerChanged must name the proven owner.
    """
    by_block: dict[int, list[int]] = {}
    for block, _index, prev in events.links:
        by_block.setdefault(block, []).append(prev)
    chain: set[int] = set()
    block = changed
    while block:
        prevs = by_block.get(block)
        if not prevs:
            raise InconsistentHistoryError(
                f"{what}: the registry records a change at block {block} "
                "but the node returned no event for it"
            )
        below = [p for p in prevs if p < block]
        if not below or any(p not in (min(below), block) for p in prevs):
            raise InconsistentHistoryError(
                f"{what}: events of block {block} do not link to one earlier change"
            )
        chain.add(block)
        block = min(below)
    extra = sorted(set(by_block) - chain)
    if extra:
        raise InconsistentHistoryError(
            f"{what}: events at block(s) {extra[:3]} are not in the registry's proven change history"
        )
    if (events.last_owner or 0) != owner:
        raise InconsistentHistoryError(f"{what}: owner events do not match the proven owner")


class _HeadMoved(Exception):
    """The node's head advanced between the requests of one batch (repeat pinned at the header)."""


@dataclass(frozen=True, slots=True)
class ProvenRead:
    """The plan of one proven verification read: what to ask, and how to check and evaluate the answers."""

    network: NetworkConfig
    issuer_did: str
    holder_did: str
    issuer: str
    holder: str
    status: StatusRef
    vct_hash: bytes

    @classmethod
    def plan(
        cls, network: NetworkConfig, issuer_did: str, holder_did: str, vct: str, status: StatusRef
    ) -> ProvenRead:
        check_status_ref(network, status)
        return cls(
            network,
            issuer_did,
            holder_did,
            address_of(network, issuer_did),
            address_of(network, holder_did),
            status,
            vct_hash(vct),
        )

    @property
    def _slots(self) -> tuple[bytes, bytes, bytes, bytes]:
        return (
            status_word_slot(self.status.list_id, self.status.index >> 7),
            accreditation_slot(self.issuer, self.vct_hash),
            did_entry_slot(self.issuer),
            did_entry_slot(self.holder),
        )

    def calls(self, block: int | None = None) -> list[tuple[str, Sequence[Any]]]:
        """The batch: head (or pinned) header, three proofs, the DID logs — one round trip."""
        tag = "latest" if block is None else hex(block)
        status_slot, accr_slot, issuer_slot, holder_slot = self._slots
        logs_filter = did_logs_filter(self.network, [self.issuer, self.holder])
        logs_filter["toBlock"] = tag
        n = self.network
        return [
            ("eth_getBlockByNumber", [tag, False]),
            proof_request(n.address("status_registry"), [status_slot], tag),
            proof_request(n.address("trusted_issuers"), [accr_slot], tag),
            proof_request(n.address("did_registry"), [issuer_slot, holder_slot], tag),
            ("eth_getLogs", [logs_filter]),
        ]

    def header(self, replies: Sequence[Any], block: int | None) -> Header:
        header = verify_header(replies[0], "head block")
        if block is not None and header.number != block:
            raise MalformedReplyError(f"asked for block {block}, got {header.number}")
        return header

    def evaluate(self, header: Header, replies: Sequence[Any], now: float) -> VerificationFacts:
        """Verify the proofs against ``header.stateRoot``, check the events, and build the facts."""
        n = self.network
        status_slot, accr_slot, issuer_slot, holder_slot = self._slots
        root = header.state_root
        status_word = verify_account_proof(root, n.address("status_registry"), [status_slot], replies[1])
        accreditation = verify_account_proof(root, n.address("trusted_issuers"), [accr_slot], replies[2])
        entries = verify_account_proof(
            root, n.address("did_registry"), [issuer_slot, holder_slot], replies[3]
        )
        keys: dict[str, tuple[bytes, ...]] = {}
        for did, address, slot in (
            (self.issuer_did, self.issuer, issuer_slot),
            (self.holder_did, self.holder, holder_slot),
        ):
            owner, changed = unpack_did_entry(entries.storage[slot])
            events = identity_events(n, replies[4], address, header.number)
            check_history(events, changed, owner, did)
            built = build_document(did, address, events.history, n.chain_id, int(now))
            keys[did] = () if built.deactivated else p256_keys(built.document)
        valid_from, valid_until, revoked = unpack_accreditation(accreditation.storage[accr_slot])
        return VerificationFacts(
            issuer_keys=keys[self.issuer_did],
            issuer_trusted=trusted_now(valid_from, valid_until, revoked, now),
            holder_keys=keys[self.holder_did],
            status=status_value(status_word.storage[status_slot], self.status.index),
            block_number=header.number,
            synced_at=float(header.timestamp),
        )


_DECODE_FAULTS = (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError)


def read_proven(
    client: RpcClient,
    plan: ProvenRead,
    clock: Callable[[], float],
    max_chain_age: float,
    max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
    block: int | None = None,
) -> tuple[Header, VerificationFacts]:
    """One proven read on one node (1 round trip; 2 when its head moved mid-batch). Raises ChainError."""
    pinned = block
    for _attempt in (0, 1):
        before = client.round_trips
        replies = client.batch(plan.calls(pinned))
        try:
            header = plan.header(replies, pinned)  # a header that does not hash right is never retried
            check_fresh(header.timestamp, clock(), max_chain_age, max_clock_skew)
            try:
                facts = plan.evaluate(header, replies, clock())
            except _HeadMoved:
                if pinned is not None:
                    raise MalformedReplyError("logs beyond the pinned block") from None
                pinned = header.number
                continue
            except ProofError as exc:
                if pinned is not None or isinstance(exc, InconsistentHistoryError):
                    raise
                pinned = header.number  # the head may have moved after the header: repeat once at it
                continue
        except ChainError:
            raise
        except _DECODE_FAULTS as exc:  # a reply of the right JSON type but an impossible shape
            raise MalformedReplyError(f"malformed chain reply: {type(exc).__name__}") from exc
        return header, replace(facts, round_trips=client.round_trips - before)
    raise ProofError("proofs do not verify even pinned at the head block")  # pragma: no cover


class LiveChainView:
    """:class:`cityid.chain.view.ChainView` reading one node directly (1 round trip per verification).

    ``proofs``: verify every value against the head's state root (default for any network node); ``False``
    only for a node without ``eth_getProof`` (its answers are then believed). The in-process embedded chain
    (``transport.trusted``) skips proofs and the freshness bound.
    """

    def __init__(
        self,
        client: RpcClient,
        network: NetworkConfig,
        clock: Callable[[], float] = time.time,
        *,
        proofs: bool | None = None,
        max_chain_age: float = DEFAULT_MAX_CHAIN_AGE,
        max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
    ) -> None:
        self.client = client
        self.network = network.require_complete()
        self.clock = clock
        self.trusted = bool(getattr(client.transport, "trusted", False))
        self.proofs = (not self.trusted) if proofs is None else proofs
        self.max_chain_age = max_chain_age
        self.max_clock_skew = max_clock_skew
        self._high_water = 0  # highest head block served so far (a rewind below it fails closed)
        self._lock = threading.Lock()
        if not self.proofs and not self.trusted:
            logger.warning("chain node %s: reads are NOT proven (proofs disabled)", client.url)
        self.multicall = Multicall(client, network.address("multicall"))
        self.status = StatusRegistry(client, network.address("status_registry"))
        self.issuers = TrustedIssuers(client, network.address("trusted_issuers"))

    def check(self) -> int:
        """Confirm the node serves this network (chain id, contract code); call once at start-up."""
        return check_network(self.client, self.network)

    def verification_facts(
        self, issuer_did: str, holder_did: str, vct: str, status: StatusRef
    ) -> VerificationFacts:
        if self.proofs:
            plan = ProvenRead.plan(self.network, issuer_did, holder_did, vct, status)
            facts = read_proven(self.client, plan, self.clock, self.max_chain_age, self.max_clock_skew)[1]
        else:
            try:
                facts = self._unproven(issuer_did, holder_did, vct, status)
            except ChainError:
                raise
            except _DECODE_FAULTS as exc:
                raise MalformedReplyError(f"malformed chain reply: {type(exc).__name__}") from exc
        if not self.trusted:
            self._check_not_rewound(facts.block_number)
        return facts

    def _check_not_rewound(self, number: int) -> None:
        """A head below the highest one seen from this node: a rewound or reset node may lack revocations."""
        with self._lock:
            if number < self._high_water:
                logger.error(
                    "ALARM chain node %s rewound: head %d is below block %d it served before",
                    self.client.url,
                    number,
                    self._high_water,
                )
                raise RewoundChainError(
                    f"chain node head {number} is below block {self._high_water} it served before"
                )
            self._high_water = number

    def _unproven(self, issuer_did: str, holder_did: str, vct: str, status: StatusRef) -> VerificationFacts:
        from cityid.chain.resolver import history_from_logs

        check_status_ref(self.network, status)
        issuer = address_of(self.network, issuer_did)
        holder = address_of(self.network, holder_did)
        calls = [
            self.status.status_call(status.list_id, status.index),
            self.issuers.accreditation_call(issuer, vct),
        ]
        before = self.client.round_trips
        raw_call, raw_logs = self.client.batch(
            [
                self.multicall.aggregate_request(calls),
                ("eth_getLogs", [did_logs_filter(self.network, [issuer, holder])]),
            ]
        )
        block, ts, (status_out, accreditation) = self.multicall.decode_aggregate(raw_call, calls)
        now = self.clock()
        if not self.trusted:
            check_fresh(ts, now, self.max_chain_age, self.max_clock_skew)
        value = int(status_out[0])
        if value > CredentialStatus.SUSPENDED:
            raise ChainError(f"status entry has the reserved value {value}")
        keys = {}
        for did, address in ((issuer_did, issuer), (holder_did, holder)):
            history = history_from_logs(raw_logs, address)
            built = build_document(did, address, history, self.network.chain_id, int(now))
            keys[did] = () if built.deactivated else p256_keys(built.document)
        valid_from, valid_until, revoked = accreditation
        return VerificationFacts(
            issuer_keys=keys[issuer_did],
            issuer_trusted=trusted_now(int(valid_from), int(valid_until), bool(revoked), now),
            holder_keys=keys[holder_did],
            status=CredentialStatus(value),
            block_number=block,
            synced_at=now if self.trusted else float(ts),
            round_trips=self.client.round_trips - before,
        )


__all__ = [
    "ClockSkewError",
    "InconsistentHistoryError",
    "LiveChainView",
    "ProvenRead",
    "RewoundChainError",
    "StatusListMismatchError",
    "check_fresh",
    "check_status_ref",
    "read_proven",
    "trusted_now",
]
