"""Enrollment and re-issue: the credential row, the card key's outbox row, the signature — then the answer.

Crash-safety (docs/server.md §Idempotency): a new enrollment is ONE transaction — credential row under its
idempotency key (unique), status index, chain writes as outbox rows (the card key; status bits and stale keys
of the card's other live credentials, retired here; docs/server.md §Chain outbox), the signature, state
``issued``. A crash before its commit leaves nothing (the retry is a new enrollment); after it, a retry with
the same key finds the row and signs again for the same id and index. A re-issue reserves a ``pending`` row
first (its own transaction), then signs and marks it issued. The answer does not wait for the chain.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, insert, literal_column, or_, select
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from cityid import credential as vc
from cityid.chain.view import CredentialStatus, StatusRef
from cityid.citizen import CredentialRecord
from server.models import (
    AuditEntry,
    Citizen,
    Credential,
    CredentialState,
    OutboxEntry,
    OutboxKind,
    OutboxState,
    utcnow,
)
from server.outbox.store import enqueue_key, enqueue_revoke_key, enqueue_status
from server.service.claims import citizen_claims, validate_claims
from server.service.context import ServiceContext, aware, card_fingerprint, serial_hash
from server.service.errors import (
    ConflictError,
    NotFoundError,
    StorageUnavailableError,
    ValidationError,
)
from server.service.scope import Actor, Presence, Scopes

logger = logging.getLogger(__name__)

_REUSABLE = (CredentialState.PENDING, CredentialState.ISSUED)


@dataclass(frozen=True, slots=True)
class Enrollment:
    """What the counter terminal writes to the card, and the identifiers it may keep."""

    credential_id: str
    citizen_did: str
    status_ref: StatusRef
    record: CredentialRecord
    credential_hash: str
    expires_at: dt.datetime
    retried: bool
    #: Outbox rows this request created, all pending at the answer (None: look them up, e.g. a retry).
    outbox_ids: tuple[int, ...] | None = None


def _values(obj: Any) -> dict[str, Any]:
    """The column values set on a transient ORM object (for a bulk INSERT; column defaults fill the rest)."""
    return {c.key: v for c in obj.__table__.columns if (v := getattr(obj, c.key)) is not None}


def _params(prefix: str, values: dict[str, Any]) -> dict[str, Any]:
    """Column ``values`` as the bind parameters ``prefix_column`` of :func:`_fresh_enrollment`."""
    return {f"{prefix}_{k}": v for k, v in values.items()}


def _insert_cte(name: str, prefix: str, model: Any, columns: Sequence[str], rows: int = 1) -> Any:
    """``INSERT INTO model (columns) VALUES (:prefix_column, …)`` as a CTE (``rows`` rows: prefix0, …)."""
    binds = [
        {
            c: bindparam(f"{prefix}{k if rows > 1 else ''}_{c}", type_=model.__table__.c[c].type)
            for c in columns
        }
        for k in range(rows)
    ]
    return insert(model).values(binds if rows > 1 else binds[0]).cte(name)


@functools.cache
def _fresh_enrollment(dialect: Dialect) -> str:
    """The SQL of :meth:`Enrollments._enroll_fresh` for ``dialect``, compiled once. SQLAlchemy does not cache
    statements with DML in CTEs (no cache key), and compiling this one costs more CPU than the rest of the
    enrollment, so it is compiled here and run with :meth:`Connection.exec_driver_sql` (bind parameters
    only, in the dialect's own paramstyle)."""
    outbox_cols = ("kind", "state", "identity", "point", "credential_id", "attempts", "error", "created_at")
    audit_cols = ("at", "actor", "clerk", "action", "credential_id", "citizen_did", "outcome", "detail")
    outbox = (
        insert(OutboxEntry)
        .values({c: bindparam(f"outbox_{c}", type_=OutboxEntry.__table__.c[c].type) for c in outbox_cols})
        .returning(OutboxEntry.id)
        .cte("outbox_row")
    )
    others = (
        select(func.count())
        .select_from(Credential)
        .where(
            Credential.card_serial_hash == bindparam("serial_hash"),
            # the enum's own constants as SQL literals (an expanding IN is rendered per call)
            or_(*(Credential.state == literal_column(f"'{st.value}'") for st in CredentialState if st.live)),
        )
        .scalar_subquery()
    )
    stmt = select(outbox.c.id, others).add_cte(
        _insert_cte("citizen", "citizen", Citizen, ("did", "identity", "created_at")),
        _insert_cte("credential", "cred", Credential, [c.key for c in Credential.__table__.columns]),
        _insert_cte("audit", "audit", AuditEntry, audit_cols, rows=2),
    )
    return stmt.compile(dialect=dialect).string


@dataclass(frozen=True, slots=True)
class _NewCard:
    """One enrollment request, validated: what both enrollment paths take."""

    terminal: Actor
    key: str  # the idempotency key
    fingerprint: str
    card_point: bytes
    card_serial: bytes
    citizen_did: str | None
    claims: Any


class Enrollments:
    """``enroll`` (a new card; new or existing DID) and ``reissue`` (same DID and card key, new id)."""

    def __init__(
        self,
        ctx: ServiceContext,
        require_issuer_ready: Callable[[], None] = lambda: None,
        scopes: Scopes | None = None,
    ) -> None:
        self.ctx = ctx
        self.scopes = scopes or Scopes(ctx)
        #: Refuses (typed) while kiosks would refuse the issuer's credentials (``issuer.IssuerReadiness``).
        self.require_issuer_ready = require_issuer_ready

    # --- enroll ------------------------------------------------------------------------------------

    def enroll(
        self,
        actor: Actor | str,
        idempotency_key: str,
        claims: object,
        card_point: bytes,
        card_serial: bytes,
        citizen_did: str | None = None,
        presence: Presence | None = None,
    ) -> Enrollment:
        """Enroll a card (the clerk checked the citizen in person); safe to retry with the same key.

        A card for an existing DID needs the citizen's presence proof or a supervisor (§Scopes)."""
        terminal = self.scopes.resolve(actor)
        parsed = validate_claims(claims, self.ctx.clock().date())
        self.require_issuer_ready()
        fingerprint = card_fingerprint(card_point, card_serial)
        if citizen_did is not None and not self._known_key(idempotency_key):
            self.scopes.check_add_key(terminal, "enroll", citizen_did, presence)
        req = _NewCard(terminal, idempotency_key, fingerprint, card_point, card_serial, citizen_did, parsed)
        done: Enrollment | None = None
        if citizen_did is None and self._one_statement():
            try:
                done = self._enroll_fresh(req)
            except IntegrityError:  # this idempotency key exists: a retry (or a concurrent twin)
                done = None
        row: Credential | None = None
        if done is None:
            try:
                done, row = self._enroll_new(req)
            except IntegrityError:  # a concurrent request with the same key won the insert: it is ours now
                done, row = self._enroll_new(req)
        if done is not None:
            return done
        assert row is not None
        return self._complete(terminal, row, parsed, card_point, True)

    def _known_key(self, idempotency_key: str) -> bool:
        """Whether this idempotency key was already used (a retry; its scope was checked the first time)."""
        with self.ctx.db.sessions() as s:
            found = s.scalar(select(Credential.id).where(Credential.idempotency_key == idempotency_key))
        return found is not None

    def _enroll_new(self, req: _NewCard) -> tuple[Enrollment | None, Credential | None]:
        """ONE transaction: a new credential issued (``(enrollment, None)``), or the row of an earlier request
        with this key (``(None, row)``: the caller completes the retry)."""
        ctx, terminal, key, card_point = self.ctx, req.terminal, req.key, req.card_point
        index: int | None = None
        try:
            with ctx.db.sessions.begin() as s, s.no_autoflush:  # one flush at commit: a statement per table
                row = s.scalar(select(Credential).where(Credential.idempotency_key == key))
                if row is not None:
                    if row.request_fingerprint != req.fingerprint or row.terminal != terminal.terminal:
                        raise ConflictError("idempotency key already used for another card, key or terminal")
                    if row.state not in _REUSABLE:
                        raise ConflictError(f"credential {row.id} is {row.state}; start a new enrollment")
                    ctx.audit(s, terminal, "enroll.retry", cred=row.id, did=row.citizen_did)
                    return None, row
                if req.citizen_did is not None:
                    citizen = s.get(Citizen, req.citizen_did)
                    if citizen is None:
                        raise NotFoundError("unknown citizen DID")
                else:
                    identity = ctx.chain.new_citizen_identity()
                    citizen = Citizen(did=ctx.chain.did_for(identity), identity=identity, created_at=utcnow())
                    s.execute(insert(Citizen), [_values(citizen)])
                row = self._new_row(req, citizen.did)
                # Chain writes in the same transaction (§Chain outbox); the status index last (block size 1:
                # the allocator row every enrollment updates is locked only for what follows it).
                queued = self._queue_in(s, terminal, row, card_point, citizen.identity)
                index = row.status_index = ctx.allocate(s)
                issued = self._issue(row, req.claims, card_point)
                # Bulk statements, not the unit of work: the row (unique idempotency key: a concurrent
                # request with the same key fails here) and its two audit entries in one statement.
                s.execute(insert(Credential), [_values(row)])
                ctx.audit_many(s, terminal, [
                    ("enroll.reserve", row.id, row.citizen_did, f"status index {row.status_index}"),
                    ("enroll.issue", row.id, row.citizen_did, "issue #1"),
                ])  # fmt: skip
        except BaseException as exc:
            if index is not None:  # rolled back: the index goes to the next enrollment of this instance
                ctx.unallocate(index)
            if isinstance(exc, SQLAlchemyError) and not isinstance(exc, IntegrityError):
                raise StorageUnavailableError("database unavailable") from exc
            raise
        return self._issued(row, issued, tuple(sorted(q.id for q in queued))), None

    def _one_statement(self) -> bool:
        """Whether a new citizen's enrollment runs as :meth:`_enroll_fresh`: PostgreSQL (writable CTEs) with
        status indexes from this instance's block (taken outside the transaction)."""
        return self.ctx.db.engine.dialect.name == "postgresql" and self.ctx.index_block > 1

    def _enroll_fresh(self, req: _NewCard) -> Enrollment | None:
        """A new citizen on PostgreSQL: the transaction of :meth:`_enroll_new` as ONE statement — a writable
        CTE inserting the citizen, the credential, the card key's outbox row and the two audit entries, and
        counting the card's other live credentials. One round trip and one commit instead of eight
        statements (docs/server.md §Serving capacity). ``None`` when the card has other live credentials
        (rolled back: :meth:`_enroll_new` retires them); :class:`IntegrityError` when the idempotency key
        exists (a retry: :meth:`_enroll_new` answers it)."""
        ctx, terminal, card_point = self.ctx, req.terminal, req.card_point
        identity = ctx.chain.new_citizen_identity()
        did = ctx.chain.did_for(identity)
        row = self._new_row(req, did)
        row.key_on_chain = True  # its outbox row is in the same statement
        index = row.status_index = ctx.allocate_from_block()
        try:
            issued = self._issue(row, req.claims, card_point)
            audit = ctx.audit_rows(terminal, [
                ("enroll.reserve", row.id, did, f"status index {index}"),
                ("enroll.issue", row.id, did, "issue #1"),
            ])  # fmt: skip
            outbox_row = {"kind": OutboxKind.ENROLL.value, "state": OutboxState.PENDING.value,
                          "identity": identity, "point": card_point.hex(), "credential_id": row.id,
                          "attempts": 0, "error": "", "created_at": row.created_at}  # fmt: skip
            params = {
                **_params("citizen", {"did": did, "identity": identity, "created_at": row.created_at}),
                **_params("cred", {c.key: getattr(row, c.key) for c in Credential.__table__.columns}),
                **_params("outbox", outbox_row),
                **_params("audit0", audit[0]),
                **_params("audit1", audit[1]),
                "serial_hash": row.card_serial_hash,
            }
            with ctx.db.engine.begin() as conn:
                sql = _fresh_enrollment(conn.dialect)
                outbox_id, live = conn.exec_driver_sql(sql, params).one()
                if live:
                    conn.rollback()
        except BaseException as exc:
            ctx.unallocate(index)
            if isinstance(exc, SQLAlchemyError) and not isinstance(exc, IntegrityError):
                raise StorageUnavailableError("database unavailable") from exc
            raise
        if live:
            ctx.unallocate(index)
            return None
        return self._issued(row, issued, (int(outbox_id),))

    def _new_row(self, req: _NewCard, citizen_did: str) -> Credential:
        """A transient credential row (pending, no status index yet) for a new enrollment."""
        ctx = self.ctx
        return Credential(
            id=str(uuid.uuid4()),
            idempotency_key=req.key,
            request_fingerprint=req.fingerprint,
            citizen_did=citizen_did,
            card_key=req.card_point.hex(),
            card_serial_hash=serial_hash(req.card_serial),
            status_list_id=ctx.config.status_list_id,
            vct=ctx.vct,
            state=CredentialState.PENDING.value,
            terminal=req.terminal.terminal,
            created_at=utcnow(),
            key_on_chain=False,
        )

    def _issue(self, row: Credential, claims: Any, card_point: bytes) -> vc.IssuedCredential:
        """Sign ``row`` (status index set), mark it issued; the fault points the crash tests use."""
        ctx = self.ctx
        ctx.fault("reserved")
        ctx.fault("superseded")
        ctx.fault("chain")
        issued_at = ctx.clock().replace(microsecond=0)
        expires_at = issued_at + dt.timedelta(days=ctx.config.credential_validity_days)
        issued = self._sign(row, claims, card_point, issued_at, expires_at)
        ctx.fault("signed")
        row.state = CredentialState.ISSUED.value
        row.credential_hash = issued.credential_hash
        row.issued_at, row.expires_at = issued_at, expires_at
        row.issue_count = 1
        row.updated_at = row.created_at
        return issued

    def _issued(
        self, row: Credential, issued: vc.IssuedCredential, outbox_ids: tuple[int, ...]
    ) -> Enrollment:
        """The answer for a committed new enrollment."""
        self.ctx.fault("issued")
        logger.info("issued credential %s (status index %d)", row.id, row.status_index)
        assert row.expires_at is not None  # set by _issue
        return Enrollment(row.id, row.citizen_did, self.ctx.status_ref(row), issued.record,
                          issued.credential_hash, row.expires_at, False, outbox_ids)  # fmt: skip

    def _reserve_reissue(
        self, s: Session, terminal: Actor, idempotency_key: str, credential_id: str
    ) -> tuple[Credential, bool]:
        """In the caller's transaction: the re-issue's row under its key (a retry finds it)."""
        ctx = self.ctx
        row = s.scalar(select(Credential).where(Credential.idempotency_key == idempotency_key))
        if row is not None:
            if row.supersedes != credential_id:
                raise ConflictError("idempotency key already used for another request")
            if row.state not in _REUSABLE:
                raise ConflictError(f"credential {row.id} is {row.state}")
            ctx.audit(s, terminal, "reissue.retry", cred=row.id, did=row.citizen_did)
            return row, True
        old = s.get(Credential, credential_id)
        if old is None:
            raise NotFoundError("unknown credential")
        if old.state != CredentialState.ISSUED.value:
            raise ConflictError(f"credential {old.id} is {old.state}; it cannot be re-issued")
        row = Credential(
            id=str(uuid.uuid4()),
            idempotency_key=idempotency_key,
            request_fingerprint=old.request_fingerprint,
            citizen_did=old.citizen_did,
            card_key=old.card_key,
            card_serial_hash=old.card_serial_hash,
            status_list_id=ctx.config.status_list_id,
            status_index=ctx.allocate(s),
            vct=ctx.vct,
            state=CredentialState.PENDING.value,
            key_on_chain=old.key_on_chain,
            supersedes=old.id,
            terminal=terminal.terminal,
        )
        s.add(row)
        try:
            s.flush()
        except BaseException:
            ctx.unallocate(row.status_index)
            raise
        ctx.audit(s, terminal, "reissue.reserve", cred=row.id, did=row.citizen_did,
                  detail=f"replaces {old.id}")  # fmt: skip
        return row, False

    # --- re-issue ----------------------------------------------------------------------------------

    def reissue(
        self,
        actor: Actor | str,
        credential_id: str,
        idempotency_key: str,
        claims: object,
        presence: Presence | None = None,
    ) -> Enrollment:
        """New credential (new id and status index) for the same DID and card key; the old one is retired.

        Only an *issued* credential is re-issued (a suspended or revoked one is refused: re-issue must not
        lift a suspension), and only in the actor's scope (§Scopes)."""
        ctx = self.ctx
        terminal = self.scopes.resolve(actor)
        parsed = validate_claims(claims, ctx.clock().date())
        self.require_issuer_ready()
        if not self._known_key(idempotency_key):
            with ctx.db.sessions() as s:
                old = s.get(Credential, credential_id)
            if old is None:
                raise NotFoundError("unknown credential")
            if old.state != CredentialState.ISSUED.value:
                ctx.audit_now(
                    terminal, "reissue", outcome="refused", cred=old.id, did=old.citizen_did,
                    detail=f"credential is {old.state}",
                )  # fmt: skip
                raise ConflictError(f"credential {old.id} is {old.state}; it cannot be re-issued")
            self.scopes.check_credentials(terminal, "reissue", [old], presence)
        try:
            with ctx.db.sessions.begin() as s:
                row, retried = self._reserve_reissue(s, terminal, idempotency_key, credential_id)
        except (IntegrityError, SQLAlchemyError) as exc:
            raise StorageUnavailableError("database unavailable or concurrent request; retry") from exc
        return self._complete(terminal, row, parsed, bytes.fromhex(row.card_key), retried)

    # --- shared completion ---------------------------------------------------------------------------

    def _queue_chain(self, terminal: Actor, row: Credential, card_point: bytes) -> None:
        """ONE transaction: :meth:`_queue_in` for ``row`` (a retry or a re-issue; a fresh enrollment did it
        in its reserving transaction)."""
        ctx = self.ctx
        try:
            with ctx.db.sessions.begin() as s:
                current = s.get(Credential, row.id, with_for_update=True)
                assert current is not None
                if current.state not in _REUSABLE:
                    raise ConflictError(f"credential {row.id} is {current.state}; start a new enrollment")
                self._queue_in(s, terminal, current, card_point)
        except SQLAlchemyError as exc:
            raise StorageUnavailableError("database unavailable") from exc

    def _queue_in(
        self, s: Session, terminal: Actor, current: Credential, card_point: bytes, identity: str | None = None
    ) -> list[OutboxEntry]:
        """In the caller's transaction: retire other live credentials of this card (or the one re-issued) —
        state superseded, status bits and stale keys queued — and queue the card key unless already queued
        (``key_on_chain``: the key's outbox row exists; docs/server.md §Chain outbox). ``identity``: the
        citizen's identity address when ``current`` is not in the session yet (a fresh enrollment).
        Returns the outbox rows added."""
        ctx = self.ctx
        others = list(
            s.scalars(
                select(Credential).where(
                    Credential.card_serial_hash == current.card_serial_hash,
                    Credential.id != current.id,
                    Credential.created_at <= current.created_at,
                    Credential.state.in_([st.value for st in CredentialState if st.live]),
                )
            )
        )
        if current.supersedes:
            prev = s.get(Credential, current.supersedes)
            if prev is not None and CredentialState(prev.state).live and prev not in others:
                others.append(prev)
        mine = others if identity else [*others, current]
        identities = ctx.identities(s, mine) if mine else {}
        if identity:
            identities[current.citizen_did] = identity
        # Tagged with THIS credential: its answer waits for (and reports) the retirement too.
        queued = [enqueue_status(s, o.status_list_id, o.status_index, CredentialStatus.REVOKED, current.id)
                  for o in others]  # fmt: skip
        stale = {(identities[o.citizen_did], o.card_key) for o in others if o.card_key != current.card_key}
        for identity, key in sorted(stale):
            queued.append(enqueue_revoke_key(s, identity, bytes.fromhex(key), current.id))
        for o in others:
            o.state = CredentialState.SUPERSEDED.value
            o.updated_at = utcnow()
            ctx.audit(s, terminal, "supersede", cred=o.id, did=o.citizen_did, detail=f"by {current.id}")
        if not current.key_on_chain:
            queued.append(enqueue_key(s, identities[current.citizen_did], card_point, current.id))
            current.key_on_chain = True
        return queued

    def _sign(
        self,
        row: Credential,
        claims: dict[str, Any],
        card_point: bytes,
        issued_at: dt.datetime,
        expires_at: dt.datetime,
    ) -> vc.IssuedCredential:
        ctx = self.ctx
        try:
            return vc.issue(
                citizen_claims(claims, issued_at.date()),
                card_point,
                ctx.issuer_did,
                ctx.status_ref(row),
                ctx.signer,
                iat=int(issued_at.timestamp()),
                exp=int(expires_at.timestamp()),
                citizen_did=row.citizen_did,
            )
        except vc.CredentialError as exc:
            raise ValidationError(f"cannot issue: {exc}") from exc

    def _complete(
        self, terminal: Actor, row: Credential, claims: Any, card_point: bytes, retried: bool
    ) -> Enrollment:
        ctx = self.ctx
        if retried or row.supersedes:  # a fresh enrollment queued its chain writes while reserving
            self._queue_chain(terminal, row, card_point)
        ctx.fault("superseded")
        ctx.fault("chain")
        issued_at = aware(row.issued_at) or ctx.clock().replace(microsecond=0)
        expires_at = aware(row.expires_at) or issued_at + dt.timedelta(
            days=ctx.config.credential_validity_days
        )
        issued = self._sign(row, claims, card_point, issued_at, expires_at)
        del claims
        cred_hash = issued.credential_hash
        ctx.fault("signed")
        try:
            with ctx.db.sessions.begin() as s:
                current = s.get(Credential, row.id, with_for_update=True)
                assert current is not None
                if current.state not in _REUSABLE:
                    raise ConflictError(f"credential {row.id} became {current.state} meanwhile")
                current.state = CredentialState.ISSUED.value
                current.credential_hash = cred_hash
                current.issued_at = issued_at
                current.expires_at = expires_at
                current.issue_count = current.issue_count + 1
                ctx.audit(
                    s,
                    terminal,
                    "enroll.issue",
                    cred=row.id,
                    did=row.citizen_did,
                    detail=f"issue #{current.issue_count}",
                )
        except SQLAlchemyError as exc:
            raise StorageUnavailableError("database unavailable") from exc
        logger.info("issued credential %s (status index %d)", row.id, row.status_index)
        return Enrollment(
            row.id, row.citizen_did, ctx.status_ref(row), issued.record, cred_hash, expires_at, retried
        )
