"""Chain-outbox figures (issue 14), all through the API on a real anvil node — never a direct contract call:

* gas per enrolled citizen at 100 enrollments per batch window (goal ≤ 30,000) and per revoked credential
  (goal ≤ 3,000), from the receipts of the writer's batches;
* enrollments per second for one city: ``city-server serve`` instances (2 × 4 threads, the 2-core
  deployment) on one PostgreSQL, driven by load-generator processes (goal ≥ 200/s), and the clerk-visible
  latency until "issued" (p50/p95), then until confirmed on chain.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def _fmt(name: str, values: list[float]) -> None:
    p50, p95 = statistics.median(values) * 1e3, _pct(values, 95) * 1e3
    print(f"   {name:<52} p50 {p50:8.1f} ms   p95 {p95:8.1f} ms   (n={len(values)})")


def _point() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def _batch_gas(db: Any, kind: str, since: int) -> list[tuple[int, int]]:
    """(items, gas used) of the confirmed batches of ``kind`` with id > ``since``."""
    from sqlalchemy import select

    from server.models import OutboxBatch

    with db.sessions() as s:
        rows = s.execute(
            select(OutboxBatch.items, OutboxBatch.gas_used)
            .where(OutboxBatch.kind == kind, OutboxBatch.id > since, OutboxBatch.state == "confirmed")
        ).all()  # fmt: skip
    return [(int(n), int(g)) for n, g in rows]


def _last_batch(db: Any) -> int:
    from sqlalchemy import func, select

    from server.models import OutboxBatch

    with db.sessions() as s:
        return int(s.scalar(select(func.max(OutboxBatch.id))) or 0)


def _gas(city: Any, tmp: Path, windows: int) -> None:
    from tests.integration.outbox_support import in_process_server
    from tests.unit.server_support import CLAIMS

    app, client = in_process_server(city, f"sqlite:///{tmp}/gas.db", start_writer=False)
    writer, db = app.extensions["cityid.outbox"], app.extensions["cityid.db"]

    def window() -> None:  # one batch window: drain, then see the receipts
        writer.run_once()
        writer.run_once()

    creds = []
    since = _last_batch(db)
    for w in range(windows):
        for i in range(100):
            n = w * 100 + i
            creds.append(client.enroll(f"gas-{n:07d}", CLAIMS, _point(), n.to_bytes(8, "big"), wait=0))
        window()
    enrolled = _batch_gas(db, "enroll", since)
    per = [g / n for n, g in enrolled if n == 100]
    print(f"   gas per enrolled citizen, 100 per window (API → outbox → enrollBatch)   "
          f"{statistics.median(per):>9,.0f}   (goal ≤ 30,000; {len(per)} windows)")  # fmt: skip

    for label, size, reason in (("revoked", 100, "revoked"), ("lost (bit + card key)", 100, "lost"),
                                ("revoked", 1000, "revoked")):  # fmt: skip
        todo = creds[:size]
        creds = creds[size:]
        if len(todo) < size:
            break
        since = _last_batch(db)
        for k in range(0, size, 100):  # revocation requests of 100 (the API's batch limit is 500)
            client.revoke([c.credential_id for c in todo[k : k + 100]], reason, wait=0)
        window()
        window()  # a lost card's key revocation follows its status bit
        gas = sum(g for _n, g in _batch_gas(db, "status", since))
        gas += sum(g for _n, g in _batch_gas(db, "revoke_key", since))
        goal = "   (goal ≤ 3,000)" if reason == "revoked" else ""
        print(f"   gas per {label} credential, {size} per window{'':<17}{gas / size:>9,.0f}{goal}")
    writer.stop()


@contextlib.contextmanager
def _postgres() -> Any:
    from tests.fixtures import postgres as pg

    fn = getattr(pg.postgres_url, "__wrapped__", pg.postgres_url)
    with contextlib.contextmanager(fn)() as url:
        yield url


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (Linux /proc), to separate cost from machine contention."""
    return sum(_cpu_by_pid(pids).values())


