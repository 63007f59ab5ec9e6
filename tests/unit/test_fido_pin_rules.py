"""CTAP 2.1 PIN and credProtect rules the counter's security keys rely on, driven through python-fido2's own
client classes (Fido2Client, ClientPin, LargeBlobs) against the emulator — in process, on the card OS.

* §6.5.5.4: three wrong PINs in a row → PIN_AUTH_BLOCKED until a power cycle; a warm reset (what pcscd does
  whenever a PC/SC client disconnects) or a host power-down is not one — only taking the key out is; eight
  in total → PIN_BLOCKED until authenticatorReset.
* §12.1 credProtect: level 3 (userVerificationRequired) credentials, and their largeBlobKey, are invisible
  without UV — also to ``getAssertion(allowList=[id], up=false)``; level 2 answers an allow list without UV
  but is not discoverable without it.
"""

from __future__ import annotations

import pytest
from emulators.card.transport import InProcessConnection
from emulators.fido.card import make_fido_card
from emulators.fido.clientpin import MAX_CONSECUTIVE_FAILS, MAX_PIN_RETRIES
from fido2.client import ClientError, DefaultClientDataCollector, Fido2Client, UserInteraction
from fido2.ctap import CtapError
from fido2.ctap2 import Ctap2
from fido2.ctap2.blob import LargeBlobs
from fido2.ctap2.pin import ClientPin
from fido2.server import Fido2Server
from fido2.utils import websafe_decode

from terminal.fido.device import CtapSmartCardDevice

ERR = CtapError.ERR
PIN = "24681357"
ORIGIN = "https://busan.go.kr"
RP_ID = "busan.go.kr"

COLLECTOR = DefaultClientDataCollector(ORIGIN)


class Pin(UserInteraction):
    def __init__(self, pin: str | None) -> None:
        self.pin = pin
        self.asked = 0

    def request_pin(self, permissions, rp_id):
        self.asked += 1
        return self.pin


@pytest.fixture
def key():
    """A FIDO-only virtual card in process, with a PIN set."""
    card, applet = make_fido_card(None)
    conn = InProcessConnection(card)
    ClientPin(Ctap2(CtapSmartCardDevice(conn))).set_pin(PIN)
    return conn, applet


def _client_pin(conn: InProcessConnection) -> ClientPin:
    return ClientPin(Ctap2(CtapSmartCardDevice(conn)))


def _code(fn, *args, **kwargs) -> int:
    with pytest.raises(CtapError) as info:
        fn(*args, **kwargs)
    return int(info.value.code)


def _wrong(conn: InProcessConnection) -> int:
    return _code(_client_pin(conn).get_pin_token, "00000000", ClientPin.PERMISSION.GET_ASSERTION, RP_ID)


# --- §6.5.5.4: consecutive and total wrong PINs --------------------------------------------------------


def test_three_wrong_pins_in_a_row_block_until_the_key_is_reinserted(key) -> None:
    conn, applet = key
    assert [_wrong(conn) for _ in range(MAX_CONSECUTIVE_FAILS)] == [
        ERR.PIN_INVALID,
        ERR.PIN_INVALID,
        ERR.PIN_AUTH_BLOCKED,
    ]
    assert _client_pin(conn).get_pin_retries() == (MAX_PIN_RETRIES - 3, True)
    # a fourth guess, after each thing a host can do without the user: nothing is tried, nothing counted
    for host_action in (conn.reset, lambda: (conn.card.power_off(), conn.card.power_on())):
        host_action()
        assert _wrong(conn) == ERR.PIN_AUTH_BLOCKED
        right = _client_pin(conn)
        assert _code(right.get_pin_token, PIN, ClientPin.PERMISSION.GET_ASSERTION, RP_ID) == (
            ERR.PIN_AUTH_BLOCKED
        )
        assert right.get_pin_retries() == (MAX_PIN_RETRIES - 3, True)
    assert applet.authenticator.state.pin_retries == MAX_PIN_RETRIES - 3
    # the user takes the key out and puts it back: the right PIN works and restores the retries
    conn.remove()
    conn.insert()
    cp = _client_pin(conn)
    assert cp.get_pin_retries() == (MAX_PIN_RETRIES - 3, False)
    assert len(cp.get_pin_token(PIN, ClientPin.PERMISSION.GET_ASSERTION, RP_ID)) == 32
    assert cp.get_pin_retries() == (MAX_PIN_RETRIES, False)


