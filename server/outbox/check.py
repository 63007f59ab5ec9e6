"""``city-server chain check --db``: the database against the chain, every disagreement listed; and
``city-server chain outbox``: the rows the chain refused, put back in the queue by an operator
(docs/server.md §Chain outbox).

Expected on chain = the effect of every *confirmed* outbox row, in id order: the last status value per
status entry (0 if none) and, per citizen identity, the keys enrolled and not revoked. Rows not yet confirmed
are listed too (``open``), as are ``failed`` ones; they are not disagreements of the chain.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import or_, select

from cityid.errors import CityIdError
from server.db import Database
from server.models import OutboxEntry, OutboxKind, OutboxState
from server.outbox.ports import DirectPort, TxPort


@dataclass(frozen=True, slots=True)
class Disagreement:
    kind: str  # "status" | "key-missing" | "key-extra" | "open" | "failed"
    subject: str  # "list/index" or identity
    expected: str
    on_chain: str

    def __str__(self) -> str:
        return f"{self.kind}\t{self.subject}\texpected {self.expected}\ton chain {self.on_chain}"


def check(db: Database, port: TxPort | DirectPort) -> list[Disagreement]:
    out: list[Disagreement] = []
    status: dict[tuple[int, int], int] = {}
    keys: dict[str, set[bytes]] = {}
    with db.sessions() as s:
        rows = list(s.scalars(select(OutboxEntry).order_by(OutboxEntry.id)))
    for r in rows:
        if r.state in (OutboxState.PENDING.value, OutboxState.SENT.value, OutboxState.FAILED.value):
            what = r.identity if r.kind != OutboxKind.STATUS.value else f"{r.list_id}/{r.status_index}"
            kind = "failed" if r.state == OutboxState.FAILED.value else "open"
            out.append(Disagreement(kind, f"{what} (outbox {r.id}, {r.kind})", r.state, r.error or "-"))
            continue
        if r.kind == OutboxKind.STATUS.value:
            assert r.list_id is not None and r.status_index is not None and r.status_value is not None
            status[(r.list_id, r.status_index)] = r.status_value
        elif r.identity and r.point:
            held = keys.setdefault(r.identity.lower(), set())
            (held.add if r.kind == OutboxKind.ENROLL.value else held.discard)(bytes.fromhex(r.point))
    by_list: dict[int, list[int]] = {}
    for list_id, index in status:
        by_list.setdefault(list_id, []).append(index)
    for list_id, indexes in by_list.items():
        indexes.sort()
        for index, got in zip(indexes, port.statuses(list_id, indexes), strict=True):
            want = status[(list_id, index)]
            if got != want:
                out.append(Disagreement("status", f"{list_id}/{index}", str(want), str(got)))
    chain_keys = port.keys(sorted(keys))
    for identity, want in sorted(keys.items()):
        got = chain_keys.get(identity, set())
        out += [Disagreement("key-missing", identity, k.hex()[:18], "absent") for k in sorted(want - got)]
        out += [Disagreement("key-extra", identity, "revoked", k.hex()[:18]) for k in sorted(got - want)]
    return out


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
