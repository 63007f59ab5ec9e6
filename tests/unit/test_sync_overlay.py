"""The kiosk cache's delta overlay (docs/chain.md, "Delta overlay"): syncs write to small overlay tables that
every read consults, merges fold them into the main tables in key order — and no answer changes on the way:
not after a merge, not while one runs, not across a reorg that spans both, not after a kill mid-merge, not
after migrating a layout-2 file."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cityid.chain.errors import ChainConfigError
from cityid.chain.resolver import DIDResolver, address_of, identity_from_public_hash
from cityid.chain.sync import SCHEMA_VERSION, SyncCache
from cityid.chain.view import CredentialStatus, StatusRef, VerificationFacts
from server.chain.registrar import Registrar

VCT = "urn:busan:citizen:1"
MAIN = ("did_logs", "status_words", "accreditations")


def p256() -> bytes:
    return (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )


class Town:
    """A few citizens with credentials on the embedded chain, and the facts a kiosk must answer."""

    def __init__(self, chain, citizens: int = 6) -> None:
        self.chain = chain
        self.city = Registrar(chain.network, chain.client(), chain.accounts[0])
        self.holders = [identity_from_public_hash(os.urandom(32)) for _ in range(citizens)]
        self.cards = [p256() for _ in range(citizens)]
        self.city.enroll_citizens(list(zip(self.holders, [[c] for c in self.cards], strict=True)))
        self.city.publish_issuer_key(p256())
        self.city.accredit_issuer(self.city.did, VCT, int(time.time()) + 3600)
        self.list_id = self.city.create_status_list()

    def did(self, k: int) -> str:
        return self.city.did_of(self.holders[k])

    def ref(self, k: int) -> StatusRef:
        return self.city.status_ref(self.list_id, 10 + k)

    def facts(self, cache: SyncCache, k: int) -> VerificationFacts:
        return cache.verification_facts(self.city.did, self.did(k), VCT, self.ref(k))

    def answers(self, cache: SyncCache) -> list[tuple[object, ...]]:
        out = []
        for k in range(len(self.holders)):
            f = self.facts(cache, k)
            out.append((f.holder_keys, f.issuer_keys, f.issuer_trusted, f.status, f.block_number))
        return out

    def day(self) -> None:
        """A lost card (key revoked), a revoked and a suspended credential, one more enrollment."""
        self.city.revoke_key(address_of(self.city.network, self.did(0)), self.cards[0])
        self.city.revoke(self.list_id, [10 + 1])
        self.city.set_status(self.list_id, [10 + 2], CredentialStatus.SUSPENDED)


def _cache(town: Town, path: Path, **kw) -> SyncCache:
    kw.setdefault("idle_merge_rows", 0)  # merges only where a test asks for one
    return SyncCache(town.chain.client(), town.city.network, path, confirmations=0, max_staleness=1e9, **kw)


def _rows(path: Path) -> dict[str, int]:
    db = sqlite3.connect(path)
    try:
        return {
            t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for m in MAIN for t in (m, f"{m}_delta")
        }
    finally:
        db.close()


@pytest.fixture
def town(embedded_chain) -> Town:
    return Town(embedded_chain)


def _assert_day_seen(town: Town, cache: SyncCache) -> None:
    assert town.facts(cache, 0).holder_keys == (), "a revoked key must never reappear"
    assert town.facts(cache, 1).status is CredentialStatus.REVOKED
    assert town.facts(cache, 2).status is CredentialStatus.SUSPENDED
    assert town.facts(cache, 3).holder_keys == (town.cards[3],)


def test_overlay_is_consulted_and_a_merge_changes_no_answer(town, tmp_path):
    path = tmp_path / "c.sqlite"
    cache = _cache(town, path)
    cache.sync()
    rows = _rows(path)
    assert cache.overlay_rows > 0 and rows["did_logs"] == 0 and rows["did_logs_delta"] > 0
    town.day()
    cache.sync()
    _assert_day_seen(town, cache)  # answered from the overlay alone
    before = town.answers(cache)
    documents = [cache.did_document(town.did(k)) for k in range(3)]
    moved = cache.merge()
    rows = _rows(path)
    assert moved == sum(rows.values()) and cache.overlay_rows == 0
    assert all(rows[f"{m}_delta"] == 0 for m in MAIN) and rows["did_logs"] > 0 and rows["status_words"] > 0
    cache._histories.clear()  # read the main tables, not the memo
    assert town.answers(cache) == before
    assert [cache.did_document(town.did(k)) for k in range(3)] == documents
    resolved = DIDResolver(town.chain.client(), town.city.network).document(town.did(0))
    resolved.pop("@context")
    assert cache.did_document(town.did(0)) == resolved
    # later changes land in the overlay again, on top of the merged history
    town.city.set_status(town.list_id, [10 + 2], CredentialStatus.VALID)  # the suspension is lifted
    cache.sync()
    assert _rows(path)["status_words_delta"] == 1
    assert town.facts(cache, 2).status is CredentialStatus.VALID
    assert town.facts(cache, 1).status is CredentialStatus.REVOKED
    assert town.facts(cache, 0).holder_keys == ()


def test_partial_merges_keep_every_answer(town, tmp_path):
    """Chunks of one row: after every chunk main + overlay answer exactly as before."""
    cache = _cache(town, tmp_path / "c.sqlite", merge_chunk=1)
    town.day()
    cache.sync()
    before = town.answers(cache)
    while cache.overlay_rows:
        assert cache.merge(max_rows=1) == 1
        cache._histories.clear()
        assert town.answers(cache) == before
    assert cache.merge() == 0


def test_reads_during_a_merge_never_see_a_revoked_key(embedded_chain, tmp_path):
    town = Town(embedded_chain, citizens=60)
    cache = _cache(town, tmp_path / "c.sqlite", merge_chunk=2)
    cache.sync()
    town.day()
    cache.sync()
    total = cache.overlay_rows
    seen: list[int] = []
    done = threading.Event()
    merge_db = cache._merge_connection()

    class _Yielding:
        """The merge's connection, pausing after each chunk's COMMIT so reads run between chunks whatever the
        scheduler does (the interleaving below was left to the GIL and once did not happen in CI)."""

        def execute(self, sql: str, *args):  # type: ignore[no-untyped-def]
            result = merge_db.execute(sql, *args)
            if sql == "COMMIT":
                time.sleep(0.005)
            return result

        def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
            return getattr(merge_db, name)

    cache._merge_connection = lambda: _Yielding()  # type: ignore[method-assign]

    def merge() -> None:
        try:
            cache.merge()
        finally:
            done.set()

    worker = threading.Thread(target=merge)
    worker.start()
    reads = 0
    while not done.is_set():
        cache._histories.clear()
        _assert_day_seen(town, cache)
        seen.append(cache.overlay_rows)
        reads += 1
    worker.join()
    _assert_day_seen(town, cache)
    assert cache.overlay_rows == 0 and reads > 0
    assert any(0 < n < total for n in seen), "reads must have interleaved with the merge's chunks"


@pytest.mark.parametrize("merged", [False, True], ids=["revocation-in-overlay", "revocation-merged"])
def test_reorg_rolls_back_across_overlay_and_main(town, tmp_path, merged):
    path = tmp_path / "c.sqlite"
    cache = _cache(town, path)
    cache.sync()
    cache.merge()  # the history is in the main tables
    main_rows = _rows(path)["did_logs"]
    snap = town.chain.snapshot()
    town.day()
    cache.sync()
    if merged:
        cache.merge()
    _assert_day_seen(town, cache)
    town.chain.revert(snap)
    town.chain.mine(4)  # a longer branch without the day's changes
    other = Registrar(town.city.network, town.chain.client(), town.chain.accounts[0])
    other.set_status(town.list_id, [10 + 4], CredentialStatus.SUSPENDED)
    cache.sync()
    assert town.facts(cache, 0).holder_keys == (town.cards[0],)
    assert town.facts(cache, 1).status is CredentialStatus.VALID
    assert town.facts(cache, 2).status is CredentialStatus.VALID
    assert town.facts(cache, 4).status is CredentialStatus.SUSPENDED
    rows = _rows(path)
    assert rows["did_logs"] == main_rows  # the main history survives; the dropped branch is gone
    cache.merge()
    cache._histories.clear()
    assert town.facts(cache, 0).holder_keys == (town.cards[0],)
    assert town.facts(cache, 4).status is CredentialStatus.SUSPENDED


def test_rollback_within_the_overlay_does_not_touch_the_main_tables(town, tmp_path):
    path = tmp_path / "c.sqlite"
    cache = _cache(town, path)
    cache.sync()
    cache.merge()
    through = int(cache._meta("main_through") or -1)
    assert through == cache.synced_block
    snap = town.chain.snapshot()
    town.day()
    cache.sync()
    town.chain.revert(snap)
    town.chain.mine(5)
    cache.sync()
    assert int(cache._meta("main_through") or -1) == through  # no scan of the main tables was needed
    assert town.facts(cache, 0).holder_keys == (town.cards[0],)


def test_idle_sync_merges_a_bounded_part_and_bulk_sync_leaves_none(town, tmp_path):
    town.day()
    idle = _cache(town, tmp_path / "a.sqlite", idle_merge_rows=3)
    idle.sync()  # new rows: no merge
    n = idle.overlay_rows
    assert n > 3
    before = town.answers(idle)
    idle.sync()  # nothing new: the kiosk is idle
    assert idle.overlay_rows == n - 3
    idle._histories.clear()
    assert town.answers(idle) == before
    bulk = _cache(town, tmp_path / "b.sqlite", merge_rows=5, max_range=1)
    bulk.sync()  # a long catch-up past merge_rows: merged on the way, nothing left behind
    assert bulk.overlay_rows == 0 and _rows(tmp_path / "b.sqlite")["did_logs_delta"] == 0
    assert town.answers(bulk) == before


_CHILD = """
import json, os, sys
from cityid.chain.network import NetworkConfig
from cityid.chain.provider import BoundedHTTPProvider
from cityid.chain.rpc import RpcClient
from cityid.chain.sync import SyncCache
net, path, kill_after = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
cache = SyncCache(RpcClient(BoundedHTTPProvider("http://127.0.0.1:1")), NetworkConfig(**net), path,
                  confirmations=0, merge_chunk=1)
