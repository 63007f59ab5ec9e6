"""The kiosk cache's city-scale paths (docs/chain.md, "Kiosk sync cache at city scale", "First sync") answer
exactly as the general ones: the nesting bound's fast count, the one-pass log checks of an eth_getLogs reply,
and a first sync that stages DID events and sorts them in once — also when it is interrupted or a reorg
hits it halfway."""

from __future__ import annotations

import copy
import random
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from cityid.chain.errors import MalformedReplyError, NodeUnreachableError, StaleChainDataError
from cityid.chain.provider import check_json_nesting
from cityid.chain.sync import BULK_SUFFIX, SyncCache
from cityid.chain.view import CredentialStatus
from server.chain.registrar import Registrar
from tests.unit.test_sync_overlay import MAIN, Town, _rows

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def _reference_depth_ok(data: bytes, max_depth: int) -> bool:
    """The bound as it was counted before the fast path: the strings dropped (split on quotes; the regex
    when there are escapes), then every structural bracket counted left to right."""
    outside = _STRING.sub(b"", data) if b"\\" in data else b"".join(data.split(b'"')[0::2])
    if sum(outside.count(c) for c in (b"[", b"]", b"{", b"}")) <= 2 * max_depth:
        return True  # valid JSON with this few brackets is not deeper (invalid JSON: json.loads refuses it)
    depth = 0
    for c in outside:
        if c in b"[{":
            depth += 1
            if depth > max_depth:
                return False
        elif c in b"]}":
            depth -= 1
    return True


def test_nesting_bound_matches_the_exact_count_on_random_input():
    rng = random.Random(14)
    alphabets = (b'[]{}"a,', b'[]{}"a,\\', b"[[[]]]{}")
    decided = {True: 0, False: 0}
    for _ in range(20_000):
        alphabet = rng.choice(alphabets)
        data = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        depth = rng.randint(1, 8)
        expected = _reference_depth_ok(data, depth)
        try:
            check_json_nesting(data, depth)
            ok = True
        except MalformedReplyError:
            ok = False
        assert ok == expected, (data, depth)
        decided[ok] += 1
    assert min(decided.values()) > 1000  # both outcomes were exercised


def test_nesting_bound_on_a_wide_reply_and_hidden_depth():
    wide = b'{"result":[' + b",".join(b'{"topics":["0x1","0x2"],"data":"0x"}' for _ in range(5000)) + b"]}"
    check_json_nesting(wide, 4)
    with pytest.raises(MalformedReplyError):
        check_json_nesting(wide, 3)
    # alternating kinds of brackets are one level each (a pass may not drop two)
    alternating = b"[{" * 40 + b"}]" * 40
    check_json_nesting(alternating, 80)
    with pytest.raises(MalformedReplyError):
        check_json_nesting(alternating, 79)
    hidden = b'["' + b"[" * 200 + b'",' + b"[" * 70 + b"]" * 70 + b"]"  # openers in a string, 71 deep
    with pytest.raises(MalformedReplyError):
        check_json_nesting(hidden, 64)
    check_json_nesting(hidden, 71)


@pytest.fixture
def busy_town(embedded_chain) -> Town:
    town = Town(embedded_chain, citizens=6)
    town.day()  # DID events (a key revocation) after the enrollment block, where staging begins
    return town


def _cache(town: Town, path: Path, **kw: Any) -> SyncCache:
    kw.setdefault("idle_merge_rows", 0)
    return SyncCache(town.chain.client(), town.city.network, path, confirmations=0, max_staleness=1e9, **kw)


def _node_logs(town: Town, cache: SyncCache) -> list[dict[str, Any]]:
    head = town.chain.client().request("eth_blockNumber")
    return town.chain.client().request(
        "eth_getLogs", [{"address": list(cache._contracts), "fromBlock": "0x0", "toBlock": head}]
    )


_VALUES: list[Any] = [None, 1, True, 1.5, [], {}, "", "0x", "0x1", "0xzz", "0X10", " 0x1", "0x" + "00" * 32,
                      "0x" + "AB" * 32, "0x00 " + "00" * 31, "0x" + "00" * 12 + "Ab" * 20]  # fmt: skip


