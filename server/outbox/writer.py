"""The city's one chain writer: drains the outbox in batches per window, owns the nonce, confirms, reconciles
(docs/server.md §Chain outbox).

Every window the leader (:mod:`.leader`) runs :meth:`OutboxWriter.cycle`:

1. **reconcile** — every unfinished batch (signed, sent, mined) is looked up by hash: mined deep enough →
   confirmed with its rows; not mined and its nonce still ahead → the SAME stored bytes are broadcast again;
   not mined and its nonce used by something else → abandoned, rows back to pending. Confirmed batches are
   checked to still be canonical (block hash at the recorded height) — the most recent ones every window, all
   of them whose nonce is at or above the node's account nonce (the node lost state: a reorg, a node restored
   from an older snapshot, a chain reset); a lost one goes back to ``sent`` and its same bytes are re-sent,
   so the chain gets exactly the history it lost. A nonce the node has never seen below our stored ones (a
   gap) is filled by a no-op self-transfer, so stored transactions above it can be mined.
2. **drain** — pending rows in id order become one transaction per kind and group (keys enrolled first, then
   status words, then keys revoked): estimated (a reverting group is split until the refused row is found and
   marked failed), signed with consecutive nonces, and stored with their rows in ONE database transaction
   before the first broadcast. A writer that dies at any point leaves rows either pending or tied to stored
   signed bytes: its successor re-sends those bytes or finds them mined — never a second, different
   transaction for the same row.
3. certificate anchors: the anchor queue's window is flushed here too (one Merkle root per window), so one
   process sends every transaction of the registrar key.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import CursorResult, select, update
from sqlalchemy.exc import SQLAlchemyError

from cityid.chain.errors import ChainError, RpcError
from cityid.errors import CityIdError
from server.db import Database
from server.models import BatchState, OutboxBatch, OutboxEntry, OutboxKind, OutboxState, utcnow
from server.outbox.leader import Leadership
from server.outbox.ports import DirectPort, Item, Reverted, TxPort, group, port_for
from server.outbox.store import ChainWrite, progress

logger = logging.getLogger(__name__)

_UNFINISHED = (BatchState.SIGNED.value, BatchState.SENT.value, BatchState.MINED.value)
_KIND_ORDER = {OutboxKind.ENROLL.value: 0, OutboxKind.STATUS.value: 1, OutboxKind.REVOKE_KEY.value: 2}
FILLER = "filler"
MAX_ATTEMPTS = 5


def _item(row: OutboxEntry) -> Item:
    return Item(
        row.id,
        row.kind,
        row.identity,
        bytes.fromhex(row.point) if row.point else None,
        row.list_id,
        row.status_index,
        row.status_value,
    )


class OutboxWriter:
    """Chain writer over the server database and its chain gateway (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        gateway: Any,
        *,
        window_s: float = 0.5,
        confirmations: int = 1,
        max_rows: int = 4000,
        recheck: int = 32,
        anchor_queue: Any = None,
    ) -> None:
        self.db = db
        self.port: TxPort | DirectPort = port_for(gateway)
        self.window_s = window_s
        self.confirmations = max(1, confirmations)
        self.max_rows = max_rows
        self.recheck = recheck
        self.anchor_queue = anchor_queue
        self.leader = Leadership(db.engine)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cycle_lock = threading.Lock()
        self._last_drain = -float("inf")  # monotonic time of the last drain that found rows
        self._last_recheck = -float("inf")  # … of the last canonical check of confirmed batches
        self._skipped = False  # the last cycle left the drain for the next window
        self._last_anchors = -float("inf")  # … of the last anchor recheck and flush
        self.last_error = ""
        self.reapplied = 0  # batches re-sent after the chain lost them (reorg / older snapshot)
        self._state_lost = False  # the node lost confirmed writes: recheck every anchor root next window

    # ---- running ----
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="chain-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._cycle_lock:
            self.leader.release()

    def nudge(self) -> None:
        """A request queued rows: an idle leader runs a window now; a busy one keeps its pace (at most one
        window per ``window_s`` under load — that is what makes batches), and a non-leader ignores it."""
        self._wake.set()

    def _loop(self) -> None:
        failures = 0
        last_start = -float("inf")
        while not self._stop.is_set():
            busy = False
            leading = False
            with self._cycle_lock:
                if self.leader.acquire():
                    leading = True
                    last_start = time.monotonic()
                    try:
                        busy = self.cycle()
                        self.last_error, failures = "", 0
                    except (ChainError, SQLAlchemyError, OSError) as exc:
                        failures += 1
                        self.last_error = type(exc).__name__
                        if failures & (failures - 1) == 0:  # 1st, 2nd, 4th, 8th … failure in a row
                            logger.warning("chain writer cycle failed (%d in a row), will retry: %s: %s",
                                           failures, type(exc).__name__, str(exc)[:200])  # fmt: skip
                    except Exception:
                        failures += 1
                        self.last_error = "unexpected"
                        logger.exception("chain writer cycle failed unexpectedly")
            if not leading:
                # Another instance leads: try again next window; a request's nudge does not make every
                # instance open a connection to ask for the lock (one attempt per window, §Chain outbox).
                self._stop.wait(self.window_s)
                self._wake.clear()
                continue
            poll = min(self.window_s, 0.05)  # receipt polling while batches are in flight
            due = self._last_drain + self.window_s  # the next drain, when this one was skipped
            pause = poll if busy else max(0.0, due - time.monotonic()) if self._skipped else self.window_s
            self._wake.wait(min(pause * (2 ** min(failures, 4)), 5.0))
            self._wake.clear()
            # Woken by a nudge: never two cycles closer than the receipt poll, and no cycle before the
            # next drain is due when nothing is in flight, whatever the request rate.
            earliest = last_start + poll if busy or not self._skipped else max(due, last_start + poll)
            gap = earliest - time.monotonic()
            if gap > 0:
                self._stop.wait(gap)

    def run_once(self) -> bool:
        """One window in the caller's thread (tests, ``wait`` without a writer thread); False if another
        writer leads."""
        with self._cycle_lock:
            if not self.leader.acquire():
                return False
            try:
                self.cycle(force=True)
            finally:
                if not self.running:
                    self.leader.release()
        return True

    def wait(self, ids: Sequence[int], timeout: float) -> ChainWrite:
        """Until rows ``ids`` are confirmed (or failed) or ``timeout`` seconds pass; runs windows itself when
        no writer thread runs in this process."""
        deadline = time.monotonic() + timeout
        while True:
            got = progress(self.db, ids, self.window_s)
            if got.final or time.monotonic() >= deadline:
                return got
            if self.running:
                self.nudge()
                time.sleep(0.02)
            else:
                try:
                    self.run_once()
                except (ChainError, SQLAlchemyError, OSError) as exc:
                    logger.warning("chain write window failed: %s", type(exc).__name__)
                    time.sleep(0.05)

    # ---- one window ----
    def cycle(self, force: bool = False) -> bool:
        """Reconcile, then drain (at most once per window unless ``force``: ``run_once``); True while work is
        in flight (the loop then polls faster)."""
        if isinstance(self.port, DirectPort):
            return self._drain_direct()
        inflight = self._reconcile(self.port, force)
        now = time.monotonic()
        if (force or now - self._last_drain >= self.window_s) and self.leader.check():
            # One drain per window under load (the batches), at once when the writer was idle a window.
            self._last_drain = now
            drained = self._drain(self.port)
            inflight |= drained
            if not drained:
                self._last_drain = -float("inf")  # nothing was pending: the next nudge drains at once
        self._skipped = not force and now - self._last_drain < self.window_s
        anchors_due = force or now - self._last_anchors >= self.window_s  # once per window, like the recheck
        if self.anchor_queue is not None and anchors_due and self.leader.check():
            self._last_anchors = now
            self._anchors(self.port)
        return inflight

    def _anchors(self, port: TxPort) -> None:
        """Certificate anchors: recheck anchored roots (all of them after a state loss), then flush what is
        due — a lost root is anchored again with the same hashes."""
        everything, self._state_lost = self._state_lost, False
        try:
            lost = self.anchor_queue.reconcile(everything=everything)
            self.reapplied += lost
            if lost or self.anchor_queue.due():  # a lost root is re-sent now, not after the window
                port.forget_nonce()  # the queue sends through the registrar's own sender
                self.anchor_queue.flush()
        except CityIdError as exc:
            logger.warning("certificate anchoring failed, next window retries: %s", exc)
            self._state_lost = self._state_lost or everything

    # ---- selecting rows ----
    def _eligible(self) -> list[OutboxEntry]:
        """Pending rows in id order, at most one per status entry and per key; a key revocation waits for the
        key's enrollment to be confirmed (the contract checks the key's identity is ours)."""
        with self.db.sessions() as s:
            rows = list(
                s.scalars(
                    select(OutboxEntry)
                    .where(OutboxEntry.state == OutboxState.PENDING.value)
                    .order_by(OutboxEntry.id)
                    .limit(self.max_rows)
                )
            )
            revoking = {r.identity for r in rows if r.kind == OutboxKind.REVOKE_KEY.value}
            blocked: set[str | None] = set()
            if revoking:
                blocked = set(
                    s.scalars(
                        select(OutboxEntry.identity).where(
                            OutboxEntry.kind == OutboxKind.ENROLL.value,
                            OutboxEntry.state.in_((OutboxState.PENDING.value, OutboxState.SENT.value)),
                            OutboxEntry.identity.in_(revoking),
                        )
                    )
                )
        seen: set[tuple[Any, ...]] = set()
        out = []
        for r in rows:
            if r.kind == OutboxKind.REVOKE_KEY.value and r.identity in blocked:
                continue
            key: tuple[Any, ...] = (
                ("s", r.list_id, r.status_index)
                if r.kind == OutboxKind.STATUS.value
                else ("k", r.identity, r.point)
            )
            if key in seen:
                continue  # a later change of the same entry goes in a later window (order kept)
            seen.add(key)
            out.append(r)
        out.sort(key=lambda r: (_KIND_ORDER[r.kind], r.id))
        return out

    def _fail(self, ids: Sequence[int], why: str, final: bool) -> None:
        with self.db.sessions.begin() as s:
            for row in s.scalars(select(OutboxEntry).where(OutboxEntry.id.in_(list(ids)))):
                if row.state not in (OutboxState.PENDING.value, OutboxState.SENT.value):
                    continue
                row.attempts += 1
                row.error = why[:200]
                row.batch_id = None
                if final or row.attempts >= MAX_ATTEMPTS:
                    row.state = OutboxState.FAILED.value
                    row.done_at = utcnow()
                    logger.error("outbox row %d (%s) failed: %s", row.id, row.kind, why[:200])
                else:
                    row.state = OutboxState.PENDING.value

    # ---- direct (in-memory gateway) ----
    def _drain_direct(self) -> bool:
        assert isinstance(self.port, DirectPort)
        rows = self._eligible()
        for kind, items in group([_item(r) for r in rows]):
            ids = [it.id for it in items]
            try:
                self.port.apply(kind, items)
            except ChainError as exc:
                self._fail(ids, f"chain: {exc}"[:200], final=False)
                continue
            with self.db.sessions.begin() as s:
                s.execute(
                    update(OutboxEntry)
                    .where(OutboxEntry.id.in_(ids), OutboxEntry.state == OutboxState.PENDING.value)
                    .values(state=OutboxState.CONFIRMED.value, done_at=utcnow())
                )
        return False

    # ---- transactions ----
    def _plan(self, port: TxPort, kind: str, items: list[Item]) -> list[tuple[list[Item], Any, int]]:
        """(rows, request, gas) for the group; a reverting group is split to find the refused rows."""
        req = port.request(kind, items)
        try:
            return [(items, req, port.estimate(req))]
        except Reverted as exc:
            if len(items) == 1:
                self._fail([items[0].id], f"refused by the chain: {exc}", final=True)
                return []
            half = len(items) // 2
            return self._plan(port, kind, items[:half]) + self._plan(port, kind, items[half:])

    def _drain(self, port: TxPort) -> bool:
        rows = self._eligible()
        if not rows:
            return False
        planned: list[tuple[str, list[Item], Any, int]] = []
        for kind, items in group([_item(r) for r in rows]):
            planned.extend((kind, its, req, gas) for its, req, gas in self._plan(port, kind, items))
        if not planned:
            return False
        first = self._next_nonce(port)
        signed = port.sign([(req, gas) for _k, _i, req, gas in planned], first)
        if not self.leader.check():
            return False
        batch_ids: list[int] = []
        with self.db.sessions.begin() as s:
            for (kind, items, _req, _gas), tx in zip(planned, signed, strict=True):
                batch = OutboxBatch(kind=kind, sender=port.address, nonce=tx.nonce, tx_hash=tx.tx_hash,
                                    raw_tx=tx.raw, gas_limit=tx.gas, items=len(items))  # fmt: skip
                s.add(batch)
                s.flush()
                ids = [it.id for it in items]
                result = s.execute(
                    update(OutboxEntry)
                    .where(OutboxEntry.id.in_(ids), OutboxEntry.state == OutboxState.PENDING.value)
                    .values(state=OutboxState.SENT.value, batch_id=batch.id)
                )
                assert isinstance(result, CursorResult)
                if result.rowcount != len(ids):
                    # Someone else took these rows (a deposed leader racing): store nothing, send nothing.
                    raise ChainError("outbox rows changed under the writer; window abandoned")
                batch_ids.append(batch.id)
        logger.info("chain writer: %d batch(es), %d row(s), nonces %d..%d", len(signed),
                    sum(len(p[1]) for p in planned), first, first + len(signed) - 1)  # fmt: skip
        for bid, tx in zip(batch_ids, signed, strict=True):
            self._send(port, bid, tx.raw)
        return True

    def _send(self, port: TxPort, batch_id: int, raw: str) -> None:
        try:
            port.broadcast(raw)
        except RpcError as exc:
            logger.warning("broadcast of batch %d refused (%s); reconciliation decides", batch_id,
                           exc.message[:120])  # fmt: skip
            return
        with self.db.sessions.begin() as s:
            s.execute(
                update(OutboxBatch)
                .where(OutboxBatch.id == batch_id, OutboxBatch.state == BatchState.SIGNED.value)
                .values(state=BatchState.SENT.value)
            )

    def _next_nonce(self, port: TxPort) -> int:
        """The account's next nonce: after the node's pending count and after every unfinished batch."""
        with self.db.sessions() as s:
            top = s.scalar(
                select(OutboxBatch.nonce)
                .where(OutboxBatch.state.in_(_UNFINISHED), OutboxBatch.sender == port.address)
                .order_by(OutboxBatch.nonce.desc())
                .limit(1)
            )
        pending = port.nonce("pending")
        return max(pending, (top + 1) if top is not None else 0)

    # ---- reconciliation ----
    def _reconcile(self, port: TxPort, force: bool = False) -> bool:
        latest = port.nonce("latest")
        head = port.head()
        now = time.monotonic()
        if force or now - self._last_recheck >= self.window_s:  # every window, not every receipt poll
            self._last_recheck = now
            self._recheck_confirmed(port, latest)
        with self.db.sessions() as s:
            batches = list(
                s.scalars(
                    select(OutboxBatch)
                    .where(OutboxBatch.state.in_(_UNFINISHED), OutboxBatch.sender == port.address)
                    .order_by(OutboxBatch.nonce)
                )
            )
        for b in batches:
            mined = port.receipt(b.tx_hash)
            if mined is not None:
                self._mined(b, mined, head)
            elif b.nonce < latest:
                self._abandon(b, "its nonce was used by another transaction")
            else:
                self._send(port, b.id, b.raw_tx)  # the same bytes again (idempotent)
        self._fill_gaps(port, batches)
        return any(b.state != BatchState.CONFIRMED.value for b in batches)

    def _mined(self, b: OutboxBatch, mined: Any, head: int) -> None:
        if not mined.ok:
            self._abandon(b, "reverted on chain")
            return
        deep = head - mined.block_number + 1 >= self.confirmations
        state = BatchState.CONFIRMED.value if deep else BatchState.MINED.value
        with self.db.sessions.begin() as s:
            s.execute(
                update(OutboxBatch)
                .where(OutboxBatch.id == b.id)
                .values(
                    state=state,
                    block_number=mined.block_number,
                    block_hash=mined.block_hash,
                    gas_used=mined.gas_used,
                    confirmed_at=utcnow() if deep else None,
                )
            )
            if deep:
                s.execute(
                    update(OutboxEntry)
                    .where(OutboxEntry.batch_id == b.id, OutboxEntry.state == OutboxState.SENT.value)
                    .values(state=OutboxState.CONFIRMED.value, done_at=utcnow())
                )
        b.state = state

    def _abandon(self, b: OutboxBatch, why: str) -> None:
        logger.warning("batch %d (nonce %d) abandoned: %s; its rows are queued again", b.id, b.nonce, why)
        with self.db.sessions.begin() as s:
            s.execute(
                update(OutboxBatch).where(OutboxBatch.id == b.id).values(state=BatchState.ABANDONED.value)
            )
            ids = list(s.scalars(select(OutboxEntry.id).where(OutboxEntry.batch_id == b.id)))
        if ids:
            self._fail(ids, why, final=False)
        b.state = BatchState.ABANDONED.value

    def _recheck_confirmed(self, port: TxPort, latest: int) -> None:
        """Confirmed batches no longer on the node's canonical chain go back to ``sent`` (re-sent as is)."""
        with self.db.sessions() as s:
            recent = list(
                s.scalars(
                    select(OutboxBatch)
                    .where(
                        OutboxBatch.state == BatchState.CONFIRMED.value, OutboxBatch.sender == port.address
                    )
                    .order_by(OutboxBatch.nonce.desc())
                    .limit(self.recheck)
                )
            )
            if recent and recent[0].nonce >= latest:  # the node's account nonce went back: find every loss
                self._state_lost = True  # anchors too (they share the account)
                recent = list(
                    s.scalars(
                        select(OutboxBatch).where(
                            OutboxBatch.state == BatchState.CONFIRMED.value,
                            OutboxBatch.sender == port.address,
                            OutboxBatch.nonce >= min(latest, recent[-1].nonce),
                        )
                    )
                )
        if not recent:
            return
        numbers = sorted({b.block_number for b in recent if b.block_number is not None})
        hashes: dict[int, str | None] = {}
        for i in range(0, len(numbers), 200):
            hashes.update(port.block_hashes(numbers[i : i + 200]))
        lost = [b for b in recent if b.block_number is None or hashes.get(b.block_number) != b.block_hash]
        if not lost:
            return
        logger.warning("chain writer: %d confirmed batch(es) are no longer on the chain (reorg or node state "
                       "loss); re-sending their signed bytes", len(lost))  # fmt: skip
        self.reapplied += len(lost)
        self._state_lost = True
        with self.db.sessions.begin() as s:
            for b in lost:
                s.execute(
                    update(OutboxBatch)
                    .where(OutboxBatch.id == b.id)
                    .values(
                        state=BatchState.SENT.value,
                        block_number=None,
                        block_hash=None,
                        confirmed_at=None,
                        reapplied=OutboxBatch.reapplied + 1,
                    )
                )
                s.execute(
                    update(OutboxEntry)
                    .where(OutboxEntry.batch_id == b.id, OutboxEntry.state == OutboxState.CONFIRMED.value)
                    .values(state=OutboxState.SENT.value, done_at=None)
                )

    def _fill_gaps(self, port: TxPort, batches: Sequence[OutboxBatch]) -> None:
        """Nonces between the node's pending count and our highest unfinished batch that nobody holds (the
        node lost a transaction we never stored, e.g. a ceremony's): fill each with a no-op."""
        live = {b.nonce for b in batches if b.state in _UNFINISHED}
        if not live:
            return
        pending = port.nonce("pending")
        missing = [n for n in range(pending, max(live)) if n not in live]
        if not missing:
            return
        logger.warning("chain writer: nonce gap %s; filling with no-op transactions", missing[:10])
        txs = port.sign_fillers(missing)
        with self.db.sessions.begin() as s:
            rows = [OutboxBatch(kind=FILLER, sender=port.address, nonce=t.nonce, tx_hash=t.tx_hash,
                                raw_tx=t.raw, gas_limit=t.gas, items=0) for t in txs]  # fmt: skip
            s.add_all(rows)
            s.flush()
            ids = [r.id for r in rows]
        for bid, t in zip(ids, txs, strict=True):
            self._send(port, bid, t.raw)
