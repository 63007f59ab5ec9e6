"""terminal.flows.counter_card with the in-process emulated card and the real server app (in-memory chain):
abandon only unfinished enrollments; replacing the citizen on a card after the clerk's confirmation (the
card's PUK resets it, the server supersedes the old credential); issue 15 item 4."""

from __future__ import annotations

import pytest
from emulators.card.citizen_card import make_citizen_card
from emulators.card.transport import InProcessConnection

from cityid.citizen import CredentialState
from cityid.errors import CardRemovedError, WrongPinError
from terminal.flows.counter import CitizenRequest, EnrollmentInterrupted, Step
from terminal.flows.counter_card import (
    EnrollmentFinishedError,
    NothingToAbandonError,
    abandon_unfinished,
    enrollment_started_here,
    inspect_card,
    reset_for_replacement,
)
from terminal.sessions.citizen import CitizenSession
from terminal.sessions.piv import PivSession
from tests.unit.test_enrollment_counter import REQUEST, desk  # noqa: F401 (fixture)

OTHER = CitizenRequest(
    family_name="Jung", given_name="Haeun", birthdate="1950-03-01", district="Saha-gu",
    busan_resident=True, new_pin="802468", new_puk="13572468",
)  # fmt: skip


def test_a_blank_card_has_nothing_to_abandon(desk):  # noqa: F811
    _rig, _view, counter = desk
    conn = InProcessConnection(make_citizen_card(None))
    holding = inspect_card(conn, counter)
    assert not holding.written and not holding.finished
    with pytest.raises(NothingToAbandonError):
        abandon_unfinished(counter, conn)


def test_a_finished_card_is_never_erased_by_abandon(desk):  # noqa: F811
    rig, _view, counter = desk
    conn = InProcessConnection(make_citizen_card(None, private_info=False))
    out = counter.run(conn, REQUEST)
    holding = inspect_card(conn, counter)
    assert holding.finished and holding.did == out.citizen_did
    assert holding.card_number == f"BSN-{out.card_serial.upper()}"
    with pytest.raises(EnrollmentFinishedError) as err:
        abandon_unfinished(counter, conn)
    assert err.value.holding.did == out.citizen_did
    assert CitizenSession(conn).info().did == out.citizen_did  # still there
    assert rig.client.status(out.credential_id)["state"] == "issued"  # and still valid


def test_a_card_written_elsewhere_but_not_activated_is_unfinished(desk):  # noqa: F811
    _rig, _view, counter = desk
    conn = InProcessConnection(make_citizen_card(None, activation_required=True, private_info=False))
    counter.before_step = lambda s: (
        (_ for _ in ()).throw(CardRemovedError("pulled")) if s is Step.PIN else None
    )
    with pytest.raises(EnrollmentInterrupted):
        counter.run(conn, REQUEST)
    counter._journal.clear()  # another counter: no journal for the card
    counter._store.delete(bytes.fromhex(CitizenSession(conn).info().serial))
    holding = inspect_card(conn, counter)
    assert holding.state == CredentialState.PRESENT and holding.written and not holding.finished
    assert not enrollment_started_here(counter, holding)
    abandon_unfinished(
        counter, conn
    )  # (with this counter's journal: test_ui_counter.py, through the screens)
    assert CitizenSession(conn).info().did is None


def test_replacing_the_citizen_on_a_card(desk):  # noqa: F811
    rig, _view, counter = desk
    conn = InProcessConnection(make_citizen_card(None, private_info=False))
    first = counter.run(conn, REQUEST)
    with pytest.raises(WrongPinError) as wrong:
        reset_for_replacement(conn, "11112222", counter)
    assert wrong.value.what == "PUK"
    assert inspect_card(conn, counter).did == first.citizen_did  # nothing changed
    reset_for_replacement(conn, REQUEST.new_puk, counter)
    assert not inspect_card(conn, counter).written
    assert PivSession(conn).pin_attempts() == 3
    second = counter.run(conn, OTHER, expect_serial=bytes.fromhex(first.card_serial))
    assert second.verdict.ok and second.citizen_did != first.citizen_did
    assert rig.client.status(first.credential_id)["state"] == "superseded"
    assert rig.client.status(second.credential_id)["state"] == "issued"


def test_replacing_the_citizen_on_a_private_card_with_its_own_key(desk):  # noqa: F811
    """A private-profile card keyed by the city HSM: the counter cannot name it without PIN or PUK, but the
    citizen's PUK resets it and the card's own key (through the server) erases it."""
    rig, _view, counter = desk
    conn = InProcessConnection(make_citizen_card(None, private_info=True))
    first = counter.run(conn, REQUEST)
    counter._journal.clear()
    counter._store.delete(bytes.fromhex(first.card_serial))  # finished: nothing of it in the journal
    assert inspect_card(conn, counter).serial is None  # not named before the PUK
    with pytest.raises(EnrollmentFinishedError):
        abandon_unfinished(counter, conn)
    reset_for_replacement(conn, REQUEST.new_puk, counter)
    second = counter.run(conn, OTHER, expect_serial=bytes.fromhex(first.card_serial))
    assert second.verdict.ok and second.citizen_did != first.citizen_did
    assert rig.client.status(first.credential_id)["state"] == "superseded"


def test_a_finished_private_card_is_refused_by_abandon_without_being_named(desk):  # noqa: F811
    """The default (private GET INFO) card after its enrollment finished: the counter cannot name it
    without PIN or PUK, but its credential state says finished — abandon refuses and erases nothing."""
    rig, _view, counter = desk
    conn = InProcessConnection(make_citizen_card(None))
    out = counter.run(conn, REQUEST)
    holding = inspect_card(conn, counter)
    assert holding.serial is None and holding.did is None and holding.finished
    with pytest.raises(EnrollmentFinishedError):
        abandon_unfinished(counter, conn)
    citizen = CitizenSession(conn)
    citizen.verify_pin(REQUEST.new_pin)
    assert citizen.identity().did == out.citizen_did  # still there
    assert rig.client.status(out.credential_id)["state"] == "issued"
