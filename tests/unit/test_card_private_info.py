"""Nothing linkable before the PIN (docs/card-profile.md, GET INFO / GET IDENTITY; issue 12 item 1).

In the private profile GET INFO carries only what a kiosk needs (version, vct, PIN tries, holder-key slot,
credential state) — two cards of one issuance in the same state answer byte for byte the same; serial, DID
and claim names come from GET IDENTITY after VERIFY (or the management key). Emulator at the APDU level, then
the terminal's CitizenSession and personalization on the same cards.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from emulators.card.citizen_card import make_citizen_card

from cityid.citizen import CredentialState, InfoTag, Ins
from cityid.tlv import Tlv, parse_tlv_dict
from terminal.flows.personalize import personalize
from terminal.sessions.citizen import CitizenSession, IdentityNotRevealedError
from tests.card_terminal_support import NEW_PIN, NEW_PUK, PIN, PUK, VCT
from tests.card_terminal_support import make_record as make_terminal_record
from tests.emukit import Card
from tests.unit.test_card_emulator_citizen import CLAIMS, DID, make_record

OTHER_DID = "did:ethr:0x7a69:0x4444444444444444444444444444444444444444"
LINKING_TAGS = (InfoTag.SERIAL, InfoTag.DID, InfoTag.CLAIMS)


class PrivateCard(Card):
    """tests.emukit.Card on a card in the private GET INFO profile."""

    def __init__(self, state: Path | None = None) -> None:
        super().__init__(state)
        from emulators.card.transport import InProcessConnection

        from cityid.apdu import SmartCardProtocol

        self.card = make_citizen_card(state, private_info=True)
        self.conn = InProcessConnection(self.card)
        self.p = SmartCardProtocol(self.conn)


def _personalize(card: Card, did: str) -> None:
    card.select_piv()
    assert card.authenticate() == 0x9000
    point = parse_tlv_dict(Tlv.unpack(0x7F49, card.generate()[0]))[0x86]
    card.select_citizen()
    assert card.authenticate() == 0x9000
    assert card.sw(0x80, Ins.PUT_DID, 0, 0, did.encode())[1] == 0x9000
    assert card.sw(0x80, Ins.PUT_CREDENTIAL, 0, 0, make_record(point).encode())[1] == 0x9000
    assert card.sw(0x80, Ins.ACTIVATE, 0, 0)[1] == 0x9000  # the last step (docs/card-profile.md)


def _fresh_session_info(card: Card) -> bytes:
    """What a kiosk sees on insertion: power-up, SELECT, GET INFO (nothing verified)."""
    card.conn.reset()
    select = card.select_citizen()
    return select + b"|" + card.p.send_apdu(0x80, Ins.GET_INFO, 0, 0)


def test_get_info_before_the_pin_tells_two_cards_apart_by_nothing(tmp_path: Path) -> None:
    a, b = PrivateCard(tmp_path / "a.json"), PrivateCard(tmp_path / "b.json")
    assert a.card.applets[0].security.serial != b.card.applets[0].security.serial
    blank = _fresh_session_info(a)
    assert blank == _fresh_session_info(b)
    info = parse_tlv_dict(blank.split(b"|", 1)[1])
    assert info[InfoTag.CREDENTIAL_STATE] == bytes([CredentialState.NONE])
    _personalize(a, DID)
    _personalize(b, OTHER_DID)
    seen = _fresh_session_info(a)
    assert seen == _fresh_session_info(b)  # different citizens, serials, keys: the same bytes
    info = parse_tlv_dict(seen.split(b"|", 1)[1])
    assert not set(LINKING_TAGS) & set(info)
    for secret in (DID.encode(), a.card.applets[0].security.serial, b"family_name", "김".encode()):
        assert secret not in seen
    assert info[InfoTag.CREDENTIAL_VCT] == b"urn:busan:citizen:1"  # one value per issuance
    assert info[InfoTag.PIN_TRIES] == b"\x03" and info[InfoTag.HOLDER_KEY_SLOT] == b"\x9a"
    assert info[InfoTag.CREDENTIAL_STATE] == bytes([CredentialState.PRESENT | CredentialState.ACTIVATED])
    # what differs is what a kiosk must show: tries left
    a.select_citizen()
    assert a.verify(b"000000") == 0x63C2
    assert _fresh_session_info(a) != _fresh_session_info(b)


def test_get_identity_needs_the_pin_or_the_management_key(tmp_path: Path) -> None:
    card = PrivateCard(tmp_path / "card.json")
    _personalize(card, DID)
    serial = card.card.applets[0].security.serial
    card.conn.reset()
    card.select_citizen()
    assert card.sw(0x80, Ins.GET_IDENTITY, 0, 0) == (b"", 0x6982)
    assert card.verify(b"000000") == 0x63C2
    assert card.sw(0x80, Ins.GET_IDENTITY, 0, 0) == (b"", 0x6982)  # a wrong PIN reveals nothing
    assert card.verify() == 0x9000
    identity = parse_tlv_dict(card.p.send_apdu(0x80, Ins.GET_IDENTITY, 0, 0))
    assert identity[InfoTag.SERIAL] == serial and identity[InfoTag.DID] == DID.encode()
    assert identity[InfoTag.CLAIMS].decode().split("\x00") == list(CLAIMS)
    # GET IDENTITY does not use up the verification: PRESENT still works after it
    from cityid.citizen import PresentRequest

    req = PresentRequest(("district",), "n-0123456789", "https://kiosk.busan.go.kr/k1", 1_800_000_000)
    assert card.sw(0x80, Ins.PRESENT, 0, 0, req.encode())[1] == 0x9000
    assert card.sw(0x80, Ins.GET_IDENTITY, 0, 0)[1] == 0x6982  # PRESENT did (PIN always)
    card.select_piv()  # the verification belongs to the selection: PIV's does not count after a switch
    assert card.verify() == 0x9000
    card.select_citizen()
    assert card.sw(0x80, Ins.GET_IDENTITY, 0, 0)[1] == 0x6982
    assert card.authenticate() == 0x9000  # the counter/personalization path
    assert parse_tlv_dict(card.p.send_apdu(0x80, Ins.GET_IDENTITY, 0, 0))[InfoTag.SERIAL] == serial
    assert card.sw(0x80, Ins.GET_IDENTITY, 1, 0)[1] == 0x6A86
    assert card.sw(0x80, Ins.GET_IDENTITY, 0, 0, b"\x00")[1] == 0x6700


def test_the_legacy_answer_is_unchanged_and_gains_the_state(tmp_path: Path) -> None:
    card = Card(tmp_path / "card.json")  # private_info off: what today's terminal reads
    _personalize(card, DID)
    card.conn.reset()
    card.select_citizen()
    info = parse_tlv_dict(card.p.send_apdu(0x80, Ins.GET_INFO, 0, 0))
    assert info[InfoTag.SERIAL] == card.card.applets[0].security.serial and info[InfoTag.DID] == DID.encode()
    assert info[InfoTag.CREDENTIAL_STATE] == b"\x03"
    assert card.sw(0x80, Ins.GET_IDENTITY, 0, 0)[1] == 0x6982  # GET IDENTITY exists on both


# --- the terminal side: CitizenSession.identity(), CardInfo on a private card, personalization ----------


def test_session_reads_identity_after_the_pin_and_refuses_to_guess(tmp_path: Path) -> None:
    card = PrivateCard(tmp_path / "card.json")
    _personalize(card, DID)
    card.conn.reset()
    citizen = CitizenSession(card.conn)
    info = citizen.info()
    assert not info.reveals_identity and info.claims == ()
    assert info.vct == "urn:busan:citizen:1" and info.pin_tries == 3
    assert info.credential_state == CredentialState.PRESENT | CredentialState.ACTIVATED
    with pytest.raises(IdentityNotRevealedError):
        _ = info.serial  # never "" or a made-up value
    with pytest.raises(IdentityNotRevealedError):
        _ = info.did
    from cityid.errors import SecurityStatusError

    with pytest.raises(SecurityStatusError):
        citizen.identity()
    citizen.verify_pin("123456")
    identity = citizen.identity()
    assert identity.serial == card.card.applets[0].security.serial.hex()
    assert identity.did == DID and set(identity.claims) == set(CLAIMS)
    assert citizen.serial() == identity.serial


def test_session_on_a_legacy_card(tmp_path: Path) -> None:
    card = Card(tmp_path / "card.json")
    citizen = CitizenSession(card.conn)
    info = citizen.info()
    assert info.reveals_identity and info.did is None and info.credential_state == CredentialState.NONE
    assert citizen.serial() == info.serial == card.card.applets[0].security.serial.hex()


@pytest.mark.parametrize("private", [False, True])
def test_personalization_works_on_both_profiles(tmp_path: Path, private: bool) -> None:
    from emulators.card.transport import InProcessConnection

    conn = InProcessConnection(make_citizen_card(tmp_path / "card.json", private_info=private))
    result = personalize(conn, pin=PIN, new_pin=NEW_PIN, puk=PUK, new_puk=NEW_PUK)
    serial = conn.card.applets[0].security.serial.hex()
    assert result.serial == serial and result.did is None

    point = result.key.point
    again = personalize(conn, pin=None, generate_key=False, did=DID, credential=make_terminal_record(point))
    assert (again.serial, again.did, again.credential_vct) == (serial, DID, VCT)
    assert CitizenSession(conn).info().reveals_identity is not private