def _mutate(rng: random.Random, log: dict[str, Any], end: int, end_hash: str) -> dict[str, Any]:
    log = copy.deepcopy(log)
    what = rng.choice(["field", "field", "topic", "extra topic", "drop", "case", "data length", "at end"])
    if what == "field":
        log[rng.choice(["address", "topics", "data", "blockNumber", "blockHash", "logIndex"])] = rng.choice(
            [*_VALUES, hex(end), hex(end + 1)]
        )
    elif what == "topic" and log["topics"]:
        i = rng.randrange(len(log["topics"]))
        t = log["topics"][i]
        log["topics"][i] = rng.choice([*_VALUES, t.upper(), t[:-2], "0x01" + t[4:]])
    elif what == "extra topic":
        log["topics"].append(rng.choice(_VALUES))
    elif what == "drop":
        log.pop(rng.choice(list(log)))
    elif what == "case":
        log["address"] = rng.choice([log["address"].upper(), log["address"].lower(), log["address"][:-1]])
    elif what == "data length":
        log["data"] = log["data"][: rng.choice([2, 66, 130, len(log["data"]) - 2, len(log["data"]) - 1])]
    else:
        log["blockNumber"] = hex(end)
        log["blockHash"] = rng.choice([end_hash, end_hash.upper().replace("0X", "0x"), "0x" + "11" * 32])
    return log


_DID_EVENTS = ("DIDOwnerChanged", "DIDDelegateChanged", "DIDAttributeChanged")


def _outcome(cache: SyncCache, parse: Any) -> object:
    """Rows, events (every field) and the proofs' raw logs a parse produced — or its error."""
    cache._raw_logs.clear()
    try:
        rows, events = parse()
    except Exception as exc:
        return type(exc).__name__, str(exc)
    if not cache.proofs:  # DID events the general path decoded become rows (as _apply_range stores them)
        rows = [*rows, *((e.args["identity"], e.block_number, e.log_index, _DID_EVENTS.index(e.name),
                          e.args["data"]) for e in events if e.name in _DID_EVENTS)]  # fmt: skip
        events = [e for e in events if e.name not in _DID_EVENTS]
    fields = [
        (e.name, e.args, e.address, e.block_number, e.block_hash, e.log_index, e.tx_hash) for e in events
    ]
    return sorted(rows), sorted(fields, key=repr), dict(cache._raw_logs)


@pytest.mark.parametrize("proofs", [False, True], ids=["rows", "proofs"])
def test_one_pass_log_checks_accept_exactly_what_the_per_log_checks_accept(busy_town, tmp_path, proofs):
    """Real node logs (checksummed and lower-case addresses) and thousands of malformed variants: the
    fast path's rows, events, raw logs for the proofs and errors are the per-log path's."""
    town = busy_town
    cache = _cache(town, tmp_path / "c.sqlite", proofs=proofs)
    logs = _node_logs(town, cache)
    logs += [{**log, "address": log["address"].lower()} for log in logs]
    end = max(int(log["blockNumber"], 16) for log in logs)
    end_hash = next(log["blockHash"] for log in logs if int(log["blockNumber"], 16) == end).lower()

    def per_log(raws: list[Any]) -> Any:
        return [], [ev for ev in (cache._parse_log(raw, 0, end, end_hash) for raw in raws) if ev]

    def fast(raws: list[Any]) -> Any:
        return cache._parse_logs(raws, 0, end, end_hash)

    whole = _outcome(cache, lambda: fast(logs))
    assert whole == _outcome(cache, lambda: per_log(logs))
    dids = whole[2] if proofs else whole[0]  # type: ignore[index]
    assert len(dids) >= 2 * len(town.holders)
    rng = random.Random(1056)
    differing = 0
    for _ in range(3000):
        raws = [copy.deepcopy(log) for log in rng.sample(logs, 4)]
        i = rng.randrange(4)
        raws[i] = _mutate(rng, raws[i], end, end_hash) if rng.random() < 0.95 else rng.choice(_VALUES)
        expected = _outcome(cache, lambda: per_log(raws))  # noqa: B023 - called in this iteration
        assert _outcome(cache, lambda: fast(raws)) == expected, raws[i]  # noqa: B023
        without = [r for j, r in enumerate(raws) if j != i]
        differing += expected != _outcome(cache, lambda: per_log(without))  # noqa: B023
    assert differing > 500  # the mutations mattered


class _FailingClient:
    """The town's client, failing every eth_getLogs batch after ``ok`` of them (a node going away)."""

    def __init__(self, client: Any, ok: int) -> None:
        self._client = client
        self.ok = ok

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def batch(self, calls: Any) -> list[Any]:
        if calls and calls[0][0] == "eth_getLogs":
            if self.ok <= 0:
                raise NodeUnreachableError("test", "gone")
            self.ok -= 1
        return self._client.batch(calls)


def _staging_cache(town: Town, path: Path, ok: int) -> SyncCache:
    """A first sync that stages after 5 overlay rows, one block per range, failing after ``ok`` ranges."""
    cache = _cache(town, path, merge_rows=5, max_range=1)
    cache.client = _FailingClient(cache.client, ok)  # type: ignore[assignment]
    return cache


def _ranges(town: Town) -> int:
    """eth_getLogs ranges of a first sync one block per range (confirmations 0)."""
    head = int(town.chain.client().request("eth_blockNumber"), 16)
    return head - town.city.network.deploy_block + 1


