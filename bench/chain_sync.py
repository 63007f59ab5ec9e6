"""Kiosk sync cache at city scale: 3.3 M DIDs and 3.3 M credentials from zero, a day's delta, lookups.

The chain is synthetic but shaped like the city's (issue 14): enrollments in blocks of 100 citizens (one
``enrollBatch`` per block window: a DIDOwnerChanged + a DIDAttributeChanged per citizen, exactly the bytes
the contract emits), credentials on a status list of 3.3 M entries with 1 % revoked over the years in batches
of 100 (StatusWordsChanged), one accredited issuer. A :class:`SyntheticNode` answers JSON-RPC the way a node
does — it is a :class:`~cityid.chain.provider.BoundedHTTPProvider` whose ``post`` builds the reply bytes
instead of reading them from a socket — so the cache runs its real path: bounded JSON decoding, envelope
checks, log checks, storage. A day's delta is 20,000 changes: 10,000 enrollments, 5,000 lost-card key
revocations, 5,000 credential status changes.

Run in a child process (``python -m bench.chain_sync --child N``) so peak RSS is the cache's own.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from eth_abi.abi import encode

from cityid.chain.bindings import vct_hash
from cityid.chain.contracts import Events
from cityid.chain.network import NetworkConfig
from cityid.chain.provider import BoundedHTTPProvider
from cityid.chain.rpc import RpcClient
from cityid.chain.sync import SyncCache
from cityid.chain.view import CredentialStatus, StatusRef

VCT = "urn:busan:citizen:1"
PER_BLOCK = 100  # enrollments per block window
KEY_NAME = b"did/pub/Multikey/sigAuth/hex".ljust(32, b"\0")
ISSUER_NAME = b"did/pub/Multikey/veriKey/hex".ljust(32, b"\0")
LIST_ID = 1
REGISTRAR = "0x" + "ab" * 20
ADDR = {
    "did_registry": "0x" + "d1" * 20,
    "status_registry": "0x" + "5a" * 20,
    "trusted_issuers": "0x" + "7e" * 20,
    "anchor_registry": "0x" + "a7" * 20,
    "multicall": "0x" + "3c" * 20,
}
ISSUER = "0x" + "15" * 20
SUSPEND_WORD = 1_000_000  # the delta's suspensions are in words no earlier change touched
LOST = 10_000  # citizens below this index may lose their card in the delta (lookups use the others)


def _topic(contract: str, event: str) -> str:
    return "0x" + Events.of(contract).topics[event].hex()


T_OWNER = _topic("CityDIDRegistry", "DIDOwnerChanged")
T_ATTR = _topic("CityDIDRegistry", "DIDAttributeChanged")
T_WORDS = _topic("CityStatusRegistry", "StatusWordsChanged")
T_ACCR = _topic("CityTrustedIssuers", "IssuerAccredited")


def _identity(i: int) -> bytes:
    return hashlib.blake2b(i.to_bytes(8, "big"), digest_size=20, person=b"citizen").digest()


@functools.lru_cache(maxsize=1024)
def _block_hash(n: int) -> str:
    """Block ``n``'s hash (a node reads it from its database; memoised: every log of a block repeats it)."""
    return "0x" + hashlib.blake2b(n.to_bytes(8, "big"), digest_size=32).hexdigest()


def _points(n: int) -> list[bytes]:
    return [
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        for _ in range(n)
    ]


