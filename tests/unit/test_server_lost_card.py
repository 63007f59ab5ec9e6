"""Lost-card report by the citizen (docs/server.md §Lost-card report; issue 11 item 3)."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import MetaData, select

from server.models import AuditEntry, RevocationLookup
from terminal.server_client import ServerError
from tests.unit.server_support import CLAIMS, Card, make_rig

SECRET = "s" * 40
PASSWORD = "blue-heron-42"


@pytest.fixture
def rig(tmp_path):
    return make_rig(f"sqlite:///{tmp_path}/server.db", revocation_secret=SECRET)


def _dump(rig) -> str:
    """Every row of every table, as text."""
    meta = MetaData()
    meta.reflect(rig.db.engine)
    out = []
    with rig.db.engine.connect() as conn:
        for table in meta.sorted_tables:
            out += [repr(tuple(row)) for row in conn.execute(table.select())]
    return "\n".join(out)


def test_report_with_name_birthdate_and_password_revokes_the_card(rig, caplog):
    caplog.set_level(logging.DEBUG)
    card = Card()
    res = rig.client.enroll("key-lost-0001", CLAIMS, card.point, b"\x01" * 8, revocation_password=PASSWORD)
    identity = res.citizen_did.rsplit(":", 1)[1]
    assert card.point in rig.chain.keys[identity]
    other = rig.client.enroll("key-lost-0002", {**CLAIMS, "given_name": "Jisoo"}, Card().point, b"\x02" * 8,
                              revocation_password=PASSWORD)  # fmt: skip
    # typed differently by the citizen: case and spaces do not matter
    msg = rig.client.report_lost("  KIM ", "minji", "1950-03-14", PASSWORD)
    assert "revoked" in msg
    assert rig.client.status(res.credential_id)["state"] == "revoked"
    assert card.point not in rig.chain.keys[identity] and card.point in rig.chain.revoked_keys[identity]
    assert rig.client.status(other.credential_id)["state"] == "issued"  # another citizen is untouched
    assert PASSWORD not in caplog.text and "Minji" not in caplog.text
    with rig.db.sessions() as s:
        (report,) = s.scalars(select(AuditEntry).where(AuditEntry.action == "lost_card.report"))
        assert (report.actor, report.clerk, report.citizen_did) == ("counter-1", "clerk-a", res.citizen_did)


def test_wrong_password_answers_as_an_unknown_citizen(rig):
    res = rig.client.enroll("key-lost-0001", CLAIMS, Card().point, b"\x01" * 8, revocation_password=PASSWORD)
    client = rig.transport.client

    def report(**kw):
        body = {"family_name": "Kim", "given_name": "Minji", "birthdate": "1950-03-14", "password": PASSWORD}
        r = client.post("/citizen/lost-card", json={**body, **kw}, environ_base={"REMOTE_ADDR": "10.0.0.9"})
        return r.status_code, r.get_data()

    wrong = report(password="not-the-password")
    unknown = report(family_name="Park", given_name="Sora")
    assert wrong == unknown and wrong[0] == 200
    assert rig.client.status(res.credential_id)["state"] == "issued"
    right = report()
    assert right == wrong  # the same answer again: nothing distinguishes a match
    assert rig.client.status(res.credential_id)["state"] == "revoked"
    # the citizen endpoint has its own rate limit
    codes = [report(password=f"guess-{i:04d}")[0] for i in range(5)]
    assert codes[-1] == 429 and set(codes) == {200, 429}


def test_database_holds_no_claim_in_clear(rig):
    rig.client.enroll("key-lost-0001", CLAIMS, Card().point, b"\x01" * 8, revocation_password=PASSWORD)
    rig.client.report_lost("Kim", "Minji", "1950-03-14", "wrong-password")
    dump = _dump(rig)
    with rig.db.sessions() as s:
        (lookup,) = s.scalars(select(RevocationLookup))
    assert lookup.lookup in dump and len(lookup.lookup) == 64  # the dump really holds the rows
    for value in ("Kim", "kim", "Minji", "minji", "1950-03-14", "19500314", "1950", PASSWORD, "Haeundae",
                  CLAIMS["card_number"]):  # fmt: skip
        assert value not in dump, value


def test_bad_password_refused_and_disabled_without_secret(rig, tmp_path):
    with pytest.raises(ServerError) as exc:
        rig.client.enroll("key-lost-0001", CLAIMS, Card().point, b"\x01" * 8, revocation_password="123")
    assert exc.value.status == 400
    plain = make_rig(f"sqlite:///{tmp_path}/plain.db")
    with pytest.raises(ServerError) as exc:
        plain.client.enroll("key-lost-0001", CLAIMS, Card().point, b"\x01" * 8, revocation_password=PASSWORD)
    assert exc.value.status == 400 and "CITY_REVOCATION_SECRET" in str(exc.value)


def test_secret_comes_from_the_environment(tmp_path):
    from server.config import ConfigError, load_config

    assert load_config(env={"CITY_REVOCATION_SECRET": SECRET}).revocation_secret == SECRET
    with pytest.raises(ConfigError):
        load_config(env={"CITY_REVOCATION_SECRET": "short"})
    (tmp_path / "c.toml").write_text('[server]\nrevocation_secret = "x"\n')
    with pytest.raises(ConfigError):
        load_config(tmp_path / "c.toml", env={})
