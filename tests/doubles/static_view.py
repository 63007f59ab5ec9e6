"""A :class:`~cityid.chain.view.ChainView` over fixed facts: offline tests, benchmarks and the demo.

It stands for a warm kiosk cache; the real ones are ``cityid.chain`` (LiveChainView, SyncCache).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from cityid.chain.view import ChainError, CredentialStatus, StatusRef, VerificationFacts


@dataclass
class StaticChainView:
    """Facts per issuer/holder DID, set by the caller; ``error`` (if set) is raised on every read."""

    issuer_keys: dict[str, tuple[bytes, ...]] = field(default_factory=dict)  # issuer DID -> points
    trusted: set[tuple[str, str]] = field(default_factory=set)  # (issuer DID, vct)
    holder_keys: dict[str, tuple[bytes, ...]] = field(default_factory=dict)  # citizen DID -> points
    statuses: dict[tuple[int, int], CredentialStatus] = field(default_factory=dict)  # (list, idx) -> status
    synced_at: float | None = None  # None: "now"
    error: ChainError | None = None
    reads: int = 0

    def verification_facts(
        self, issuer_did: str, holder_did: str, vct: str, status: StatusRef
    ) -> VerificationFacts:
        self.reads += 1
        if self.error is not None:
            raise self.error
        return VerificationFacts(
            issuer_keys=self.issuer_keys.get(issuer_did, ()),
            issuer_trusted=(issuer_did, vct) in self.trusted,
            holder_keys=self.holder_keys.get(holder_did, ()),
            status=self.statuses.get((status.list_id, status.index), CredentialStatus.VALID),
            block_number=0,
            synced_at=time.time() if self.synced_at is None else self.synced_at,
        )
