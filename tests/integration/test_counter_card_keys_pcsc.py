"""Per-card management keys end to end (issue 12 item 2): pcscd + vpcd, the city server over HTTP with its
management master key generated inside SoftHSM2 (nobody ever saw it), the counter flow and ``cardtool
--server``. After a counter enrollment the published default key is refused; ERASE, PUT DID and GENERATE
fail without the card's key; the card's key works only through the server's HSM."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from emulators.card.citizen_card import make_citizen_card
from firmware_tools.cli import main
from werkzeug.serving import make_server

from cityid.citizen import Ins
from cityid.errors import SecurityStatusError
from cityid.piv import Algorithm, Slot
from server.config import ManagementKeyConfig
from server.management_keys import Pkcs11CardKeys
from terminal.flows.counter import CounterEnrollment, EnrollmentInterrupted
from terminal.flows.counter_journal import JournalStore
from terminal.pcsc.connection import PcscConnection
from terminal.server_client import ServerCardKey, ServerClient
from terminal.sessions.citizen import CitizenSession
from terminal.sessions.mgmt import ManagementKeyAlgorithmError, ManagementKeyError
from terminal.sessions.piv import PivSession
from terminal.verifier import NonceStore, Verifier
from tests.card_terminal_support import DID
from tests.softhsm import SOFTHSM_MODULE, USER_PIN, softhsm_tokens
from tests.unit.server_support import make_rig, memory_chain_view
from tests.unit.test_enrollment_counter import AUDIENCE, REQUEST

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, ServerClient, Path]]:
    """The city server on a local port, master key generated in SoftHSM2; a client as counter-1."""
    base = tmp_path_factory.mktemp("city")
    with softhsm_tokens(base / "hsm", ("city-hsm",)):
        Pkcs11CardKeys.generate(SOFTHSM_MODULE, "city-hsm", "city-9b-master", USER_PIN)
        cfg = ManagementKeyConfig("pkcs11", SOFTHSM_MODULE, "city-hsm", "city-9b-master", pkcs11_pin=USER_PIN)
        rig = make_rig(f"sqlite:///{base}/server.db", management_key=cfg)
        http = make_server("127.0.0.1", 0, rig.app, threaded=True)  # type: ignore[arg-type]
        thread = threading.Thread(target=http.serve_forever, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{http.server_port}"
        key_file = base / "counter-1.pem"
        key_file.write_bytes(
            rig.terminal_key.private_bytes(  # type: ignore[attr-defined]
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        client = ServerClient(url, "counter-1", rig.terminal_key, clerk="clerk-a")  # type: ignore[arg-type]
        try:
            yield rig, client, key_file
        finally:
            http.shutdown()
            thread.join(5)
            rig.app.extensions["cityid.card_keys"].keys.close()  # type: ignore[attr-defined]


def _opens_nothing_without_the_cards_key(reader: str, client: ServerClient, serial: bytes) -> None:
    with PcscConnection(reader) as conn:
        for session in (PivSession(conn), CitizenSession(conn)):
            auth = (
                session.authenticate_management_key
                if isinstance(session, PivSession)
                else session.authenticate
            )
            with pytest.raises(ManagementKeyAlgorithmError):
                auth()  # the published default (3DES): 6A86, the card's key is AES now
            with pytest.raises(ManagementKeyError):
                auth(bytes(16), Algorithm.AES_128)  # a guessed AES key: 6982
        citizen = CitizenSession(conn)
        assert citizen.protocol.send_apdu_sw(0x80, Ins.ERASE, 0, 0)[1] == 0x6982
        assert citizen.protocol.send_apdu_sw(0x80, Ins.PUT_DID, 0, 0, DID.encode())[1] == 0x6982
        with pytest.raises(SecurityStatusError):
            PivSession(conn).generate_key(Slot.AUTHENTICATION)
        # the card's key, answered by the HSM through the server: re-personalization works
        citizen = CitizenSession(conn)
        citizen.authenticate(ServerCardKey(client, serial))
        assert citizen.identity().serial == serial.hex()


@pytest.mark.parametrize("private", [False, True], ids=["legacy-info", "private-info"])
def test_counter_enrollment_through_pcscd_leaves_no_default_key(
    vpcd_card_factory, tmp_path: Path, city, private: bool
) -> None:
    rig, client, _key = city
    state = tmp_path / "card.json"
    handle = vpcd_card_factory(lambda: make_citizen_card(state, private_info=private), state)
    counter = CounterEnrollment(
        client, Verifier(memory_chain_view(rig.chain), AUDIENCE, NonceStore()),  # type: ignore[attr-defined]
        journal=JournalStore(tmp_path / "journal.sqlite"),
    )  # fmt: skip
    with PcscConnection(handle.reader_name) as conn:
        out = counter.run(conn, REQUEST)
    assert out.verdict.ok
    _opens_nothing_without_the_cards_key(handle.reader_name, client, bytes.fromhex(out.card_serial))


def test_cardtool_server_sets_and_uses_the_cards_key(
    virtual_card, city, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _rig, client, key_file = city
    reader = virtual_card.reader_name
    server = ["--server", client.base_url, "--terminal", "counter-1", "--terminal-key", str(key_file)]
    assert main(["management-key", "set", "--reader", reader, *server]) == 1  # no clerk named
    assert "--clerk" in capsys.readouterr().err
    server += ["--clerk", "clerk-a"]
    assert main(["management-key", "set", "--reader", reader, *server]) == 0
    out = capsys.readouterr()
    serial = virtual_card.card.applets[0].security.serial
    assert f"card {serial.hex()}: management key set (AES_128, from the city HSM)" in out.out
    card_key_hex = bytes(virtual_card.card.applets[0].security._state["mgmt_key"], "ascii")
    assert card_key_hex.decode() not in out.out + out.err  # relayed, never printed
    assert main(["management-key", "set", "--reader", reader, *server]) == 1  # the default is refused now
    capsys.readouterr()
    monkeypatch.setenv("CARDTOOL_PIN", "123456")
    assert main(["personalize", "--reader", reader, "--keep-pin", "--did", DID, *server]) == 0
    assert f"DID: {DID}" in capsys.readouterr().out
    _opens_nothing_without_the_cards_key(reader, client, serial)


#: Commands torn through pcscd (the card did it, the answer never came back), then the counter restarts.
TEARS = {
    "set-management-key": 0xFF,
    "generate": 0x47,
    "put-credential": 0xD0,
    "change-pin": 0x24,
    "activate": 0xD4,
}


@pytest.mark.parametrize("what", list(TEARS))
def test_card_pulled_mid_command_then_counter_restart(
    vpcd_card_factory, tmp_path: Path, city, what: str
) -> None:
    """A tear through pcscd, then a *new* counter process state (same journal file, new clerk session):
    the card ends on the DID of the first attempt, with one live credential and no default key."""
    from emulators.card.transport import TearPoint
    from sqlalchemy import select

    from server.models import Credential
    from server.service import serial_hash

    rig, client, _key = city
    state = tmp_path / "card.json"
    handle = vpcd_card_factory(lambda: make_citizen_card(state, private_info=True), state)
    journal = tmp_path / "journal.sqlite"

    def counter() -> CounterEnrollment:
        view = memory_chain_view(rig.chain)  # type: ignore[attr-defined]
        return CounterEnrollment(
            client, Verifier(view, AUDIENCE, NonceStore()), journal=JournalStore(journal)
        )

    fired: list[bytes] = []

    def on_apdu(raw: bytes) -> TearPoint | None:
        if not fired and len(raw) > 1 and raw[1] == TEARS[what]:
            fired.append(raw[:4])
            return TearPoint.AFTER_PROCESSING
        return None

    handle.on_apdu = on_apdu
    with pytest.raises(EnrollmentInterrupted), PcscConnection(handle.reader_name) as conn:
        counter().run(conn, REQUEST)
    assert fired
    handle.on_apdu = None
    handle.wait_torn()
    handle.insert()
    with rig.db.sessions() as s:  # type: ignore[attr-defined]
        before = {r.citizen_did for r in s.scalars(select(Credential))}
    with PcscConnection(handle.reader_name) as conn:
        out = counter().run(conn, REQUEST)  # the restarted counter
    serial = bytes.fromhex(out.card_serial)
    with rig.db.sessions() as s:  # type: ignore[attr-defined]
        rows = list(s.scalars(select(Credential).where(Credential.card_serial_hash == serial_hash(serial))))
    assert {r.citizen_did for r in rows} == {out.citizen_did}
    assert [r.id for r in rows if r.state == "issued"] == [out.credential_id]
    assert out.citizen_did in before or what in ("set-management-key", "generate")
    assert JournalStore(journal).serials() == []
    _opens_nothing_without_the_cards_key(handle.reader_name, client, serial)
