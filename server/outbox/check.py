"""``city-server chain check --db``: the database against the chain, every disagreement listed; and
``city-server chain outbox``: the rows the chain refused, put back in the queue by an operator
(docs/server.md §Chain outbox).

Expected on chain = the effect of every *confirmed* outbox row, in id order: the last status value per
status entry (0 if none) and, per citizen identity (case-insensitive), the keys enrolled and not revoked.
Rows not yet confirmed are listed too (``open``), as are ``failed`` ones; they are not disagreements of the
chain.

:func:`check` streams: each query reads one page of rows in its own short transaction (keyset pagination on
the orderings the ``ix_outbox_*`` indexes serve), and the chain is asked about one chunk of entries or
identities at a time, so memory is bounded by the page and chunk sizes, not by the number of citizens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import groupby, islice
from operator import itemgetter
from typing import Any, TypeVar

from sqlalchemy import Select, func, or_, select, tuple_

from cityid.errors import CityIdError
from server.db import Database
from server.models import OutboxEntry, OutboxKind, OutboxState
from server.outbox.ports import DirectPort, TxPort

logger = logging.getLogger(__name__)

E = OutboxEntry
T = TypeVar("T")

#: Row states that are not (yet) an effect on the chain, listed in this order by :func:`check`.
_NOT_CONFIRMED = (OutboxState.PENDING.value, OutboxState.SENT.value, OutboxState.FAILED.value)
#: Outbox rows read per query, and status entries / identities per chain read (defaults of :func:`check`).
PAGE = 5000
CHUNK = 5000


@dataclass(frozen=True, slots=True)
class Disagreement:
    kind: str  # "status" | "key-missing" | "key-extra" | "open" | "failed"
    subject: str  # "list/index" or identity
    expected: str
    on_chain: str

    def __str__(self) -> str:
        return f"{self.kind}\t{self.subject}\texpected {self.expected}\ton chain {self.on_chain}"


@dataclass(slots=True)
class Checked:
    """How far :func:`check` got: status entries and identities compared with the chain so far."""

    status_entries: int = 0
    identities: int = 0


def check(
    db: Database,
    port: TxPort | DirectPort,
    *,
    page: int = PAGE,
    chunk: int = CHUNK,
    on_chunk: Callable[[Checked], None] | None = None,
) -> Iterator[Disagreement]:
    """Every disagreement between the database and the chain, as it is found (docs/server.md §Chain outbox).

    Order: rows not confirmed (pending, sent, then failed; each by id), then status entries by (list,
    index), then identities by lowercased identity (the database's order; hex addresses sort the same
    everywhere). ``page`` rows are read per query, ``chunk`` entries or identities per chain read;
    ``on_chunk`` is called after each chain read with the running counts."""
    run = _Run(db, port, page, chunk, on_chunk)
    yield from _open_rows(run)
    yield from _statuses(run)
    yield from _keys(run)
    logger.info("chain check: %d status entries, %d identities", run.done.status_entries, run.done.identities)


@dataclass(slots=True)
class _Run:
    """One check's database, chain port, page and chunk sizes, progress callback and running counts."""

    db: Database
    port: TxPort | DirectPort
    page: int
    chunk: int
    on_chunk: Callable[[Checked], None] | None
    done: Checked = field(default_factory=Checked)

    def compared(self, n: int, statuses: bool) -> None:
        """``n`` more status entries (or identities) compared: count them, tell ``on_chunk``."""
        if statuses:
            self.done.status_entries += n
        else:
            self.done.identities += n
        if self.on_chunk is not None:
            self.on_chunk(self.done)


def _pages(
    db: Database, stmt: Select[*tuple[Any, ...]], order: Sequence[Any], page: int
) -> Iterator[tuple[Any, ...]]:
    """The rows of ``stmt`` in ``order`` (its first selected columns, a unique key), ``page`` per query, each
    query in its own short transaction (SQLite takes the write lock at BEGIN: never held for the whole check).
    Keyset pagination: the leading ``>=`` lets both SQLite and PostgreSQL seek in the index."""
    stmt = stmt.order_by(*order).limit(page)
    after: tuple[Any, ...] | None = None
    while True:
        q = stmt if after is None else stmt.where(order[0] >= after[0], tuple_(*order) > tuple_(*after))
        with db.sessions() as s:
            rows = [tuple(row) for row in s.execute(q)]
        yield from rows
        if len(rows) < page:
            return
        after = tuple(rows[-1][: len(order)])


def _batched(items: Iterable[T], n: int) -> Iterator[list[T]]:
    it = iter(items)
    while batch := list(islice(it, n)):
        yield batch


def _open_rows(run: _Run) -> Iterator[Disagreement]:
    """One line per row not confirmed (``open``) or refused (``failed``), by state then id."""
    cols = (E.id, E.kind, E.identity, E.list_id, E.status_index, E.error)
    for state in _NOT_CONFIRMED:
        for row_id, kind, identity, list_id, index, error in _pages(
            run.db, select(*cols).where(E.state == state), (E.id,), run.page
        ):
            what = identity if kind != OutboxKind.STATUS.value else f"{list_id}/{index}"
            verdict = "failed" if state == OutboxState.FAILED.value else "open"
            yield Disagreement(verdict, f"{what} (outbox {row_id}, {kind})", state, error or "-")


