"""``cardtool emulate citizen`` helpers without daemons: argument parsing, default paths, the FIDO option."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pytest
from emulators.card.citizen_card import fido_state_for, load_fido_applet, make_citizen_card
from emulators.card.transport import InProcessConnection
from firmware_tools.cli import main
from firmware_tools.emulate_cli import _lock_state
from firmware_tools.options import default_state_path, parse_hostport

from cityid.errors import CityIdError


def test_parse_hostport() -> None:
    assert parse_hostport("127.0.0.1:35964") == ("127.0.0.1", 35964)
    assert parse_hostport("35963") == ("127.0.0.1", 35963)
    assert parse_hostport("[::1]:1") == ("::1", 1)
    for bad in ("host:port", "x:0", "x:70000"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_hostport(bad)


def test_default_state_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_state_path() == tmp_path / "cityid" / "citizen-card.json"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert default_state_path() == Path.home() / ".local" / "state" / "cityid" / "citizen-card.json"
    assert fido_state_for(tmp_path / "card.json") == tmp_path / "card-fido.json"
    assert fido_state_for(None) is None


def test_with_fido_adds_the_ctap_applet(tmp_path: Path) -> None:
    card = make_citizen_card(tmp_path / "card.json", with_fido=True)
    conn = InProcessConnection(card)
    assert conn.send_and_receive(bytes.fromhex("00A4040008A0000006472F000100")) == (b"FIDO_2_0", 0x9000)
    assert [a.name for a in card.applets] == ["PIV", "citizen", "fido"]


def test_missing_fido_applet_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "emulators.fido.applet", None)
    with pytest.raises(CityIdError, match="FIDO applet is not available"):
        load_fido_applet(None)


def test_bad_state_file_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["emulate", "citizen", "--state", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "cannot read card state" in err and "Traceback" not in err


def test_emulate_without_card_kind_names_the_kinds(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["emulate"]) == 2
    err = capsys.readouterr().err  # one usage line (issue 16: every CLI error one line), naming the kinds
    assert err == "cardtool emulate: error: choose a command: citizen, fido (see cardtool emulate --help)\n"


def test_second_emulator_on_the_same_state_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "card.json"
    fd = _lock_state(state)
    try:
        assert main(["emulate", "citizen", "--state", str(state), "--vpcd", "127.0.0.1:1"]) == 1
        assert "in use by another running emulator" in capsys.readouterr().err
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("flag", "private"), [([], True), (["--private-info"], True), (["--legacy-info"], False)]
)
def test_private_info_option_reaches_the_card(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, flag: list[str], private: bool
) -> None:
    import emulators.card.citizen_card as citizen_card

    seen: dict[str, object] = {}

    def fake(state, **kwargs):
        seen.update(kwargs)
        raise CityIdError("stop here")

    monkeypatch.setattr(citizen_card, "make_citizen_card", fake)
    assert main(["emulate", "citizen", "--state", str(tmp_path / "c.json"), *flag]) == 1
    assert seen["private_info"] is private


@pytest.mark.parametrize(("flag", "contactless"), [([], False), (["--contactless"], True)])
def test_contactless_option_reaches_the_card(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, flag: list[str], contactless: bool
) -> None:
    """``--contactless``: SP 800-73-4's contactless PIV access rules (docs/card-profile.md)."""
    import emulators.card.citizen_card as citizen_card
    from emulators.card.os import Interface

    seen: dict[str, object] = {}

    def fake(state, **kwargs):
        seen.update(kwargs)
        raise CityIdError("stop here")

    monkeypatch.setattr(citizen_card, "make_citizen_card", fake)
    assert main(["emulate", "citizen", "--state", str(tmp_path / "c.json"), *flag]) == 1
    assert seen["interface"] is (Interface.CONTACTLESS if contactless else Interface.CONTACT)