def test_a_right_pin_between_wrong_ones_restarts_the_consecutive_count(key) -> None:
    conn, _ = key
    for _ in range(3):
        assert [_wrong(conn), _wrong(conn)] == [ERR.PIN_INVALID, ERR.PIN_INVALID]
        _client_pin(conn).get_pin_token(PIN, ClientPin.PERMISSION.GET_ASSERTION, RP_ID)
    assert _client_pin(conn).get_pin_retries() == (MAX_PIN_RETRIES, False)


def test_eight_wrong_pins_in_total_block_until_reset(key) -> None:
    conn, _ = key
    seen = []
    while len(seen) < MAX_PIN_RETRIES:
        code = _wrong(conn)
        seen.append(code)
        if code == ERR.PIN_AUTH_BLOCKED:
            conn.remove()
            conn.insert()
    assert seen == [ERR.PIN_INVALID, ERR.PIN_INVALID, ERR.PIN_AUTH_BLOCKED] * 2 + [
        ERR.PIN_INVALID,
        ERR.PIN_BLOCKED,
    ]
    conn.remove()
    conn.insert()
    cp = _client_pin(conn)
    assert cp.get_pin_retries()[0] == 0
    assert _code(cp.get_pin_token, PIN, ClientPin.PERMISSION.GET_ASSERTION, RP_ID) == ERR.PIN_BLOCKED
    Ctap2(CtapSmartCardDevice(conn)).reset()  # within 10 s of insertion: the only way back
    assert _client_pin(conn).get_pin_retries() == (MAX_PIN_RETRIES, False)


def test_change_pin_counts_as_a_pin_try(key) -> None:
    conn, _ = key
    for expected in (ERR.PIN_INVALID, ERR.PIN_INVALID, ERR.PIN_AUTH_BLOCKED):
        assert _code(_client_pin(conn).change_pin, "00000000", "13579135") == expected
    conn.reset()
    assert _code(_client_pin(conn).change_pin, PIN, "13579135") == ERR.PIN_AUTH_BLOCKED


# --- §12.1 credProtect ------------------------------------------------------------------------------


def _register(conn: InProcessConnection, policy: str, user_id: bytes) -> tuple[bytes, bytes | None]:
    """Register through Fido2Client with the PIN, credProtect ``policy`` and largeBlob; return id and key."""
    server = Fido2Server({"id": RP_ID, "name": "Busan"}, attestation="none")
    options, state = server.register_begin(
        {"id": user_id, "name": "kim", "displayName": "Kim"},
        resident_key_requirement="required",
        user_verification="required",
    )
    public_key = dict(options["publicKey"])
    public_key["extensions"] = {
        "credentialProtectionPolicy": policy,
        "enforceCredentialProtectionPolicy": True,
        "largeBlob": {"support": "required"},
    }
    client = Fido2Client(CtapSmartCardDevice(conn), COLLECTOR, user_interaction=Pin(PIN))
    result = client.make_credential(public_key)
    auth_data = server.register_complete(state, result)
    assert result.client_extension_results["largeBlob"]["supported"] is True
    level = {"userVerificationOptionalWithCredentialIDList": 2, "userVerificationRequired": 3}[policy]
    assert auth_data.extensions == {"credProtect": level}
    # the largeBlobKey as the authenticator hands it out with UV (what a kiosk would read the blob with)
    cp = ClientPin(Ctap2(CtapSmartCardDevice(conn)))
    token = cp.get_pin_token(PIN, ClientPin.PERMISSION.GET_ASSERTION, RP_ID)
    cdh = bytes(32)
    allow = [{"type": "public-key", "id": auth_data.credential_data.credential_id}]
    assertion = Ctap2(CtapSmartCardDevice(conn)).get_assertion(
        RP_ID,
        cdh,
        allow_list=allow,
        extensions={"largeBlobKey": True},
        pin_uv_param=cp.protocol.authenticate(token, cdh),
        pin_uv_protocol=cp.protocol.VERSION,
    )
    return auth_data.credential_data.credential_id, assertion.large_blob_key


def _silent(conn: InProcessConnection, cred_id: bytes | None):
    """getAssertion without PIN/UV and without touch (up=false), asking for the largeBlobKey."""
    allow = [{"type": "public-key", "id": cred_id}] if cred_id is not None else None
    return Ctap2(CtapSmartCardDevice(conn)).get_assertion(
        RP_ID, bytes(32), allow_list=allow, extensions={"largeBlobKey": True}, options={"up": False}
    )


