"""Outbox rows: added by the service inside its own transactions; read for progress and health
(docs/server.md §Chain outbox)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from server.db import Database
from server.models import BatchState, OutboxBatch, OutboxEntry, OutboxKind, OutboxState, utcnow

_OPEN = (OutboxState.PENDING.value, OutboxState.SENT.value)


def enqueue_key(s: Session, identity: str, point: bytes, credential_id: str | None = None) -> OutboxEntry:
    """Publish ``point`` on ``identity`` (in the caller's transaction)."""
    row = OutboxEntry(kind=OutboxKind.ENROLL.value, identity=identity, point=point.hex(),
                      credential_id=credential_id)  # fmt: skip
    s.add(row)
    return row


def enqueue_revoke_key(
    s: Session, identity: str, point: bytes, credential_id: str | None = None
) -> OutboxEntry:
    row = OutboxEntry(kind=OutboxKind.REVOKE_KEY.value, identity=identity, point=point.hex(),
                      credential_id=credential_id)  # fmt: skip
    s.add(row)
    return row


def enqueue_status(
    s: Session, list_id: int, index: int, status: int, credential_id: str | None = None
) -> OutboxEntry:
    row = OutboxEntry(kind=OutboxKind.STATUS.value, list_id=list_id, status_index=index,
                      status_value=int(status), credential_id=credential_id)  # fmt: skip
    s.add(row)
    return row


@dataclass(frozen=True, slots=True)
class ChainWrite:
    """Where a request's chain writes stand: ``confirmed`` only when every row is at the configured depth;
    ``failed`` when the chain refused one; else ``pending`` (waiting for a window) or ``sent``."""

    ids: tuple[int, ...]
    state: str
    eta_seconds: float

    @property
    def final(self) -> bool:
        return self.state in (OutboxState.CONFIRMED.value, OutboxState.FAILED.value)

    def to_json(self) -> dict[str, object]:
        return {"state": self.state, "outbox_ids": list(self.ids), "eta_seconds": round(self.eta_seconds, 1)}


def _aggregate(ids: Sequence[int], states: Sequence[str], window_s: float) -> ChainWrite:
    if FAILED in states:
        state = FAILED
    elif all(st == OutboxState.CONFIRMED.value for st in states):
        state = OutboxState.CONFIRMED.value
    elif OutboxState.PENDING.value in states:
        state = OutboxState.PENDING.value
    else:
        state = OutboxState.SENT.value
    eta = {OutboxState.PENDING.value: 2 * window_s, OutboxState.SENT.value: window_s}.get(state, 0.0)
    return ChainWrite(tuple(ids), state, eta)


FAILED = OutboxState.FAILED.value


def progress(db: Database, ids: Sequence[int], window_s: float = 1.0) -> ChainWrite:
    """Aggregate state of outbox rows ``ids`` (an empty set is ``confirmed``: nothing to write)."""
    if not ids:
        return ChainWrite((), OutboxState.CONFIRMED.value, 0.0)
    with db.sessions() as s:
        states = list(s.scalars(select(OutboxEntry.state).where(OutboxEntry.id.in_(list(ids)))))
    if len(states) != len(set(ids)):
        raise KeyError("unknown outbox id")
    return _aggregate(ids, states, window_s)


def just_queued(ids: Sequence[int], window_s: float = 1.0) -> ChainWrite:
    """:func:`progress` of rows this request has just committed (pending; no query needed)."""
    if not ids:
        return ChainWrite((), OutboxState.CONFIRMED.value, 0.0)
    return _aggregate(ids, [OutboxState.PENDING.value] * len(ids), window_s)


def progress_for(
    db: Database, credential_ids: Sequence[str] = (), point: bytes | None = None, window_s: float = 1.0
) -> ChainWrite:
    """:func:`progress` of every outbox row of these credentials (and of a key), in one query."""
    conds = []
    if credential_ids:
        conds.append(OutboxEntry.credential_id.in_(list(credential_ids)))
    if point is not None:
        conds.append(OutboxEntry.point == point.hex())
    if not conds:
        return ChainWrite((), OutboxState.CONFIRMED.value, 0.0)
    with db.sessions() as s:
        query = select(OutboxEntry.id, OutboxEntry.state).where(or_(*conds)).order_by(OutboxEntry.id)
        rows = s.execute(query)
        pairs = [(int(i), str(st)) for i, st in rows]
    if not pairs:
        return ChainWrite((), OutboxState.CONFIRMED.value, 0.0)
    return _aggregate([i for i, _ in pairs], [st for _, st in pairs], window_s)


def credential_chain_state(s: Session, credential_id: str) -> str:
    """``confirmed`` when no chain write of the credential is open; else the state of the open ones."""
    states = set(s.scalars(select(OutboxEntry.state).where(OutboxEntry.credential_id == credential_id)))
    if OutboxState.FAILED.value in states:
        return OutboxState.FAILED.value
    if OutboxState.PENDING.value in states:
        return OutboxState.PENDING.value
    if OutboxState.SENT.value in states:
        return OutboxState.SENT.value
    return OutboxState.CONFIRMED.value


def aware(value: dt.datetime | None) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


def stats(db: Database, now: dt.datetime | None = None) -> dict[str, object]:
    """Outbox depth, oldest open row's age, failed rows and the last confirmed block (for ``/health``)."""
    now = now or utcnow()
    with db.sessions() as s:
        depth, oldest = s.execute(
            select(func.count(OutboxEntry.id), func.min(OutboxEntry.created_at)).where(
                OutboxEntry.state.in_(_OPEN)
            )
        ).one()
        failed = s.scalar(
            select(func.count(OutboxEntry.id)).where(OutboxEntry.state == OutboxState.FAILED.value)
        )
        last_block = s.scalar(
            select(func.max(OutboxBatch.block_number)).where(OutboxBatch.state == BatchState.CONFIRMED.value)
        )
    oldest = aware(oldest)
    return {
        "depth": int(depth or 0),
        "oldest_pending_age_s": round((now - oldest).total_seconds(), 3) if oldest else 0.0,
        "failed": int(failed or 0),
        "last_confirmed_block": last_block,
    }
