"""Enrollment that cannot be walked away from, and per-card management keys (issue 12 items 2 and 3).

The counter flow on an emulated card (ACTIVATE required, the default), the real server app with a software
management master key (tests only; SoftHSM2 in test_server_card_keys.py), torn at every single APDU — once
resumed by the same counter, once by a *restarted* counter (a new CounterEnrollment on the same journal
file, new clerk session). Shown for every tear: no card verifies at a kiosk before the card's last write
(ACTIVATE after the citizen's PIN and PUK); every card ends on its original DID with one live credential;
the published default management key opens nothing once the flow has set the card's own key.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from emulators.card.citizen_card import make_citizen_card
from emulators.card.transport import InProcessConnection
from sqlalchemy import select

from cityid.citizen import Ins
from cityid.errors import CityIdError, SecurityStatusError
from cityid.piv import DEFAULT_MANAGEMENT_KEY, Algorithm, Slot, derive_management_key
from server.models import AuditEntry, Credential
from server.service import serial_hash
from terminal.flows.counter import CounterEnrollment, EnrollmentInterrupted, Step
from terminal.flows.counter_journal import JournalStore
from terminal.flows.kiosk import KioskVerification, service
from terminal.sessions.citizen import CitizenSession
from terminal.sessions.mgmt import ManagementKeyAlgorithmError, ManagementKeyError
from terminal.sessions.piv import PivSession
from terminal.verifier import NonceStore, Verifier
from tests.unit.server_support import TEST_MASTER_KEY, ServerRig, make_rig, memory_chain_view
from tests.unit.test_enrollment_counter import AUDIENCE, REQUEST, TearingConnection

INITIAL_PIN = "123456"


class CountingConnection(TearingConnection):
    """Also remembers the index of each APDU by INS (to find where ACTIVATE and SET MANAGEMENT KEY are)."""

    def __init__(self, inner: InProcessConnection, tear_at: int | None = None) -> None:
        super().__init__(inner, tear_at)
        self.sent: list[bytes] = []

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        self.sent.append(apdu)
        return super().send_and_receive(apdu)


def _kiosk_accepts(rig: ServerRig, conn: InProcessConnection) -> bool:
    """Whether a kiosk verifies the card with the PIN it has (the citizen's, else the initial one)."""
    for pin in (REQUEST.new_pin, INITIAL_PIN):
        kiosk = KioskVerification(
            Verifier(memory_chain_view(rig.chain), "https://kiosk.busan.go.kr/k1", NonceStore()),
            service("benefit-check"),
        )
        try:
            if kiosk.run_card(CitizenSession(conn), pin).ok:
                return True
        except CityIdError:
            pass
        finally:
            kiosk.end()
            conn.reset()
    return False


def _card_rows(rig: ServerRig, serial: bytes) -> list[Credential]:
    with rig.db.sessions() as s:  # type: ignore[attr-defined]
        return list(s.scalars(select(Credential).where(Credential.card_serial_hash == serial_hash(serial))))


def _counter(rig: ServerRig, journal: JournalStore) -> CounterEnrollment:
    view = memory_chain_view(rig.chain)
    return CounterEnrollment(rig.client, Verifier(view, AUDIENCE, NonceStore()), journal=journal)  # type: ignore[arg-type]


def _assert_default_key_opens_nothing(conn: InProcessConnection, serial: bytes) -> None:
    """docs/card-profile.md "Per-card management key": the default key is refused in both applets, and
    ERASE, PUT DID and GENERATE fail without the card's key; the card's own key still works."""
    conn.reset()
    for make in (PivSession, CitizenSession):
        session = make(conn)
        auth = (
            session.authenticate_management_key if isinstance(session, PivSession) else session.authenticate
        )
        with pytest.raises(ManagementKeyAlgorithmError):
            auth(DEFAULT_MANAGEMENT_KEY, Algorithm.TDEA_3KEY)
        with pytest.raises(ManagementKeyError):
            auth(derive_management_key(bytes(32), serial), Algorithm.AES_128)  # another city's key
    citizen = CitizenSession(conn)
    assert citizen.protocol.send_apdu_sw(0x80, Ins.ERASE, 0, 0)[1] == 0x6982
    other_did = b"did:ethr:0x7a69:0x" + b"4" * 40
    assert citizen.protocol.send_apdu_sw(0x80, Ins.PUT_DID, 0, 0, other_did)[1] == 0x6982
    with pytest.raises(SecurityStatusError):
        PivSession(conn).generate_key(Slot.AUTHENTICATION)
    own = derive_management_key(TEST_MASTER_KEY, serial)
    PivSession(conn).authenticate_management_key(own, Algorithm.AES_128)


def _serial(conn: InProcessConnection, private: bool) -> bytes:
    """The card's serial as a test reads it (GET IDENTITY behind the card's key on a private card)."""
    citizen = CitizenSession(conn)
    if not private:
        return bytes.fromhex(citizen.info().serial)
    try:
        citizen.authenticate()
    except ManagementKeyAlgorithmError:
        serial = conn.card.applets[0].security.serial  # type: ignore[attr-defined]  # the emulator's record
        citizen.authenticate(derive_management_key(TEST_MASTER_KEY, serial), Algorithm.AES_128)
    return bytes.fromhex(citizen.identity().serial)


def _flow(tmp_path: Path, private: bool = False) -> CountingConnection:
    rig = make_rig(f"sqlite:///{tmp_path}/count.db")
    conn = CountingConnection(InProcessConnection(make_citizen_card(None, private_info=private)))
    _counter(rig, JournalStore()).run(conn, REQUEST)
    return conn


def test_counter_enrollment_sets_the_cards_own_key(tmp_path: Path) -> None:
    rig = make_rig(f"sqlite:///{tmp_path}/s.db")
    inner = InProcessConnection(make_citizen_card(None))
    conn = CountingConnection(inner)
    out = _counter(rig, JournalStore()).run(conn, REQUEST)
    serial = bytes.fromhex(out.card_serial)
    set_key = [a for a in conn.sent if a[1] == 0xFF]
    assert len(set_key) == 1
    data = set_key[0][set_key[0].index(bytes([0x08, 0x9B, 16])) :]  # after the (extended) Lc
    assert data[3:19] == derive_management_key(TEST_MASTER_KEY, serial)
    # the card's key went to the card once, before anything else was written; the server audited it
    assert conn.sent.index(set_key[0]) < min(i for i, a in enumerate(conn.sent) if a[1] == 0x47)
    with rig.db.sessions() as s:  # type: ignore[attr-defined]
        actions = [e.action for e in s.scalars(select(AuditEntry)) if e.action.startswith("cardkey")]
    assert actions.count("cardkey.set") == 1 and actions.count("cardkey.authenticate") >= 2
    _assert_default_key_opens_nothing(inner, serial)
    # the server hands out the key of an enrolled card no more (a counter; a supervisor could)
    from terminal.server_client import ServerError

    with pytest.raises(ServerError) as exc:
        rig.client.card_key_set_data(serial)  # type: ignore[attr-defined]
    assert exc.value.status == 409


@pytest.mark.parametrize("private", [False, True], ids=["legacy-info", "private-info"])
@pytest.mark.parametrize("restart", [False, True], ids=["same-counter", "counter-restarted"])
def test_tear_at_every_apdu(tmp_path: Path, restart: bool, private: bool) -> None:
    """``private``: GET INFO without the serial — the counter finds it behind the default key (a fresh
    card) or behind the own key of the card its journal has an unfinished enrollment for."""
    reference = _flow(tmp_path, private)
    total = len(reference.sent)
    activate_at = 1 + next(i for i, a in enumerate(reference.sent) if a[:2] == bytes([0x80, Ins.ACTIVATE]))
    assert 20 < total < 80 and activate_at < total
    for tear_at in range(1, total + 1):
        rig = make_rig(f"sqlite:///{tmp_path}/t{tear_at}-{restart}.db")
        journal_file = tmp_path / f"journal-{tear_at}-{restart}.sqlite"
        inner = InProcessConnection(make_citizen_card(None, private_info=private))
        conn = TearingConnection(inner, tear_at)
        counter = _counter(rig, JournalStore(journal_file))
        with pytest.raises(EnrollmentInterrupted):
            counter.run(conn, REQUEST)
        inner.insert()
        rows = _card_rows(rig, _serial(inner, private))
        dids_before = {r.citizen_did for r in rows}
        # a kiosk accepts the card only once its last write (ACTIVATE, after the PINs) went through
        assert _kiosk_accepts(rig, inner) is (tear_at >= activate_at), f"tear at APDU {tear_at}"
        if restart:  # the counter app restarts: everything in memory is gone, the journal file stays
            counter = _counter(rig, JournalStore(journal_file))
        conn.tear_at = None
        out = counter.run(conn, REQUEST)
        serial = bytes.fromhex(out.card_serial)
        rows = _card_rows(rig, serial)
        assert {r.citizen_did for r in rows} == {out.citizen_did}, f"tear at APDU {tear_at}: new DID"
        assert dids_before <= {out.citizen_did}
        assert [r.id for r in rows if r.state == "issued"] == [out.credential_id]
        assert _serial(inner, private) == serial
        citizen = CitizenSession(inner)
        citizen.authenticate(derive_management_key(TEST_MASTER_KEY, serial), Algorithm.AES_128)
        assert citizen.identity().did == out.citizen_did
        assert _kiosk_accepts(rig, inner)
        if tear_at % 7 == 0 or tear_at == total:  # (all of it is slow; every 7th tear and the last)
            _assert_default_key_opens_nothing(inner, serial)
        else:
            with pytest.raises(ManagementKeyAlgorithmError):
                PivSession(inner).authenticate_management_key()
        assert JournalStore(journal_file).serials() == []  # finished: nothing left to resume


def test_restarted_counter_abandons_through_the_journal(tmp_path: Path) -> None:
    """After a restart the clerk can still give up the enrollment: the credential the first run got is
    revoked and the card erased with its own key (answered by the server)."""
    rig = make_rig(f"sqlite:///{tmp_path}/s.db")
    journal_file = tmp_path / "journal.sqlite"
    conn = InProcessConnection(make_citizen_card(None, private_info=False))
    first = _counter(rig, JournalStore(journal_file))
    first.before_step = _pull_at(conn, Step.PIN)
    with pytest.raises(EnrollmentInterrupted):
        first.run(conn, REQUEST)
    conn.insert()
    second = _counter(rig, JournalStore(journal_file))
    revoked = second.abandon_card(conn)
    assert len(revoked) == 1 and rig.client.status(revoked[0])["state"] == "revoked"  # type: ignore[attr-defined]
    assert CitizenSession(conn).info().did is None
    assert JournalStore(journal_file).serials() == []


def test_journal_file_keeps_no_claims_or_pins(tmp_path: Path) -> None:
    import sqlite3

    rig = make_rig(f"sqlite:///{tmp_path}/s.db")
    journal_file = tmp_path / "journal.sqlite"
    conn = InProcessConnection(make_citizen_card(None, private_info=False))
    counter = _counter(rig, JournalStore(journal_file))
    counter.before_step = _pull_at(conn, Step.CHECK)
    with pytest.raises(EnrollmentInterrupted):
        counter.run(conn, REQUEST)
    rows = sqlite3.connect(journal_file).execute("SELECT progress FROM enrollment_journal").fetchall()
    assert len(rows) == 1
    text = rows[0][0]
    for secret in (REQUEST.family_name, REQUEST.given_name, REQUEST.birthdate, REQUEST.district,
                   REQUEST.new_pin, REQUEST.new_puk, "~"):  # fmt: skip
        assert secret not in text
    conn.insert()
    serial = bytes.fromhex(CitizenSession(conn).info().serial)
    assert derive_management_key(TEST_MASTER_KEY, serial).hex() not in text
    assert '"pin_set":true' in text and '"enrollment_key":"enr-' in text


def _pull_at(conn: InProcessConnection, step: Step) -> Callable[[Step], None]:
    def hook(s: Step) -> None:
        if s is step and not conn.removed:
            conn.remove()

    return hook


def test_journal_store_and_unusable_entries(tmp_path: Path) -> None:
    """Rows survive a reopen, newest first; an unreadable row or entry starts that card over (logged),
    never a traceback at the counter."""
    import sqlite3
    import time

    from terminal.flows.counter import _Journal

    path = tmp_path / "j.sqlite"
    store = JournalStore(path)
    a, b = bytes(8), bytes.fromhex("0102030405060708")
    store.put(a, {"pin_set": True})
    time.sleep(0.01)
    store.put(b, {"pin_set": False})
    store.close()
    store = JournalStore(path)
    assert store.serials() == [b, a] and store.get(a) == {"pin_set": True}
    store.delete(b)
    assert store.serials() == [a] and store.get(b) is None
    sqlite3.connect(path).execute("UPDATE enrollment_journal SET progress = '{not json'").connection.commit()
    assert store.get(a) is None
    assert _Journal.from_record({"key": "zz", "pin_set": True}).next_step((Step.CARD_KEY, Step.KEY)) is (
        Step.CARD_KEY
    )
    restored = _Journal.from_record({"card_key_set": True, "key": None, "certified": True, "pin_set": True})
    assert restored.card_key_set and not restored.certified and restored.enrollment_key is None
