"""The issuer on chain: read its state, and the explicit, idempotent publish ceremony (docs/chain.md §Roles).

``city-server serve`` only *reads* (:func:`read_issuer_state`): it never publishes a key or accredits, so a
revoked accreditation stays revoked across restarts and a restart sends no transaction. Publishing the
issuer's P-256 key on the issuer DID and accrediting that DID for the citizen vct is
:func:`publish_issuer`, run by ``city-server issuer publish`` with the city root key: it reads the chain
first and sends only what is missing. A revoked accreditation is final: publish refuses to re-accredit.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from cityid.chain.errors import ChainError
from cityid.chain.resolver import DIDResolver, address_of, did_for, p256_keys
from server.chain.registrar import DEFAULT_KEY_VALIDITY, Registrar

logger = logging.getLogger(__name__)


class AccreditationRevokedError(ChainError):
    """The issuer's accreditation for this vct was revoked by the root; it is never re-accredited."""


@dataclass(frozen=True, slots=True)
class IssuerState:
    """What the chain says about one issuer DID, key and vct (read-only facts, ``now`` = block time)."""

    did: str
    key_published: bool
    valid_from: int
    valid_until: int
    revoked: bool
    now: int

    @property
    def accredited(self) -> bool:
        return not self.revoked and self.valid_from <= self.now < self.valid_until

    @property
    def ready(self) -> bool:
        """Kiosks would accept credentials signed with this key."""
        return self.key_published and self.accredited


def default_issuer_did(registrar: Registrar) -> str:
    """The issuer DID when none is configured: the trusted-issuer root's own DID (as deployed)."""
    return did_for(registrar.network, registrar.issuers.root())


def read_issuer_state(registrar: Registrar, issuer_did: str, point: bytes, vct: str) -> IssuerState:
    """Resolve the issuer DID and read its accreditation; sends nothing."""
    network = registrar.network
    identity = address_of(network, issuer_did)
    doc = DIDResolver(registrar.client, network).document(issuer_did)
    valid_from, valid_until, revoked = registrar.issuers.accreditation(identity, vct)
    now = registrar.latest_timestamp()
    return IssuerState(issuer_did, bytes(point) in p256_keys(doc), valid_from, valid_until, revoked, now)


@dataclass(frozen=True, slots=True)
class PublishOutcome:
    state_before: IssuerState
    sent: tuple[str, ...]  # labels of the transactions sent (empty: the chain already had everything)


def publish_issuer(
    root: Registrar,
    point: bytes,
    vct: str,
    issuer_did: str | None = None,
    validity: int = DEFAULT_KEY_VALIDITY,
) -> PublishOutcome:
    """Make ``point`` a published key of the issuer DID and the DID accredited for ``vct``, sending only
    what the chain lacks (idempotent). ``root`` must be the city root (owner of the issuer DID and of the
    trusted-issuer list); a revoked accreditation raises :class:`AccreditationRevokedError`."""
    did = issuer_did or root.did
    state = read_issuer_state(root, did, point, vct)
    if state.revoked:
        raise AccreditationRevokedError(
            f"{did} is de-accredited for {vct}; revocation is final (publish a new issuer DID)"
        )
    sent: list[str] = []
    identity = address_of(root.network, did)
    if not state.key_published:
        root.publish_issuer_key(point, identity, validity)
        sent.append("publish issuer key")
    if not state.accredited:
        start = min(state.now, int(time.time())) - 60
        root.accredit_issuer(did, vct, state.now + validity, valid_from=start)
        sent.append("accredit issuer")
    if sent:
        logger.info("issuer %s: %s", did, ", ".join(sent))
    return PublishOutcome(state, tuple(sent))


def ensure_status_list(registrar: Registrar, list_id: int) -> bool:
    """Create status lists (owned by ``registrar``) until ``list_id`` exists; True when one was created.
    A list owned by another account is refused."""
    created = False
    while registrar.status.list_count() < list_id:
        registrar.create_status_list()
        created = True
    check_status_list(registrar, list_id)
    return created


def check_status_list(registrar: Registrar, list_id: int) -> None:
    """Read-only: ``list_id`` exists and belongs to this registrar account."""
    if registrar.status.list_count() < list_id:
        raise ChainError(f"status list {list_id} does not exist (run: city-server status-list ensure)")
    owner = registrar.status.list_owner(list_id)
    if owner.lower() != registrar.address.lower():
        raise ChainError(f"status list {list_id} belongs to {owner}, not to this registrar")
