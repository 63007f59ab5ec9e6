"""Status changes: revoke (batch; lost cards also lose their key), suspend, resume, status lookup, and the
sweep of enrollments that never completed. Status bits go to chain first, then the database records the
state (docs/server.md §Status)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import CursorResult, select, update
from sqlalchemy.exc import SQLAlchemyError

from cityid.chain.view import CredentialStatus, StatusRef
from server.db import Database
from server.models import AuditEntry, Credential, CredentialState, utcnow
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
            todo = [r for r in rows if r.state in _REVOCABLE]
            identities = ctx.identities(s, rows)
        if scoped:
            self.scopes.check_credentials(terminal, "revoke", rows, presence)
        ctx.set_status_bits("revoke", todo, CredentialStatus.REVOKED, terminal)
        if reason == "lost":
            # A lost card's key is revoked even if the credential was already revoked/superseded.
            keys = list(dict.fromkeys((identities[r.citizen_did], bytes.fromhex(r.card_key)) for r in rows))
            ctx.chain_write("revoke.key", lambda: ctx.chain.revoke_keys(keys), terminal)
        with ctx.db.sessions.begin() as s:
            for r in rows:
                if r in todo:
                    s.execute(
                        update(Credential)
                        .where(Credential.id == r.id)
                        .values(state=CredentialState.REVOKED.value, updated_at=utcnow())
                    )
                ctx.audit(
                    s,
                    terminal,
                    "revoke",
                    cred=r.id,
                    did=r.citizen_did,
                    detail=f"reason={reason}" + ("" if r in todo else f"; was {r.state}"),
                )
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
            ctx.set_status_bits(action, [row], bit, terminal, row.id)
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
                ctx.audit(s, terminal, action, cred=row.id, did=row.citizen_did)
        return self.status(credential_id)

    def status(self, credential_id: str) -> CredentialInfo:
        ctx = self.ctx
        try:
            with ctx.db.sessions() as s:
                (row,) = ctx.load(s, [credential_id])
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
