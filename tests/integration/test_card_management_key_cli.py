"""``cardtool management-key set`` through the real pcscd + vpcd: a test card gets its per-card key (derived
from a city master key and its serial, or an explicit one); afterwards the default key opens nothing, and
``cardtool personalize`` works with the card's key (docs/card-profile.md, "Per-card management key")."""

from __future__ import annotations

import pytest
from emulators.card.citizen_card import make_citizen_card
from firmware_tools.cli import main

from cityid.errors import ApduError
from cityid.piv import Algorithm, Slot, derive_management_key
from terminal.pcsc.connection import PcscConnection
from terminal.sessions.citizen import CitizenSession
from terminal.sessions.piv import PivSession
from tests.card_terminal_support import DID

pytestmark = pytest.mark.integration

MASTER = "a5" * 32


@pytest.mark.parametrize("private", [False, True], ids=["legacy-info", "private-info"])
def test_derived_card_key_then_default_refused(
    vpcd_card_factory, tmp_path, monkeypatch, capsys, private
) -> None:
    state = tmp_path / "card.json"
    handle = vpcd_card_factory(lambda: make_citizen_card(state, private_info=private), state)
    reader = handle.reader_name
    monkeypatch.setenv("CARDTOOL_MANAGEMENT_MASTER_KEY", MASTER)
    assert main(["management-key", "set", "--reader", reader, "--derive"]) == 0
    out = capsys.readouterr()
    serial = handle.card.applets[0].security.serial
    assert f"card {serial.hex()}: management key set (AES_128, derived" in out.out
    assert MASTER not in out.out + out.err
    card_key = derive_management_key(bytes.fromhex(MASTER), serial)

    with PcscConnection(reader) as conn:
        with pytest.raises(ApduError):
            PivSession(conn).authenticate_management_key()  # the published default
        with pytest.raises(ApduError):
            CitizenSession(conn).authenticate()
        assert CitizenSession(conn).protocol.send_apdu_sw(0x80, 0xDE, 0, 0)[1] == 0x6982  # ERASE
        PivSession(conn).authenticate_management_key(card_key, Algorithm.AES_128)
    # setting it again needs the current (card) key; the default is refused
    monkeypatch.setenv("CARDTOOL_NEW_MANAGEMENT_KEY", "11" * 16)
    assert main(["management-key", "set", "--reader", reader]) == 1
    capsys.readouterr()
    # personalization with the card's key (16 bytes: AES-128 by length)
    monkeypatch.setenv("CARDTOOL_MANAGEMENT_KEY", card_key.hex())
    monkeypatch.setenv("CARDTOOL_PIN", "123456")
    assert main(["personalize", "--reader", reader, "--keep-pin", "--did", DID]) == 0
    assert f"DID: {DID}" in capsys.readouterr().out
    with PcscConnection(reader) as conn:
        assert PivSession(conn).has_object(0x5FC105)  # 9A certificate written with the card's key
        assert PivSession(conn).get_certificate(Slot.AUTHENTICATION) is not None


def test_explicit_test_card_key(virtual_card, monkeypatch, capsys) -> None:
    reader = virtual_card.reader_name
    monkeypatch.setenv("CARDTOOL_NEW_MANAGEMENT_KEY", "zz")
    assert main(["management-key", "set", "--reader", reader]) == 1
    assert "must be hex" in capsys.readouterr().err
    monkeypatch.setenv("CARDTOOL_NEW_MANAGEMENT_KEY", "0102030405060708" * 2)
    assert main(["management-key", "set", "--reader", reader]) == 1
    assert "published default key" in capsys.readouterr().err
    monkeypatch.setenv("CARDTOOL_NEW_MANAGEMENT_KEY", "00112233445566778899aabbccddeeff")
    assert main(["management-key", "set", "--reader", reader]) == 0
    assert "explicit key" in capsys.readouterr().out
    with PcscConnection(reader) as conn:
        piv = PivSession(conn)
        piv.authenticate_management_key(bytes.fromhex("00112233445566778899aabbccddeeff"), Algorithm.AES_128)
        piv.generate_key(Slot.AUTHENTICATION)
