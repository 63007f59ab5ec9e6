"""QuorumChainView: the block a verification is pinned to must be agreed by a quorum of independent nodes.

For a proof-of-authority city chain a quorum of independent nodes agreeing on the block hash plays the role
of a light client's consensus check (docs/chain.md, "Agreement"). Every configured node gets the same proven
batch (:class:`~cityid.chain.live.ProvenRead`) IN PARALLEL — one round trip per node. Each answer is checked
on its own (header re-hashed, proofs against its state root, events against the proven ``changed`` blocks,
freshness); then at least ``quorum`` nodes must name the same head hash AND give identical facts (the
``eth_getLogs`` part is not covered by the state root, so the answers themselves must agree). When the heads
differ (a block was sealed between the requests, or a node lags), the batch is repeated once pinned at the
highest head number any node proved — never an older block, so a lagging node cannot hide a revocation.
Anything short of a quorum fails closed with :class:`NoQuorumError`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TypeVar

from cityid.chain.errors import ChainConfigError, ChainError, StaleChainDataError
from cityid.chain.live import (
    DEFAULT_MAX_CHAIN_AGE,
    DEFAULT_MAX_CLOCK_SKEW,
    ProvenRead,
    RewoundChainError,
    read_proven,
)
from cityid.chain.network import NetworkConfig, check_network
from cityid.chain.proof import Header
from cityid.chain.rpc import RpcClient
from cityid.chain.view import StatusRef, VerificationFacts

_T = TypeVar("_T")

logger = logging.getLogger(__name__)


class NoQuorumError(ChainError):
    """Fewer than ``quorum`` nodes agree on the block and its facts (lying, stale or unreachable nodes)."""


_Answer = tuple[Header, VerificationFacts] | ChainError


class QuorumChainView:
    """:class:`cityid.chain.view.ChainView` over several nodes; ``quorum`` of them must agree."""

    def __init__(
        self,
        clients: Sequence[RpcClient],
        network: NetworkConfig,
        quorum: int,
        clock: Callable[[], float] = time.time,
        *,
        max_chain_age: float = DEFAULT_MAX_CHAIN_AGE,
        max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
    ) -> None:
        if not clients:
            raise ChainConfigError("a quorum view needs at least one node")
        if not 1 <= quorum <= len(clients):
            raise ChainConfigError(
                f"quorum {quorum} must be between 1 and the {len(clients)} configured nodes"
            )
        if quorum * 2 <= len(clients):
            logger.warning("chain quorum %d of %d nodes is not a majority", quorum, len(clients))
        self.clients = list(clients)
        self.network = network.require_complete()
        self.quorum = quorum
        self.clock = clock
        self.max_chain_age = max_chain_age
        self.max_clock_skew = max_clock_skew
        self._pool = ThreadPoolExecutor(max_workers=len(self.clients), thread_name_prefix="chain-quorum")
        self._high_water = 0

    def check(self) -> list[ChainError | int]:
        """check_network on every node (in parallel); returns each node's head or its error."""
        return self._each(lambda c: check_network(c, self.network))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _each(self, fn: Callable[[RpcClient], _T]) -> list[_T | ChainError]:
        def guarded(client: RpcClient) -> _T | ChainError:
            try:
                return fn(client)
            except ChainError as exc:
                return exc
            except Exception as exc:  # a bug in one node's path must not take the verification down
                logger.exception("chain node %s: unexpected failure", client.url)
                return ChainError(f"{client.url}: {type(exc).__name__}")

        return list(self._pool.map(guarded, self.clients))

    def verification_facts(
        self, issuer_did: str, holder_did: str, vct: str, status: StatusRef
    ) -> VerificationFacts:
        plan = ProvenRead.plan(self.network, issuer_did, holder_did, vct, status)

        def read(block: int | None) -> list[_Answer]:
            return self._each(
                lambda c: read_proven(c, plan, self.clock, self.max_chain_age, self.max_clock_skew, block)
            )

        answers = read(None)
        agreed = self._agreed(answers)
        if agreed is None:
            heads = [a[0].number for a in answers if not isinstance(a, ChainError)]
            if len(heads) >= self.quorum:
                # the NEWEST proven head any node showed: a lagging or stuck node can never pull the
                # verification back to a block before a revocation (at worst there is no quorum)
                second = read(max(heads))
                answers = [_sum_trips(a, b) for a, b in zip(answers, second, strict=True)]
                agreed = self._agreed(answers)
        if agreed is None:
            raise self._failure(answers)
        header, facts = agreed
        if header.number < self._high_water:
            logger.error(
                "ALARM chain quorum agreed on block %d below block %d seen before",
                header.number,
                self._high_water,
            )
            raise RewoundChainError(
                f"agreed head {header.number} is below block {self._high_water} seen before"
            )
        self._high_water = header.number
        trips = max((a[1].round_trips for a in answers if not isinstance(a, ChainError)), default=0)
        return replace(facts, round_trips=trips)

    def _agreed(self, answers: Sequence[_Answer]) -> tuple[Header, VerificationFacts] | None:
        groups: dict[tuple[bytes, VerificationFacts], list[Header]] = {}
        for a in answers:
            if isinstance(a, ChainError):
                continue
            header, facts = a
            groups.setdefault((header.hash, replace(facts, round_trips=0)), []).append(header)
        for (_hash, facts), headers in groups.items():
            if len(headers) >= self.quorum:
                return headers[0], facts
        same_block = {h for (h, _f) in groups}
        if len(same_block) < len(groups):
            logger.error("ALARM chain nodes agree on a block but give different facts for it")
        return None

    def _failure(self, answers: Sequence[_Answer]) -> ChainError:
        errors = [a for a in answers if isinstance(a, ChainError)]
        if errors and all(isinstance(e, StaleChainDataError) for e in errors) and len(errors) == len(answers):
            return errors[0]
        reasons = "; ".join(
            f"{c.url}: {a if isinstance(a, ChainError) else 'block ' + str(a[0].number)}"
            for c, a in zip(self.clients, answers, strict=True)
        )
        logger.warning("chain: no quorum of %d: %s", self.quorum, reasons)
        return NoQuorumError(f"fewer than {self.quorum} chain nodes agree ({reasons[:300]})")


def _sum_trips(first: _Answer, second: _Answer) -> _Answer:
    if isinstance(second, ChainError) or isinstance(first, ChainError):
        return second
    header, facts = second
    return header, replace(facts, round_trips=facts.round_trips + first[1].round_trips)