def _with_descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (``/proc/*/task/*/children``): the node's npm wrapper is a
    ``node`` process whose child is the ``anvil`` binary doing the work."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return out


def _cpu_by_pid(pids: list[int]) -> dict[int, float]:
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def _pg_pids(db_url: str) -> list[int]:
    """Every process of this PostgreSQL server that has a row in pg_stat_activity (backends, walwriter, …)."""
    import psycopg

    with psycopg.connect(db_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as c:
        rows = c.execute("SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid()").fetchall()
    return [int(r[0]) for r in rows]


def _pg_cpu(db_url: str) -> dict[int, float]:
    """CPU seconds per live PostgreSQL process, and under key 0 the postmaster's own time plus that of its
    children that have exited (backends of closed connections: ``cutime``/``cstime``)."""
    pids = _pg_pids(db_url)
    out = _cpu_by_pid(pids)
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in pids[:1]:
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            f = Path(f"/proc/{ppid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[0] = sum(int(x) for x in f[11:15]) / ticks
    return out


class _CpuMeter:
    """CPU seconds spent during a run by the server instances, PostgreSQL, the node and this load
    generator (``/proc``, ``getrusage``): a cost per enrollment that others on the same cores do not skew."""

    def __init__(self, servers: list[int], db_url: str, node_pid: int | None) -> None:
        self.servers, self.db_url = servers, db_url
        self.node = _with_descendants(node_pid) if node_pid else []
        self.pg0 = _pg_cpu(db_url)
        self.s0, self.n0 = _cpu_by_pid(servers), _cpu_seconds(self.node)
        self.c0 = self._client()

    @staticmethod
    def _client() -> float:
        import resource

        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime

    def stop(self) -> dict[str, float]:
        pg = _pg_cpu(self.db_url)
        servers = _cpu_by_pid(self.servers)
        #: per instance, in start order (the chain writer's leader is the busiest)
        self.instances = [servers.get(p, 0.0) - self.s0.get(p, 0.0) for p in self.servers]
        return {
            "server": sum(self.instances),
            "postgres": sum(v - self.pg0.get(pid, 0.0) for pid, v in pg.items()),
            "node": _cpu_seconds(self.node) - self.n0,
            "client": self._client() - self.c0,
        }


#: The serving configuration the throughput figure uses — what a city runs on a 2-core host
#: (docs/server.md §Serving capacity): ``serve`` instances × waitress threads each.
SERVE_INSTANCES, SERVE_THREADS = 2, 4
#: Load-generator processes (each with its own GIL) and concurrent requests in flight across them.
LOAD_PROCESSES, LOAD_CONCURRENCY = 2, 32


class _Answer:
    """What :class:`terminal.server_client.ServerClient` reads of an answer (``status_code``, ``json()``)."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status_code, self._body = status, body

    def json(self) -> Any:
        return json.loads(self._body)


class _LeanTransport:
    """The load generator's HTTP transport: urllib3's pool (what ``requests`` stands on) without
    ``requests``' per-call session, hooks and cookie work, which cost the load generator about as much CPU
    as the server spends on a third of the enrollment, on the same two cores. Counters are other machines
    in a city, so their client CPU is not the city's; the server sees byte-identical signed requests.
    ``TRANSPORT=requests`` in the environment measures with ``requests`` instead (the side-by-side figure)."""

    def __init__(self, maxsize: int) -> None:
        import urllib3

        self._pool = urllib3.PoolManager(maxsize=maxsize, block=True, retries=False)

    def request(
        self, method: str, url: str, *, data: bytes, headers: dict[str, str], timeout: float
    ) -> _Answer:
        r = self._pool.request(method, url, body=data, headers=headers, timeout=timeout, preload_content=True)
        return _Answer(r.status, r.data)


def _load_worker(
    args: tuple[list[str], bytes, list[int], list[bytes], int, str],
) -> tuple[list[Any], list[float], float]:
    """One load-generator process: ``concurrency`` threads enroll ``indices`` round-robin over ``urls``
    through the terminal's own :class:`ServerClient`; returns the answers, the latencies and this process's
    CPU seconds."""
    import resource

    import requests
    from cryptography.hazmat.primitives import serialization
    from requests.adapters import HTTPAdapter

    from terminal.server_client import ServerClient
    from tests.unit.server_support import CLAIMS

    urls, key_pem, indices, points, concurrency, transport = args
    tkey = serialization.load_pem_private_key(key_pem, None)

    def session() -> Any:  # kept-alive connections (no reconnects)
        if transport != "requests":
            return _LeanTransport(concurrency)
        sess = requests.Session()
        sess.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=concurrency))
        return sess

    clients = [ServerClient(u, "counter-1", tkey, clerk="clerk-bench", timeout=60, session=session())
               for u in urls]  # fmt: skip
    latency: list[float] = []

    def enroll(k: int) -> Any:
        i = indices[k]
        t0 = time.perf_counter()
        r = clients[i % len(urls)].enroll(f"tp-{i:07d}", CLAIMS, points[k], i.to_bytes(8, "big"))
        latency.append(time.perf_counter() - t0)
        return r.credential_id

    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(enroll, range(len(indices))))
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu = ru.ru_utime + ru.ru_stime - ru0.ru_utime - ru0.ru_stime
    return results, latency, cpu


def _throughput(
    city: Any,
    tmp: Path,
    n: int,
    instances: int = SERVE_INSTANCES,
    node_pid: int | None = None,
    threads: int = SERVE_THREADS,
    load_processes: int = LOAD_PROCESSES,
    concurrency: int = LOAD_CONCURRENCY,
) -> dict[str, float]:
    """Enrollments per second through ``instances`` × ``threads`` ``serve`` processes on one PostgreSQL,
    from ``load_processes`` load-generator processes (``concurrency`` requests in flight in all); prints
    the figures and returns them."""
    import multiprocessing

    import requests
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from terminal.server_client import ServerClient
    from tests.integration.outbox_support import free_port
    from tests.unit.server_support import CLAIMS

    cli = [sys.executable, "-m", "server.cli"]
    with _postgres() as db_url:
        env = {**os.environ, **city.env(db_url), "CITY_CHAIN_WINDOW_MS": "500"}
        subprocess.run([*cli, "db", "init"], env=env, check=True, capture_output=True)
        tkey = ec.generate_private_key(ec.SECP256R1())
        pem = tmp / "t.pem"
        pem.write_bytes(tkey.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
        subprocess.run([*cli, "terminal", "add", "--name", "counter-1", "--public-key", str(pem)],
                       env=env, check=True, capture_output=True)  # fmt: skip
        ports = [free_port() for _ in range(instances)]
        serve = [*cli, "serve", "--threads", str(threads), "--no-access-log", "--port"]
        logs = [open(tmp / f"serve-{p}.log", "wb") for p in ports]  # noqa: SIM115
        procs = [subprocess.Popen([*serve, str(p)], env=env, stdout=subprocess.DEVNULL, stderr=log)
                 for p, log in zip(ports, logs, strict=True)]  # fmt: skip
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        key_pem = tkey.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())  # fmt: skip
        try:
            for proc, url, log in zip(procs, urls, logs, strict=True):
                deadline = time.monotonic() + 180
                while True:
                    try:
                        requests.get(f"{url}/health", timeout=2).raise_for_status()
                        break
                    except requests.RequestException:
                        if proc.poll() is not None or time.monotonic() > deadline:
                            log.flush()
                            tail = Path(log.name).read_text()[-1500:]
                            raise RuntimeError("serve did not start: " + tail) from None
                        time.sleep(0.2)
            points = [_point() for _ in range(n)]
            shares = [list(range(w, n, load_processes)) for w in range(load_processes)]
            transport = os.environ.get("TRANSPORT", "urllib3")
            jobs = [(urls, key_pem, idx, [points[i] for i in idx], max(1, concurrency // load_processes),
                     transport) for idx in shares]  # fmt: skip
            # spawn: the workers start clean (no threads or sockets inherited); started before the clock
            with multiprocessing.get_context("spawn").Pool(load_processes) as workers:
                workers.map(abs, range(load_processes))  # imported and ready before the meter starts
                meter = _CpuMeter([p.pid for p in procs], db_url, node_pid)
                t0 = time.monotonic()
                outcome = workers.map(_load_worker, jobs)
                answered = time.monotonic() - t0
                cpu = meter.stop()
            results = [r for rs, _lat, _c in outcome for r in rs]
            latency = [x for _rs, lat, _c in outcome for x in lat]
            cpu["client"] = sum(c for _rs, _lat, c in outcome)
            server_cpu = cpu["server"]
            while requests.get(f"{urls[0]}/health", timeout=5).json()["outbox"]["depth"] > 0:
                if time.monotonic() - t0 > 300:
                    break
                time.sleep(0.05)
            confirmed = time.monotonic() - t0
            print(f"   enrollments/s, {instances} instances × {threads} threads on PostgreSQL, anvil, "
                  f"{concurrency} in flight from {load_processes} processes   {n / answered:>9,.0f} "
                  f"issued/s, {n / confirmed:,.0f} confirmed on chain/s   (goal ≥ 200/s; n={n})")  # fmt: skip
            load, cores = os.getloadavg()[0], os.cpu_count() or 1
            per = server_cpu / n
            print(
                f"   server CPU per enrollment (all instances, incl. the writer) {per * 1e3:>7.1f} ms"
                f"   → {cores} idle cores would serve ≤ {cores / per:,.0f}/s (load average now {load:.1f})"
            )
            by_instance = " / ".join(f"{c / n * 1e3:.1f}" for c in meter.instances)
            print(f"   … by instance (ms per enrollment of all; the writer runs in one): {by_instance}")
            whole = sum(cpu.values()) / n
            print(f"   CPU per enrollment, everything: {whole * 1e3:.1f} ms = server {per * 1e3:.1f}"
                  f" + PostgreSQL {cpu['postgres'] / n * 1e3:.1f} + node {cpu['node'] / n * 1e3:.1f}"
                  f" + load generator {cpu['client'] / n * 1e3:.1f}"
                  f"   → {cores} idle cores ≤ {cores / whole:,.0f}/s")  # fmt: skip
            _fmt("clerk-visible latency until 'issued' under that load", latency)
            # until confirmed, one clerk at a time (the batch window dominates)
            client = ServerClient(urls[0], "counter-1", tkey, clerk="clerk-bench", timeout=60)
            chain_wait = []
            for k in range(10):
                t0 = time.perf_counter()
                serial = (10**6 + k).to_bytes(8, "big")
                r = client.enroll(f"tpw-{k:06d}", CLAIMS, _point(), serial, wait=30)
                assert r.on_chain
                chain_wait.append(time.perf_counter() - t0)
            _fmt("one enrollment until confirmed on chain (window 500 ms)", chain_wait)
            assert len(set(results)) == n
            return {"rate": n / answered, **{k: v / n for k, v in cpu.items()}}
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()


def run(args: Any) -> None:
    from tests.fixtures.anvil_node import AnvilNode
    from tests.integration.outbox_support import build_city

    quick = getattr(args, "quick", False)
    with tempfile.TemporaryDirectory() as tmp, AnvilNode() as node:
        city = build_city(node.url, Path(tmp))
        _gas(city, Path(tmp), 3 if quick else 14)
        _throughput(city, Path(tmp), 200 if quick else 1000, node_pid=node.proc.pid)
