"""What every part of the issuing service shares: storage, chain port, config, clock, and the audit log.

Each responsibility (``enrollment``, ``status``, ``fido``, ``issuer``) is a small class over one
:class:`ServiceContext`; :class:`server.service.IssuerService` composes them (docs/server.md §Idempotency).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from cityid import credential as vc
from cityid.chain.view import StatusRef
from server.chain.gateway import ChainGateway
from server.config import ServerConfig
from server.db import Database
from server.keys import IssuerSigner
from server.models import AuditEntry, Citizen, Credential, StatusAllocator, utcnow
from server.outbox.store import enqueue_status
from server.service.errors import CapacityError, NotFoundError, StorageUnavailableError

logger = logging.getLogger(__name__)


def card_fingerprint(card_point: bytes, card_serial: bytes) -> str:
    return hashlib.sha256(b"card-key|" + card_point + b"|" + card_serial).hexdigest()


def serial_hash(card_serial: bytes) -> str:
    return hashlib.sha256(b"card-serial|" + card_serial).hexdigest()


def aware(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite returns naive datetimes: they were stored as UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


@dataclass
class ServiceContext:
    """Shared state of the service parts; ``fault`` is a test hook called with a step name (raising there
    simulates a crash after that step)."""

    db: Database
    chain: ChainGateway
    signer: IssuerSigner
    config: ServerConfig
    clock: Callable[[], dt.datetime] = utcnow
    vct: str = vc.VCT
    issuer_did: str = ""
    fault: Callable[[str], None] = field(default=lambda step: None)
    _pool: list[int] = field(default_factory=list, init=False, repr=False)  # this instance's block
    _pool_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def status_ref(self, row: Credential) -> StatusRef:
        return StatusRef(
            self.chain.chain_id, self.chain.status_registry, row.status_list_id, row.status_index
        )

    # --- audit -------------------------------------------------------------------------------------

    @staticmethod
    def audit(
        s: Session,
        actor: Any,
        action: str,
        outcome: str = "ok",
        cred: str | None = None,
        did: str | None = None,
        detail: str = "",
    ) -> None:
        """Add an audit row to the caller's transaction (actions and identifiers, never claims).

        ``actor``: a :class:`server.service.scope.Actor` (terminal and clerk) or a bare name."""
        s.add(
            AuditEntry(
                actor=getattr(actor, "terminal", actor),
                clerk=getattr(actor, "clerk", ""),
                action=action,
                credential_id=cred,
                citizen_did=did,
                outcome=outcome,
                detail=detail[:200],
            )
        )

    @staticmethod
    def audit_many(
        s: Session, actor: Any, entries: Sequence[tuple[str, str | None, str | None, str]]
    ) -> None:
        """:meth:`audit` for several ``(action, credential id, DID, detail)`` of one actor: one bulk INSERT
        in the caller's transaction."""
        s.execute(insert(AuditEntry), ServiceContext.audit_rows(actor, entries))

    @staticmethod
    def audit_rows(
        actor: Any, entries: Sequence[tuple[str, str | None, str | None, str]]
    ) -> list[dict[str, Any]]:
        """The audit table's rows for :meth:`audit_many` (outcome ``ok``), every column given."""
        terminal, clerk, at = getattr(actor, "terminal", actor), getattr(actor, "clerk", ""), utcnow()
        return [
            {"at": at, "actor": terminal, "clerk": clerk, "action": action, "credential_id": cred,
             "citizen_did": did, "outcome": "ok", "detail": detail[:200]}
            for action, cred, did, detail in entries
        ]  # fmt: skip

    def audit_now(self, actor: Any, action: str, **kw: Any) -> None:
        """Audit in a transaction of its own (a failing audit write is logged, not raised)."""
        try:
            with self.db.sessions.begin() as s:
                self.audit(s, actor, action, **kw)
        except SQLAlchemyError:
            logger.exception("audit write failed for %s", action)

    # --- chain and storage helpers -------------------------------------------------------------------

    def queue_status(self, s: Session, rows: Iterable[Credential], status: Any) -> None:
        """Outbox rows setting ``status`` for ``rows``, in the caller's transaction (docs/server.md §Chain
        outbox): the chain writer batches them, many entries per storage word."""
        for r in rows:
            enqueue_status(s, r.status_list_id, r.status_index, int(status), r.id)

    def allocate(self, s: Session) -> int:
        """A status index for a credential created in the caller's transaction (docs/server.md §Status
        indexes). Block size 1: taken from the allocator row inside that transaction (rolled back with it,
        no gap ever). Larger blocks: from this instance's reserved block, refilled in a short transaction of
        its own, so instances do not queue on the one allocator row; give it back with :meth:`unallocate`
        if the caller's transaction fails."""
        if self.index_block <= 1:
            return self._take(s, 1)[0]
        return self.allocate_from_block()

    def allocate_from_block(self) -> int:
        """A status index from this instance's reserved block (``index_block`` > 1; refilled in a short
        transaction of its own); give it back with :meth:`unallocate` if the caller's transaction fails."""
        with self._pool_lock:
            if not self._pool:
                try:
                    with self.db.sessions.begin() as own:
                        self._pool.extend(self._take(own, self.index_block))
                except SQLAlchemyError as exc:
                    raise StorageUnavailableError("database unavailable") from exc
            return self._pool.pop(0)

    def unallocate(self, index: int) -> None:
        """An index from :meth:`allocate` whose credential was rolled back: used for the next one."""
        if self.index_block > 1:
            with self._pool_lock:
                self._pool.insert(0, index)

    @property
    def index_block(self) -> int:
        n = self.config.status_index_block
        return n if n > 0 else (256 if self.db.engine.dialect.name == "postgresql" else 1)

    def _take(self, s: Session, n: int) -> list[int]:
        """Advance the allocator row by ``n`` in transaction ``s`` (by 1 when fewer than ``n`` are left)."""
        list_id = self.config.status_list_id
        for size in dict.fromkeys((n, 1)):
            stop = s.execute(
                update(StatusAllocator)
                .where(StatusAllocator.list_id == list_id,
                       StatusAllocator.next_index + size <= StatusAllocator.capacity)
                .values(next_index=StatusAllocator.next_index + size)
                .returning(StatusAllocator.next_index)
            ).scalar_one_or_none()  # fmt: skip
            if stop is not None:
                return list(range(int(stop) - size, int(stop)))
        if s.get(StatusAllocator, list_id) is None:
            raise StorageUnavailableError("database not initialised (run: city-server db init)")
        raise CapacityError(f"status list {list_id} is full")

    @staticmethod
    def load(s: Session, ids: Sequence[str]) -> list[Credential]:
        """Credential rows by id, in order; an unknown id is a 404."""
        rows = []
        for cid in ids:
            row = s.get(Credential, cid)
            if row is None:
                raise NotFoundError(f"unknown credential {cid}")
            rows.append(row)
        return rows

    @staticmethod
    def identities(s: Session, rows: Iterable[Credential]) -> dict[str, str]:
        """Citizen DID → on-chain identity address for the rows' citizens."""
        dids = [r.citizen_did for r in rows]
        return {c.did: c.identity for c in s.scalars(select(Citizen).where(Citizen.did.in_(dids)))}
