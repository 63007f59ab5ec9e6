"""Status changes: revoke (batch; lost cards also lose their key), suspend, resume, status lookup, and the
sweep of enrollments that never completed. The database records the state and, in the same transaction, the
outbox rows the chain writer turns into status bits (docs/server.md §Status, §Chain outbox)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import CursorResult, select, update
from sqlalchemy.exc import SQLAlchemyError

from cityid.chain.view import CredentialStatus, StatusRef
from server.db import Database
from server.models import AuditEntry, Credential, CredentialState, utcnow
from server.outbox.store import credential_chain_state, enqueue_revoke_key
from server.service.context import ServiceContext, aware
from server.service.errors import ConflictError, StorageUnavailableError, ValidationError
from server.service.scope import Actor, Presence, Scopes

_REVOCABLE = (CredentialState.PENDING, CredentialState.ISSUED, CredentialState.SUSPENDED)


@dataclass(frozen=True, slots=True)
class CredentialInfo:
    """Status lookup answer (no claims: the server has none)."""

    credential_id: str
    citizen_did: str
    state: CredentialState
    status_ref: StatusRef
    vct: str
    issued_at: dt.datetime | None
    expires_at: dt.datetime | None
    #: Where the credential's chain writes stand: ``confirmed`` (none open), ``pending``, ``sent``,
    #: ``failed``.
    chain: str = "confirmed"


class StatusChanges:
    """Revocation, suspension and resumption of issued credentials, and their status."""

    def __init__(self, ctx: ServiceContext, scopes: Scopes | None = None) -> None:
        self.ctx = ctx
        self.scopes = scopes or Scopes(ctx)

    def revoke(
        self,
        actor: Actor | str,
        credential_ids: Sequence[str],
        reason: str,
        presence: Presence | None = None,
    ) -> list[str]:
        """Revoke a batch: status bits in one chain call per list; for lost cards also the card keys.

        Every credential must be in the actor's scope, or nothing is revoked (§Scopes)."""
        return self._revoke(self.scopes.resolve(actor), credential_ids, reason, presence, scoped=True)

    def revoke_unscoped(self, actor: Actor | str, credential_ids: Sequence[str], reason: str) -> list[str]:
        """Revoke on the citizen's own authority (lost-card report with the revocation password)."""
        return self._revoke(self.scopes.resolve(actor), credential_ids, reason, None, scoped=False)

    def _revoke(
        self,
        terminal: Actor,
        credential_ids: Sequence[str],
        reason: str,
        presence: Presence | None,
        scoped: bool,
    ) -> list[str]:
        ctx = self.ctx
        if reason not in ("lost", "revoked"):
            raise ValidationError("reason must be 'lost' or 'revoked'")
        with ctx.db.sessions() as s:
            rows = ctx.load(s, list(dict.fromkeys(credential_ids)))
        if scoped:
            self.scopes.check_credentials(terminal, "revoke", rows, presence)
        # ONE transaction: the new states and their outbox rows (docs/server.md §Chain outbox). The chain
        # writer sets the bits (one batch per window) and, for a lost card, revokes its key.
        try:
            with ctx.db.sessions.begin() as s:
                order = [r.id for r in rows]
                for cid in sorted(order):  # lock in one order: concurrent batches never deadlock
                    s.get(Credential, cid, with_for_update=True)
                rows = [r for r in (s.get(Credential, cid) for cid in order) if r is not None]
                todo = [r for r in rows if r.state in _REVOCABLE]
                identities = ctx.identities(s, rows)
                ctx.queue_status(s, todo, CredentialStatus.REVOKED)
                if reason == "lost":
                    # A lost card's key is revoked even if the credential was already revoked/superseded.
                    keys = {(identities[r.citizen_did], r.card_key): r.id for r in rows}
                    for (identity, key), cid in keys.items():
                        enqueue_revoke_key(s, identity, bytes.fromhex(key), cid)
                for r in rows:
                    was = r.state
                    if r in todo:
                        r.state = CredentialState.REVOKED.value
                        r.updated_at = utcnow()
                    ctx.audit(
                        s,
                        terminal,
                        "revoke",
                        cred=r.id,
                        did=r.citizen_did,
                        detail=f"reason={reason}" + ("" if r in todo else f"; was {was}"),
                    )
        except SQLAlchemyError as exc:
            raise StorageUnavailableError("database unavailable") from exc
        return [r.id for r in todo]

    def suspend(
        self, actor: Actor | str, credential_id: str, presence: Presence | None = None
    ) -> CredentialInfo:
        return self._set(actor, credential_id, CredentialState.SUSPENDED, presence)

    def resume(
        self, actor: Actor | str, credential_id: str, presence: Presence | None = None
    ) -> CredentialInfo:
        return self._set(actor, credential_id, CredentialState.ISSUED, presence)

    def _set(
        self, actor: Actor | str, credential_id: str, to: CredentialState, presence: Presence | None
    ) -> CredentialInfo:
        ctx = self.ctx
        terminal = self.scopes.resolve(actor)
        suspending = to is CredentialState.SUSPENDED
        allowed_from = CredentialState.ISSUED if suspending else CredentialState.SUSPENDED
        with ctx.db.sessions() as s:
            (row,) = ctx.load(s, [credential_id])
        action = "suspend" if suspending else "resume"
        self.scopes.check_credentials(terminal, action, [row], presence)
        if row.state != to.value:
            if row.state != allowed_from.value:
                raise ConflictError(f"credential is {row.state}; cannot {action}")
            bit = CredentialStatus.SUSPENDED if suspending else CredentialStatus.VALID
            with ctx.db.sessions.begin() as s:
                result = s.execute(
                    update(Credential)
                    .where(Credential.id == row.id, Credential.state == allowed_from.value)
                    .values(state=to.value, updated_at=utcnow())
                )
                assert isinstance(result, CursorResult)  # DML statements return a cursor result
                n = result.rowcount
                if n != 1:
                    raise ConflictError("credential changed meanwhile; retry")
                ctx.queue_status(s, [row], bit)  # same transaction (docs/server.md §Chain outbox)
                ctx.audit(s, terminal, action, cred=row.id, did=row.citizen_did)
        return self.status(credential_id)

    def status(self, credential_id: str) -> CredentialInfo:
        ctx = self.ctx
        try:
            with ctx.db.sessions() as s:
                (row,) = ctx.load(s, [credential_id])
                chain = credential_chain_state(s, row.id)
        except SQLAlchemyError as exc:
            raise StorageUnavailableError("database unavailable") from exc
        return CredentialInfo(
            row.id,
            row.citizen_did,
            CredentialState(row.state),
            ctx.status_ref(row),
            row.vct,
            aware(row.issued_at),
            aware(row.expires_at),
            chain,
        )


def sweep_pending(db: Database, older_than: dt.timedelta, now: dt.datetime | None = None) -> list[str]:
    """Close enrollments left ``pending`` longer than ``older_than`` (the client never came back).

    A pending credential was never delivered (the answer is sent only after the row is marked issued), so
    it is closed in the database only: state ``revoked``, audited; its status index stays accounted for.
    A late retry with its idempotency key gets 409 and starts a new enrollment.
    """
    cutoff = (now or utcnow()) - older_than
    with db.sessions.begin() as s:
        rows = list(
            s.scalars(
                select(Credential).where(
                    Credential.state == CredentialState.PENDING.value, Credential.created_at < cutoff
                )
            )
        )
        for r in rows:
            r.state = CredentialState.REVOKED.value
            s.add(
                AuditEntry(
                    actor="admin",
                    action="sweep.pending",
                    credential_id=r.id,
                    citizen_did=r.citizen_did,
                    outcome="ok",
                    detail="never completed",
                )
            )
    return [r.id for r in rows]
