"""The issuing service: enrollment, re-issue, revocation, suspension, status and FIDO key registration.

Independent of HTTP (the Flask blueprints in ``server.api`` are thin). One module per responsibility over a
shared :class:`~server.service.context.ServiceContext`:

* :mod:`.enrollment` — enroll and re-issue (crash-safe, idempotent; docs/server.md §Idempotency);
* :mod:`.status` — revoke, suspend, resume, status lookup, sweep of abandoned enrollments;
* :mod:`.fido` — FIDO2 keys on citizen DIDs;
* :mod:`.issuer` — the issuer's readiness, read from chain (never written: docs/chain.md §Roles and keys);
* :mod:`.claims` — the counter's claims, checked; :mod:`.errors` — the typed refusals.

Claims live only in memory while the credential is signed; they are never logged, stored or audited.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

from server.chain.gateway import ChainGateway
from server.chain.issuer import IssuerState
from server.config import ServerConfig
from server.db import Database, StorageError
from server.keys import IssuerSigner
from server.models import utcnow
from server.service.claims import INPUT_CLAIMS
from server.service.context import ServiceContext, card_fingerprint, serial_hash
from server.service.enrollment import Enrollment, Enrollments
from server.service.errors import (
    CapacityError,
    ChainUnavailableError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    ServiceError,
    StorageUnavailableError,
    ValidationError,
)
from server.service.fido import FidoKeys
from server.service.issuer import IssuerNotReadyError, IssuerReadiness
from server.service.lost_card import LostCards
from server.service.scope import Actor, Presence, Scopes
from server.service.status import CredentialInfo, StatusChanges, sweep_pending


class IssuerService:
    """Issues citizen credentials and keeps their status on chain (a façade over the parts above)."""

    def __init__(
        self,
        db: Database,
        chain: ChainGateway,
        signer: IssuerSigner,
        config: ServerConfig,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.ctx = ServiceContext(db, chain, signer, config, clock)
        self.issuer = IssuerReadiness(self.ctx)
        self.scopes = Scopes(self.ctx, window_seconds=config.auth_window_seconds)
        self.enrollments = Enrollments(self.ctx, self.issuer.require_ready, self.scopes)
        self.statuses = StatusChanges(self.ctx, self.scopes)
        self.fido = FidoKeys(self.ctx, self.scopes)
        self.lost_cards = LostCards(self.ctx, self.statuses)

    # --- shared state -------------------------------------------------------------------------------

    @property
    def db(self) -> Database:
        return self.ctx.db

    @property
    def chain(self) -> ChainGateway:
        return self.ctx.chain

    @property
    def signer(self) -> IssuerSigner:
        return self.ctx.signer

    @property
    def config(self) -> ServerConfig:
        return self.ctx.config

    @property
    def vct(self) -> str:
        return self.ctx.vct

    @property
    def issuer_did(self) -> str:
        return self.ctx.issuer_did

    @property
    def fault(self) -> Callable[[str], None]:
        """Test hook: called with a step name; raising there simulates a crash after that step."""
        return self.ctx.fault

    @fault.setter
    def fault(self, hook: Callable[[str], None]) -> None:
        self.ctx.fault = hook

    # --- start-up -----------------------------------------------------------------------------------

    def start(self) -> IssuerState:
        """Read the issuer's state on chain — never write it (:mod:`.issuer`)."""
        return self.issuer.start()

    def check_issuer(self) -> IssuerState:
        """The issuer's current chain state (read-only); sets :attr:`issuer_did`."""
        return self.issuer.check()

    # --- operations (see the part modules) ----------------------------------------------------------

    def enroll(
        self,
        actor: Actor | str,
        idempotency_key: str,
        claims: object,
        card_point: bytes,
        card_serial: bytes,
        citizen_did: str | None = None,
        presence: Presence | None = None,
        revocation_password: str | None = None,
    ) -> Enrollment:
        """Enroll; with ``revocation_password`` the citizen can later report the card lost without its id."""
        if revocation_password is not None:
            self.lost_cards.lookup_hash("x", "x", "2000-01-01", revocation_password)  # checked before issuing
        result = self.enrollments.enroll(
            actor, idempotency_key, claims, card_point, card_serial, citizen_did, presence
        )
        if revocation_password is not None:
            assert isinstance(claims, dict)  # validated by the enrollment
            self.lost_cards.remember(actor, result.citizen_did, claims, revocation_password)
        return result

    def report_lost(
        self, actor: Actor | str, family_name: object, given_name: object, birthdate: object, password: object
    ) -> int:
        return self.lost_cards.report(actor, family_name, given_name, birthdate, password)

    def reissue(
        self,
        actor: Actor | str,
        credential_id: str,
        idempotency_key: str,
        claims: object,
        presence: Presence | None = None,
    ) -> Enrollment:
        return self.enrollments.reissue(actor, credential_id, idempotency_key, claims, presence)

    def revoke(
        self,
        actor: Actor | str,
        credential_ids: Sequence[str],
        reason: str,
        presence: Presence | None = None,
    ) -> list[str]:
        return self.statuses.revoke(actor, credential_ids, reason, presence)

    def suspend(
        self, actor: Actor | str, credential_id: str, presence: Presence | None = None
    ) -> CredentialInfo:
        return self.statuses.suspend(actor, credential_id, presence)

    def resume(
        self, actor: Actor | str, credential_id: str, presence: Presence | None = None
    ) -> CredentialInfo:
        return self.statuses.resume(actor, credential_id, presence)

    def status(self, credential_id: str) -> CredentialInfo:
        return self.statuses.status(credential_id)

    def register_fido_key(
        self,
        actor: Actor | str,
        citizen_did: str,
        point: bytes,
        fido_credential_id: bytes,
        presence: Presence | None = None,
    ) -> bool:
        return self.fido.register(actor, citizen_did, point, fido_credential_id, presence)

__all__ = [
    "INPUT_CLAIMS",
    "Actor",
    "CapacityError",
    "ChainUnavailableError",
    "ConflictError",
    "CredentialInfo",
    "Enrollment",
    "ForbiddenError",
    "IssuerNotReadyError",
    "IssuerService",
    "NotFoundError",
    "Presence",
    "ServiceError",
    "StorageError",
    "StorageUnavailableError",
    "ValidationError",
    "card_fingerprint",
    "serial_hash",
    "sweep_pending",
]
