"""``city-server chain check --db`` streams (docs/server.md §Chain outbox): the same report as reading every
row at once, chain reads in bounded chunks, and memory that does not grow with the number of rows."""

from __future__ import annotations

import tracemalloc

import pytest
from sqlalchemy import insert

from cityid.chain.view import CredentialStatus
from server.db import Database
from server.models import OutboxEntry, OutboxKind, OutboxState
from server.outbox.check import Disagreement, check
from server.outbox.ports import DirectPort
from tests.unit.server_support import MemoryChain

ENROLL, REVOKE, STATUS = OutboxKind.ENROLL.value, OutboxKind.REVOKE_KEY.value, OutboxKind.STATUS.value
CONFIRMED = OutboxState.CONFIRMED.value


def _db(tmp_path, name: str = "server.db") -> Database:  # type: ignore[no-untyped-def]
    db = Database.from_url(f"sqlite:///{tmp_path}/{name}")
    db.init()
    return db


def _point(n: int) -> str:
    return (b"\x04" + n.to_bytes(64, "big")).hex()


def _reference(db: Database, port: DirectPort) -> list[Disagreement]:
    """The algorithm before streaming: every row in memory, in id order (the oracle for the new one)."""
    from sqlalchemy import select

    out: list[Disagreement] = []
    status: dict[tuple[int, int], int] = {}
    keys: dict[str, set[bytes]] = {}
    with db.sessions() as s:
        rows = list(s.scalars(select(OutboxEntry).order_by(OutboxEntry.id)))
    for r in rows:
        if r.state != CONFIRMED:
            what = r.identity if r.kind != STATUS else f"{r.list_id}/{r.status_index}"
            kind = "failed" if r.state == OutboxState.FAILED.value else "open"
            out.append(Disagreement(kind, f"{what} (outbox {r.id}, {r.kind})", r.state, r.error or "-"))
        elif r.kind == STATUS:
            status[(r.list_id, r.status_index)] = r.status_value  # type: ignore[index,assignment]
        elif r.identity and r.point:
            held = keys.setdefault(r.identity.lower(), set())
            (held.add if r.kind == ENROLL else held.discard)(bytes.fromhex(r.point))
    for (list_id, index), want in status.items():
        (got,) = port.statuses(list_id, [index])
        if got != want:
            out.append(Disagreement("status", f"{list_id}/{index}", str(want), str(got)))
    chain = port.keys(sorted(keys))
    for identity, want in keys.items():
        got = chain.get(identity, set())
        out += [Disagreement("key-missing", identity, k.hex()[:18], "absent") for k in sorted(want - got)]
        out += [Disagreement("key-extra", identity, "revoked", k.hex()[:18]) for k in sorted(got - want)]
    return out


class CountingPort(DirectPort):
    """A DirectPort that records the size of every chain read."""

    def __init__(self, gateway: MemoryChain) -> None:
        super().__init__(gateway)
        self.key_calls: list[int] = []
        self.status_calls: list[int] = []

    def keys(self, identities):  # type: ignore[no-untyped-def]
        self.key_calls.append(len(identities))
        return super().keys(identities)

    def statuses(self, list_id, indexes):  # type: ignore[no-untyped-def]
        self.status_calls.append(len(indexes))
        return super().statuses(list_id, indexes)


