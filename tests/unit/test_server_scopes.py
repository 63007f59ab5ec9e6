"""Terminal scopes (docs/server.md §Scopes): a counter acts on credentials it issued or of citizens present;
cross-terminal actions are refused and audited with terminal and clerk (issue 11 item 2)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from cityid.chain.view import CredentialStatus
from server.models import AuditEntry
from terminal.server_client import ServerClient, ServerError, sign_request
from tests.unit.server_support import CLAIMS, Card, make_rig

SERIAL = bytes.fromhex("0102030405060708")


def _terminal(rig, name: str, office: str = "main", role: str = "counter", clerk: str = "clerk-b"):
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    rig.db.add_terminal(name, pem, office=office, role=role)
    return ServerClient("http://city.test", name, key, session=rig.transport, clerk=clerk)


@pytest.fixture
def rig(tmp_path):
    return make_rig(f"sqlite:///{tmp_path}/server.db", office="haeundae")


@pytest.fixture
def victim(rig):
    card = Card()
    return card, rig.client.enroll("key-victim-01", CLAIMS, card.point, SERIAL)


def _refusals(rig, action: str) -> list[AuditEntry]:
    with rig.db.sessions() as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.action == action,
                                                       AuditEntry.outcome == "refused")))  # fmt: skip


def _assert_refused_and_audited(rig, exc, action: str, terminal: str = "counter-b", clerk: str = "clerk-b"):
    assert exc.value.status == 403 and exc.value.code == "out_of_scope"
    rows = _refusals(rig, action)
    assert rows and rows[-1].actor == terminal and rows[-1].clerk == clerk


def test_other_counter_cannot_suspend(rig, victim):
    _, cred = victim
    b = _terminal(rig, "counter-b", office="suyeong")
    with pytest.raises(ServerError) as exc:
        b.suspend(cred.credential_id)
    _assert_refused_and_audited(rig, exc, "suspend")
    assert rig.client.status(cred.credential_id)["state"] == "issued"
    assert (1, cred.status_index) not in rig.chain.status


def test_suspended_credential_is_never_reissued(rig, victim):
    _, cred = victim
    rig.client.suspend(cred.credential_id)
    b = _terminal(rig, "counter-b")
    for client in (b, rig.client):  # not by another counter, not even by the issuing one
        with pytest.raises(ServerError) as exc:
            client.reissue(cred.credential_id, f"reissue-{client.terminal}", {**CLAIMS, "given_name": "X"})
        assert exc.value.status == 409
    rows = _refusals(rig, "reissue")
    assert [(r.actor, r.clerk) for r in rows] == [("counter-b", "clerk-b"), ("counter-1", "clerk-a")]
    assert rig.chain.status[(1, cred.status_index)] == CredentialStatus.SUSPENDED
    rig.client.revoke([cred.credential_id], "revoked")
    with pytest.raises(ServerError) as exc:
        rig.client.reissue(cred.credential_id, "reissue-after-revoke", CLAIMS)
    assert exc.value.status == 409


def test_other_counter_cannot_reissue_an_issued_credential(rig, victim):
    _, cred = victim
    b = _terminal(rig, "counter-b")
    with pytest.raises(ServerError) as exc:
        b.reissue(cred.credential_id, "reissue-b-0001", CLAIMS)
    _assert_refused_and_audited(rig, exc, "reissue")


def test_other_counter_cannot_enroll_its_card_on_the_victims_did(rig, victim):
    _, cred = victim
    b = _terminal(rig, "counter-b")
    mine = Card()
    identity = cred.citizen_did.rsplit(":", 1)[1]
    with pytest.raises(ServerError) as exc:
        b.enroll("key-attacker-01", CLAIMS, mine.point, b"\x66" * 8, citizen_did=cred.citizen_did)
    _assert_refused_and_audited(rig, exc, "enroll")
    assert mine.point not in rig.chain.keys[identity]
    # the attacker's own card is no presence proof for the victim's DID
    with pytest.raises(ServerError) as exc:
        b.enroll("key-attacker-02", CLAIMS, mine.point, b"\x66" * 8, citizen_did=cred.citizen_did,
                 presence=mine.presence("counter-b", cred.citizen_did, "enroll"))  # fmt: skip
    _assert_refused_and_audited(rig, exc, "enroll")
    assert "not a current key" in _refusals(rig, "enroll")[-1].detail
    assert mine.point not in rig.chain.keys[identity]
    # even the issuing counter needs the citizen's card to add a key to an existing DID
    with pytest.raises(ServerError) as exc:
        rig.client.enroll("key-issuer-02", CLAIMS, Card().point, b"\x67" * 8, citizen_did=cred.citizen_did)
    assert exc.value.status == 403


def test_other_counter_cannot_register_a_fido_key_on_the_did(rig, victim):
    _, cred = victim
    b = _terminal(rig, "counter-b")
    fido = Card()
    with pytest.raises(ServerError) as exc:
        b.register_fido_key(cred.citizen_did, fido.point, b"attacker-cred")
    _assert_refused_and_audited(rig, exc, "fido.register")
    assert fido.point not in rig.chain.keys[cred.citizen_did.rsplit(":", 1)[1]]


def test_other_counter_cannot_revoke_as_lost(rig, victim):
    card, cred = victim
    other = rig.client.enroll("key-own-00001", CLAIMS, Card().point, b"\x02" * 8)
    b = _terminal(rig, "counter-b")
    calls = list(rig.chain.calls)
    with pytest.raises(ServerError) as exc:
        b.revoke([cred.credential_id], "lost")
    _assert_refused_and_audited(rig, exc, "revoke")
    assert rig.chain.calls == calls  # nothing written to chain
    assert card.point in rig.chain.keys[cred.citizen_did.rsplit(":", 1)[1]]
    assert rig.client.status(cred.credential_id)["state"] == "issued"
    # a batch with one credential out of scope changes nothing
    c_b = b.enroll("key-b-000001", CLAIMS, Card().point, b"\x03" * 8)
    with pytest.raises(ServerError):
        b.revoke([c_b.credential_id, other.credential_id], "revoked")
    assert b.status(c_b.credential_id)["state"] == "issued"


def test_citizen_present_with_current_card_lets_another_counter_act(rig, victim):
    card, cred = victim
    b = _terminal(rig, "counter-b", office="suyeong")
    assert b.suspend(cred.credential_id, presence=card.presence("counter-b", cred.citizen_did, "suspend"))[
        "state"] == "suspended"  # fmt: skip
    here = card.presence("counter-b", cred.citizen_did, "resume")
    assert b.resume(cred.credential_id, presence=here)["state"] == "issued"
    with pytest.raises(ServerError) as exc:  # a presence proof is single-use
        b.suspend(cred.credential_id, presence=here)
    assert exc.value.status == 403
    for wrong in (
        card.presence("counter-1", cred.citizen_did, "revoke"),  # made for another terminal
        card.presence("counter-b", cred.citizen_did, "suspend"),  # made for another action
        card.presence("counter-b", cred.citizen_did, "revoke", now=1_000_000),  # stale
    ):
        with pytest.raises(ServerError) as exc:
            b.revoke([cred.credential_id], "lost", presence=wrong)
        assert exc.value.status == 403
    fido = Card()
    assert b.register_fido_key(cred.citizen_did, fido.point, b"fido-1",
                               presence=card.presence("counter-b", cred.citizen_did, "fido.register"))
    # the FIDO key is now a current key of the DID: it proves presence as well as the card
    here = fido.presence("counter-b", cred.citizen_did, "revoke")
    assert b.revoke([cred.credential_id], "lost", presence=here) == [cred.credential_id]
    with rig.db.sessions() as s:
        ok = s.scalars(select(AuditEntry).where(AuditEntry.action == "revoke", AuditEntry.outcome == "ok"))
        assert [(r.actor, r.clerk) for r in ok] == [("counter-b", "clerk-b")]


def test_supervisor_scope_is_its_office(rig, victim):
    _, cred = victim
    elsewhere = _terminal(rig, "super-suyeong", office="suyeong", role="supervisor", clerk="sup-1")
    with pytest.raises(ServerError) as exc:
        elsewhere.suspend(cred.credential_id)
    _assert_refused_and_audited(rig, exc, "suspend", "super-suyeong", "sup-1")
    same = _terminal(rig, "super-haeundae", office="haeundae", role="supervisor", clerk="sup-2")
    assert same.suspend(cred.credential_id)["state"] == "suspended"
    assert same.register_fido_key(cred.citizen_did, Card().point, b"fido-sup") is True
    with pytest.raises(ServerError) as exc:
        elsewhere.register_fido_key(cred.citizen_did, Card().point, b"fido-sup-2")
    assert exc.value.status == 403


def test_the_clerk_is_signed_and_required_for_changes(rig, victim):
    _, cred = victim
    path = f"/v1/credentials/{cred.credential_id}/suspend"
    h = sign_request(rig.terminal_key, "counter-1", "POST", path, b"", clerk="clerk-a")
    h["X-CityID-Clerk"] = "clerk-z"  # another clerk name on a signed request
    resp = rig.transport.client.open(path, method="POST", headers=h)
    assert resp.status_code == 401 and resp.get_json()["reason"] == "bad_signature"
    h = sign_request(rig.terminal_key, "counter-1", "POST", path, b"")
    resp = rig.transport.client.open(path, method="POST", headers=h)
    assert resp.status_code == 401 and resp.get_json()["reason"] == "missing_clerk"
    rig.client.suspend(cred.credential_id)
    with rig.db.sessions() as s:
        rows = list(s.scalars(select(AuditEntry).where(AuditEntry.credential_id == cred.credential_id)))
    assert rows and all((r.actor, r.clerk) == ("counter-1", "clerk-a") for r in rows)


def test_terminal_add_with_office_and_role(tmp_path, capsys):
    import json

    from server.cli import main

    db = f"sqlite:///{tmp_path}/cli.db"
    key = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "t.pem").write_bytes(key)
    assert main(["db", "init", "--db", db]) == 0
    assert main(["terminal", "add", "--db", db, "--name", "sup-1", "--public-key", str(tmp_path / "t.pem"),
                 "--office", "suyeong", "--role", "supervisor"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["terminal", "list", "--db", db, "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["office"], row["role"]) == ("suyeong", "supervisor")
    with pytest.raises(SystemExit):
        main(["terminal", "add", "--db", db, "--name", "x", "--public-key", "-", "--role", "root"])
