"""FIDO2 through the real pcscd + vpcd (and python-fido2's own clients), plus the in-process HID device.

python-fido2's Fido2Client registers and authenticates against the virtual authenticator; its Fido2Server
verifies the attestation against the key's test attestation root and the assertions against the credential
keys. PIN lockout with power cycles by re-inserting the card, a tear in the middle of a chained
MakeCredential, the combined citizen + FIDO card and discovery events.
"""

from __future__ import annotations

import json
import queue

import pytest
from emulators.card.store import CardStore
from emulators.card.transport import TearPoint
from emulators.fido.attestation import AttestationBatch, export_root
from emulators.fido.card import make_fido_card
from emulators.fido.hid import VirtualHidDevice
from fido2.client import DefaultClientDataCollector, Fido2Client, UserInteraction
from fido2.ctap2 import Ctap2
from fido2.hid import CtapHidDevice
from fido2.server import Fido2Server
from fido2.webauthn import AttestedCredentialData

from cityid.apdu import ApduFormat
from cityid.errors import CardError
from terminal.fido.device import CtapSmartCardDevice, pcsc_device
from terminal.fido.discovery import (
    FidoKeyInserted,
    FidoKeyRemoved,
    FidoKeyWatcher,
    classify_reader,
    discover_pcsc,
)
from terminal.fido.errors import (
    FidoInvalidPinError,
    FidoPinBlockedError,
    FidoPinPowerCycleError,
)
from terminal.fido.session import FidoSession, PinState
from terminal.pcsc.connection import PcscConnection
from terminal.verifier.fido import FidoVerifier, TrustedRootVerifier
from tests.unit.fido_support import ES256, RP, cdh, make_auth, user

pytestmark = pytest.mark.integration

ORIGIN = "https://busan.go.kr"


class Pin(UserInteraction):
    def __init__(self, pin: str | None) -> None:
        self.pin = pin

    def request_pin(self, permissions, rp_id):
        return self.pin


@pytest.fixture
def fido_key(vpcd_card_factory, tmp_path):
    state = tmp_path / "fido-key.json"
    handle = vpcd_card_factory(lambda: make_fido_card(state)[0], state)
    return handle, state


def _root(state) -> bytes:
    return export_root(CardStore(state)).encode()


def _client_round_trip(device, root: bytes, pin: str | None) -> None:
    """Fido2Client register + authenticate, verified with Fido2Server (WebAuthn §7.1, §7.2)."""
    server = Fido2Server(
        {"id": "busan.go.kr", "name": "Busan"},
        attestation="direct",
        verify_attestation=TrustedRootVerifier([root]),
    )
    client = Fido2Client(device, DefaultClientDataCollector(ORIGIN), user_interaction=Pin(pin))
    uv = "required" if pin else "discouraged"
    options, state = server.register_begin(
        {"id": b"citizen-42", "name": "kim", "displayName": "Kim"},
        resident_key_requirement="required",
        user_verification=uv,
    )
    result = client.make_credential(options["publicKey"])
    auth_data = server.register_complete(state, result)
    assert auth_data.is_user_verified() == bool(pin)
    creds = [auth_data.credential_data]
    counters = [auth_data.counter]
    for _ in range(2):
        options, state = server.authenticate_begin(creds, user_verification=uv)
        response = client.get_assertion(options["publicKey"]).get_response(0)
        server.authenticate_complete(state, creds, response)
        counters.append(response.response.authenticator_data.counter)
    assert counters == sorted(set(counters))
    # discoverable: no allow list
    options, state = server.authenticate_begin(user_verification=uv)
    response = client.get_assertion(options["publicKey"]).get_response(0)
    assert response.response.user_handle == b"citizen-42"
    server.authenticate_complete(state, creds, response)


def test_fido2_client_through_pcscd(fido_key) -> None:
    handle, state = fido_key
    device = pcsc_device(handle.reader_name)  # python-fido2's own CtapPcscDevice
    try:
        _client_round_trip(device, _root(state), None)
        from fido2.ctap2.pin import ClientPin

        ClientPin(Ctap2(device)).set_pin("24680")
        _client_round_trip(device, _root(state), "24680")
    finally:
        device.close()


