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
    NotFoundError,
    ServiceError,
    StorageUnavailableError,
    ValidationError,
)
from server.service.fido import FidoKeys
from server.service.issuer import IssuerNotReadyError, IssuerReadiness
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
        self.enrollments = Enrollments(self.ctx, self.issuer.require_ready)
        self.statuses = StatusChanges(self.ctx)
        self.fido = FidoKeys(self.ctx)

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
        terminal: str,
        idempotency_key: str,
        claims: object,
        card_point: bytes,
        card_serial: bytes,
        citizen_did: str | None = None,
    ) -> Enrollment:
        return self.enrollments.enroll(
            terminal, idempotency_key, claims, card_point, card_serial, citizen_did
        )

    def reissue(self, terminal: str, credential_id: str, idempotency_key: str, claims: object) -> Enrollment:
        return self.enrollments.reissue(terminal, credential_id, idempotency_key, claims)

    def revoke(self, terminal: str, credential_ids: Sequence[str], reason: str) -> list[str]:
        return self.statuses.revoke(terminal, credential_ids, reason)

    def suspend(self, terminal: str, credential_id: str) -> CredentialInfo:
        return self.statuses.suspend(terminal, credential_id)

    def resume(self, terminal: str, credential_id: str) -> CredentialInfo:
        return self.statuses.resume(terminal, credential_id)

    def status(self, credential_id: str) -> CredentialInfo:
        return self.statuses.status(credential_id)

    def register_fido_key(
        self, terminal: str, citizen_did: str, point: bytes, fido_credential_id: bytes
    ) -> bool:
        return self.fido.register(terminal, citizen_did, point, fido_credential_id)


__all__ = [
    "INPUT_CLAIMS",
    "CapacityError",
    "ChainUnavailableError",
    "ConflictError",
    "CredentialInfo",
    "Enrollment",
    "IssuerNotReadyError",
    "IssuerService",
    "NotFoundError",
    "ServiceError",
    "StorageError",
    "StorageUnavailableError",
    "ValidationError",
    "card_fingerprint",
    "serial_hash",
    "sweep_pending",
]
