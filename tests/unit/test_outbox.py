"""Chain outbox and writer on SQLite with the embedded chain (real contracts, real signed transactions):
batching, crash between storing and broadcasting, a refused row, a chain that lost confirmed writes, and a
nonce the node rewound (docs/server.md §Chain outbox)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from cityid.chain.contracts import Events
from cityid.chain.view import CredentialStatus
from server.chain.registrar import start_embedded
from server.models import BatchState, OutboxBatch, OutboxEntry, OutboxState
from server.outbox import OutboxWriter, enqueue_status, stats
from server.outbox.check import check
from server.outbox.ports import TxPort
from tests.unit.server_support import CLAIMS, Card, make_rig, registrar_gateway


@pytest.fixture
def world(tmp_path):
    chain = start_embedded()
    gateway = registrar_gateway(chain.network, chain.client(), chain.accounts[0])
    rig = make_rig(f"sqlite:///{tmp_path}/server.db", chain=gateway, chain_wait_ms=0)
    return chain, gateway, rig


def _writer(rig) -> OutboxWriter:  # type: ignore[no-untyped-def]
    return rig.app.extensions["cityid.outbox"]


def _enroll(rig, n: int, prefix: str = "ob") -> list:  # type: ignore[no-untyped-def]
    return [rig.client.enroll(f"{prefix}-{i:05d}", CLAIMS, Card().point, i.to_bytes(8, "big"))
            for i in range(n)]  # fmt: skip


def _key_events(gateway, identity: str) -> int:  # type: ignore[no-untyped-def]
    """DIDAttributeChanged events of ``identity`` on chain (a double-applied enrollment shows up here)."""
    reg = gateway.registrar
    topic = "0x" + Events.of(reg.dids.contract_name).topics["DIDAttributeChanged"].hex()
    logs = reg.client.request("eth_getLogs", [{
        "fromBlock": "0x0", "toBlock": "latest", "address": reg.dids.address,
        "topics": [topic, "0x" + "00" * 12 + identity[2:].lower()],
    }])  # fmt: skip
    return len(logs)


def _status(gateway, list_id: int, index: int) -> int:  # type: ignore[no-untyped-def]
    return int(gateway.registrar.status.status_of(list_id, index))


def test_answer_comes_before_the_chain_then_one_batch_confirms_all(world):
    _chain, gateway, rig = world
    results = _enroll(rig, 12)
    assert all(r.chain["state"] == "pending" and r.chain["eta_seconds"] > 0 for r in results)
    assert stats(rig.db)["depth"] == 12
    assert _writer(rig).run_once()  # window 1: one enrollBatch for the 12 keys
    assert _writer(rig).run_once()  # window 2: receipt seen → confirmed
    with rig.db.sessions() as s:
        batches = list(s.scalars(select(OutboxBatch)))
        assert [(b.kind, b.items, b.state) for b in batches] == [("enroll", 12, "confirmed")]
        assert s.scalar(select(func.count()).where(OutboxEntry.state != OutboxState.CONFIRMED.value)) == 0
    for r in results:
        assert _key_events(gateway, r.citizen_did.rsplit(":", 1)[1]) == 1
        assert rig.client.status(r.credential_id)["chain"]["state"] == "confirmed"
    health = stats(rig.db)
    assert health["depth"] == 0 and health["last_confirmed_block"] == batches[0].block_number


def test_revocations_batch_many_bits_per_word_and_wait_reports_confirmed(world):
    _chain, gateway, rig = world
    creds = _enroll(rig, 20)
    _writer(rig).wait([i for c in creds for i in c.chain["outbox_ids"]], 10)
    revoked = rig.client.revoke([c.credential_id for c in creds], "revoked")
    assert len(revoked) == 20 and rig.client.last_chain["state"] == "pending"
    assert all(_status(gateway, 1, c.status_index) == 0 for c in creds)  # not on chain yet: not "done"
    done = rig.client.outbox(rig.client.last_chain["outbox_ids"], wait=10)
    assert done["state"] == "confirmed"
    assert all(_status(gateway, 1, c.status_index) == CredentialStatus.REVOKED for c in creds)
    with rig.db.sessions() as s:
        (status_batch,) = s.scalars(select(OutboxBatch).where(OutboxBatch.kind == "status"))
    assert status_batch.items == 20 and status_batch.gas_used is not None


def test_writer_dying_after_storing_signed_bytes_is_replaced_without_a_second_effect(world, monkeypatch):
    _chain, gateway, rig = world
    results = _enroll(rig, 5)
    first = _writer(rig)
    monkeypatch.setattr(TxPort, "broadcast", lambda self, raw: (_ for _ in ()).throw(SystemExit("killed")))
    with pytest.raises(SystemExit):
        first.run_once()  # stored the signed batch, died before the node saw it
    first.leader.release()
    monkeypatch.undo()
    with rig.db.sessions() as s:
        (batch,) = s.scalars(select(OutboxBatch))
        assert batch.state == BatchState.SIGNED.value
        stored = (batch.nonce, batch.tx_hash)
    successor = OutboxWriter(rig.db, gateway)
    for _ in range(3):
        successor.run_once()
    with rig.db.sessions() as s:
        batches = list(s.scalars(select(OutboxBatch)))
    assert [(b.nonce, b.tx_hash, b.state) for b in batches] == [(*stored, "confirmed")]  # the same bytes
    for r in results:
        assert _key_events(gateway, r.citizen_did.rsplit(":", 1)[1]) == 1


def test_a_row_the_chain_refuses_fails_alone(world):
    _chain, gateway, rig = world
    creds = _enroll(rig, 3)
    _writer(rig).wait([i for c in creds for i in c.chain["outbox_ids"]], 10)
    bad = creds[0]
    rig.client.revoke([bad.credential_id], "revoked")
    assert rig.client.outbox(rig.client.last_chain["outbox_ids"], wait=10)["state"] == "confirmed"
    # a resume of the revoked entry slipped in beside a good change: the contract refuses only that one
    with rig.db.sessions.begin() as s:
        wrong = enqueue_status(s, 1, bad.status_index, CredentialStatus.VALID, bad.credential_id)
        ok = enqueue_status(s, 1, creds[1].status_index, CredentialStatus.SUSPENDED, creds[1].credential_id)
        s.flush()
        wrong_id, ok_id = wrong.id, ok.id
    got_ok = _writer(rig).wait([ok_id], 10)
    assert got_ok.state == "confirmed"
    assert _writer(rig).wait([wrong_id], 10).state == "failed"
    assert _status(gateway, 1, bad.status_index) == CredentialStatus.REVOKED
    assert _status(gateway, 1, creds[1].status_index) == CredentialStatus.SUSPENDED
    assert stats(rig.db)["failed"] == 1


def test_confirmed_revocations_lost_by_the_node_are_reapplied(world):
    chain, gateway, rig = world
    creds = _enroll(rig, 4)
    _writer(rig).wait([i for c in creds for i in c.chain["outbox_ids"]], 10)
    snap = chain.client().request("evm_snapshot", [])
    rig.client.revoke([c.credential_id for c in creds[:2]], "lost")
    assert rig.client.outbox(rig.client.last_chain["outbox_ids"], wait=10)["state"] == "confirmed"
    assert _status(gateway, 1, creds[0].status_index) == CredentialStatus.REVOKED
    assert list(check(rig.db, TxPort(gateway.registrar))) == []
    chain.client().request("evm_revert", [snap])  # the node comes back from an older snapshot
    assert _status(gateway, 1, creds[0].status_index) == 0  # the kiosk would say VALID again
    problems = list(check(rig.db, TxPort(gateway.registrar)))  # `city-server chain check --db` lists each one
    assert sorted(p.kind for p in problems) == ["key-extra", "key-extra", "status", "status"]
    assert {p.subject for p in problems if p.kind == "status"} == {f"1/{c.status_index}" for c in creds[:2]}
    with rig.db.sessions() as s:
        before = {b.tx_hash for b in s.scalars(select(OutboxBatch))}
    for _ in range(4):
        _writer(rig).run_once()
    assert _status(gateway, 1, creds[0].status_index) == CredentialStatus.REVOKED
    assert _status(gateway, 1, creds[1].status_index) == CredentialStatus.REVOKED
    identity = creds[0].citizen_did.rsplit(":", 1)[1]
    assert _key_events(gateway, identity) == 2  # enrolled once, revoked once: nothing doubled
    with rig.db.sessions() as s:
        batches = list(s.scalars(select(OutboxBatch)))
        assert {b.tx_hash for b in batches} == before  # re-applied with the same signed bytes
        assert all(b.state == "confirmed" for b in batches)
        assert sum(b.reapplied for b in batches) == 2
    assert list(check(rig.db, TxPort(gateway.registrar))) == []
    # and the writer keeps writing after the rewind (no nonce stuck ahead)
    more = _enroll(rig, 2, prefix="after")
    assert _writer(rig).wait([i for c in more for i in c.chain["outbox_ids"]], 10).state == "confirmed"


def test_an_operator_retries_a_failed_row_unless_a_later_write_supersedes_it(world, tmp_path, capsys):
    from server.cli import main
    from server.outbox.check import RetryRefusedError, retry

    _chain, gateway, rig = world
    creds = _enroll(rig, 2, prefix="op")
    _writer(rig).wait([i for c in creds for i in c.chain["outbox_ids"]], 10)
    with rig.db.sessions.begin() as s:  # two writes that ran out of attempts (e.g. the node was down long)
        suspend = CredentialStatus.SUSPENDED
        first = enqueue_status(s, 1, creds[0].status_index, suspend, creds[0].credential_id)
        other = enqueue_status(s, 1, creds[1].status_index, suspend, creds[1].credential_id)
        s.flush()
        first.state = other.state = OutboxState.FAILED.value
        first.attempts = other.attempts = 5
        first_id, other_id = first.id, other.id
    with rig.db.sessions.begin() as s:  # … and creds[1] was revoked afterwards (confirmed)
        later = enqueue_status(s, 1, creds[1].status_index, CredentialStatus.REVOKED, creds[1].credential_id)
        s.flush()
        later_id = later.id
    assert _writer(rig).wait([later_id], 10).state == "confirmed"

    url = f"sqlite:///{tmp_path}/server.db"
    assert main(["chain", "outbox", "--db", url]) == 1  # failed rows listed: a non-zero exit for scripts
    out = capsys.readouterr().out
    assert f"{first_id}\tstatus\t1/{creds[0].status_index}\tattempts 5" in out and "2 failed" in out

    with pytest.raises(RetryRefusedError, match=f"superseded by row {later_id}"):
        retry(rig.db, [other_id])  # re-applying the suspension would un-revoke the card
    with pytest.raises(RetryRefusedError, match="confirmed, not failed"):
        retry(rig.db, [later_id])
    with pytest.raises(RetryRefusedError, match="does not exist"):
        retry(rig.db, [first_id, 10**9])  # all or none: first stays failed too
    assert stats(rig.db)["failed"] == 2

    assert main(["chain", "outbox", "--db", url, "--retry", str(first_id)]) == 0
    assert _writer(rig).wait([first_id], 10).state == "confirmed"
    assert _status(gateway, 1, creds[0].status_index) == CredentialStatus.SUSPENDED
    assert _status(gateway, 1, creds[1].status_index) == CredentialStatus.REVOKED  # never undone
    assert stats(rig.db)["failed"] == 1