def _cla80_device(connection, name: str):
    """python-fido2's PC/SC device sending GET RESPONSE as libfido2 >= 1.16 does in CTAP2 mode
    (``80 C0 00 00 xx``, Yubico/libfido2 PR #817) instead of its own ``00 C0``; counts them."""
    from fido2.pcsc import CtapPcscDevice

    class Cla80GetResponse(CtapPcscDevice):
        get_responses = 0
        longest = 0

        def apdu_exchange(self, apdu: bytes, protocol=None):
            if apdu[:4] == b"\x00\xc0\x00\x00":
                apdu = b"\x80" + apdu[1:]
                self.get_responses += 1
            return super().apdu_exchange(apdu, protocol)

        def call(self, cmd, data=b"", event=None, on_keepalive=None):
            out = super().call(cmd, data, event, on_keepalive)
            self.longest = max(self.longest, len(out))
            return out

    return Cla80GetResponse(connection, name)


def test_cla80_get_response_registration_through_pcscd(fido_key) -> None:
    """A registration answer longer than 256 bytes fetched with CLA 80 GET RESPONSE (FIELD-NOTES: libfido2
    1.16+ otherwise fails every registration with FIDO_ERR_RX_NOT_CBOR)."""
    from smartcard.System import readers

    handle, state = fido_key
    reader = next(r for r in readers() if handle.reader_name in str(r))
    device = _cla80_device(reader.createConnection(), str(reader))
    try:
        _client_round_trip(device, _root(state), None)
    finally:
        device.close()
    assert device.get_responses > 0 and device.longest > 256


def test_two_keys_of_one_batch_through_pcscd_and_always_uv(vpcd_card_factory, tmp_path) -> None:
    """Two keys of one attestation batch in the two vpcd readers: identical getInfo and x5c (issue 12). Once a
    PIN is set, python-fido2's client honours alwaysUv: a "discouraged" registration asks for the PIN and is
    UV'd; without a PIN to give it fails."""
    from fido2.client import ClientError
    from fido2.ctap2.pin import ClientPin

    batch = AttestationBatch.open(tmp_path / "batch")
    handles = [
        vpcd_card_factory(lambda n=n: make_fido_card(tmp_path / f"k{n}.json", attestation=batch)[0])
        for n in (1, 2)
    ]
    infos, x5cs = [], []
    for handle in handles:
        with PcscConnection(handle.reader_name) as conn:
            ctap = Ctap2(CtapSmartCardDevice(conn, handle.reader_name))
            infos.append(ctap.get_info())
            x5cs.append(ctap.make_credential(cdh(), RP, user(), ES256).att_stmt["x5c"])
            ClientPin(ctap).set_pin("24680")
    assert infos[0] == infos[1] and x5cs[0] == x5cs[1] == [batch.cert_der]
    server = Fido2Server(
        {"id": "busan.go.kr", "name": "Busan"},
        attestation="direct",
        verify_attestation=TrustedRootVerifier([batch.root_pem.encode()]),
    )
    device = pcsc_device(handles[0].reader_name)
    try:
        options, state = server.register_begin({"id": b"c-1", "name": "kim"}, user_verification="discouraged")
        no_pin = Fido2Client(device, DefaultClientDataCollector(ORIGIN), user_interaction=Pin(None))
        with pytest.raises(ClientError):
            no_pin.make_credential(options["publicKey"])
        client = Fido2Client(device, DefaultClientDataCollector(ORIGIN), user_interaction=Pin("24680"))
        options, state = server.register_begin({"id": b"c-1", "name": "kim"}, user_verification="discouraged")
        auth_data = server.register_complete(state, client.make_credential(options["publicKey"]))
        assert auth_data.is_user_verified()
    finally:
        device.close()


def test_fido2_client_through_the_hid_device() -> None:
    auth = make_auth()
    device = VirtualHidDevice(auth)
    hid = CtapHidDevice(device.descriptor, device.open())
    _client_round_trip(hid, export_root(auth.store).encode(), None)


@pytest.mark.parametrize("fmt", [ApduFormat.SHORT, ApduFormat.EXTENDED])
def test_terminal_flows_through_pcscd(fido_key, fmt) -> None:
    handle, state = fido_key
    with PcscConnection(handle.reader_name) as conn:
        session = FidoSession(CtapSmartCardDevice(conn, handle.reader_name, fmt))
        verifier = FidoVerifier("busan.go.kr", trusted_roots=[_root(state)])
        reg = verifier.register(session, b"citizen-7", "park", large_blob=True)
        result = verifier.authenticate(session, [reg.credential], last_sign_count=reg.sign_count)
        assert result.credential_id == reg.credential_id
        session.write_blob(reg.large_blob_key, b"x" * 2500)  # several largeBlobs fragments, chained APDUs
        assert session.read_blob(reg.large_blob_key) == b"x" * 2500


