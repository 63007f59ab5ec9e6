"""Certificate anchoring queue and kiosk directory of the city server (docs/certificates.md §Anchoring).

Kiosks submit the hash of each certificate they are about to print; the queue anchors the hashes in Merkle
batches through CityAnchorRegistry — **one transaction per batch window**: a batch is sent when
``max_batch`` hashes are waiting or when the oldest waiting hash has waited ``window_s`` seconds, whichever
comes first. A hash is stored once (its primary key): a resubmission (reprint, retry after a timeout) returns
the same entry and is never anchored twice. The rows of a batch get their root *before* the transaction is
sent;
a flush that finds rows with a root but no block first asks the chain whether that root is anchored (the
server died after sending) and only re-sends when it is not — so a crash cannot anchor a document twice.
Anchored roots are checked again by the chain writer every window (:meth:`AnchorQueue.reconcile`): a root the
chain no longer has (a reorg, a node restored from an older snapshot, a chain reset) goes back to "sending"
and the same hashes — the same root, so every printed proof stays valid — are anchored again.
No certificate content reaches the server: only its salted hash and the submitting kiosk.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError

from cityid.certificate import AnchorProof
from cityid.chain.merkle import build_tree
from cityid.errors import CityIdError
from cityid.keys import KeyFormatError, P256PublicKey
from server.db import Database
from server.models import CertificateAnchor, Terminal

logger = logging.getLogger(__name__)

DEFAULT_WINDOW_S = 60.0
DEFAULT_MAX_BATCH = 1000
RECHECK_ROOTS = 8  # the most recent anchored roots checked every window (all of them after a state loss)


class Anchorer(Protocol):
    """The chain side the queue needs (``server.chain.registrar.Registrar`` provides both)."""

    def anchor_batch(self, document_hashes: Sequence[bytes]) -> Any: ...

    @property
    def anchors(self) -> Any:
        """The AnchorRegistry binding (``anchor_of(root)``)."""
        ...


@dataclass(frozen=True, slots=True)
class AnchorTicket:
    """Where a submitted hash stands: ``queued`` (waiting or being sent) or ``anchored`` with its proof."""

    document_hash: bytes
    status: str
    queued_at: dt.datetime
    proof: AnchorProof | None = None
    block: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "document_hash": self.document_hash.hex(),
            "status": self.status,
            "queued_at": self.queued_at.isoformat(),
        }
        if self.proof is not None:
            out |= {
                "root": self.proof.root.hex(),
                "proof": [s.hex() for s in self.proof.siblings],
                "block": self.block,
            }
        return out


class AnchorQueueError(CityIdError):
    """The queue cannot take or anchor documents (storage or chain trouble)."""


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


class AnchorQueue:
    """Batching anchor queue on the server database (rule in the module docstring)."""

    def __init__(
        self,
        db: Database,
        anchorer: Anchorer | None,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        max_batch: int = DEFAULT_MAX_BATCH,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_batch < 1 or window_s < 0:
            raise ValueError("max_batch ≥ 1 and window_s ≥ 0")
        self.db = db
        self.anchorer = anchorer
        self.window_s = window_s
        self.max_batch = max_batch
        self.clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC)

    @staticmethod
    def _ticket(row: CertificateAnchor) -> AnchorTicket:
        proof = None
        if row.block is not None and row.root is not None:
            raw = bytes.fromhex(row.proof or "")
            proof = AnchorProof(
                bytes.fromhex(row.root), tuple(raw[i : i + 32] for i in range(0, len(raw), 32))
            )
        status = "anchored" if proof is not None else "queued"
        return AnchorTicket(bytes.fromhex(row.document_hash), status, _aware(row.queued_at), proof, row.block)

    def submit(self, document_hash: bytes, terminal: str) -> AnchorTicket:
        """Queue a hash (idempotent: the same hash returns its existing entry)."""
        if len(document_hash) != 32:
            raise ValueError("a document hash is 32 bytes")
        key = document_hash.hex()
        with self.db.sessions.begin() as s:
            row = s.get(CertificateAnchor, key)
            if row is None:
                row = CertificateAnchor(document_hash=key, terminal=terminal[:64], queued_at=self._now())
                s.add(row)
                s.flush()
            ticket = self._ticket(row)
        if self.due():
            self._wake.set()
        return ticket

    def lookup(self, document_hash: bytes) -> AnchorTicket | None:
        with self.db.sessions() as s:
            row = s.get(CertificateAnchor, document_hash.hex())
            return None if row is None else self._ticket(row)

    def pending(self) -> int:
        with self.db.sessions() as s:
            return len(
                s.scalars(
                    select(CertificateAnchor.document_hash).where(CertificateAnchor.block.is_(None))
                ).all()
            )

    def due(self) -> bool:
        """True when the batch rule says a batch should be sent now."""
        with self.db.sessions() as s:
            rows = s.scalars(
                select(CertificateAnchor.queued_at)
                .where(CertificateAnchor.block.is_(None))
                .order_by(CertificateAnchor.queued_at)
                .limit(self.max_batch)
            ).all()
        if not rows:
            return False
        oldest = _aware(rows[0])
        return len(rows) >= self.max_batch or (self._now() - oldest).total_seconds() >= self.window_s

    def flush(self, force: bool = False) -> int:
        """Anchor what is due (everything waiting when ``force``); return how many were anchored."""
        if self.anchorer is None:
            raise AnchorQueueError("this server has no anchoring account (chain gateway without registrar)")
        done = 0
        with self._lock:
            done += self._resume_sending()
            while force or self.due():
                n = self._send_one_batch()
                if n == 0:
                    break
                done += n
                force = force and self.pending() > 0
        return done

    def _require_anchorer(self) -> Anchorer:
        """The anchoring account; :meth:`flush` has checked it exists before any batch is sent."""
        if self.anchorer is None:
            raise AnchorQueueError("this server has no anchoring account (chain gateway without registrar)")
        return self.anchorer

    def _resume_sending(self) -> int:
        """Rows with a root but no block: a batch whose transaction may or may not have been mined."""
        with self.db.sessions() as s:
            roots: set[str] = set(
                r
                for r in s.scalars(
                    select(CertificateAnchor.root).where(
                        CertificateAnchor.root.is_not(None), CertificateAnchor.block.is_(None)
                    )
                ).all()
                if r is not None
            )
        done = 0
        for root in roots:
            with self.db.sessions() as s:
                rows = s.scalars(
                    select(CertificateAnchor)
                    .where(CertificateAnchor.root == root)
                    .order_by(CertificateAnchor.queued_at, CertificateAnchor.document_hash)
                ).all()
            hashes = [bytes.fromhex(r.document_hash) for r in rows]
            _ts, block, _who = self._require_anchorer().anchors.anchor_of(bytes.fromhex(root))
            if block:
                logger.info("batch %s… was anchored before a restart; recording its proofs", root[:12])
                self._record(hashes, block)
            else:
                self._anchor(hashes)
            done += len(hashes)
        return done

    def _send_one_batch(self) -> int:
        with self.db.sessions() as s:
            rows = s.scalars(
                select(CertificateAnchor)
                .where(CertificateAnchor.root.is_(None))
                .order_by(CertificateAnchor.queued_at, CertificateAnchor.document_hash)
                .limit(self.max_batch)
            ).all()
        hashes = [bytes.fromhex(r.document_hash) for r in rows]
        if hashes:
            self._anchor(hashes)
        return len(hashes)

    def _anchor(self, hashes: list[bytes]) -> None:
        root, _proofs = build_tree(hashes)
        with self.db.sessions.begin() as s:  # mark "sending" before the transaction (crash safety)
            s.execute(
                update(CertificateAnchor)
                .where(CertificateAnchor.document_hash.in_([h.hex() for h in hashes]))
                .values(root=root.hex())
            )
        try:
            batch = self._require_anchorer().anchor_batch(hashes)
        except CityIdError as exc:
            logger.warning("anchoring a batch of %d failed: %s", len(hashes), type(exc).__name__)
            raise AnchorQueueError(f"anchoring failed: {type(exc).__name__}") from exc
        self._record(hashes, int(batch.receipt.block_number))
        logger.info("anchored %d certificate(s) in block %d", len(hashes), batch.receipt.block_number)

    def reconcile(self, *, everything: bool = False, recent: int = RECHECK_ROOTS) -> int:
        """Check anchored roots are still on chain: the ``recent`` latest ones, or all of them when
        ``everything`` (the writer saw the node lose state). A lost root's rows go back to "sending" (root
        kept, block cleared), so the next :meth:`flush` anchors the same batch again; a root the chain now has
        in another block (re-mined after a reorg) gets that block. Returns how many roots were lost."""
        anchorer = self._require_anchorer()
        with self.db.sessions() as s:
            query = (
                select(CertificateAnchor.root, CertificateAnchor.block)
                .where(CertificateAnchor.block.is_not(None), CertificateAnchor.root.is_not(None))
                .group_by(CertificateAnchor.root, CertificateAnchor.block)
                .order_by(CertificateAnchor.block.desc())
            )
            rows = s.execute(query if everything else query.limit(recent)).all()
        lost = 0
        for root_or_none, block_or_none in rows:
            root, block = str(root_or_none), int(block_or_none or 0)  # both non-null (the WHERE above)
            _ts, on_chain, _who = anchorer.anchors.anchor_of(bytes.fromhex(root))
            if int(on_chain) == block:
                continue
            if on_chain:
                logger.info("anchor root %s… moved from block %d to %d", root[:12], block, on_chain)
            else:
                lost += 1
                logger.warning("anchor root %s… (block %d) is no longer on chain; anchoring it again",
                               root[:12], block)  # fmt: skip
            with self.db.sessions.begin() as s:
                s.execute(
                    update(CertificateAnchor)
                    .where(CertificateAnchor.root == root)
                    .values(block=int(on_chain) or None)
                )
        return lost

    def _record(self, hashes: list[bytes], block: int) -> None:
        root, proofs = build_tree(hashes)
        with self.db.sessions.begin() as s:
            for h, proof in zip(hashes, proofs, strict=True):
                row = s.get(CertificateAnchor, h.hex())
                if row is not None:
                    row.root, row.proof, row.block = root.hex(), b"".join(proof).hex(), block

    # --- background flushing -------------------------------------------------------------------------

    def start(self, poll_s: float = 1.0) -> None:
        """Flush in a daemon thread whenever the batch rule says so."""
        if self._thread is not None or self.anchorer is None:
            return

        def loop() -> None:
            while not self._stop.is_set():
                self._wake.wait(poll_s)
                self._wake.clear()
                try:
                    if self.due():
                        self.flush()
                except (CityIdError, OSError, SQLAlchemyError) as exc:  # retried next tick; nothing lost
                    logger.warning("anchor flush failed, will retry: %s", type(exc).__name__)

        self._thread = threading.Thread(target=loop, name="certificate-anchors", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


class DbKioskDirectory:
    """:class:`cityid.certificate.KioskDirectory` on the server's terminal table (registered and active)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def kiosk_key(self, kiosk_id: str) -> P256PublicKey | None:
        with self.db.sessions() as s:
            t = s.get(Terminal, kiosk_id)
            if t is None or not t.active:
                return None
            pem = t.public_key_pem
        try:
            return P256PublicKey.from_spki(pem.encode())
        except KeyFormatError:
            return None


class QueueProofSource:
    """:class:`cityid.certificate.ProofSource` reading this server's own queue."""

    def __init__(self, queue: AnchorQueue) -> None:
        self.queue = queue

    def proof(self, document_hash: bytes) -> AnchorProof | None:
        ticket = self.queue.lookup(document_hash)
        return None if ticket is None else ticket.proof
