"""Kiosk sync cache: follows registry events into SQLite and answers verification reads with 0 round trips.

Semantics (docs/chain.md):
- Follows DID-registry, status-registry and trusted-issuers events from a checkpoint block (default: the
  deployment block) up to ``head - confirmations``; a block is applied only once it is that deep.
- Reorgs: the hash of every synced range end is stored; each sync first re-checks the last one. On a mismatch
  it walks back to the newest stored block whose hash still matches, deletes everything applied after it and
  re-syncs from there (a revocation dropped by a reorg disappears from the cache, exactly as from the chain).
- Staleness: :meth:`SyncCache.staleness` is the time since the last successful sync; once it exceeds
  ``max_staleness`` :meth:`SyncCache.verification_facts` raises :class:`StaleChainDataError` (fail closed: the
  kiosk must not say "valid"). A cache that never synced is infinitely stale.
- State is stored as append-only rows keyed by (block, log index) and read "latest wins", so rolling back a
  reorg is a DELETE of rows above the common ancestor. Syncs write to overlay tables that every read also
  consults; :meth:`SyncCache.merge` (a bulk catch-up, idle syncs) folds them into the main tables in key
  order, one committed chunk at a time (docs/chain.md, "Delta overlay").
- Rewind / reset (docs/chain.md, "Kiosk cache"): when the checkpoint's hash is no longer canonical or the head
  is below it, the cache logs an ALARM and refuses to answer (:class:`ChainResetError`) until a sync has
  caught up again to the block it had reached; the contracts are re-checked first.
- Scope and hostile input: only the configured status lists and issuers are followed (others' events are
  ignored; a credential on an unfollowed list is an error, never "valid"); an event with values out of range
  (index 2**70, validUntil 2**64-1, …) is rejected with :class:`OutOfRangeEventError`, logged and counted,
  and the sync goes on — a poisoned list cannot stop the cache nor hide a later revocation.
- With ``max_chain_age`` a sync only counts as current when the head block's own timestamp is that recent:
  a node stuck behind does not refresh the staleness clock.
"""

from __future__ import annotations

import json
import logging
import math
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cityid.chain.bindings import vct_hash
from cityid.chain.contracts import DecodedEvent, Events
from cityid.chain.errors import ChainConfigError, ChainError, MalformedReplyError, StaleChainDataError
from cityid.chain.live import StatusListMismatchError, check_fresh, check_status_ref, trusted_now
from cityid.chain.network import NetworkConfig, check_network, checksum
from cityid.chain.proof import (
    Header,
    ProofError,
    accreditation_slot,
    did_entry_slot,
    proof_request,
    status_word_slot,
    unpack_accreditation,
    unpack_did_entry,
    verify_account_proof,
    verify_header,
    verify_receipts,
)
from cityid.chain.resolver import BuiltDocument, DidEvent, address_of, build_document, did_event, p256_keys
from cityid.chain.rpc import RpcClient, as_bytes, as_dict, as_int, as_list
from cityid.chain.view import CredentialStatus, StatusRef, VerificationFacts

logger = logging.getLogger(__name__)

# Storage at city scale (bench/chain_sync.py: 3.3 M DIDs): clustered WITHOUT ROWID tables keyed the way
# they are read (one identity's events are neighbours on disk), DID events stored as the log's own bytes
# (topic 0 kind + ABI data) and decoded only when an identity is read — ingestion parses no ABI for them.
# Each state table has an overlay twin ``<table>_delta`` of the same layout (schema 3, docs/chain.md "Delta
# overlay"): syncs write there (small, hot in the page cache), reads consult both, and merge() moves the
# overlay into the main tables in key order, chunk by chunk, later.
SCHEMA_VERSION = 3  # layout (meta "schema"); 3 = version 2 + overlay tables, migrated in place
ROW_FORMAT = 2  # what the rows mean: part of the cache's identity (a change rebuilds it from the chain)
_TABLES = {  # name -> (columns, primary key)
    "did_logs": (
        "identity BLOB NOT NULL, block INTEGER NOT NULL, log_index INTEGER NOT NULL, kind INTEGER NOT NULL, "
        "data BLOB NOT NULL",
        "identity, block, log_index",
    ),
    "status_words": (
        "list_id INTEGER NOT NULL, word INTEGER NOT NULL, block INTEGER NOT NULL, "
        "log_index INTEGER NOT NULL, value TEXT NOT NULL",
        "list_id, word, block, log_index",
    ),
    "accreditations": (
        "issuer TEXT NOT NULL, vct_hash TEXT NOT NULL, block INTEGER NOT NULL, log_index INTEGER NOT NULL, "
        "valid_from INTEGER NOT NULL, valid_until INTEGER NOT NULL, revoked INTEGER NOT NULL",
        "issuer, vct_hash, block, log_index",
    ),
}
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);\n"
    "CREATE TABLE IF NOT EXISTS checkpoints (number INTEGER PRIMARY KEY, hash TEXT NOT NULL);\n"
    + "".join(
        f"CREATE TABLE IF NOT EXISTS {name}{suffix} ({cols}, PRIMARY KEY ({pk})) WITHOUT ROWID;\n"
        for name, (cols, pk) in _TABLES.items()
        for suffix in ("", "_delta")
    )
)
_STATE_TABLES = tuple(_TABLES)
_ALL_STATE_TABLES = (*_STATE_TABLES, *(f"{t}_delta" for t in _STATE_TABLES))
MERGE_ROWS = 100_000  # overlay rows past which a sync merges the overlay into the main tables
IDLE_MERGE_ROWS = 20_000  # overlay rows a sync that found nothing new merges (the kiosk is idle)
MERGE_CHUNK = 2_000  # overlay rows per merge transaction (readers wait at most one chunk)
WAL_PAGES = 16_384  # the WAL's bound (64 MiB) if no merge or idle sync checkpoints it first
BULK_SUFFIX = "-bulk"  # the first sync's staging file next to the cache (docs/chain.md, "First sync")
_DID_EVENT_NAMES = ("DIDOwnerChanged", "DIDDelegateChanged", "DIDAttributeChanged")
_DID_KIND = {name: i for i, name in enumerate(_DID_EVENT_NAMES)}
_ZERO12 = bytes(12)
TARGET_LOGS = 10_000  # logs per eth_getLogs the range is sized for (replies stay far below 32 MiB)
KEEP_CHECKPOINTS = 256
SQL_INT_MAX = (1 << 63) - 1  # SQLite INTEGER range
FOREVER = SQL_INT_MAX  # validUntil at or beyond this (uint64 max = "no end") is stored as this