def test_pin_lockout_with_reinsertion(fido_key) -> None:
    handle, _ = fido_key

    def session() -> FidoSession:
        conn = PcscConnection(handle.reader_name, reset_on_close=False).open()
        return FidoSession(CtapSmartCardDevice(conn, handle.reader_name))

    s = session()
    s.set_pin("2468")
    shown = [s.pin_status().describe()]
    left = 8
    for cycle in range(3):
        for attempt in range(3):
            with pytest.raises((FidoInvalidPinError, FidoPinPowerCycleError, FidoPinBlockedError)) as info:
                s.change_pin("0000", "13579")
            left -= 1
            if left == 0:
                assert isinstance(info.value, FidoPinBlockedError)
                break
            if attempt < 2:
                assert isinstance(info.value, FidoInvalidPinError)
                assert info.value.attempts_remaining == left
            else:
                assert isinstance(info.value, FidoPinPowerCycleError)
        status = s.pin_status()
        shown.append(status.describe())
        s.close()
        if left == 0:
            break
        assert status.state is PinState.POWER_CYCLE_REQUIRED and status.retries == left
        # re-insert the card (a new emulator process on the same state in the second cycle)
        if cycle == 0:
            handle.stop()
            handle.insert()
        else:
            handle.restart()
        s = session()
        assert s.pin_status().state is PinState.OK
    assert shown == [
        "PIN set, 8 tries left",
        "PIN blocked until the key is re-inserted (5 tries left)",
        "PIN blocked until the key is re-inserted (2 tries left)",
        "PIN blocked until reset",
    ]
    handle.restart()
    s = session()
    assert s.pin_status().state is PinState.BLOCKED  # survives re-insertion; only reset helps
    s.reset()
    assert s.pin_status().state is PinState.NOT_SET
    s.close()


def test_a_pcsc_reset_is_not_a_power_cycle(fido_key) -> None:
    """CTAP 2.1 §6.5.5.4 through pcscd: every PC/SC client that disconnects resets the card (and pcscd powers
    an idle card down); neither may clear the three-wrong-PINs-in-a-row block — only re-inserting the key."""
    handle, _ = fido_key

    def attempt(pin: str, reset: bool = True) -> Exception | None:
        with PcscConnection(handle.reader_name, reset_on_close=reset) as conn:
            try:
                FidoSession(CtapSmartCardDevice(conn, handle.reader_name)).change_pin(pin, "13579135")
            except (FidoInvalidPinError, FidoPinPowerCycleError, FidoPinBlockedError) as exc:
                return exc
        return None

    with PcscConnection(handle.reader_name) as conn:
        FidoSession(CtapSmartCardDevice(conn, handle.reader_name)).set_pin("24681357")
    seen = [type(attempt("00000000")) for _ in range(4)]  # a new connection and a card reset each time
    assert seen == [FidoInvalidPinError, FidoInvalidPinError] + [FidoPinPowerCycleError] * 2
    assert isinstance(attempt("24681357"), FidoPinPowerCycleError)  # even the right PIN, at no cost
    with PcscConnection(handle.reader_name) as conn:
        status = FidoSession(CtapSmartCardDevice(conn, handle.reader_name)).pin_status()
    assert status.state is PinState.POWER_CYCLE_REQUIRED and status.retries == 5
    handle.stop()
    handle.insert()
    assert attempt("24681357") is None


def test_cred_protect_3_through_pcscd_gives_nothing_without_the_pin(fido_key) -> None:
    """getAssertion(allowList=[id], up=false) with the largeBlobKey extension, no PIN: refused for a
    credProtect-3 credential (CTAP 2.1 §12.1) — already by alwaysUv (PUAT_REQUIRED) since the key has a PIN;
    with a PIN token: the assertion and the key."""
    from fido2.ctap import CtapError
    from fido2.ctap2.pin import ClientPin

    handle, _ = fido_key
    with PcscConnection(handle.reader_name) as conn:
        ctap = Ctap2(CtapSmartCardDevice(conn, handle.reader_name))
        ClientPin(ctap).set_pin("24681357")
        cp = ClientPin(ctap)
        token = cp.get_pin_token("24681357", ClientPin.PERMISSION.MAKE_CREDENTIAL, "busan.go.kr")
        h = cdh()
        att = ctap.make_credential(
            h, RP, user(3), ES256, extensions={"credProtect": 3, "largeBlobKey": True}, options={"rk": True},
            pin_uv_param=cp.protocol.authenticate(token, h), pin_uv_protocol=cp.protocol.VERSION,
        )  # fmt: skip
        assert att.auth_data.extensions == {"credProtect": 3} and att.large_blob_key
        allow = [{"type": "public-key", "id": att.auth_data.credential_data.credential_id}]
    with PcscConnection(handle.reader_name) as conn:  # another host that saw the credential id
        ctap = Ctap2(CtapSmartCardDevice(conn, handle.reader_name))
        with pytest.raises(CtapError) as info:
            ctap.get_assertion(
                "busan.go.kr",
                cdh(),
                allow_list=allow,
                extensions={"largeBlobKey": True},
                options={"up": False},
            )
        assert info.value.code == CtapError.ERR.PUAT_REQUIRED
        cp = ClientPin(ctap)
        token = cp.get_pin_token("24681357", ClientPin.PERMISSION.GET_ASSERTION, "busan.go.kr")
        h = cdh()
        a = ctap.get_assertion(
            "busan.go.kr", h, allow_list=allow, extensions={"largeBlobKey": True},
            pin_uv_param=cp.protocol.authenticate(token, h), pin_uv_protocol=cp.protocol.VERSION,
        )  # fmt: skip
        assert a.large_blob_key == att.large_blob_key and a.auth_data.is_user_verified()


