"""Activated last (docs/card-profile.md, ACTIVATE; issue 12 item 3): on a card with ``activation_required``
(the emulator's default),
PUT CREDENTIAL stores the credential inactive (GET INFO ``C7`` = ``01``), PRESENT refuses it with ``6985``
until ACTIVATE (admin) flips the state to ``03``; a new PUT CREDENTIAL makes it inactive again."""

from __future__ import annotations

from pathlib import Path

from emulators.card.citizen_card import make_citizen_card

from cityid.citizen import CredentialState, InfoTag, Ins
from cityid.tlv import parse_tlv_dict
from tests.emukit import Card
from tests.unit.test_card_emulator_citizen import _present, personalize


class ActivationCard(Card):
    """tests.emukit.Card on a card that needs ACTIVATE."""

    def __init__(self, state: Path | None = None) -> None:
        super().__init__(state)
        from emulators.card.transport import InProcessConnection

        from cityid.apdu import SmartCardProtocol

        self.card = make_citizen_card(state, activation_required=True)
        self.conn = InProcessConnection(self.card)
        self.p = SmartCardProtocol(self.conn)


def _state(card: Card) -> int:
    return parse_tlv_dict(card.p.send_apdu(0x80, Ins.GET_INFO, 0, 0))[InfoTag.CREDENTIAL_STATE][0]


def test_credential_is_unusable_until_activated(tmp_path: Path) -> None:
    card = ActivationCard(tmp_path / "card.json")
    personalize(card, activate=False)  # PUT DID + PUT CREDENTIAL, no ACTIVATE
    assert _state(card) == CredentialState.PRESENT
    assert card.verify() == 0x9000
    assert _present(card, ("age_over_65",))[1] == 0x6985
    # ACTIVATE needs the management key
    card.conn.reset()
    card.select_citizen()
    assert card.sw(0x80, Ins.ACTIVATE, 0, 0)[1] == 0x6982
    assert card.authenticate() == 0x9000
    assert card.sw(0x80, Ins.ACTIVATE, 1, 0)[1] == 0x6A86
    assert card.sw(0x80, Ins.ACTIVATE, 0, 0)[1] == 0x9000
    assert _state(card) == CredentialState.PRESENT | CredentialState.ACTIVATED
    assert card.verify() == 0x9000
    assert _present(card, ("age_over_65",))[1] == 0x9000


def test_activation_survives_power_loss_and_rewrite_deactivates(tmp_path: Path) -> None:
    state = tmp_path / "card.json"
    card = ActivationCard(state)
    personalize(card, activate=False)
    card.select_citizen()
    assert card.authenticate() == 0x9000
    assert card.sw(0x80, Ins.ACTIVATE, 0, 0)[1] == 0x9000
    again = ActivationCard(state)  # same persistent state, new power-up
    again.select_citizen()
    assert _state(again) == CredentialState.PRESENT | CredentialState.ACTIVATED
    personalize(again, activate=False)  # a rewrite starts inactive again
    assert _state(again) == CredentialState.PRESENT


def test_activate_without_credential_is_refused(tmp_path: Path) -> None:
    card = ActivationCard(tmp_path / "card.json")
    card.select_citizen()
    assert card.authenticate() == 0x9000
    assert card.sw(0x80, Ins.ACTIVATE, 0, 0)[1] == 0x6985


def test_legacy_cards_need_no_activation(tmp_path: Path) -> None:
    from emulators.card.transport import InProcessConnection

    from cityid.apdu import SmartCardProtocol

    card = Card(tmp_path / "card.json")
    card.card = make_citizen_card(tmp_path / "legacy.json", activation_required=False)
    card.conn = InProcessConnection(card.card)
    card.p = SmartCardProtocol(card.conn)
    personalize(card, activate=False)
    assert _state(card) == CredentialState.PRESENT | CredentialState.ACTIVATED


def test_terminal_personalization_activates_last(tmp_path: Path) -> None:
    from emulators.card.transport import InProcessConnection

    from terminal.flows.personalize import personalize as personalize_card
    from terminal.sessions.citizen import CitizenSession
    from tests.card_terminal_support import NEW_PIN, NEW_PUK, PIN, PUK
    from tests.card_terminal_support import make_record as make_terminal_record
    from tests.unit.test_card_emulator_citizen import DID

    conn = InProcessConnection(make_citizen_card(tmp_path / "card.json", activation_required=True))
    result = personalize_card(conn, pin=PIN, new_pin=NEW_PIN, puk=PUK, new_puk=NEW_PUK)
    assert CitizenSession(conn).info().credential_state == CredentialState.NONE
    personalize_card(
        conn, pin=None, generate_key=False, did=DID, credential=make_terminal_record(result.key.point)
    )
    assert CitizenSession(conn).info().credential_state == CredentialState.PRESENT | CredentialState.ACTIVATED


def test_kiosk_probe_says_card_not_finished(tmp_path: Path) -> None:
    from contextlib import nullcontext

    import pytest
    from emulators.card.transport import InProcessConnection

    from cityid.errors import CardNotFinishedError
    from terminal.flows.tokens import TokenKind, Tokens

    card = ActivationCard(tmp_path / "card.json")
    personalize(card, activate=False)
    conn = InProcessConnection(card.card)
    tokens = Tokens(lambda reader: nullcontext(conn))
    with pytest.raises(CardNotFinishedError, match="card not finished"):
        tokens.probe("reader 0")
    card.select_citizen()
    assert card.authenticate() == 0x9000
    assert card.sw(0x80, Ins.ACTIVATE, 0, 0)[1] == 0x9000
    assert tokens.probe("reader 0").kind is TokenKind.CARD
