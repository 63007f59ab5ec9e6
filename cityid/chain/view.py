"""What a verifier needs from the chain, as one interface with a live and a cached implementation.

The credential verifier (``terminal.verifier``) depends only on :class:`ChainView`; the chain layer
(``cityid.chain``) provides a live implementation (all reads in one JSON-RPC round trip) and the kiosk sync
cache (zero round trips when warm, with a staleness bound after which it fails closed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Protocol

from cityid.errors import CityIdError


class ChainError(CityIdError):
    """A chain read or write failed (node unreachable, timeout, JSON-RPC error, malformed reply, revert)."""


class StaleChainDataError(ChainError):
    """Cached chain data is older than the configured bound: the verifier must not say "valid"."""

    def __init__(self, age_seconds: float, bound_seconds: float) -> None:
        self.age_seconds = age_seconds
        self.bound_seconds = bound_seconds
        super().__init__(f"chain data is {age_seconds:.0f}s old (bound {bound_seconds:.0f}s)")


class CredentialStatus(IntEnum):
    """Status values of a status-list entry (2 bits; Token Status List values 0/1/2)."""

    VALID = 0
    REVOKED = 1
    SUSPENDED = 2


_STATUS_URI = re.compile(r"^eip155:(?P<chain>[0-9]+):(?P<registry>0x[0-9a-fA-F]{40})/(?P<list>[0-9]+)$")


@dataclass(frozen=True, slots=True)
class StatusRef:
    """Where a credential's status lives: registry contract, issuer-owned list, index.

    In the credential: ``"status": {"status_list": {"idx": i, "uri": "eip155:<chain>:<registry>/<list>"}}``
    (the CAIP-10 account of the registry plus the list id; see docs/credential-format.md).
    """

    chain_id: int
    registry: str
    list_id: int
    index: int

    @property
    def uri(self) -> str:
        return f"eip155:{self.chain_id}:{self.registry}/{self.list_id}"

    def to_claim(self) -> dict[str, Any]:
        return {"status_list": {"idx": self.index, "uri": self.uri}}

    @classmethod
    def from_claim(cls, claim: object) -> StatusRef:
        """Parse the ``status`` claim; raise ``ValueError`` when it is not ours."""
        if not isinstance(claim, dict) or not isinstance(claim.get("status_list"), dict):
            raise ValueError("status claim must hold a status_list object")
        sl = claim["status_list"]
        idx, uri = sl.get("idx"), sl.get("uri")
        if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0 or not isinstance(uri, str):
            raise ValueError("status_list needs a non-negative integer idx and a uri")
        m = _STATUS_URI.match(uri)
        if not m:
            raise ValueError(f"unsupported status list uri {uri!r}")
        return cls(int(m["chain"]), m["registry"], int(m["list"]), idx)


@dataclass(frozen=True, slots=True)
class VerificationFacts:
    """All chain facts one presentation verification needs.

    Keys are uncompressed SEC1 P-256 points (65 bytes, ``04 || x || y``).
    """

    issuer_keys: tuple[bytes, ...]  # active assertion/verification keys of the issuer DID
    issuer_trusted: bool  # issuer accredited for this vct now
    holder_keys: tuple[bytes, ...]  # active keys of the citizen DID (card key, FIDO keys)
    status: CredentialStatus
    block_number: int  # the block these facts were read at (or synced to)
    synced_at: float  # unix time the facts were known to be current
    round_trips: int = 0  # JSON-RPC round trips spent producing them


class ChainView(Protocol):
    """Read side of the chain used by the verifier."""

    def verification_facts(
        self, issuer_did: str, holder_did: str, vct: str, status: StatusRef
    ) -> VerificationFacts:
        """Return the facts, or raise :class:`ChainError` / :class:`StaleChainDataError`."""
        ...