@pytest.mark.parametrize(
    ("chunk", "point", "created"),
    [
        (1, TearPoint.BEFORE_PROCESSING, False),
        (1, TearPoint.AFTER_PROCESSING, False),
        (-1, TearPoint.BEFORE_PROCESSING, False),
        (-1, TearPoint.AFTER_PROCESSING, True),
    ],
    ids=["first-before", "first-after", "last-before", "last-after"],
)
def test_tear_in_a_chained_make_credential(fido_key, chunk, point, created) -> None:
    handle, state = fido_key
    reader = handle.reader_name
    with PcscConnection(reader, reset_on_close=False) as conn:
        ctap = Ctap2(CtapSmartCardDevice(conn, reader))
        ctap.make_credential(cdh(), RP, user(1), ES256, options={"rk": True})
        seen_counter = max(ctap.get_assertion("busan.go.kr", cdh()).auth_data.counter for _ in range(3))
    n_parts = 3  # 600+ bytes of request in 250-byte chained APDUs
    target = n_parts if chunk == -1 else chunk
    count = {"n": 0}

    def hook(raw: bytes):
        if raw[1] == 0x10 and raw[0] in (0x80, 0x90):
            count["n"] += 1
            if count["n"] == target:
                return point
        return None

    big_user = {"id": b"citizen-2", "name": "n" * 64, "displayName": "d" * 64}
    exclude = [{"type": "public-key", "id": bytes([i]) * 34} for i in range(8)]
    with PcscConnection(reader, reset_on_close=False) as conn:
        ctap = Ctap2(CtapSmartCardDevice(conn, reader))
        handle.on_apdu = hook
        with pytest.raises((CardError, Exception)):
            ctap.make_credential(cdh(), RP, big_user, ES256, exclude_list=exclude, options={"rk": True})
    handle.on_apdu = None
    handle.wait_torn()
    assert count["n"] == target
    json.loads(state.read_text())  # the state file is whole
    handle.restart()  # a new emulator process on the torn card's state
    with PcscConnection(reader, reset_on_close=False) as conn:
        ctap = Ctap2(CtapSmartCardDevice(conn, reader))
        users = [a.user["id"] for a in ctap.get_assertions("busan.go.kr", cdh())]
        assert (b"citizen-2" in users) is created
        assert b"citizen-1" in users
        assert ctap.get_assertion("busan.go.kr", cdh()).auth_data.counter > seen_counter


def test_citizen_card_with_fido_applet(vpcd_card_factory, tmp_path) -> None:
    from emulators.card.citizen_card import make_citizen_card

    state = tmp_path / "citizen.json"
    handle = vpcd_card_factory(lambda: make_citizen_card(state, with_fido=True), state)
    key = classify_reader(handle.reader_name)
    assert key is not None and key.version == "FIDO_2_0"
    device = pcsc_device(handle.reader_name)
    try:
        fido_state = state.with_name("citizen-fido.json")
        _client_round_trip(device, _root(fido_state), None)
    finally:
        device.close()
    # the PIV applet is still there next to FIDO
    with PcscConnection(handle.reader_name) as conn:
        from cityid.apdu import SmartCardProtocol
        from cityid.piv import PIV_AID

        assert SmartCardProtocol(conn).select(PIV_AID)