calls = [0]
def progress():
    calls[0] += 1
    if kill_after and calls[0] >= kill_after:
        os._exit(9)  # killed mid-statement: no rollback, no close
    return 0
cache._merge_connection().set_progress_handler(progress, 50)
cache.merge()
print(calls[0])
"""


def test_kill_mid_merge_leaves_a_consistent_cache(town, tmp_path):
    path = tmp_path / "c.sqlite"
    cache = _cache(town, path)
    cache.sync()
    town.day()
    cache.sync()
    before = town.answers(cache)
    total = cache.overlay_rows
    cache.close()
    n = town.city.network
    net = json.dumps(
        {"name": n.name, "chain_id": n.chain_id, "rpc_url": n.rpc_url, "addresses": n.addresses,
         "deploy_block": n.deploy_block}
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    trial = tmp_path / "trial.sqlite"
    trial.write_bytes(path.read_bytes())
    counted = subprocess.run(
        [sys.executable, "-c", _CHILD, net, str(trial), "0"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    steps = int(counted.stdout.strip())
    assert steps > 10
    killed = subprocess.run(
        [sys.executable, "-c", _CHILD, net, str(path), str(steps // 2)], env=env, check=False
    )
    assert killed.returncode == 9
    again = _cache(town, path)
    assert 0 < again.overlay_rows < total, "the kill must have come mid-merge"
    rows = _rows(path)
    assert sum(rows.values()) == total  # every row in exactly one of main and overlay
    assert town.answers(again) == before
    again.merge()
    again._histories.clear()
    assert again.overlay_rows == 0 and town.answers(again) == before


def test_layout_2_file_is_migrated_in_place(town, tmp_path):
    path = tmp_path / "c.sqlite"
    cache = _cache(town, path)
    cache.sync()
    cache.merge()
    synced = cache.synced_block
    cache.close()
    db = sqlite3.connect(path)  # what a layout-2 kiosk left behind: no overlay, no schema mark
    for m in MAIN:
        db.execute(f"DROP TABLE {m}_delta")
    db.execute("DELETE FROM meta WHERE key IN ('schema', 'main_through')")
    db.commit()
    db.close()
    again = _cache(town, path)
    assert again.synced_block == synced and again._meta("schema") == str(SCHEMA_VERSION)
    assert again._meta("main_through") == str(synced)
    rt = again.client.round_trips
    assert town.facts(again, 0).holder_keys == (town.cards[0],) and again.client.round_trips == rt
    snap = town.chain.snapshot()
    town.day()
    again.sync()
    _assert_day_seen(town, again)
    town.chain.revert(snap)
    town.chain.mine(3)
    again.sync()
    assert town.facts(again, 0).holder_keys == (town.cards[0],)
    assert town.facts(again, 1).status is CredentialStatus.VALID


def test_newer_layout_is_refused(town, tmp_path):
    path = tmp_path / "c.sqlite"
    _cache(town, path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(ChainConfigError, match="newer"):
        _cache(town, path)
