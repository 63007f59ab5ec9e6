"""The FIDO applet on the emulator card OS, reached in process: NFCCTAP framing, chaining, 9100, cancel."""

from __future__ import annotations

import threading

import pytest
from emulators.card.transport import InProcessConnection
from emulators.fido.card import FIDO_ATR, make_fido_card
from emulators.fido.presence import UserPresence
from fido2.ctap import CtapError
from fido2.ctap2 import Ctap2
from hypothesis import given, settings
from hypothesis import strategies as st

from cityid.apdu import ApduFormat
from cityid.fido import FIDO_AID
from terminal.fido.device import CtapSmartCardDevice, NotFidoError
from tests.unit.fido_support import ES256, RP, cdh, user

ERR = CtapError.ERR


def apdu(conn: InProcessConnection, hexstr: str) -> tuple[bytes, int]:
    return conn.send_and_receive(bytes.fromhex(hexstr.replace(" ", "")))


@pytest.fixture
def card():
    card, applet = make_fido_card(None)
    return InProcessConnection(card), applet


def test_select_and_get_info_raw(card) -> None:
    conn, _ = card
    assert conn.atr == FIDO_ATR
    assert apdu(conn, "00A4040008" + FIDO_AID.hex()) == (b"FIDO_2_0", 0x9000)
    data, sw = apdu(conn, "80 10 80 00 01 04 00")
    assert sw == 0x9000 and data[0] == 0 and len(data) > 100  # GetInfo fits in one answer of Le=256
    # U2F / ISO instructions are not supported, nor other classes
    assert apdu(conn, "00 01 03 00 00")[1] == 0x6D00
    assert apdu(conn, "80 55 00 00")[1] == 0x6D00
    assert apdu(conn, "80 10 00 00")[1] == 0x6700  # no CTAP command byte
    assert apdu(conn, "80 10 01 02 01 04")[1] == 0x6A86
    # a broken chain: a different command in the middle is refused by the card OS
    assert apdu(conn, "90 10 80 00 02 01 A1")[1] == 0x9000
    assert apdu(conn, "80 11 00 00")[1] == 0x6883
    # GETRESPONSE with nothing pending
    assert apdu(conn, "80 11 00 00")[1] == 0x6985


@pytest.mark.parametrize("fmt", [ApduFormat.SHORT, ApduFormat.EXTENDED])
def test_python_fido2_over_short_chains_and_extended_apdus(card, fmt: ApduFormat) -> None:
    conn, _ = card
    ctap = Ctap2(CtapSmartCardDevice(conn, apdu_format=fmt))
    long_user = {"id": b"c" * 64, "name": "n" * 64, "displayName": "한국어 이름 " * 10}
    exclude = [{"type": "public-key", "id": bytes([i]) * 34} for i in range(8)]  # > 255 bytes: chained
    att = ctap.make_credential(cdh(), RP, long_user, ES256, exclude_list=exclude, options={"rk": True})
    h = cdh()
    a = ctap.get_assertion("busan.go.kr", h)
    a.verify(h, att.auth_data.credential_data.public_key)
    assert len(bytes(att.att_stmt["x5c"][0])) > 256  # the attestation answer needed 61xx + GET RESPONSE


def test_status_updates_while_waiting_for_touch_and_cancel(card) -> None:
    conn, applet = card
    applet.authenticator.up.delay = 0.35
    ctap = Ctap2(CtapSmartCardDevice(conn))
    seen = []
    ctap.make_credential(cdh(), RP, user(), ES256, on_keepalive=seen.append)
    assert seen and seen[-1] == 2  # UPNEEDED
    applet.authenticator.up.delay = 10
    event = threading.Event()
    threading.Timer(0.25, event.set).start()
    with pytest.raises(CtapError) as info:
        ctap.make_credential(cdh(), RP, user(2), ES256, event=event)
    assert info.value.code == ERR.KEEPALIVE_CANCEL


def test_raw_9100_polling_and_one_operation_at_a_time(card) -> None:
    conn, applet = card
    applet.authenticator.up.delay = 0.3
    apdu(conn, "00A4040008" + FIDO_AID.hex())
    data, sw = apdu(conn, "80 10 80 00 01 0B 00")  # authenticatorSelection: needs a touch
    assert (sw, data) == (0x9100, b"\x02")
    assert apdu(conn, "80 10 80 00 01 04 00")[1] == 0x6985  # busy
    while sw == 0x9100:
        data, sw = apdu(conn, "80 11 00 00 00")
    assert (data, sw) == (b"\x00", 0x9000)
    # CTAP_CONTROL_END aborts an operation in progress
    apdu(conn, "80 10 80 00 01 0B 00")
    assert apdu(conn, "80 12 01 00")[1] == 0x9000
    assert apdu(conn, "80 11 00 00")[1] == 0x6985


