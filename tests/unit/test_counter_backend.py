"""terminal.web.stack.CardCounterBackend with in-process emulated cards and keys on named readers and the real
server app: which reader is empty or holds the wrong kind of token (TokenMissingError), what a card already
holds (card_holder), enrolling over a citizen only on the confirmed card (issue 15 item 4)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from emulators.card.citizen_card import make_citizen_card
from emulators.card.transport import InProcessConnection
from emulators.fido.card import make_fido_card

from cityid.errors import NoCardError
from terminal.flows.counter import CardMismatchError
from terminal.web.backend import Enrollment, Replacement, TokenMissingError
from terminal.web.stack import PRIVATE_CARD, CardCounterBackend
from tests.unit.test_enrollment_counter import REQUEST, desk  # noqa: F401 (fixture)

CARD, KEY = "Counter card reader", "Counter key reader"
ENROLLMENT = Enrollment("Jung", "Haeun", "1950-03-01", "Saha-gu", True, "802468", "13572468")


class Readers:
    """Two named readers; ``put`` a virtual card or key on one, ``None`` empties it."""

    def __init__(self) -> None:
        self.tokens: dict[str, Any] = {CARD: None, KEY: None}

    def put(self, reader: str, card: Any) -> None:
        self.tokens[reader] = card

    def connect(self, reader: str) -> contextlib.AbstractContextManager[InProcessConnection]:
        card = self.tokens.get(reader)
        if card is None:
            raise NoCardError(f"no card in {reader!r}")
        return contextlib.nullcontext(InProcessConnection(card))


@pytest.fixture
def counter(desk: Any) -> Iterator[tuple[CardCounterBackend, Readers, Any]]:  # noqa: F811
    rig, _view, enrollment = desk
    readers = Readers()
    backend = CardCounterBackend(
        rig.client, enrollment.verifier, readers.connect, lambda: list(readers.tokens)
    )
    yield backend, readers, rig


def test_each_missing_token_names_its_reader(counter: Any) -> None:
    backend, readers, _rig = counter
    with pytest.raises(TokenMissingError) as err:
        backend.register_fido(CARD, KEY, "802468", "8642")
    assert (err.value.role, err.value.reader, err.value.wrong_kind) == ("card", CARD, False)
    readers.put(CARD, make_citizen_card(None))
    backend.enroll(CARD, ENROLLMENT)
    with pytest.raises(TokenMissingError) as err:
        backend.register_fido(CARD, KEY, "802468", "8642")
    assert (err.value.role, err.value.reader, err.value.wrong_kind) == ("key", KEY, False)
    readers.put(KEY, make_citizen_card(None))  # a card where the key should be
    with pytest.raises(TokenMissingError) as err:
        backend.register_fido(CARD, KEY, "802468", "8642")
    assert (err.value.role, err.value.wrong_kind) == ("key", True)
    readers.put(KEY, make_fido_card(None)[0])
    reg = backend.register_fido(CARD, KEY, "802468", "8642")
    assert reg.did.startswith("did:ethr:") and reg.citizen_credential_id


@pytest.mark.parametrize("private", [False, True], ids=["legacy-info", "private-info"])
def test_card_holder_and_enrolling_over_a_citizen(counter: Any, private: bool) -> None:
    """A legacy card is named by serial and DID; a private-profile card (the default) only by its state
    until the citizen's PUK resets it — the confirmation then refers to it as ``PRIVATE_CARD``."""
    backend, readers, rig = counter
    readers.put(CARD, make_citizen_card(None, private_info=private))
    assert backend.card_holder(CARD) is None  # blank: nothing to confirm
    first = backend.enroll(CARD, ENROLLMENT)
    holder = backend.card_holder(CARD)
    assert holder is not None and holder.finished
    if private:
        assert (holder.serial, holder.did, holder.card_number) == (PRIVATE_CARD, None, "-")
    else:
        assert holder.did == first.did and holder.card_number == f"BSN-{holder.serial.upper()}"
    with pytest.raises(CardMismatchError):  # confirmed for another card: nothing touched
        backend.enroll(CARD, ENROLLMENT, Replacement("00" * 8, ENROLLMENT.puk))
    assert backend.card_holder(CARD) == holder
    second = backend.enroll(CARD, ENROLLMENT, Replacement(holder.serial, ENROLLMENT.puk))
    assert second.self_check_ok and second.did != first.did
    assert rig.client.status(first.credential_id)["state"] == "superseded"
    with pytest.raises(TokenMissingError):
        backend.card_holder(KEY)