class ChainResetError(ChainError):
    """The chain was rewound or reset under the cache: it refuses to answer until resynced (alarm logged)."""


class OutOfRangeEventError(ChainError):
    """A registry event carries values the cache cannot represent (rejected; the sync continues)."""


class SyncCache:
    """A :class:`cityid.chain.view.ChainView` backed by a local SQLite replica of the registries."""

    def __init__(
        self,
        client: RpcClient,
        network: NetworkConfig,
        path: str | Path,
        *,
        confirmations: int = 2,
        max_staleness: float = 300.0,
        start_block: int | None = None,
        max_range: int = 5000,
        clock: Callable[[], float] = time.time,
        status_lists: Collection[int] | None = None,
        issuers: Collection[str] | None = None,
        max_chain_age: float | None = None,
        proofs: bool = False,
        spot_checks: int = 64,
        peers: Sequence[RpcClient] = (),
        quorum: int = 1,
        receipt_depth: int = 256,
        cache_kib: int = 32 * 1024,
        merge_rows: int = MERGE_ROWS,
        idle_merge_rows: int = IDLE_MERGE_ROWS,
        merge_chunk: int = MERGE_CHUNK,
        wal_pages: int = WAL_PAGES,
    ) -> None:
        self.client = client
        self.network = network.require_complete()
        self.confirmations = confirmations
        self.max_staleness = max_staleness
        self.start_block = network.deploy_block if start_block is None else start_block
        self.max_range = max_range
        self.clock = clock
        self.status_lists = None if status_lists is None else frozenset(int(i) for i in status_lists)
        self.issuers = None if issuers is None else frozenset(checksum(a) for a in issuers)
        self.max_chain_age = max_chain_age
        self.proofs = proofs  # spot-check applied events against eth_getProof at the range's last block
        self.spot_checks = spot_checks
        self.receipt_depth = receipt_depth
        self.merge_rows = merge_rows
        self.idle_merge_rows = idle_merge_rows
        self.merge_chunk = max(1, merge_chunk)
        self._raw_logs: dict[
            tuple[int, int], tuple[tuple[bytes, ...], bytes]
        ] = {}  # of the range being applied
        self.peers = list(peers)  # more nodes: each range's events must be identical on ``quorum`` of them
        if not 1 <= quorum <= 1 + len(self.peers):
            raise ChainConfigError(f"quorum {quorum} must be between 1 and {1 + len(self.peers)} nodes")
        self.quorum = quorum
        self._pool = ThreadPoolExecutor(max_workers=1 + len(self.peers), thread_name_prefix="chain-sync-q")
        self.rejected_events = 0
        self._lock = threading.RLock()  # SQLite access
        self._sync_lock = threading.Lock()  # one sync at a time
        self._path = str(path)
        self._wal_pages = int(wal_pages)
        self._merge_db: sqlite3.Connection | None = None  # the merge's own connection (opened when needed)
        self._bulk = False  # the first sync stages DID rows in the bulk file (docs/chain.md, "First sync")
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never corrupt
            self._db.execute(f"PRAGMA cache_size=-{cache_kib}")
            # WAL pages are copied back at merges and idle syncs, not in the commit that applies a range
            self._db.execute(f"PRAGMA wal_autocheckpoint={int(wal_pages)}")
            self._check_schema()
        except sqlite3.Error as exc:
            raise ChainConfigError(f"cannot open the chain cache {path}: {exc}") from exc
        self._contracts = {
            network.address("did_registry"): Events.of("CityDIDRegistry"),
            network.address("status_registry"): Events.of("CityStatusRegistry"),
            network.address("trusted_issuers"): Events.of("CityTrustedIssuers"),
        }
        self._by_lower = {a.lower(): e for a, e in self._contracts.items()}
        self._did_registry = network.address("did_registry").lower()
        self._did_events = self._contracts[network.address("did_registry")]
        did_topics = Events.of("CityDIDRegistry").topics
        self._did_topics = {"0x" + did_topics[n].hex(): n for n in _DID_EVENT_NAMES}
        self._did_kinds = {topic: _DID_KIND[n] for topic, n in self._did_topics.items()}  # topic 0 -> kind
        self._did_topic0 = [did_topics[n] for n in _DID_EVENT_NAMES]  # kind -> topic 0
        self._span = min(max_range, 64)  # blocks per eth_getLogs, adapted to the density (TARGET_LOGS)
        self._histories: dict[bytes, tuple[int, list[DidEvent]]] = {}  # identity -> (synced block, events)
        self._check_identity()
        with self._guard():
            self._discard_bulk()
            self._overlay_rows = self._count_overlay()
        self._thread: threading.Thread | None = None
        self._checked = False  # check_network() once per process before the first sync
        self._stop = threading.Event()

    # ---- bookkeeping ----
    def _check_schema(self) -> None:
        """Bring an existing cache file to this layout (docs/chain.md, "Delta overlay").

        Layout 1 (rowid tables, JSON events) is emptied and rebuilt from the chain; layout 2 (the same main
        tables without the overlay) is migrated in place: its rows stay valid, the empty overlay tables are
        created. A file of a newer layout than this code knows is refused."""
        db = self._db
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "did_events" in tables:
            logger.warning("chain cache has an older layout; rebuilding it from the chain")
            for table in ("did_events", "status_words", "accreditations", "checkpoints", "meta"):
                db.execute(f"DROP TABLE IF EXISTS {table}")
            tables = set()
        row = (
            db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() if "meta" in tables else None
        )
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            raise ChainConfigError(
                f"the chain cache has layout {row[0]}, newer than this kiosk's {SCHEMA_VERSION}"
            )
        db.execute("BEGIN")
        for stmt in _SCHEMA.strip().split(";\n"):
            db.execute(stmt.rstrip(";"))
        if row is None and "did_logs" in tables:
            # every row of a layout-2 file is in the main tables, up to the block it had synced
            synced = db.execute("SELECT value FROM meta WHERE key = 'synced_block'").fetchone()
            if synced is not None:
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('main_through', ?)", synced)
            logger.info("chain cache: layout 2 migrated to %d (overlay tables added)", SCHEMA_VERSION)
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        db.execute("COMMIT")

    def _count_overlay(self) -> int:
        return sum(
            self._db.execute(f"SELECT count(*) FROM {t}_delta").fetchone()[0]  # noqa: S608 - fixed names
            for t in _STATE_TABLES
        )

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: object) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, str(value)))

    def _check_identity(self) -> None:
        scope = [sorted(self.status_lists or []), sorted(self.issuers or [])]
        ident = json.dumps(
            [ROW_FORMAT, self.network.chain_id, self.network.addresses, self.start_block, scope],
            sort_keys=True,
        )
        with self._guard():
            stored = self._meta("network")
            if stored != ident:
                if stored is not None:
                    logger.warning("sync cache belongs to another network or checkpoint; starting over")
                self._db.execute("BEGIN")
                for table in (*_ALL_STATE_TABLES, "checkpoints", "meta"):
                    self._db.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
                self._set_meta("network", ident)
                self._set_meta("schema", SCHEMA_VERSION)
                self._set_meta("main_through", -1)  # the main tables hold rows up to this block
                self._db.execute("COMMIT")

    @property
    def synced_block(self) -> int:
        """Last block applied (``start_block - 1`` before the first sync)."""
        value = self._meta("synced_block")
        return int(value) if value is not None else self.start_block - 1

    @property
    def synced_at(self) -> float | None:
        value = self._meta("synced_at")
        return float(value) if value is not None else None

    def staleness(self) -> float:
        """Seconds since the cache was last confirmed current (``inf`` if it never synced)."""
        with self._guard():
            at = self.synced_at
        return math.inf if at is None else max(0.0, self.clock() - at)

    def close(self) -> None:
        self.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._merge_db is not None:
            self._merge_db.close()
            self._merge_db = None
        self._db.close()

    # ---- syncing ----
    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Serialise SQLite access; a local storage failure is a ChainError (the verifier fails closed)."""
        with self._lock:
            try:
                yield
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise ChainError(f"kiosk chain cache failed: {exc}") from exc

    def sync(self) -> int:
        """Catch up to ``head - confirmations``; returns the synced block. Raises :class:`ChainError`.

        Network I/O happens outside the database lock, so reads keep answering while a sync waits on the node.
        """
        with self._sync_lock:
            started = self.clock()
            if not self._checked:
                check_network(self.client, self.network)
                self._checked = True
            with self._guard():
                synced = self.synced_block
                stored = self._checkpoint(synced)
            calls: list[tuple[str, list[Any]]] = [("eth_getBlockByNumber", ["latest", False])]
            if synced >= self.start_block:
                calls.append(("eth_getBlockByNumber", [hex(synced), False]))
            replies = self.client.batch(calls)
            head_block = as_dict(replies[0], "head block")
            head = as_int(head_block.get("number"), "head block number")
            head_time = as_int(head_block.get("timestamp"), "head block timestamp")
            if len(replies) > 1 and (head < synced or self._block_hash(replies[1], synced) != stored):
                self._alarm(synced, head)
                synced = self._rollback()
            target = head - self.confirmations
            before, bulk = self._overlay_rows, False
            while synced < target:
                start, end = synced + 1, min(target, synced + self._span)
                try:
                    count = self._apply_range(start, end)
                except MalformedReplyError as exc:
                    if "exceeds" not in str(exc) or end == start:
                        raise
                    self._span = max(1, (end - start + 1) // 4)  # a reply over the size bound: ask for less
                    continue
                self._span = self._next_span(end - start + 1, count)
                synced = end
                if self._overlay_rows > self.merge_rows:  # a long catch-up: keep the overlay small
                    self._merge()
                    bulk = True
                    if not self._bulk and self.synced_at is None and not self.proofs:
                        self._begin_bulk(synced + 1)  # the first sync ever: stage, sort once at the end
            if self._bulk:
                self._finish_bulk(synced)
            with self._guard():
                resync = self._meta("resync_to")
                if resync is not None and synced >= int(resync):
                    logger.warning(
                        "chain cache resynced to block %d after the rewind: answering again", synced
                    )
                    self._db.execute("DELETE FROM meta WHERE key = 'resync_to'")
            if self.max_chain_age is not None:
                check_fresh(head_time, self.clock(), self.max_chain_age, math.inf)  # stuck node: not current
            with self._guard():
                self._set_meta("synced_at", started)
            if bulk:
                self._merge()  # a bulk catch-up (the first sync) leaves an empty overlay behind
            elif self._overlay_rows == before and not self._merge(self.idle_merge_rows):
                self._checkpoint_wal()  # idle (nothing new arrived) and nothing left to fold in
            return synced

    # ---- the delta overlay (docs/chain.md, "Delta overlay") ----
    @property
    def overlay_rows(self) -> int:
        """Rows waiting in the overlay tables (applied and answered from, not yet merged)."""
        return self._overlay_rows

    def merge(self, max_rows: int | None = None) -> int:
        """Move (up to ``max_rows``) overlay rows into the main tables; the number moved.

        Runs in key order, ``merge_chunk`` rows per transaction, on a connection of its own: verifications
        (WAL readers) never wait for it and always see a committed chunk boundary. A sync waits for the
        merge (one writer)."""
        with self._sync_lock:
            return self._merge(max_rows)

    def _merge_connection(self) -> sqlite3.Connection:
        """The merge's connection (a small page cache: it walks the overlay in order)."""
        if self._merge_db is None:
            db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA busy_timeout=10000")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA cache_size=-8192")
            db.execute(f"PRAGMA wal_autocheckpoint={self._wal_pages}")
            self._merge_db = db
        return self._merge_db

    def _merge(self, max_rows: int | None = None) -> int:
        """Each chunk is one transaction that copies rows to the main table and deletes them from the
        overlay: a kill mid-merge leaves every row in exactly one of the two (the answers do not change)."""
        moved = 0
        t = time.perf_counter()
        try:
            db = self._merge_connection()
            with self._guard():
                synced = self.synced_block
            for table, (_cols, pk) in _TABLES.items():
                marks = ", ".join("?" * len(pk.split(",")))
                while max_rows is None or moved < max_rows:
                    chunk = self.merge_chunk if max_rows is None else min(self.merge_chunk, max_rows - moved)
                    db.execute("BEGIN IMMEDIATE")
                    try:
                        last = db.execute(
                            f"SELECT {pk} FROM {table}_delta ORDER BY {pk} LIMIT 1 OFFSET ?",  # noqa: S608
                            (chunk - 1,),
                        ).fetchone()
                        where = f"WHERE ({pk}) <= ({marks})" if last else ""
                        n = db.execute(
                            f"INSERT OR REPLACE INTO {table} SELECT * FROM {table}_delta {where} "  # noqa: S608
                            f"ORDER BY {pk}",
                            last or (),
                        ).rowcount
                        db.execute(f"DELETE FROM {table}_delta {where}", last or ())  # noqa: S608
                        if n:  # main_through = max(itself, synced block); absent (unknown) stays absent
                            db.execute(
                                "UPDATE meta SET value = max(CAST(value AS INTEGER), ?) "
                                "WHERE key = 'main_through'",
                                (synced,),
                            )
                        db.execute("COMMIT")
                    except BaseException:
                        if db.in_transaction:
                            db.execute("ROLLBACK")
                        raise
                    moved += n
                    self._overlay_rows = max(0, self._overlay_rows - n)
                    if last is None:
                        break
            if moved:
                db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            raise ChainError(f"kiosk chain cache merge failed: {exc}") from exc
        if moved:
            logger.info("chain cache: merged %d overlay rows in %.2f s", moved, time.perf_counter() - t)
        return moved

    def _checkpoint_wal(self) -> None:
        """Copy the WAL back into the file (PASSIVE: never waits for, nor blocks, a reader)."""
        with self._guard():
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _next_span(self, blocks: int, logs: int) -> int:
        """Blocks for the next eth_getLogs: about TARGET_LOGS logs at the density just seen (≤ max_range)."""
        if logs == 0:
            return min(self.max_range, 2 * blocks)
        return max(1, min(self.max_range, blocks * TARGET_LOGS // logs))

    def _alarm(self, synced: int, head: int) -> None:
        """A rewind/reset under the cache: refuse to answer until caught up to ``synced`` again."""
        logger.error(
            "ALARM chain rewound or reset under the kiosk cache: block %d no longer canonical (head %d); "
            "refusing to answer until resynced",
            synced,
            head,
        )
        self._checked = False  # a reset chain may lack the contracts: re-check before trusting it
        with self._guard():
            if self._meta("resync_to") is None:
                self._set_meta("resync_to", synced)
        if not self._checked:
            check_network(self.client, self.network)
            self._checked = True

    @property
    def resyncing(self) -> bool:
        """True while the cache refuses to answer after a rewind/reset."""
        with self._guard():
            return self._meta("resync_to") is not None

    def _checkpoint(self, number: int) -> str | None:
        row = self._db.execute("SELECT hash FROM checkpoints WHERE number = ?", (number,)).fetchone()
        return row[0] if row else None

    @staticmethod
    def _block_hash(raw: object, number: int) -> str | None:
        if raw is None:
            return None  # the chain is now shorter than our checkpoint: treat as reorged
        block = as_dict(raw, "block")
        if as_int(block.get("number"), "block number") != number:
            raise MalformedReplyError(f"asked for block {number}, got another")
        return "0x" + as_bytes(block.get("hash"), "block hash", 32).hex()

    def _rollback(self) -> int:
        """Find the newest checkpoint still on the chain, drop everything after it; return it."""
        with self._guard():
            rows = self._db.execute(
                "SELECT number, hash FROM checkpoints ORDER BY number DESC LIMIT ?", (KEEP_CHECKPOINTS,)
            ).fetchall()
        replies = self.client.batch([("eth_getBlockByNumber", [hex(n), False]) for n, _ in rows])
        ancestor = self.start_block - 1
        for (number, stored), raw in zip(rows, replies, strict=True):
            if self._block_hash(raw, number) == stored:
                ancestor = number
                break
        logger.warning(
            "chain reorganised below block %d: rolling the cache back to %d", self.synced_block, ancestor
        )
        with self._guard():
            self._drop_above(ancestor)
        return ancestor

    def _drop_above(self, ancestor: int) -> None:
        """Delete every row applied above block ``ancestor`` (overlay, main tables if needed, the bulk
        file's staged rows) in one transaction; the cache is then synced to ``ancestor``."""
        self._db.execute("BEGIN")
        try:
            for table in _STATE_TABLES:
                self._db.execute(f"DELETE FROM {table}_delta WHERE block > ?", (ancestor,))  # noqa: S608
            main = self._meta("main_through")
            if main is None or int(main) > ancestor:  # the main tables hold rows above the ancestor: scan
                for table in _STATE_TABLES:
                    self._db.execute(f"DELETE FROM {table} WHERE block > ?", (ancestor,))  # noqa: S608
                self._set_meta("main_through", ancestor)
            if self._bulk:  # a scan of the staged rows (a reorg during the first sync: rare)
                self._db.execute("DELETE FROM bulk.did_logs_bulk WHERE block > ?", (ancestor,))
                bulk_from = self._meta("bulk_from")
                if bulk_from is not None and int(bulk_from) > ancestor + 1:
                    self._set_meta("bulk_from", ancestor + 1)
            self._db.execute("DELETE FROM checkpoints WHERE number > ?", (ancestor,))
            self._set_meta("synced_block", ancestor)
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        self._overlay_rows = self._count_overlay()
        self._histories.clear()

    # ---- the first sync: DID rows staged in arrival order, sorted once (docs/chain.md, "First sync") ----
    def _bulk_path(self) -> str:
        return self._path + BULK_SUFFIX

    def _begin_bulk(self, first: int) -> None:
        """From block ``first`` on, this first sync appends DID rows to a staging file (no index: sequential
        writes) instead of inserting them at random keys of a growing B-tree. ``bulk_from`` is committed
        before any staged row: a cache reopened with it set has lost the staging file's meaning and drops
        every row from ``first`` on (:meth:`_discard_bulk`)."""
        with self._guard():
            self._remove_bulk_file()
            self._db.execute("ATTACH DATABASE ? AS bulk", (self._bulk_path(),))
            self._db.execute("PRAGMA bulk.journal_mode=MEMORY")  # rollback of a failed range; crash = discard
            self._db.execute("PRAGMA bulk.synchronous=OFF")
            self._db.execute("PRAGMA bulk.cache_size=-2048")  # appends touch only the right edge
            self._db.execute(
                "CREATE TABLE bulk.did_logs_bulk (identity BLOB NOT NULL, block INTEGER NOT NULL, "
                "log_index INTEGER NOT NULL, kind INTEGER NOT NULL, data BLOB NOT NULL)"
            )
            self._set_meta("bulk_from", first)
            self._bulk = True
        logger.info("chain cache: first sync staging DID events from block %d", first)

    def _finish_bulk(self, synced: int) -> None:
        """One sorted copy of the staged rows into ``did_logs`` (appends in key order), in one transaction
        with clearing ``bulk_from``; then the staging file is removed and the WAL truncated."""
        t = time.perf_counter()
        with self._guard():
            self._db.execute("BEGIN")
            try:
                n = self._db.execute(
                    "INSERT OR REPLACE INTO did_logs SELECT identity, block, log_index, kind, data "
                    "FROM bulk.did_logs_bulk ORDER BY identity, block, log_index, rowid"
                ).rowcount
                self._db.execute(
                    "UPDATE meta SET value = max(CAST(value AS INTEGER), ?) WHERE key = 'main_through'",
                    (synced,),
                )
                self._db.execute("DELETE FROM meta WHERE key = 'bulk_from'")
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._bulk = False
            self._db.execute("DETACH DATABASE bulk")
            self._remove_bulk_file()
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._histories.clear()
        logger.info("chain cache: first sync sorted %d DID events in %.1f s", n, time.perf_counter() - t)

    def _discard_bulk(self) -> None:
        """At open: a first sync that staged rows and did not finish is undone back to where staging began
        (its staged rows are not trusted); a leftover staging file is removed."""
        bulk_from = self._meta("bulk_from")
        if bulk_from is not None:
            logger.warning(
                "chain cache: the first sync was interrupted while staging; resuming from block %d",
                int(bulk_from),
            )
            self._drop_above(int(bulk_from) - 1)
            self._db.execute("DELETE FROM meta WHERE key = 'bulk_from'")
        self._remove_bulk_file()

    def _remove_bulk_file(self) -> None:
        for suffix in ("", "-journal"):
            Path(self._bulk_path() + suffix).unlink(missing_ok=True)

    def _range_replies(self, start: int, end: int) -> tuple[object, object]:
        """(logs, end block) of a range — from the node, or agreed by ``quorum`` of node + peers."""
        calls: list[tuple[str, list[Any]]] = [
            (
                "eth_getLogs",
                [{"address": list(self._contracts), "fromBlock": hex(start), "toBlock": hex(end)}],
            ),
            ("eth_getBlockByNumber", [hex(end), False]),
        ]
        if not self.peers:
            logs_raw, block_raw = self.client.batch(calls)
            return logs_raw, block_raw
        answers = list(self._pool.map(lambda c: _agreeable(c, calls, end), [self.client, *self.peers]))
        counts: dict[str, int] = {}
        for a in answers:
            if not isinstance(a, ChainError):
                counts[a[0]] = counts.get(a[0], 0) + 1
        for a in answers:
            if not isinstance(a, ChainError) and counts[a[0]] >= self.quorum:
                return a[1], a[2]
        logger.error(
            "ALARM chain cache: fewer than %d nodes agree on the events of blocks %d-%d",
            self.quorum,
            start,
            end,
        )
        raise ChainError(f"fewer than {self.quorum} chain nodes agree on the events of blocks {start}-{end}")

    def _apply_range(self, start: int, end: int) -> int:
        """Fetch, check and store the events of blocks ``start..end`` in one transaction; the log count."""
        logs_raw, block_raw = self._range_replies(start, end)
        end_hash = self._block_hash(block_raw, end)
        if end_hash is None:
            raise ChainError(f"block {end} vanished while syncing (reorg in progress)")
        raw_logs = as_list(logs_raw, "eth_getLogs result")
        did_rows, decoded = self._parse_logs(raw_logs, start, end, end_hash)
        try:
            proven = self._spot_proofs(decoded, block_raw, end) if self.proofs and decoded else None
        finally:
            self._raw_logs.clear()
        with self._guard():
            self._db.execute("BEGIN")
            try:
                rejected: list[DecodedEvent] = []
                written = 0
                for ev in decoded:
                    if ev.name in _DID_KIND:  # stored as the log's bytes, decoded when read
                        a, kind = ev.args, _DID_KIND[ev.name]
                        did_rows.append((a["identity"], ev.block_number, ev.log_index, kind, a["data"]))
                        continue
                    try:
                        written += self._apply(ev)
                    except (OutOfRangeEventError, OverflowError, KeyError, TypeError, ValueError) as exc:
                        self.rejected_events += 1
                        rejected.append(ev)
                        logger.warning(
                            "chain cache: rejected %s at block %d log %d: %s",
                            ev.name,
                            ev.block_number,
                            ev.log_index,
                            exc,
                        )
                if self._bulk:  # appended in arrival order; sorted once when the first sync ends
                    self._db.executemany("INSERT INTO bulk.did_logs_bulk VALUES (?, ?, ?, ?, ?)", did_rows)
                else:
                    did_rows.sort()  # in key order: neighbouring inserts share B-tree pages
                    self._db.executemany(
                        "INSERT OR REPLACE INTO did_logs_delta VALUES (?, ?, ?, ?, ?)", did_rows
                    )
                if did_rows:
                    self._histories.clear()
                if proven is not None:
                    self._check_spots(*proven, rejected)
                self._db.execute(
                    "INSERT OR REPLACE INTO checkpoints (number, hash) VALUES (?, ?)", (end, end_hash)
                )
                self._db.execute(
                    "DELETE FROM checkpoints WHERE number NOT IN "
                    "(SELECT number FROM checkpoints ORDER BY number DESC LIMIT ?)",
                    (KEEP_CHECKPOINTS,),
                )
                self._set_meta("synced_block", end)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._overlay_rows += written + (0 if self._bulk else len(did_rows))
        return len(raw_logs)

    def _parse_logs(
        self, raw_logs: list[Any], start: int, end: int, end_hash: str
    ) -> tuple[list[tuple[bytes, int, int, int, bytes]], list[DecodedEvent]]:
        """Every entry of an eth_getLogs reply checked as :meth:`_parse_log` checks it: (DID-registry rows
        ``(identity, block, log index, kind, data)`` to store, the events decoded by :meth:`_parse_log`).

        The city-scale fast path: a DID-registry log in the shape a node sends (address in lower case or
        checksummed, lower-case topic 0, an identity topic with 12 zero bytes, hex data of whole words, the
        block number in the range, the range end's own block hash) becomes its row with the checks done on
        the JSON strings, the block numbers' hex parsed once per block. With proofs on, such a log becomes the
        same event (and ``_raw_logs`` entry) :meth:`_parse_log` makes, not a row. Any other entry — another
        contract, another shape, anything malformed — takes :meth:`_parse_log`, which accepts or rejects it
        exactly as before (the fast path only accepts what it would accept, with the same result)."""
        rows: list[tuple[bytes, int, int, int, bytes]] = []
        events: list[DecodedEvent] = []
        proofs = self.proofs
        end_block_hash = bytes.fromhex(end_hash[2:])
        did_addresses = {self._did_registry, checksum(self._did_registry)}  # as nodes spell it
        kinds = self._did_kinds
        prefix = "0x" + "00" * 12
        numbers: dict[str, int] = {}  # blockNumber text -> its number, checked to be in the range
        fromhex = bytes.fromhex
        for raw in raw_logs:
            try:
                topics = raw["topics"]
                number = numbers.get(raw["blockNumber"])
                if number is None:
                    number = as_int(raw["blockNumber"], "log blockNumber")
                    if not start <= number <= end:
                        raise ValueError("outside the range")  # _parse_log raises it
                    numbers[raw["blockNumber"]] = number
                topic1 = topics[1]
                data_hex = raw["data"]
                index_hex = raw["logIndex"]
                if (
                    raw["address"] not in did_addresses
                    or type(topics) is not list
                    or len(topics) != 2
                    or type(topic1) is not str
                    or len(topic1) != 66
                    or not topic1.startswith(prefix)
                    or type(data_hex) is not str
                    or data_hex[:2] != "0x"
                    or len(data_hex) % 2
                    or type(index_hex) is not str
                    or index_hex[:2] != "0x"
                    or (number == end and raw["blockHash"] != end_hash)
                ):
                    raise ValueError("not the fast path's shape")
                kind = kinds[topics[0]]
                identity = fromhex(topic1[26:])
                data = fromhex(data_hex[2:])
                if len(identity) != 20 or len(data) < 64 or len(data) % 32:
                    raise ValueError("not the fast path's shape")
                if proofs:
                    index = int(index_hex, 16)
                    ev = DecodedEvent(
                        _DID_EVENT_NAMES[kind],
                        {"identity": identity, "data": data},
                        self._did_registry,
                        number,
                        end_block_hash if number == end else b"",
                        index,
                        b"",
                    )
                    self._raw_logs[(number, index)] = ((self._did_topic0[kind], _ZERO12 + identity), data)
                    events.append(ev)
                else:
                    rows.append((identity, number, int(index_hex, 16), kind, data))
                continue
            except (KeyError, IndexError, TypeError, ValueError, MalformedReplyError):
                pass
            ev = self._parse_log(raw, start, end, end_hash)  # in reply order, as before
            if ev is not None:
                events.append(ev)
        return rows, events

    def _parse_log(self, raw: object, start: int, end: int, end_hash: str) -> DecodedEvent | None:
        """One eth_getLogs entry checked (contract, range, end block hash). DID-registry events keep their raw
        data (``args``: identity as 20 bytes, ``data``); other events are decoded (None: not ours)."""
        log = as_dict(raw, "log")
        events = self._by_lower.get(str(log.get("address")).lower())
        if events is None:
            raise MalformedReplyError("eth_getLogs returned a log of another contract")
        topics_raw = as_list(log.get("topics"), "log topics")
        first = topics_raw[0] if topics_raw else None
        kind = self._did_topics.get(first.lower()) if isinstance(first, str) else None
        if kind is not None and events is self._did_events:
            # the fast path of city-scale syncs: no ABI decoding (the stored bytes are decoded when read)
            if len(topics_raw) != 2:
                return None  # not a well-formed ERC-1056 event (skipped, as the resolver skips it)
            identity = as_bytes(topics_raw[1], "log topic", 32)
            data = as_bytes(log.get("data"), "log data")
            if identity[:12] != _ZERO12 or len(data) < 64 or len(data) % 32:
                return None
            topics = [as_bytes(first, "log topic", 32), identity] if self.proofs else []
            number = as_int(log.get("blockNumber"), "log blockNumber")
            ev = DecodedEvent(
                kind,
                {"identity": identity[12:], "data": data},
                self._did_registry,
                number,
                as_bytes(log.get("blockHash"), "log blockHash", 32) if number == end else b"",
                as_int(log.get("logIndex"), "log logIndex"),
                b"",  # not used for DID events
            )
        else:
            ev = events.decode(log)
            if ev is None:
                return None
            topics = [as_bytes(t, "log topic", 32) for t in topics_raw]
            data = as_bytes(log.get("data"), "log data")
        if not start <= ev.block_number <= end:
            raise MalformedReplyError("eth_getLogs returned a log outside the asked range")
        if ev.block_number == end and "0x" + ev.block_hash.hex() != end_hash:
            raise ChainError(f"block {end} changed while syncing (reorg in progress)")
        if self.proofs:
            self._raw_logs[(ev.block_number, ev.log_index)] = (tuple(topics), data)
        return ev

    # ---- proofs: event-derived state spot-checked against the state root (docs/chain.md, "Kiosk cache") ----
    def _event_keys(self, ev: DecodedEvent) -> list[tuple[str, object]]:
        """The followed storage entries an event changes: status words, accreditations, DID entries."""
        a = ev.args
        if ev.name == "StatusWordsChanged":
            lid = int(a["listId"])
            if (self.status_lists is None or lid in self.status_lists) and lid <= SQL_INT_MAX:
                return [("w", (lid, int(w))) for w in a["wordIndexes"] if int(w) <= SQL_INT_MAX]
        elif ev.name in ("IssuerAccredited", "AccreditationRevoked"):
            issuer = checksum(a["issuer"])
            if self.issuers is None or issuer in self.issuers:
                return [("a", (issuer, bytes(a["vctHash"])))]
        elif ev.name in _DID_KIND:
            return [("d", checksum("0x" + bytes(a["identity"]).hex()))]
        return []

    def _spot_proofs(
        self, decoded: list[DecodedEvent], block_raw: object, end: int
    ) -> tuple[list[tuple[str, object, int]], dict[str, int], int]:
        """Prove (a sample of) the storage the range's events changed, at block ``end`` (1 round trip)."""
        header = verify_header(block_raw, f"block {end}")
        last_change: dict[str, int] = {}  # identity -> last block of ANY of its events (stored or not)
        keys: set[tuple[str, object]] = set()
        for ev in decoded:
            for kind, key in self._event_keys(ev):
                keys.add((kind, key))
                if kind == "d":
                    assert isinstance(key, str)  # "d" keys are identities
                    last_change[key] = max(last_change.get(key, 0), ev.block_number)
        picks = sorted(keys, key=repr)
        if len(picks) > self.spot_checks:
            picks = random.sample(picks, self.spot_checks)
        slot_of = {
            "w": lambda k: status_word_slot(*k),
            "a": lambda k: accreditation_slot(*k),
            "d": did_entry_slot,
        }
        contract = {"w": "status_registry", "a": "trusted_issuers", "d": "did_registry"}
        by_contract: dict[str, list[tuple[str, object, bytes]]] = {}
        for kind, key in picks:
            by_contract.setdefault(contract[kind], []).append((kind, key, slot_of[kind](key)))
        names = list(by_contract)
        replies = self.client.batch(
            [
                proof_request(self.network.address(n), [slot for _k, _key, slot in by_contract[n]], hex(end))
                for n in names
            ]
        )
        checks: list[tuple[str, object, int]] = []
        for name, raw in zip(names, replies, strict=True):
            entries = by_contract[name]
            account = verify_account_proof(
                header.state_root, self.network.address(name), [slot for *_x, slot in entries], raw
            )
            checks += [(kind, key, account.storage[slot]) for kind, key, slot in entries]
        self._check_receipts(decoded, header)
        return checks, last_change, end

    def _check_receipts(self, decoded: list[DecodedEvent], end_header: Header) -> None:
        """DID events exist only as logs: prove them through their blocks' receipts (1 round trip).

        Every header from the first block with DID events up to ``end`` is re-hashed and chained by parent
        hash to the range's (agreed) last block; each such block's receipts must hash to its receiptsRoot
        and its registry DID logs must be exactly those eth_getLogs returned. Ranges reaching further back
        than ``receipt_depth`` blocks (the first sync of a long history) are not receipt-checked."""
        did = [
            e for e in decoded if e.name in ("DIDOwnerChanged", "DIDDelegateChanged", "DIDAttributeChanged")
        ]
        if not did:
            return
        end = end_header.number
        first = min(e.block_number for e in did)
        if end - first > self.receipt_depth:
            logger.info(
                "chain cache: blocks %d-%d not receipt-checked (range deeper than %d)",
                first,
                end,
                self.receipt_depth,
            )
            return
        blocks = sorted({e.block_number for e in did})
        calls: list[tuple[str, list[Any]]] = [
            ("eth_getBlockByNumber", [hex(n), False]) for n in range(first, end)
        ]
        calls += [("eth_getBlockReceipts", [hex(n)]) for n in blocks]
        replies = self.client.batch(calls)
        headers = {
            n: verify_header(r, f"block {n}") for n, r in zip(range(first, end), replies, strict=False)
        }
        headers[end] = end_header
        for n in range(first, end):
            if headers[n + 1].parent_hash != headers[n].hash or headers[n].number != n:
                raise ProofError(f"block {n} is not an ancestor of block {end}")
        registry = bytes.fromhex(self.network.address("did_registry")[2:])
        topics0 = {Events.of("CityDIDRegistry").topics[n] for n in _DID_EVENT_NAMES}
        for n, raw in zip(blocks, replies[end - first :], strict=True):
            proven = sorted(
                (t, d)
                for a, t, d in verify_receipts(headers[n].receipts_root, raw, f"block {n}")
                if a == registry and t and t[0] in topics0
            )
            claimed = sorted(
                self._raw_logs[(e.block_number, e.log_index)] for e in did if e.block_number == n
            )
            if proven != claimed:
                logger.error("ALARM chain cache: eth_getLogs of block %d do not match its receipts", n)
                raise ProofError(f"DID events of block {n} do not match the block's receipts")

    def _check_spots(
        self,
        checks: list[tuple[str, object, int]],
        last_change: dict[str, int],
        end: int,
        rejected: list[DecodedEvent],
    ) -> None:
        """Inside the applying transaction: the cache's answers must equal the proven storage values.

        Entries touched by a rejected (out-of-range) event are not compared: a hostile event must not be
        able to stop the sync."""
        skip = {k for ev in rejected for k in self._event_keys(ev)}
        for kind, key, value in checks:
            if (kind, key) in skip:
                continue
            if kind == "w":
                assert isinstance(key, tuple)  # "w" keys are (list id, word)
                list_id, word = key
                ok = self._word(list_id, word) == value
            elif kind == "a":
                assert isinstance(key, tuple)  # "a" keys are (issuer, vct hash)
                issuer, vh = key
                valid_from, valid_until, revoked = unpack_accreditation(value)
                ok = self._accreditation(issuer, "0x" + vh.hex()) == (
                    valid_from,
                    min(valid_until, FOREVER),
                    revoked,
                )
            else:
                owner, changed = unpack_did_entry(value)
                assert isinstance(key, str)
                owners = [e.owner for e in self._history(key) if e.kind == "DIDOwnerChanged"]
                ok = last_change[key] == changed and int(owners[-1] if owners else "0x0", 16) == owner
            if not ok:
                logger.error(
                    "ALARM chain cache: events up to block %d do not match the proven state (%s)", end, kind
                )
                raise ProofError(f"events up to block {end} do not match the proven state ({kind} {key!r})")

    def _apply(self, ev: DecodedEvent) -> int:
        """Store one event in the overlay; the rows written (raises OutOfRangeEventError for values the cache
        cannot hold; nothing stored)."""
        key = (ev.block_number, ev.log_index)
        if "listId" in ev.args:
            list_id = int(ev.args["listId"])
            if self.status_lists is not None and list_id not in self.status_lists:
                return 0  # not one of the city's lists
            _in_range(list_id, "listId")
        if (
            "issuer" in ev.args
            and self.issuers is not None
            and checksum(ev.args["issuer"]) not in self.issuers
        ):
            return 0  # not one of the configured issuers
        if ev.name == "StatusWordsChanged":
            pairs = list(zip(ev.args["wordIndexes"], ev.args["words"], strict=True))
            for word, _value in pairs:
                _in_range(int(word), "word index")
            list_id = int(ev.args["listId"])
            self._db.executemany(
                "INSERT OR REPLACE INTO status_words_delta VALUES (?, ?, ?, ?, ?)",
                [(list_id, int(word), *key, hex(value)) for word, value in pairs],
            )
            return len(pairs)
        if ev.name == "IssuerAccredited":
            self._db.execute(
                "INSERT OR REPLACE INTO accreditations_delta VALUES (?, ?, ?, ?, ?, ?, 0)",
                (
                    checksum(ev.args["issuer"]),
                    "0x" + ev.args["vctHash"].hex(),
                    *key,
                    _in_range(int(ev.args["validFrom"]), "validFrom"),
                    min(int(ev.args["validUntil"]), FOREVER),
                ),
            )
            return 1
        if ev.name == "AccreditationRevoked":
            issuer, vh = checksum(ev.args["issuer"]), "0x" + ev.args["vctHash"].hex()
            prev = self._accreditation(issuer, vh)
            self._db.execute(
                "INSERT OR REPLACE INTO accreditations_delta VALUES (?, ?, ?, ?, ?, ?, 1)",
                (issuer, vh, *key, prev[0], prev[1]),
            )
            return 1
        return 0

    # ---- background following ----
    def start(self, interval: float = 2.0) -> None:
        """Sync every ``interval`` seconds in a daemon thread (errors are logged; staleness grows)."""
        if self._thread is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.sync()
                except ChainError as exc:
                    logger.warning("chain sync failed: %s", exc)
                except Exception:  # keep following; staleness grows until the verifier fails closed
                    logger.exception("chain sync crashed")
                self._stop.wait(interval)

        self._thread = threading.Thread(target=loop, name="chain-sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    # ---- reads (0 round trips) ----
    # Every read consults the main table and its overlay, latest (block, log index) wins. A row may be in
    # both only inside a merge transaction, which readers never see (the lock); UNION would fold it anyway.
    def _accreditation(self, issuer: str, vh: str) -> tuple[int, int, bool]:
        row = self._db.execute(
            "SELECT valid_from, valid_until, revoked FROM ("
            "SELECT block, log_index, valid_from, valid_until, revoked FROM accreditations "
            "WHERE issuer = ?1 AND vct_hash = ?2 UNION ALL "
            "SELECT block, log_index, valid_from, valid_until, revoked FROM accreditations_delta "
            "WHERE issuer = ?1 AND vct_hash = ?2) ORDER BY block DESC, log_index DESC LIMIT 1",
            (issuer, vh),
        ).fetchone()
        return (int(row[0]), int(row[1]), bool(row[2])) if row else (0, 0, False)

    def _word(self, list_id: int, word: int) -> int:
        row = self._db.execute(
            "SELECT value FROM ("
            "SELECT block, log_index, value FROM status_words WHERE list_id = ?1 AND word = ?2 UNION ALL "
            "SELECT block, log_index, value FROM status_words_delta WHERE list_id = ?1 AND word = ?2"
            ") ORDER BY block DESC, log_index DESC LIMIT 1",
            (list_id, word),
        ).fetchone()
        return int(row[0], 16) if row else 0

    def status_of(self, list_id: int, index: int) -> CredentialStatus:
        with self._guard():
            word = self._word(list_id, index >> 7)
        value = (word >> ((index & 127) * 2)) & 3
        if value > CredentialStatus.SUSPENDED:
            raise ChainError(f"status entry has the reserved value {value}")
        return CredentialStatus(value)

    def did_document(self, did: str) -> dict[str, Any]:
        """The DID document from cached events (same rules as the resolver)."""
        address = address_of(self.network, did)
        with self._guard():
            if self._bulk:
                raise StaleChainDataError(math.inf, self.max_staleness)
            return self._build(did, address).document

    def _history(self, address: str) -> list[DidEvent]:
        """One identity's ERC-1056 events from its stored logs, decoded now (memoised until the next sync
        changes DID events; a log that does not decode is skipped, as the resolver skips it)."""
        identity = bytes.fromhex(address[2:])
        synced = self.synced_block
        memo = self._histories.get(identity)
        if memo is not None and memo[0] == synced:
            return memo[1]
        rows = self._db.execute(
            "SELECT block, log_index, kind, data FROM did_logs WHERE identity = ?1 UNION "
            "SELECT block, log_index, kind, data FROM did_logs_delta WHERE identity = ?1 ORDER BY 1, 2",
            (identity,),
        ).fetchall()
        events = Events.of("CityDIDRegistry")
        topic1 = bytes(12) + identity
        history = []
        for block, log_index, kind, data in rows:
            topic0 = events.topics[_DID_EVENT_NAMES[kind]]
            ev = events.decode_fields([topic0, topic1], data, self._did_registry, block, b"", log_index)
            did_ev = did_event(ev) if ev is not None else None
            if did_ev is not None:
                history.append(did_ev)
        if len(self._histories) > 1024:
            self._histories.clear()
        self._histories[identity] = (synced, history)
        return history

    def _build(self, did: str, address: str) -> BuiltDocument:
        history = self._history(address)
        return build_document(did, address, history, self.network.chain_id, int(self.clock()))

    def verification_facts(
        self, issuer_did: str, holder_did: str, vct: str, status: StatusRef
    ) -> VerificationFacts:
        """Facts from the replica; :class:`StaleChainDataError` past ``max_staleness`` (fail closed)."""
        with self._guard():
            if self._meta("resync_to") is not None:
                raise ChainResetError("the chain was rewound or reset; the kiosk cache is resyncing")
            if self._bulk:  # the first sync has not sorted its staged DID events in yet
                raise StaleChainDataError(math.inf, self.max_staleness)
            age = self.staleness()
            if age > self.max_staleness:
                raise StaleChainDataError(age, self.max_staleness)
            check_status_ref(self.network, status)
            if self.status_lists is not None and status.list_id not in self.status_lists:
                raise StatusListMismatchError(f"status list {status.list_id} is not one this kiosk follows")
            if (status.index >> 7) > SQL_INT_MAX or status.list_id > SQL_INT_MAX:
                raise StatusListMismatchError("status list id or index out of the cache's range")
            issuer = address_of(self.network, issuer_did)
            holder = address_of(self.network, holder_did)
            keys = {}
            for did, address in ((issuer_did, issuer), (holder_did, holder)):
                built = self._build(did, address)
                keys[did] = () if built.deactivated else p256_keys(built.document)
            valid_from, valid_until, revoked = self._accreditation(issuer, "0x" + vct_hash(vct).hex())
            if self.issuers is not None and issuer not in self.issuers:
                valid_from, valid_until, revoked = 0, 0, True  # not an issuer this kiosk accepts
            now = self.clock()
            return VerificationFacts(
                issuer_keys=keys[issuer_did],
                issuer_trusted=trusted_now(valid_from, valid_until, revoked, now),
                holder_keys=keys[holder_did],
                status=self.status_of(status.list_id, status.index),
                block_number=self.synced_block,
                synced_at=self.synced_at or 0.0,
                round_trips=0,
            )


def _in_range(value: int, what: str) -> int:
    if not 0 <= value <= SQL_INT_MAX:
        raise OutOfRangeEventError(f"{what} {value} out of range")
    return value


_LOG_FIELDS = ("address", "topics", "data", "blockNumber", "blockHash", "logIndex", "transactionHash")


def _agreeable(
    client: RpcClient, calls: list[tuple[str, list[Any]]], end: int
) -> tuple[str, object, object] | ChainError:
    """One node's (logs, end block) and a canonical digest of them to compare across nodes."""
    try:
        logs_raw, block_raw = client.batch(calls)
        logs = [as_dict(log, "log") for log in as_list(logs_raw, "eth_getLogs result")]
        block = as_dict(block_raw, f"block {end}")
        norm = sorted(
            json.dumps([str(log.get(k)).lower() for k in _LOG_FIELDS])
            for log in logs
            if not log.get("removed")
        )
        return json.dumps([str(block.get("hash")).lower(), norm]), logs_raw, block_raw
    except ChainError as exc:
        return exc