@pytest.mark.parametrize("cla", [0x00, 0x80])
def test_long_answers_fetched_with_get_response_cla_00_or_80(card, cla: int) -> None:
    """libfido2 >= 1.16 sends 80 C0 00 00 00 in CTAP2 mode; python-fido2 sends 00 C0: both fetch a
    registration answer longer than 256 bytes."""
    conn, _ = card

    class Rewriting:
        atr = conn.atr
        get_responses = 0

        def send_and_receive(self, raw: bytes) -> tuple[bytes, int]:
            if raw[1] == 0xC0 and raw[0] == 0x00:
                raw = bytes([cla]) + raw[1:]
                self.get_responses += 1
            return conn.send_and_receive(raw)

    rewriting = Rewriting()
    ctap = Ctap2(CtapSmartCardDevice(rewriting, apdu_format=ApduFormat.SHORT))
    att = ctap.make_credential(cdh(), RP, user(), ES256, options={"rk": True})
    assert len(bytes(att.auth_data)) + len(att.att_stmt["sig"]) + len(att.att_stmt["x5c"][0]) > 256
    assert rewriting.get_responses > 0
    h = cdh()
    ctap.get_assertion("busan.go.kr", h).verify(h, att.auth_data.credential_data.public_key)


def test_power_cycle_clears_pin_blocking(card) -> None:
    from fido2.ctap2.pin import ClientPin

    conn, _ = card
    ctap = Ctap2(CtapSmartCardDevice(conn))
    ClientPin(ctap).set_pin("2468")
    cp = ClientPin(Ctap2(CtapSmartCardDevice(conn)))
    for _ in range(3):
        with pytest.raises(CtapError):
            cp.get_pin_token("0000")
    assert cp.get_pin_retries() == (5, True)
    conn.remove()
    conn.insert()
    cp = ClientPin(Ctap2(CtapSmartCardDevice(conn)))
    assert cp.get_pin_retries() == (5, False)
    assert len(cp.get_pin_token("2468")) == 32


def test_a_card_without_fido_is_not_a_key() -> None:
    from emulators.card.os import VirtualCard

    conn = InProcessConnection(VirtualCard([], FIDO_ATR))
    with pytest.raises(NotFidoError):
        CtapSmartCardDevice(conn)


def test_state_file_survives_a_new_emulator_process(tmp_path) -> None:
    path = tmp_path / "key.json"
    card, _ = make_fido_card(path)
    ctap = Ctap2(CtapSmartCardDevice(InProcessConnection(card)))
    att = ctap.make_credential(cdh(), RP, user(), ES256, options={"rk": True})
    card2, _ = make_fido_card(path, UserPresence())
    ctap2 = Ctap2(CtapSmartCardDevice(InProcessConnection(card2)))
    h = cdh()
    a = ctap2.get_assertion("busan.go.kr", h)
    a.verify(h, att.auth_data.credential_data.public_key)
    assert ctap2.info.aaguid == ctap.info.aaguid


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=300),
            st.tuples(
                st.sampled_from([0x00, 0x80, 0x90, 0x10]),
                st.sampled_from([0x10, 0x11, 0x12, 0xA4, 0xC0, 0x01]),
                st.integers(0, 255),
                st.integers(0, 255),
                st.binary(max_size=260),
            ).map(lambda t: bytes(t[:4]) + (bytes([len(t[4]) % 256]) + t[4][:255] if t[4] else b"")),
        ),
        max_size=6,
    )
)
def test_random_apdus_never_break_the_key(apdus: list[bytes]) -> None:
    card, _ = make_fido_card(None)
    conn = InProcessConnection(card)
    apdu(conn, "00A4040008" + FIDO_AID.hex())
    for raw in apdus:
        _data, sw = conn.send_and_receive(raw)
        assert sw != 0x6F00  # no internal failure
        assert 0x6100 <= sw <= 0x9FFF
    ctap = Ctap2(CtapSmartCardDevice(conn))  # still a working key afterwards
    assert ctap.get_info().versions
