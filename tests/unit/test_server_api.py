"""The city server's API through its signed client, on SQLite with an in-memory chain gateway."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select, text

from cityid.chain.view import CredentialStatus
from cityid.jose import es256_verify, jwk_from_point, parse_compact, point_from_jwk
from cityid.sdjwt import parse_disclosure
from server.models import AuditEntry, Credential, OutboxEntry, StatusAllocator, Terminal
from terminal.server_client import ServerClient, ServerError, sign_request
from tests.unit.server_support import CLAIMS, Card, make_rig


def _point() -> bytes:
    from cryptography.hazmat.primitives import serialization

    return (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )


SERIAL = bytes.fromhex("0102030405060708")


@pytest.fixture
def rig(tmp_path):
    return make_rig(f"sqlite:///{tmp_path}/server.db")


# --- enrollment -----------------------------------------------------------------------------------


def test_enrollment_returns_a_credential_bound_to_the_card_key(rig):
    card = _point()
    res = rig.client.enroll("key-00000001", CLAIMS, card, SERIAL)
    jws = parse_compact(res.record.issuer_jwt)
    assert es256_verify(rig.signer.public_point, jws.signing_input, jws.signature)
    assert point_from_jwk(jws.payload["cnf"]["jwk"]) == card
    assert jws.payload["sub"] == res.citizen_did
    assert jws.payload["iss"] == rig.service.issuer_did
    assert jws.payload["status"]["status_list"]["idx"] == res.status_index == 0
    disclosed = {parse_disclosure(d.disclosure).name: parse_disclosure(d.disclosure).value
                 for d in res.record.disclosures}  # fmt: skip
    assert disclosed["family_name"] == "Kim"
    assert disclosed["age_over_65"] is True and disclosed["age_over_19"] is True
    # the DID got the card key on chain
    identity = res.citizen_did.rsplit(":", 1)[1]
    assert rig.chain.keys[identity] == {card}
    assert rig.client.status(res.credential_id)["state"] == "issued"


def test_retry_with_same_key_reuses_credential_and_index(rig):
    card = _point()
    first = rig.client.enroll("key-00000001", CLAIMS, card, SERIAL)
    again = rig.client.enroll("key-00000001", CLAIMS, card, SERIAL)
    assert again.retried and not first.retried
    assert (again.credential_id, again.status_index, again.citizen_did) == (
        first.credential_id, first.status_index, first.citizen_did)  # fmt: skip
    with rig.db.sessions() as s:
        assert s.get(StatusAllocator, 1).next_index == 1
        assert len(s.scalars(select(Credential)).all()) == 1
    assert [c for c in rig.chain.calls if c[0] == "register_keys"] == [("register_keys", 1)]


@pytest.mark.parametrize("step", ["reserved", "superseded", "chain", "signed", "issued"])
def test_crash_after_each_step_then_retry_issues_exactly_one(rig, step):
    """A new enrollment is one transaction (docs/server.md §Idempotency): a crash before its commit leaves
    nothing and the retry is a new enrollment; after the commit the retry finds it and signs again."""
    card = _point()
    crashed = []

    def fault(name: str) -> None:
        if name == step and not crashed:
            crashed.append(name)
            raise RuntimeError(f"crash after {name}")

    rig.service.fault = fault
    with pytest.raises(ServerError) as exc:
        rig.client.enroll("key-crash-01", CLAIMS, card, SERIAL)
    assert exc.value.status == 500 and exc.value.retryable
    with rig.db.sessions() as s:
        assert len(s.scalars(select(Credential)).all()) == (1 if step == "issued" else 0)
    res = rig.client.enroll("key-crash-01", CLAIMS, card, SERIAL)
    assert res.retried is (step == "issued")
    with rig.db.sessions() as s:
        rows = s.scalars(select(Credential)).all()
        assert len(rows) == 1 and rows[0].state == "issued" and rows[0].status_index == 0
        assert s.get(StatusAllocator, 1).next_index == 1
        assert len(s.scalars(select(OutboxEntry)).all()) == 1  # one card key queued, not two
    assert rig.chain.keys[res.citizen_did.rsplit(":", 1)[1]] == {card}


def test_chain_failure_is_retried_by_the_writer_and_burns_nothing(rig):
    """A chain failure no longer fails the clerk's request: the key stays in the outbox and the writer's
    next window applies it, exactly once (docs/server.md §Chain outbox)."""
    card = _point()
    rig.chain.fail_next = 1
    first = rig.client.enroll("key-chain-01", CLAIMS, card, SERIAL, wait=0)
    assert first.chain["state"] == "pending" and first.chain["eta_seconds"] > 0
    assert rig.chain.keys == {}
    rig.app.extensions["cityid.outbox"].run_once()  # the failing window: the row stays pending
    assert rig.client.outbox(first.chain["outbox_ids"])["state"] == "pending"
    done = rig.client.outbox(first.chain["outbox_ids"], wait=5)
    assert done["state"] == "confirmed"
    assert rig.chain.keys[first.citizen_did.rsplit(":", 1)[1]] == {card}
    assert [c for c in rig.chain.calls if c[0] == "register_keys"] == [("register_keys", 1)]
    res = rig.client.enroll("key-chain-01", CLAIMS, card, SERIAL)
    assert res.status_index == 0 and res.retried and res.chain["state"] == "confirmed"
    with rig.db.sessions() as s:
        assert s.get(StatusAllocator, 1).next_index == 1


def test_idempotency_key_reused_for_other_card_is_refused(rig):
    card = _point()
    rig.client.enroll("key-00000001", CLAIMS, card, SERIAL)
    with pytest.raises(ServerError) as exc:
        rig.client.enroll("key-00000001", CLAIMS, _point(), SERIAL)
    assert exc.value.status == 409
    # another registered terminal cannot take over the retry either
    other = ec.generate_private_key(ec.SECP256R1())
    from cryptography.hazmat.primitives import serialization

    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    rig.db.add_terminal(
        "counter-2", other.public_key().public_bytes(serialization.Encoding.PEM, spki).decode()
    )
    client2 = ServerClient("http://city.test", "counter-2", other, session=rig.transport, clerk="clerk-b")
    with pytest.raises(ServerError) as exc:
        client2.enroll("key-00000001", CLAIMS, card, SERIAL)
    assert exc.value.status == 409


def test_reenrolling_a_card_supersedes_its_previous_credential(rig):
    old = rig.client.enroll("session-a-card", CLAIMS, _point(), SERIAL)
    new_key = _point()
    new = rig.client.enroll("session-b-card", CLAIMS, new_key, SERIAL)
    assert new.status_index != old.status_index
    assert rig.client.status(old.credential_id)["state"] == "superseded"
    assert rig.chain.status[(1, old.status_index)] == CredentialStatus.REVOKED
    assert rig.chain.status.get((1, new.status_index), CredentialStatus.VALID) == CredentialStatus.VALID
    # the old card key was taken off the DID; the new one is there
    assert rig.chain.keys[new.citizen_did.rsplit(":", 1)[1]] == {new_key}
    # a retry of the superseded enrollment is refused, it cannot come back to life
    with pytest.raises(ServerError) as exc:
        rig.client.enroll("session-a-card", CLAIMS, bytes.fromhex(_old_key(rig, old.credential_id)), SERIAL)
    assert exc.value.status == 409


def _old_key(rig, cid: str) -> str:
    with rig.db.sessions() as s:
        return s.get(Credential, cid).card_key


def test_enroll_new_card_for_known_citizen_keeps_the_did(rig):
    card = Card()
    first = rig.client.enroll("key-00000001", CLAIMS, card.point, SERIAL)
    here = card.presence("counter-1", first.citizen_did, "enroll")  # the citizen's current card, present
    second = rig.client.enroll("key-00000002", CLAIMS, _point(), b"\x09" * 8, citizen_did=first.citizen_did,
                               presence=here)  # fmt: skip
    assert second.citizen_did == first.citizen_did
    with pytest.raises(ServerError) as exc:
        rig.client.enroll("key-00000003", CLAIMS, _point(), b"\x0a" * 8,
                          citizen_did="did:ethr:0x7a69:0x" + "ab" * 20)  # fmt: skip
    assert exc.value.status == 404


# --- re-issue, revocation, suspension -------------------------------------------------------------


def test_reissue_gives_new_index_and_retires_old(rig):
    card = _point()
    old = rig.client.enroll("key-00000001", CLAIMS, card, SERIAL)
    new = rig.client.reissue(old.credential_id, "reissue-0001", {**CLAIMS, "district": "Suyeong-gu"})
    assert new.credential_id != old.credential_id and new.status_index == old.status_index + 1
    assert new.citizen_did == old.citizen_did
    assert point_from_jwk(parse_compact(new.record.issuer_jwt).payload["cnf"]["jwk"]) == card
    assert rig.client.status(old.credential_id)["state"] == "superseded"
    assert rig.chain.status[(1, old.status_index)] == CredentialStatus.REVOKED
    assert card in rig.chain.keys[old.citizen_did.rsplit(":", 1)[1]]  # same card: key stays
    again = rig.client.reissue(old.credential_id, "reissue-0001", CLAIMS)
    assert again.retried and again.credential_id == new.credential_id


def test_revocation_batch_lost_cards(rig):
    creds = [rig.client.enroll(f"key-batch-{i:03d}", CLAIMS, _point(), bytes([i]) * 8) for i in range(5)]
    rig.chain.calls.clear()
    ids = [c.credential_id for c in creds[:3]]
    revoked = rig.client.revoke(ids, "lost")
    assert sorted(revoked) == sorted(ids)
    assert rig.chain.calls == [("set_status", 3), ("revoke_keys", 3)]  # one batch each
    for c in creds[:3]:
        assert rig.chain.status[(1, c.status_index)] == CredentialStatus.REVOKED
        assert rig.client.status(c.credential_id)["state"] == "revoked"
        assert not rig.chain.keys[c.citizen_did.rsplit(":", 1)[1]]
    assert rig.client.status(creds[3].credential_id)["state"] == "issued"
    assert rig.client.revoke(ids, "lost") == []  # idempotent


def test_revocation_with_unknown_id_changes_nothing(rig):
    c = rig.client.enroll("key-00000001", CLAIMS, _point(), SERIAL)
    with pytest.raises(ServerError) as exc:
        rig.client.revoke([c.credential_id, "00000000-0000-0000-0000-000000000000"], "revoked")
    assert exc.value.status == 404
    assert rig.client.status(c.credential_id)["state"] == "issued"


def test_suspend_and_resume(rig):
    c = rig.client.enroll("key-00000001", CLAIMS, _point(), SERIAL)
    assert rig.client.suspend(c.credential_id)["state"] == "suspended"
    assert rig.chain.status[(1, c.status_index)] == CredentialStatus.SUSPENDED
    assert rig.client.suspend(c.credential_id)["state"] == "suspended"  # idempotent
    assert rig.client.resume(c.credential_id)["state"] == "issued"
    assert rig.chain.status[(1, c.status_index)] == CredentialStatus.VALID
    rig.client.revoke([c.credential_id], "revoked")
    with pytest.raises(ServerError) as exc:
        rig.client.resume(c.credential_id)
    assert exc.value.status == 409


def test_fido_key_registration(rig):
    card = Card()
    c = rig.client.enroll("key-00000001", CLAIMS, card.point, SERIAL)
    fido = _point()
    here = card.presence("counter-1", c.citizen_did, "fido.register")
    assert rig.client.register_fido_key(c.citizen_did, fido, b"cred-id-1", presence=here) is True
    assert rig.client.register_fido_key(c.citizen_did, fido, b"cred-id-1") is False
    assert fido in rig.chain.keys[c.citizen_did.rsplit(":", 1)[1]]
    with pytest.raises(ServerError) as exc:
        rig.client.register_fido_key("did:ethr:0x7a69:0x" + "cd" * 20, _point(), b"x")
    assert exc.value.status == 404


# --- authentication -------------------------------------------------------------------------------


def _raw(rig, path="/v1/credentials/00000000-0000-0000-0000-000000000000/status", headers=None,
         method="GET", data=b""):  # fmt: skip
    resp = rig.transport.client.open(path, method=method, data=data, headers=headers or {})
    return resp.status_code, resp.get_json()


def test_unsigned_request_refused(rig):
    status, body = _raw(rig)
    assert status == 401 and body["reason"] == "missing_signature"


def test_replayed_request_refused(rig):
    rig.client.enroll("key-00000001", CLAIMS, _point(), SERIAL)
    resp = rig.transport.replay()
    assert resp.status_code == 401 and resp.get_json()["reason"] == "replayed"


@pytest.mark.parametrize("skew", [-120, 120])
def test_stale_or_future_timestamp_refused(rig, skew):
    import time

    h = sign_request(
        rig.terminal_key, "counter-1", "GET", "/v1/credentials/x/status", b"", time.time() + skew
    )
    status, body = _raw(rig, "/v1/credentials/x/status", h)
    assert status == 401 and body["reason"] == "stale"


def test_signature_by_another_key_refused(rig):
    other = ec.generate_private_key(ec.SECP256R1())
    client = ServerClient("http://city.test", "counter-1", other, session=rig.transport)
    with pytest.raises(ServerError) as exc:
        client.enroll("key-00000001", CLAIMS, _point(), SERIAL)
    assert exc.value.status == 401 and exc.value.code == "unauthenticated"


def test_tampered_body_refused(rig):
    body = json.dumps({"credential_ids": ["00000000-0000-0000-0000-000000000000"], "reason": "lost"}).encode()
    h = sign_request(rig.terminal_key, "counter-1", "POST", "/v1/revocations", body)
    h["Content-Type"] = "application/json"
    status, resp = _raw(rig, "/v1/revocations", h, "POST", body.replace(b"lost", b"revo"))
    assert status == 401 and resp["reason"] == "bad_signature"


def test_unknown_and_disabled_terminals_refused(rig):
    client = ServerClient("http://city.test", "nobody", rig.terminal_key, session=rig.transport)
    with pytest.raises(ServerError) as exc:
        client.status("00000000-0000-0000-0000-000000000000")
    assert exc.value.status == 401
    unknown = "00000000-0000-0000-0000-000000000000"
    with pytest.raises(ServerError) as exc:  # authenticated (the terminal's row now kept), then 404
        rig.client.status(unknown)
    assert exc.value.status == 404
    rig.db.set_terminal_active("counter-1", False)  # disabled: refused at once, kept row or not
    with pytest.raises(ServerError) as exc:
        rig.client.status(unknown)
    assert exc.value.status == 401 and exc.value.code == "unauthenticated"
    rig.db.set_terminal_active("counter-1", True)
    with pytest.raises(ServerError) as exc:
        rig.client.status(unknown)
    assert exc.value.status == 404
    # re-keyed (a new registration under the same name): the old key is refused, the new one accepted
    new_key = ec.generate_private_key(ec.SECP256R1())
    pem = new_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    with rig.db.sessions.begin() as s:
        s.get(Terminal, "counter-1").public_key_pem = pem  # type: ignore[union-attr]
    with pytest.raises(ServerError) as exc:
        rig.client.status(unknown)
    assert exc.value.status == 401
    rekeyed = ServerClient("http://city.test", "counter-1", new_key, session=rig.transport)
    with pytest.raises(ServerError) as exc:
        rekeyed.status(unknown)
    assert exc.value.status == 404


# --- validation and privacy -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"idempotency_key": "short", "claims": CLAIMS, "card_public_key": {}, "card_serial": "0102030405"},
        {"idempotency_key": "key-00000001", "claims": {**CLAIMS, "district": "Gangnam-gu"},
         "card_public_key": None, "card_serial": "0102030405060708"},
        {"idempotency_key": "key-00000001", "claims": {**CLAIMS, "age_over_65": True},
         "card_public_key": None, "card_serial": "0102030405060708"},
        {"idempotency_key": "key-00000001", "claims": CLAIMS, "card_serial": "0102030405060708",
         "card_public_key": {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"}},
        {"idempotency_key": "key-00000001", "claims": {**CLAIMS, "birthdate": "1950-02-30"},
         "card_serial": "01020304", "card_public_key": "x"},
        [1, 2, 3],
    ],
)  # fmt: skip
def test_bad_input_gets_a_clear_400(rig, payload):
    if isinstance(payload, dict) and payload.get("card_public_key") is None and "claims" in payload:
        payload["card_public_key"] = jwk_from_point(_point())
    body = json.dumps(payload).encode()
    h = sign_request(rig.terminal_key, "counter-1", "POST", "/v1/enrollments", body, clerk="clerk-a")
    h["Content-Type"] = "application/json"
    status, resp = _raw(rig, "/v1/enrollments", h, "POST", body)
    assert status == 400, resp
    assert resp["error"] == "invalid_request" and resp["message"]
    assert "Gangnam" not in resp["message"]  # claim values are not echoed
    with rig.db.sessions() as s:
        assert s.get(StatusAllocator, 1).next_index == 0


def test_not_json_and_unknown_route(rig):
    h = sign_request(rig.terminal_key, "counter-1", "POST", "/v1/enrollments", b"{nope", clerk="clerk-a")
    status, resp = _raw(rig, "/v1/enrollments", h, "POST", b"{nope")
    assert status == 400 and resp["error"] == "invalid_request"
    h = sign_request(rig.terminal_key, "counter-1", "GET", "/v1/nothing", b"")
    status, resp = _raw(rig, "/v1/nothing", h)
    assert status == 404 and resp["error"] == "not_found"


def test_no_claims_in_database_or_audit(rig, tmp_path, caplog):
    caplog.set_level(1)
    c = rig.client.enroll("key-00000001", CLAIMS, _point(), SERIAL)
    rig.client.reissue(c.credential_id, "reissue-0001", CLAIMS)
    rig.client.revoke([c.credential_id], "lost")
    dump = []
    with rig.db.engine.connect() as conn:
        for table in ("credentials", "citizens", "audit_log", "terminals", "used_nonces", "fido_keys",
                      "status_allocator"):  # fmt: skip
            dump += [repr(tuple(r)) for r in conn.execute(text(f"SELECT * FROM {table}"))]
    blob = "\n".join(dump) + "\n" + caplog.text
    for value in ("Kim", "Minji", "1950-03-14", "Haeundae-gu", "BS-2026-000123"):
        assert value not in blob
    raw = (tmp_path / "server.db").read_bytes()
    for value in ("Minji", "1950-03-14", "BS-2026-000123"):
        assert value.encode() not in raw
    with rig.db.sessions() as s:
        actions = [a.action for a in s.scalars(select(AuditEntry).order_by(AuditEntry.id))]
    assert {"enroll.reserve", "enroll.issue", "reissue.reserve", "supersede", "revoke"} <= set(actions)


def test_health(rig):
    resp = rig.transport.client.get("/health")
    assert resp.status_code == 200 and resp.get_json()["issuer_did"].startswith("did:ethr:")


def test_oversized_body_refused_with_json(rig):
    body = b"{" + b" " * 70_000 + b"}"
    h = sign_request(rig.terminal_key, "counter-1", "POST", "/v1/enrollments", body)
    status, resp = _raw(rig, "/v1/enrollments", h, "POST", body)
    assert status == 413 and resp["error"]
    status, resp = _raw(rig, "/v1/enrollments", {}, "DELETE")
    assert status in (401, 405) and resp["error"]


def test_database_down_is_a_clean_503(rig):
    from sqlalchemy import text

    c = rig.client.enroll("key-00000001", CLAIMS, _point(), SERIAL)
    with rig.db.engine.begin() as conn:
        conn.execute(text("DROP TABLE credentials"))
    with pytest.raises(ServerError) as exc:
        rig.client.status(c.credential_id)
    assert exc.value.status == 503 and exc.value.retryable


def test_sweep_closes_abandoned_pending_enrollments(rig):
    import datetime as dt

    from server.service import sweep_pending

    def crash(step: str) -> None:
        if step == "signed":
            raise RuntimeError("crash")

    card = _point()
    first = rig.client.enroll("key-abandon-00", CLAIMS, card, SERIAL)
    rig.service.fault = crash  # a re-issue reserves its pending row first, then signs: crash in between
    with pytest.raises(ServerError):
        rig.client.reissue(first.credential_id, "key-abandon-01", CLAIMS)
    rig.service.fault = lambda step: None
    assert sweep_pending(rig.db, dt.timedelta(minutes=60)) == []  # too young
    future = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    (cid,) = sweep_pending(rig.db, dt.timedelta(minutes=60), now=future)
    assert cid != first.credential_id
    assert rig.client.status(cid)["state"] == "revoked"
    with pytest.raises(ServerError) as exc:
        rig.client.reissue(first.credential_id, "key-abandon-01", CLAIMS)
    assert exc.value.status == 409 and "revoked" in str(exc.value)
    with rig.db.sessions() as s:
        assert s.get(StatusAllocator, 1).next_index == 2  # the index stays accounted for