class SyntheticCity:
    """The city's event history as a function of the block number (nothing is stored)."""

    def __init__(self, citizens: int, delta: bool = False) -> None:
        self.citizens = citizens
        self.points = _points(64)
        self.enroll_blocks = -(-citizens // PER_BLOCK)
        self.first = 10  # block 10: issuer set-up; enrollments from block 11, one block in two
        self.history_end = self.first + 2 * self.enroll_blocks + 2
        self.delta = delta
        self.owner_data = "0x" + encode(["address", "uint256"], [REGISTRAR, 0]).hex()
        self.attr_data = [
            "0x" + encode(["bytes32", "bytes", "uint256", "uint256"], [KEY_NAME, p, 2**40, 0]).hex()
            for p in self.points
        ]
        self.revoke_data = []  # (ABI words before previousChange, after it) of a revocation, per key
        for p in self.points:
            words = "0x" + encode(["bytes32", "bytes", "uint256", "uint256"], [KEY_NAME, p, 0, 0]).hex()
            self.revoke_data.append((words[: 2 + 64 * 3], words[2 + 64 * 4 :]))
        self.revoked_history = citizens // 100  # 1 % of credentials revoked over the years
        self.head = self.history_end + (self._delta_blocks() if delta else 0)

    # -- the day's delta: 100 enrollment blocks, 50 key-revocation blocks, 50 status blocks (20,000 changes)
    def _delta_blocks(self) -> int:
        return 200

    def block_hash(self, n: int) -> str:
        return _block_hash(n)

    def block(self, n: int) -> dict[str, Any] | None:
        if n > self.head:
            return None
        return {"number": hex(n), "hash": self.block_hash(n), "timestamp": hex(1_700_000_000 + n)}

    def _log(self, n: int, index: int, address: str, topics: list[str], data: str) -> str:
        quoted = '","'.join(topics)
        before, after = self._around_index(n)
        return f'{{"address":"{address}","topics":["{quoted}"],"data":"{data}{before}{hex(index)}{after}'

    @functools.lru_cache(maxsize=16)  # noqa: B019 - one city per run; a few blocks at a time
    def _around_index(self, n: int) -> tuple[str, str]:
        """The text of a block-``n`` log between its data and its logIndex, and after its logIndex."""
        return (
            f'","blockNumber":"{hex(n)}","blockHash":"{self.block_hash(n)}","logIndex":"',
            f'","transactionHash":"{self.block_hash((n + 1) << 40)}","transactionIndex":"0x0",'
            '"removed":false}',
        )

    def logs(self, n: int) -> list[str]:
        """The JSON text of every city-contract log of block ``n``."""
        if n == self.first:
            issuer_topic = "0x" + bytes(12).hex() + ISSUER[2:]
            return [
                self._log(n, 0, ADDR["did_registry"], [T_OWNER, issuer_topic], self.owner_data),
                self._log(
                    n,
                    1,
                    ADDR["did_registry"],
                    [T_ATTR, issuer_topic],
                    "0x"
                    + encode(
                        ["bytes32", "bytes", "uint256", "uint256"], [ISSUER_NAME, self.points[0], 2**40, n]
                    ).hex(),
                ),
                self._log(
                    n,
                    2,
                    ADDR["trusted_issuers"],
                    [T_ACCR, issuer_topic, "0x" + vct_hash(VCT).hex()],
                    "0x" + encode(["string", "uint64", "uint64"], [VCT, 0, 2**63]).hex(),
                ),
            ]
        k = n - self.first - 1
        if 0 <= k < 2 * self.enroll_blocks and k % 2 == 0:
            return self._enroll(n, (k // 2) * PER_BLOCK)
        if 0 <= k < 2 * self.enroll_blocks and k % 2 == 1 and (k // 2) % 100 == 0:
            # every 100th window also revokes 100 credentials of the history (1 %)
            start = (k // 2) * PER_BLOCK
            return [self._status(n, 0, range(start, start + 100), CredentialStatus.REVOKED)]
        if self.delta and n > self.history_end:
            d = n - self.history_end - 1
            if d < 100:  # 10,000 new citizens
                return self._enroll(n, self.citizens + d * PER_BLOCK)
            if d < 150:  # 5,000 lost cards
                return self._revoke_keys(n, (d - 100) * PER_BLOCK)
            word = SUSPEND_WORD + d - 150  # one fresh status word per batch
            return [self._status(n, 0, range(word * 128, word * 128 + 100), CredentialStatus.SUSPENDED)]
        return []

    def _enroll(self, n: int, first: int) -> list[str]:
        """The block's logs as :meth:`_log` writes them, its constant pieces joined once per block."""
        before, after = self._around_index(n)
        did = ADDR["did_registry"]
        owner = f'{{"address":"{did}","topics":["{T_OWNER}","0x{bytes(12).hex()}'
        owner_data = f'"],"data":"{self.owner_data}{before}'
        attr = f'{{"address":"{did}","topics":["{T_ATTR}","0x{bytes(12).hex()}'
        out = []
        for j in range(min(PER_BLOCK, self.citizens + (10_000 if self.delta else 0) - first)):
            i = first + j
            identity = _identity(i).hex()
            out.append(f"{owner}{identity}{owner_data}{hex(2 * j)}{after}")
            out.append(f'{attr}{identity}"],"data":"{self.attr_data[i % 64]}{before}{hex(2 * j + 1)}{after}')
        return out

    def _revoke_keys(self, n: int, first: int) -> list[str]:
        """setAttribute(key, validity 0): the ABI words around ``previousChange`` are the enrollment's own
        (built once per key; being the node must not weigh on the cache's figure)."""
        out = []
        for j in range(PER_BLOCK):
            i = first + j * 7  # spread over the city
            enrolled_at = self.first + 1 + 2 * (i // PER_BLOCK)
            topic = "0x" + bytes(12).hex() + _identity(i).hex()
            head, tail = self.revoke_data[i % 64]
            data = f"{head}{enrolled_at:064x}{tail}"
            out.append(self._log(n, j, ADDR["did_registry"], [T_ATTR, topic], data))
        return out

    def _status(self, n: int, index: int, indexes: range, value: int) -> str:
        words: dict[int, int] = {}
        for i in indexes:
            words[i >> 7] = words.get(i >> 7, 0) | (value << ((i & 127) * 2))
        data = encode(["uint256[]", "uint256[]"], [list(words), list(words.values())])
        return self._log(
            n,
            index,
            ADDR["status_registry"],
            [T_WORDS, "0x" + LIST_ID.to_bytes(32, "big").hex()],
            "0x" + data.hex(),
        )


class SyntheticNode(BoundedHTTPProvider):
    """A node for :class:`SyntheticCity`: the bounded provider's checks run on the bytes it builds."""

    def __init__(self, city: SyntheticCity) -> None:
        super().__init__("http://127.0.0.1:1", timeout=30)
        self.city = city
        self.served_logs = 0
        self.build_seconds = 0.0  # time spent being the node (building replies), not the cache

    def post(self, body: bytes) -> Any:
        from cityid.chain.provider import decode_json

        with self._count_lock:
            self.round_trips += 1
        t = time.perf_counter()
        payload = json.loads(body)
        parts = [self._answer(r) for r in payload] if isinstance(payload, list) else [self._answer(payload)]
        data = ("[" + ",".join(parts) + "]" if isinstance(payload, list) else parts[0]).encode()
        self.build_seconds += time.perf_counter() - t
        if len(data) > self.max_reply_bytes:
            from cityid.chain.errors import MalformedReplyError

            raise MalformedReplyError(f"{self.url} reply exceeds {self.max_reply_bytes} bytes")
        return decode_json(data, "synthetic reply", self.max_depth)

    def _answer(self, req: dict[str, Any]) -> str:
        method, params = req["method"], req["params"]
        c = self.city
        if method == "eth_chainId":
            result = json.dumps(hex(1))
        elif method == "eth_blockNumber":
            result = json.dumps(hex(c.head))
        elif method == "eth_getCode":
            result = '"0x6080"'
        elif method == "eth_getBlockByNumber":
            n = c.head if params[0] == "latest" else int(params[0], 16)
            result = json.dumps(c.block(n))
        elif method == "eth_getLogs":
            f = params[0]
            logs = [
                log for n in range(int(f["fromBlock"], 16), int(f["toBlock"], 16) + 1) for log in c.logs(n)
            ]
            self.served_logs += len(logs)
            result = "[" + ",".join(logs) + "]"
        else:
            raise ValueError(method)
        return f'{{"jsonrpc":"2.0","id":{req["id"]},"result":{result}}}'


def _network() -> NetworkConfig:
    return NetworkConfig(
        name="city", chain_id=1, rpc_url="http://127.0.0.1:1", addresses=ADDR, deploy_block=1
    )


def _lookups(cache: SyncCache, lo: int, hi: int, n: int = 300) -> tuple[float, float]:
    """Median and p95 (ms) of a full verification read from the cache for enrolled citizens in [lo, hi)."""
    issuer_did = f"did:ethr:0x1:{ISSUER}"
    samples = []
    for k in range(n):
        i = lo + (k * 7919) % (hi - lo)
        holder = "0x" + _identity(i).hex()
        ref = StatusRef(1, ADDR["status_registry"], LIST_ID, i)
        t = time.perf_counter()
        facts = cache.verification_facts(issuer_did, f"did:ethr:0x1:{holder}", VCT, ref)
        samples.append(time.perf_counter() - t)
        assert facts.issuer_trusted and facts.holder_keys, "a synced citizen must resolve with a key"
    samples.sort()
    return statistics.median(samples) * 1e3, samples[int(len(samples) * 0.95)] * 1e3


def child(citizens: int, folder: Path) -> dict[str, Any]:
    """Sync from zero, then the day's delta; return the figures (run in its own process)."""
    from cityid.chain.network import checksum

    path = folder / "kiosk.sqlite"
    city = SyntheticCity(citizens)
    node = SyntheticNode(city)
    cache = SyncCache(
        RpcClient(node),
        _network(),
        path,
        confirmations=0,
        max_staleness=1e9,
        issuers=[checksum(ISSUER)],
        status_lists=[LIST_ID],
    )
    t = time.perf_counter()
    cache.sync()
    full = time.perf_counter() - t
    full_node = node.build_seconds
    rss_full = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    served = node.served_logs
    before = _lookups(cache, LOST, citizens)
    revoked = 5  # index 5 is in the first revoked batch of the history
    issuer_did = f"did:ethr:0x1:{ISSUER}"
    ref = StatusRef(1, ADDR["status_registry"], LIST_ID, revoked)
    holder = f"did:ethr:0x1:0x{_identity(revoked).hex()}"
    assert cache.verification_facts(issuer_did, holder, VCT, ref).status is CredentialStatus.REVOKED
    cache._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    disk = sum(p.stat().st_size for p in folder.iterdir())
    # the day's delta
    city.delta = True
    city.head = city.history_end + city._delta_blocks()
    node.build_seconds = 0.0
    node.served_logs = 0
    t = time.perf_counter()
    cache.sync()
    delta = time.perf_counter() - t
    lost = f"did:ethr:0x1:0x{_identity(0).hex()}"
    facts = cache.verification_facts(issuer_did, lost, VCT, StatusRef(1, ADDR["status_registry"], LIST_ID, 0))
    assert facts.holder_keys == (), "a lost card's key must be gone after the delta"
    suspended = StatusRef(1, ADDR["status_registry"], LIST_ID, SUSPEND_WORD * 128 + 7)
    assert cache.verification_facts(issuer_did, holder, VCT, suspended).status is CredentialStatus.SUSPENDED
    overlay = cache.overlay_rows
    after = _lookups(cache, LOST, citizens)  # answered from main tables + the day's overlay
    # later, at idle: the overlay folded into the main tables while verifications keep answering
    merge_out: list[float | int] = []

    def merge() -> None:
        t = time.perf_counter()
        merge_out.append(cache.merge())
        merge_out.append(time.perf_counter() - t)

    worker = threading.Thread(target=merge)
    worker.start()
    during: list[float] = []
    while worker.is_alive():
        during.append(_lookups(cache, LOST, citizens, n=1)[0])
    worker.join()
    merged, merge_s = merge_out
    during.sort()
    facts = cache.verification_facts(issuer_did, lost, VCT, StatusRef(1, ADDR["status_registry"], LIST_ID, 0))
    assert facts.holder_keys == () and cache.overlay_rows == 0, "a merge must not bring a revoked key back"
    assert cache.verification_facts(issuer_did, holder, VCT, suspended).status is CredentialStatus.SUSPENDED
    merged_lookups = _lookups(cache, LOST, citizens)
    return {
        "citizens": citizens,
        "logs": served,
        "sync_s": full,
        "node_s": full_node,
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_full_mib": rss_full,
        "disk_mib": disk / 2**20,
        "delta_s": delta,
        "delta_node_s": node.build_seconds,
        "delta_logs": node.served_logs,
        "lookup_before": before,
        "lookup_after": after,
        "overlay_rows": overlay,
        "merged_rows": merged,
        "merge_s": merge_s,
        "during_merge": (statistics.median(during), during[-1], len(during)) if during else (0, 0, 0),
        "lookup_merged": merged_lookups,
    }


def _small_lookup(folder: Path) -> tuple[float, float]:
    """Lookup cost on a small cache (1,000 citizens) — the 'before' of city scale."""
    city = SyntheticCity(1000)
    cache = SyncCache(
        RpcClient(SyntheticNode(city)),
        _network(),
        folder / "small.sqlite",
        confirmations=0,
        max_staleness=1e9,
    )
    cache.sync()
    return _lookups(cache, 0, 1000)


def run(args: argparse.Namespace) -> None:
    citizens = 100_000 if args.quick else 3_300_000
    with tempfile.TemporaryDirectory() as tmp:
        small = _small_lookup(Path(tmp))
        out = subprocess.run(
            [sys.executable, "-m", "bench.chain_sync", "--child", str(citizens), tmp],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ},
        )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"   kiosk sync cache at city scale: {r['citizens']:,} DIDs + {r['citizens']:,} credential slots "
        f"({r['logs']:,} logs; goals: sync <= 10 min, RAM <= 256 MiB, day's delta <= 1 s)"
    )
    print(
        f"   sync from zero        {r['sync_s']:8.1f} s   (of which the synthetic node building replies "
        f"{r['node_s']:.1f} s)   disk {r['disk_mib']:,.0f} MiB   peak RSS {r['rss_full_mib']:.0f} MiB"
    )
    print(
        f"   day's delta (20,000 changes, {r['delta_logs']:,} logs) {r['delta_s']:6.2f} s   "
        f"(node {r['delta_node_s']:.2f} s, the cache {r['delta_s'] - r['delta_node_s']:.2f} s; "
        f"{r['overlay_rows']:,} overlay rows)   peak RSS {r['rss_mib']:.0f} MiB"
    )
    print(
        f"   merge of the overlay into the main tables (later, at idle): {r['merged_rows']:,} rows "
        f"in {r['merge_s']:.2f} s; {r['during_merge'][2]} lookups meanwhile: median "
        f"{r['during_merge'][0]:.2f} ms, max {r['during_merge'][1]:.0f} ms"
    )
    print(
        f"   lookup (verification read, 0 round trips)  1k citizens: median {small[0]:.3f} ms "
        f"p95 {small[1]:.3f} ms;"
        f"  city scale: median {r['lookup_before'][0]:.3f} ms p95 {r['lookup_before'][1]:.3f} ms;"
        f"  after the delta: median {r['lookup_after'][0]:.3f} ms p95 {r['lookup_after'][1]:.3f} ms"
        f"  after the merge: median {r['lookup_merged'][0]:.3f} ms p95 {r['lookup_merged'][1]:.3f} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", type=int, required=True)
    parser.add_argument("folder")
    a = parser.parse_args()
    print(json.dumps(child(a.child, Path(a.folder))))