def test_cred_protect_3_needs_the_pin_for_every_use_and_for_the_large_blob_key(key) -> None:
    conn, _ = key
    cred_id, blob_key = _register(conn, "userVerificationRequired", b"citizen-3")
    assert blob_key is not None and len(blob_key) == 32
    ctap = Ctap2(CtapSmartCardDevice(conn))
    cp = ClientPin(ctap)
    token = cp.get_pin_token(PIN, ClientPin.PERMISSION.LARGE_BLOB_WRITE)
    LargeBlobs(ctap, cp.protocol, token).put_blob(blob_key, b'{"birth_date":"1950-01-01"}')

    # any host that knows the credential id (every kiosk saw it): nothing, silently or with a touch —
    # the key has a PIN, so alwaysUv refuses before looking at the allow list at all
    assert _code(_silent, conn, cred_id) == ERR.PUAT_REQUIRED
    assert _code(_silent, conn, None) == ERR.PUAT_REQUIRED
    touch = Ctap2(CtapSmartCardDevice(conn))
    allow = [{"type": "public-key", "id": cred_id}]
    lbk = {"largeBlobKey": True}
    with_touch = _code(touch.get_assertion, RP_ID, bytes(32), allow_list=allow, extensions=lbk)
    assert with_touch == ERR.PUAT_REQUIRED
    # the blob array: ciphertext while a token is live, the empty array after a power cycle (nothing
    # per key to recognise it by before the PIN)
    assert LargeBlobs(touch).get_blob(bytes(32)) is None
    assert b"1950" not in b"".join(
        bytes(e[1]) for e in LargeBlobs(touch).read_blob_array() if isinstance(e, dict)
    )
    conn.remove()
    conn.insert()
    fresh = Ctap2(CtapSmartCardDevice(conn))
    assert LargeBlobs(fresh).read_blob_array() == []  # before the PIN: what every fresh key answers
    cp = ClientPin(fresh)
    cp.get_pin_token(PIN, ClientPin.PERMISSION.GET_ASSERTION, RP_ID)
    assert len(LargeBlobs(fresh).read_blob_array()) == 1  # after it: the stored (encrypted) entry
    conn.remove()
    conn.insert()
    # python-fido2's client without UV is refused too
    server = Fido2Server({"id": RP_ID, "name": "Busan"})
    options, _ = server.authenticate_begin(user_verification="discouraged")
    public_key = dict(options["publicKey"])
    public_key["allowCredentials"] = allow
    no_pin = Pin(None)
    with pytest.raises(ClientError):
        Fido2Client(CtapSmartCardDevice(conn), COLLECTOR, user_interaction=no_pin).get_assertion(public_key)
    # with the PIN: the assertion and the key
    public_key["userVerification"] = "required"
    public_key["extensions"] = {"largeBlob": {"read": True}}
    with_pin = Fido2Client(CtapSmartCardDevice(conn), COLLECTOR, user_interaction=Pin(PIN))
    response = with_pin.get_assertion(public_key).get_response(0)
    assert response.response.authenticator_data.is_user_verified()
    blob = websafe_decode(response.client_extension_results["largeBlob"]["blob"])  # JSON mapping: base64url
    assert blob == b'{"birth_date":"1950-01-01"}'


def test_cred_protect_2_answers_an_allow_list_without_uv_only_on_a_key_without_pin() -> None:
    """§12.1: level 2 is usable with its id even without UV or touch — on a key that has no PIN. Once a
    PIN is set, alwaysUv refuses that silent use too (the leak issue 12 names for credProtect 2)."""
    card, _ = make_fido_card(None)
    conn = InProcessConnection(card)
    ctap = Ctap2(CtapSmartCardDevice(conn))
    made = ctap.make_credential(
        bytes(32), {"id": RP_ID, "name": "Busan"}, {"id": b"citizen-2", "name": "kim"},
        [{"type": "public-key", "alg": -7}], extensions={"credProtect": 2}, options={"rk": True},
    )
    cred_id = made.auth_data.credential_data.credential_id
    silent = _silent(conn, cred_id)
    assert silent.credential["id"] == cred_id
    assert not silent.auth_data.is_user_present() and not silent.auth_data.is_user_verified()
    assert _code(_silent, conn, None) == ERR.NO_CREDENTIALS  # but not found without the list
    ClientPin(ctap).set_pin(PIN)
    assert _code(_silent, conn, cred_id) == ERR.PUAT_REQUIRED