def _statuses(run: _Run) -> Iterator[Disagreement]:
    """The last confirmed value of each status entry against ``port.statuses``, ``chunk`` entries a read."""
    order = (E.list_id, E.status_index, E.id)
    confirmed = select(*order, E.status_value).where(
        E.kind == OutboxKind.STATUS.value, E.state.notin_(_NOT_CONFIRMED), E.list_id.is_not(None)
    )
    rows = _pages(run.db, confirmed, order, run.page)
    last = ((entry, list(group)[-1][3]) for entry, group in groupby(rows, key=itemgetter(0, 1)))
    for batch in _batched(last, run.chunk):
        for list_id, group in groupby(batch, key=lambda e: e[0][0]):
            entries = list(group)
            got = run.port.statuses(list_id, [index for (_l, index), _v in entries])
            for ((_l, index), want), on_chain in zip(entries, got, strict=True):
                if on_chain != want:
                    yield Disagreement("status", f"{list_id}/{index}", str(want), str(on_chain))
        run.compared(len(batch), statuses=True)


def _replay(rows: Iterable[tuple[Any, ...]]) -> set[bytes]:
    """The keys one identity's confirmed enroll / revoke_key rows (in id order) leave on chain."""
    held: set[bytes] = set()
    for _identity, _id, kind, point in rows:
        (held.add if kind == OutboxKind.ENROLL.value else held.discard)(bytes.fromhex(point))
    return held


def _keys(run: _Run) -> Iterator[Disagreement]:
    """Each identity's replayed keys against ``port.keys``, ``chunk`` identities a read."""
    identity = func.lower(E.identity)
    order = (identity, E.id)
    kinds = (OutboxKind.ENROLL.value, OutboxKind.REVOKE_KEY.value)
    confirmed = select(*order, E.kind, E.point).where(
        E.kind.in_(kinds), E.state.notin_(_NOT_CONFIRMED), identity > "", E.point != ""
    )
    rows = _pages(run.db, confirmed, order, run.page)
    held = ((who, _replay(group)) for who, group in groupby(rows, key=itemgetter(0)))
    for batch in _batched(held, run.chunk):
        on_chain = run.port.keys([who for who, _keys in batch])
        for who, want in batch:
            got = on_chain.get(who, set())
            for k in sorted(want - got):
                yield Disagreement("key-missing", who, k.hex()[:18], "absent")
            for k in sorted(got - want):
                yield Disagreement("key-extra", who, "revoked", k.hex()[:18])
        run.compared(len(batch), statuses=False)


class RetryRefusedError(CityIdError):
    """An operator's retry that would be wrong (not a failed row, or a later write of the same entry)."""


def _subject(r: OutboxEntry) -> str:
    return f"{r.list_id}/{r.status_index}" if r.kind == OutboxKind.STATUS.value else str(r.identity)


def failed_rows(db: Database) -> list[OutboxEntry]:
    """Rows the chain refused (``failed``), oldest first — what ``/health`` counts as ``failed``."""
    with db.sessions() as s:
        return list(
            s.scalars(
                select(OutboxEntry)
                .where(OutboxEntry.state == OutboxState.FAILED.value)
                .order_by(OutboxEntry.id)
            )
        )


def retry(db: Database, ids: list[int]) -> list[int]:
    """Put failed rows back to ``pending`` (attempts reset), all or none. Refused for a row that is not
    failed, and for one a later row of the same entry supersedes (a status entry, or a card key): re-applying
    the older write would undo the newer one — a suspension retried over a revocation would un-revoke."""
    with db.sessions.begin() as s:
        rows = {r.id: r for r in s.scalars(select(OutboxEntry).where(OutboxEntry.id.in_(ids)))}
        for i in ids:
            r = rows.get(i)
            if r is None:
                raise RetryRefusedError(f"outbox row {i} does not exist")
            if r.state != OutboxState.FAILED.value:
                raise RetryRefusedError(f"outbox row {i} is {r.state}, not failed")
            same = (
                (OutboxEntry.list_id == r.list_id) & (OutboxEntry.status_index == r.status_index)
                if r.kind == OutboxKind.STATUS.value
                else (OutboxEntry.identity == r.identity) & (OutboxEntry.point == r.point)
            )
            kinds = (
                [OutboxKind.STATUS.value]
                if r.kind == OutboxKind.STATUS.value
                else [OutboxKind.ENROLL.value, OutboxKind.REVOKE_KEY.value]
            )
            later = s.scalar(
                select(OutboxEntry.id)
                .where(OutboxEntry.id > r.id, OutboxEntry.kind.in_(kinds), same)
                .where(or_(OutboxEntry.state != OutboxState.FAILED.value, OutboxEntry.id.in_(ids)))
                .order_by(OutboxEntry.id)
                .limit(1)
            )
            if later is not None:
                raise RetryRefusedError(
                    f"outbox row {i} ({r.kind} {_subject(r)}) is superseded by row {later}; not retried"
                )
        for r in rows.values():
            r.state, r.attempts, r.error, r.batch_id, r.done_at = OutboxState.PENDING.value, 0, "", None, None
    return sorted(rows)