def _mixed(db: Database) -> MemoryChain:
    """Confirmed enroll/revoke/status rows (several writes per entry, mixed-case identities), open and
    failed rows; and a chain that disagrees: a missing key, an extra key, a wrong status, a lost status."""
    a, b, c = "0x" + "aB" * 20, "0x" + "cd" * 20, "0x" + "Ef" * 20
    rows = [
        dict(kind=ENROLL, identity=a, point=_point(1)),
        dict(kind=ENROLL, identity=a.lower(), point=_point(2)),  # same citizen, other spelling
        dict(kind=REVOKE, identity=a.upper().replace("0X", "0x"), point=_point(1)),
        dict(kind=ENROLL, identity=b, point=_point(3)),
        dict(kind=ENROLL, identity=c, point=_point(4)),
        dict(kind=REVOKE, identity=c, point=_point(4)),
        dict(kind=ENROLL, identity=c, point=_point(5)),
        dict(kind=STATUS, list_id=1, status_index=7, status_value=1),
        dict(kind=STATUS, list_id=1, status_index=7, status_value=2),  # last confirmed: 2
        dict(kind=STATUS, list_id=1, status_index=3, status_value=1),
        dict(kind=STATUS, list_id=2, status_index=0, status_value=1),
        dict(kind=STATUS, list_id=1, status_index=9, status_value=1),
        dict(kind=STATUS, list_id=1, status_index=7, status_value=0, state=OutboxState.PENDING.value),
        dict(kind=ENROLL, identity=b, point=_point(6), state=OutboxState.SENT.value),
        dict(kind=STATUS, list_id=1, status_index=3, status_value=0, state=OutboxState.FAILED.value,
             error="resume of a revoked entry"),
        dict(kind=REVOKE, identity=c, point=_point(5), state=OutboxState.FAILED.value),
    ]  # fmt: skip
    with db.sessions.begin() as s:
        s.execute(insert(OutboxEntry), [{"state": CONFIRMED, **r} for r in rows])
    chain = MemoryChain()
    chain.keys = {a.lower(): {bytes.fromhex(_point(2))}, c.lower(): {bytes.fromhex(_point(4))}}  # b's missing
    chain.status = {(1, 7): CredentialStatus(2), (1, 3): CredentialStatus(2), (2, 0): CredentialStatus(1)}
    return chain  # (1, 3) wrong, (1, 9) lost, c: 5 missing and 4 extra


def test_streaming_check_reports_what_reading_everything_reported(tmp_path):
    _same_as_reference(_db(tmp_path))


@pytest.mark.integration
def test_streaming_check_on_postgresql(postgres_db_url):
    db = Database.from_url(postgres_db_url)
    db.init()
    _same_as_reference(db)


def _same_as_reference(db: Database) -> None:
    port = DirectPort(_mixed(db))
    got = list(check(db, port, page=2, chunk=2))
    assert sorted(got, key=str) == sorted(_reference(db, port), key=str)
    assert sorted((p.kind, p.subject.split(" ")[0]) for p in got) == sorted([
        ("open", "1/7"), ("open", "0x" + "cd" * 20), ("failed", "1/3"), ("failed", "0x" + "Ef" * 20),
        ("status", "1/3"), ("status", "1/9"),
        ("key-missing", "0x" + "cd" * 20), ("key-missing", "0x" + "ef" * 20), ("key-extra", "0x" + "ef" * 20),
    ])  # fmt: skip
    assert got == list(check(db, port))  # the order does not depend on the page or chunk size
    # documented order: not confirmed (pending, sent, failed), then status entries, then identities
    assert [p.kind for p in got][:4] == ["open", "open", "failed", "failed"]
    assert [p.subject for p in got if p.kind == "status"] == ["1/3", "1/9"]


def test_an_agreeing_chain_reports_nothing(tmp_path):
    db = _db(tmp_path)
    with db.sessions.begin() as s:
        s.execute(insert(OutboxEntry), [
            dict(kind=ENROLL, identity="0x" + "Aa" * 20, point=_point(1), state=CONFIRMED),
            dict(kind=STATUS, list_id=1, status_index=4, status_value=1, state=CONFIRMED),
        ])  # fmt: skip
    chain = MemoryChain(keys={"0x" + "aa" * 20: {bytes.fromhex(_point(1))}},
                        status={(1, 4): CredentialStatus(1)})  # fmt: skip
    assert list(check(db, DirectPort(chain))) == []


def test_db_init_builds_the_check_indexes_on_an_existing_database(tmp_path):
    from sqlalchemy import text

    db = _db(tmp_path)
    names = "SELECT name FROM sqlite_master WHERE name IN ('ix_outbox_entry', 'ix_outbox_identity')"
    with db.engine.begin() as conn:  # a database created before the indexes
        conn.execute(text("DROP INDEX ix_outbox_entry"))
        conn.execute(text("DROP INDEX ix_outbox_identity"))
        assert conn.execute(text(names)).all() == []
    db.init()
    db.init()  # and again: idempotent
    with db.engine.connect() as conn:
        assert sorted(n for (n,) in conn.execute(text(names))) == ["ix_outbox_entry", "ix_outbox_identity"]
        plan = " ".join(str(r) for r in conn.execute(text(
            "EXPLAIN QUERY PLAN SELECT id FROM outbox WHERE lower(identity) >= '0x' "
            "ORDER BY lower(identity), id"
        )))  # fmt: skip
    assert "ix_outbox_identity" in plan and "TEMP B-TREE" not in plan