def _rows_from(path: Path, block: int) -> int:
    db = sqlite3.connect(path)
    try:
        return sum(
            db.execute(f"SELECT count(*) FROM {t} WHERE block >= ?", (block,)).fetchone()[0]
            for m in MAIN
            for t in (m, f"{m}_delta")
        )
    finally:
        db.close()


def test_first_sync_staged_and_sorted_answers_as_the_overlay_path(busy_town, tmp_path):
    town = busy_town
    reference = _cache(town, tmp_path / "ref.sqlite")  # merge_rows default: never stages
    reference.sync()
    staged = _cache(town, tmp_path / "c.sqlite", merge_rows=5, max_range=1)
    staged.sync()
    assert staged._meta("bulk_from") is None and not Path(str(tmp_path / "c.sqlite") + BULK_SUFFIX).exists()
    assert town.answers(staged) == town.answers(reference)
    ref_rows, rows = _rows(tmp_path / "ref.sqlite"), _rows(tmp_path / "c.sqlite")
    assert rows["did_logs"] == ref_rows["did_logs"] + ref_rows["did_logs_delta"] > 0
    assert all(rows[f"{m}_delta"] == 0 for m in MAIN)
    assert [staged.did_document(town.did(k)) for k in range(3)] == [
        reference.did_document(town.did(k)) for k in range(3)
    ]


def test_interrupted_first_sync_refuses_to_answer_and_resumes(busy_town, tmp_path):
    town = busy_town
    reference = _cache(town, tmp_path / "ref.sqlite")
    reference.sync()
    path = tmp_path / "c.sqlite"
    cache = _staging_cache(town, path, ok=_ranges(town) - 2)
    cache.max_staleness = float("inf")  # even a kiosk that never calls its data stale
    with pytest.raises(NodeUnreachableError):
        cache.sync()
    assert cache._bulk and cache._meta("bulk_from") is not None
    assert Path(str(path) + BULK_SUFFIX).exists()
    with pytest.raises(StaleChainDataError):
        town.facts(cache, 0)
    with pytest.raises(StaleChainDataError):
        cache.did_document(town.did(0))
    # in the same process: the next sync goes on staging and sorts everything in
    cache.client.ok = 10_000  # type: ignore[attr-defined]
    cache.sync()
    assert not cache._bulk and town.answers(cache) == town.answers(reference)
    # a kiosk restarted mid-staging: everything from where staging began is synced again
    path2 = tmp_path / "d.sqlite"
    first = _staging_cache(town, path2, ok=_ranges(town) - 2)
    with pytest.raises(NodeUnreachableError):
        first.sync()
    bulk_from = int(first._meta("bulk_from") or 0)
    assert first.synced_block > bulk_from  # rows were staged
    first.close()
    again = _cache(town, path2, merge_rows=5, max_range=1)
    assert again.synced_block == bulk_from - 1 and again._meta("bulk_from") is None
    assert not Path(str(path2) + BULK_SUFFIX).exists()
    assert _rows_from(path2, bulk_from) == 0 and _rows_from(path2, 0) > 0  # what came before staging stays
    again.sync()
    assert town.answers(again) == town.answers(reference)


def test_reorg_during_staging_drops_the_staged_rows_of_the_lost_branch(embedded_chain, tmp_path):
    town = Town(embedded_chain, citizens=6)
    snap_block = int(town.chain.client().request("eth_blockNumber"), 16)
    snap = town.chain.snapshot()
    town.day()  # the key revocation, revocation and suspension: on a branch that will be dropped
    path = tmp_path / "c.sqlite"
    cache = _staging_cache(town, path, ok=_ranges(town) - 1)  # fails at the last block
    with pytest.raises(NodeUnreachableError):
        cache.sync()
    staged = "SELECT count(*) FROM bulk.did_logs_bulk WHERE block > ?"
    assert cache._bulk and cache._db.execute(staged, (snap_block,)).fetchone()[0] > 0, "the day is staged"
    town.chain.revert(snap)
    town.chain.mine(4)  # a longer branch without the day's changes
    Registrar(town.city.network, town.chain.client(), town.chain.accounts[0]).set_status(
        town.list_id, [10 + 4], CredentialStatus.SUSPENDED
    )
    cache.client.ok = 10_000  # type: ignore[attr-defined]
    cache.sync()
    assert not cache._bulk
    assert town.facts(cache, 0).holder_keys == (town.cards[0],), "the dropped key revocation is gone"
    assert town.facts(cache, 1).status is CredentialStatus.VALID
    assert town.facts(cache, 4).status is CredentialStatus.SUSPENDED
    fresh = _cache(town, tmp_path / "fresh.sqlite")
    fresh.sync()
    assert town.answers(cache) == town.answers(fresh)