def test_discovery_and_key_events(vpcd_card_factory, tmp_path) -> None:
    from terminal.pcsc.monitor import ReaderMonitor

    state = tmp_path / "k.json"
    with ReaderMonitor() as monitor:
        assert monitor.ready.wait(10)
        watcher = FidoKeyWatcher(monitor).start()
        events = watcher.events()
        handle = vpcd_card_factory(lambda: make_fido_card(state)[0], state)
        event = events.get(timeout=10)
        assert isinstance(event, FidoKeyInserted) and event.key.name == handle.reader_name
        assert any(k.name == handle.reader_name for k in discover_pcsc())
        session = FidoSession(event.key.open())
        assert session.info().pin.state is PinState.NOT_SET
        session.close()
        handle.stop()
        event = events.get(timeout=10)
        assert isinstance(event, FidoKeyRemoved) and event.name == handle.reader_name
        watcher.stop()
        with pytest.raises(queue.Empty):
            events.get(timeout=0.2)


def test_assertions_verify_against_stored_credential_data(fido_key) -> None:
    handle, _ = fido_key
    with PcscConnection(handle.reader_name) as conn:
        ctap = Ctap2(CtapSmartCardDevice(conn))
        att = ctap.make_credential(cdh(), RP, user(), [{"type": "public-key", "alg": -8}])
        cred = AttestedCredentialData(bytes(att.auth_data.credential_data))
        h = cdh()
        allow = [{"type": "public-key", "id": cred.credential_id}]
        ctap.get_assertion("busan.go.kr", h, allow_list=allow).verify(h, cred.public_key)  # EdDSA


def test_cardtool_fido_commands(fido_key, monkeypatch, capsys, tmp_path) -> None:
    import io

    from firmware_tools.cli import main

    handle, state = fido_key
    reader = ["--reader", handle.reader_name]
    assert main(["fido", "info", *reader]) == 0
    out = capsys.readouterr().out
    assert "AAGUID:" in out and "PIN:          PIN not set" in out and "free slots:   50" in out
    monkeypatch.setattr("sys.stdin", io.StringIO("24680\n"))
    assert main(["fido", "pin", "set", *reader, "--pin-stdin"]) == 0
    assert "PIN set, 8 tries left" in capsys.readouterr().out
    assert main(["fido", "info", *reader]) == 0
    assert "free slots:   ? (told only with the PIN)" in capsys.readouterr().out
    with PcscConnection(handle.reader_name) as conn:
        verifier = FidoVerifier("busan.go.kr", trusted_roots=[_root(state)])
        reg = verifier.register(FidoSession(CtapSmartCardDevice(conn)), b"citizen-5", "jung", pin="24680")
    monkeypatch.setattr("sys.stdin", io.StringIO("24680\n"))
    assert main(["fido", "credentials", "list", *reader, "--pin-stdin"]) == 0
    assert reg.credential_id.hex() in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("0000\n13579\n"))
    assert main(["fido", "pin", "change", *reader, "--pin-stdin"]) == 1
    assert "wrong PIN, 7 tries left" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("24680\n"))
    assert main(["fido", "credentials", "delete", *reader, "--pin-stdin", reg.credential_id.hex()]) == 0
    assert main(["fido", "credentials", "delete", *reader, "--pin-stdin", "zz"]) == 1
    assert "must be hex" in capsys.readouterr().err
    handle.stop()
    handle.insert()  # the reset window opens at insertion
    assert main(["fido", "reset", *reader, "--yes"]) == 0
    assert "key reset" in capsys.readouterr().out
    out_file = tmp_path / "root.pem"
    assert main(["fido", "attestation-root", "--state", str(state), "-o", str(out_file)]) == 0
    assert out_file.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert main(["fido", "info", "--reader", "no such reader"]) == 1
    assert "no FIDO security key" in capsys.readouterr().err


def test_status_updates_and_cancel_through_pcscd(vpcd_card_factory, tmp_path) -> None:
    from emulators.fido.presence import UserPresence
    from fido2.ctap import CtapError

    state = tmp_path / "slow-key.json"
    up = UserPresence(delay=0.3)
    handle = vpcd_card_factory(lambda: make_fido_card(state, up)[0], state)
    device = pcsc_device(handle.reader_name)  # python-fido2 polls 9100 answers with NFCCTAP_GETRESPONSE
    try:
        seen: list[int] = []
        att = Ctap2(device).make_credential(cdh(), RP, user(), ES256, on_keepalive=seen.append)
        assert att.fmt == "packed" and seen == [2]  # UPNEEDED
    finally:
        device.close()
    up.delay = 10.0
    with PcscConnection(handle.reader_name, reset_on_close=False) as conn:
        import threading

        ctap = Ctap2(CtapSmartCardDevice(conn, handle.reader_name))
        event = threading.Event()
        threading.Timer(0.3, event.set).start()
        with pytest.raises(CtapError) as info:
            ctap.make_credential(cdh(), RP, user(2), ES256, event=event)  # 80 11 11 00 cancels
        assert info.value.code == CtapError.ERR.KEEPALIVE_CANCEL