def _fill(db: Database, n: int) -> None:
    """``n`` citizens: a confirmed enrollment and a confirmed status write each (the chain agrees)."""
    with db.sessions.begin() as s:
        for start in range(0, n, 5000):
            s.execute(insert(OutboxEntry), [
                row for i in range(start, min(n, start + 5000)) for row in (
                    dict(kind=ENROLL, identity=f"0x{i:040X}", point=_point(i), state=CONFIRMED),
                    dict(kind=STATUS, list_id=1, status_index=i, status_value=0, state=CONFIRMED),
                )
            ])  # fmt: skip


def _agreeing(n: int) -> CountingPort:
    return CountingPort(MemoryChain(keys={f"0x{i:040x}": {bytes.fromhex(_point(i))} for i in range(n)}))


def _peak(db: Database, port: CountingPort, **kw: int) -> int:
    tracemalloc.start()
    try:
        assert next(check(db, port, **kw), None) is None
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_chain_reads_are_chunked_and_every_entry_is_read_once(tmp_path):
    db = _db(tmp_path)
    _fill(db, 1000)
    port = _agreeing(1000)
    assert next(check(db, port, page=64, chunk=100), None) is None
    assert port.key_calls == [100] * 10 and port.status_calls == [100] * 10


@pytest.mark.parametrize("n", [5_000])
def test_memory_does_not_grow_with_the_number_of_rows(tmp_path, n):
    small, large = _db(tmp_path, "small.db"), _db(tmp_path, "large.db")
    _fill(small, n)
    _fill(large, 4 * n)
    port_small, port_large = _agreeing(n), _agreeing(4 * n)
    kw = {"page": 500, "chunk": 500}
    peak_small, peak_large = _peak(small, port_small, **kw), _peak(large, port_large, **kw)
    assert max(port_large.key_calls + port_large.status_calls) <= 500
    assert len(port_large.key_calls) == len(port_large.status_calls) == 4 * n // 500
    print(f"peak {peak_small} B at {2 * n} rows, {peak_large} B at {8 * n} rows")
    assert peak_large / peak_small < 1.5, (peak_small, peak_large)


def test_cli_prints_each_disagreement_then_the_summary_and_progress_on_stderr(tmp_path, monkeypatch, capsys):
    import argparse

    import cityid.chain.network as network
    import server.chain.registrar as registrar
    import server.outbox.ports as ports
    from server import chain_cli

    db = _db(tmp_path)
    _fill(db, 60_000 // 2)  # 30,000 status entries + 30,000 identities: one progress line at 50,000
    chain = _mixed(db)  # and the disagreements of the mixed test on top
    chain.keys.update({f"0x{i:040x}": {bytes.fromhex(_point(i))} for i in range(30_000)})

    class Net:
        name, chain_id, rpc_url = "test", 1, "http://127.0.0.1:1"

        def with_rpc(self, url: str) -> Net:
            return self

    monkeypatch.setattr(network.NetworkConfig, "load", staticmethod(lambda path: Net()))
    monkeypatch.setattr(network, "check_network", lambda client, net: 7)
    monkeypatch.setattr(registrar, "Registrar", lambda *a: None)
    monkeypatch.setattr(ports, "TxPort", lambda reader: DirectPort(chain))
    args = argparse.Namespace(network_file="n.json", rpc=None, timeout=1.0, db=f"sqlite:///{tmp_path}/server.db",
                              config=None)  # fmt: skip
    assert chain_cli._check(args) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0] == "test: chain 1 at block 7; all contracts present"
    assert sorted(lines[1:-1]) == sorted(str(p) for p in _reference(db, DirectPort(chain)))
    assert lines[-1] == "7 disagreement(s), 2 chain write(s) not yet confirmed"
    assert err.count("checked ") == 1 and "status entries / " in err
