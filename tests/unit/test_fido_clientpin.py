"""authenticatorClientPIN with PIN/UV auth protocols 1 and 2: set/change PIN, tokens, retries, blocking."""

from __future__ import annotations

import hashlib

import pytest
from emulators.fido.clientpin import MAX_PIN_RETRIES
from fido2.ctap import CtapError
from fido2.ctap2.pin import ClientPin, PinProtocolV1, PinProtocolV2

from tests.unit.fido_support import ES256, RP, cdh, ctap_for, make_auth, user

ERR = CtapError.ERR
PERM = ClientPin.PERMISSION


@pytest.fixture(params=[PinProtocolV1, PinProtocolV2], ids=["v1", "v2"])
def protocol(request):
    return request.param()


def _err(fn, *args, **kwargs):
    with pytest.raises(CtapError) as info:
        fn(*args, **kwargs)
    return info.value.code


def test_set_pin_then_token_then_uv_credential(protocol) -> None:
    auth = make_auth()
    ctap = ctap_for(auth)
    cp = ClientPin(ctap, protocol)
    assert cp.get_pin_retries() == (MAX_PIN_RETRIES, False)
    cp.set_pin("2468")
    ctap = ctap_for(auth)  # fresh info: clientPin is now true
    assert ctap.info.options["clientPin"] is True
    cp = ClientPin(ctap, protocol)
    assert _err(cp.set_pin, "1357") == ERR.NOT_ALLOWED  # only once
    token = cp.get_pin_token("2468", PERM.MAKE_CREDENTIAL, "busan.go.kr")
    assert len(token) == 32
    h = cdh()
    att = ctap.make_credential(
        h,
        RP,
        user(),
        ES256,
        options={"rk": True},
        pin_uv_param=protocol.authenticate(token, h),
        pin_uv_protocol=protocol.VERSION,
    )
    assert att.auth_data.is_user_verified()
    # once a PIN exists nothing is made without the token (alwaysUv), discoverable or server-side
    assert _err(ctap.make_credential, cdh(), RP, user(2), ES256, options={"rk": True}) == ERR.PUAT_REQUIRED
    assert _err(ctap.make_credential, cdh(), RP, user(2), ES256) == ERR.PUAT_REQUIRED
    assert ctap.get_info().options["alwaysUv"] and not ctap.get_info().options["makeCredUvNotRqd"]


def test_token_permissions_and_rp_binding(protocol) -> None:
    auth = make_auth()
    ctap = ctap_for(auth)
    ClientPin(ctap, protocol).set_pin("2468")
    cp = ClientPin(ctap_for(auth), protocol)
    token = cp.get_pin_token("2468", PERM.GET_ASSERTION, "busan.go.kr")
    h = cdh()
    param = protocol.authenticate(token, h)
    # wrong permission
    assert (
        _err(ctap.make_credential, h, RP, user(), ES256, pin_uv_param=param, pin_uv_protocol=protocol.VERSION)
        == ERR.PIN_AUTH_INVALID
    )
    # wrong RP
    mc = cp.get_pin_token("2468", PERM.MAKE_CREDENTIAL, "busan.go.kr")
    h_mc = cdh()
    mc_param = protocol.authenticate(mc, h_mc)
    uv = {"pin_uv_param": mc_param, "pin_uv_protocol": protocol.VERSION}
    made = ctap.make_credential(h_mc, RP, user(), ES256, **uv)
    cred_id = made.auth_data.credential_data.credential_id
    token = cp.get_pin_token("2468", PERM.GET_ASSERTION, "busan.go.kr")
    param = protocol.authenticate(token, h)
    allow = [{"type": "public-key", "id": cred_id}]
    assert (
        _err(ctap.get_assertion, "evil.example", h, pin_uv_param=param, pin_uv_protocol=protocol.VERSION)
        == ERR.PIN_AUTH_INVALID
    )
    # wrong MAC, wrong protocol number
    bad = bytes(len(param))
    assert (
        _err(ctap.get_assertion, "busan.go.kr", h, pin_uv_param=bad, pin_uv_protocol=protocol.VERSION)
        == ERR.PIN_AUTH_INVALID
    )
    assert _err(ctap.get_assertion, "busan.go.kr", h, pin_uv_param=param, pin_uv_protocol=3) == (
        ERR.INVALID_PARAMETER
    )
    assert _err(ctap.get_assertion, "busan.go.kr", h, pin_uv_param=param) == ERR.MISSING_PARAMETER
    # right one
    a = ctap.get_assertion(
        "busan.go.kr", h, allow_list=allow, pin_uv_param=param, pin_uv_protocol=protocol.VERSION
    )
    assert a.auth_data.is_user_verified()
    # a new power cycle invalidates the token
    auth.power_on()
    assert (
        _err(
            ctap.get_assertion,
            "busan.go.kr",
            h,
            allow_list=allow,
            pin_uv_param=param,
            pin_uv_protocol=protocol.VERSION,
        )
        == ERR.PIN_AUTH_INVALID
    )


def test_wrong_pins_block_for_power_cycle_then_for_good(protocol) -> None:
    auth = make_auth()
    ClientPin(ctap_for(auth), protocol).set_pin("2468")
    cp = ClientPin(ctap_for(auth), protocol)
    seen = []
    left = MAX_PIN_RETRIES
    for _cycle in range(3):
        for _ in range(3):
            code = _err(cp.get_pin_token, "0000", PERM.GET_ASSERTION)
            left -= 1
            seen.append(code)
            if left == 0:
                break
        retries, power_cycle = cp.get_pin_retries()
        assert retries == left
        if left == 0:
            break
        assert power_cycle is True
        # even the right PIN is refused until the power cycle, and costs nothing
        assert _err(cp.get_pin_token, "2468", PERM.GET_ASSERTION) == ERR.PIN_AUTH_BLOCKED
        assert cp.get_pin_retries()[0] == left
        auth.power_on()  # card re-inserted
        assert cp.get_pin_retries() == (left, False)
    assert seen == [ERR.PIN_INVALID, ERR.PIN_INVALID, ERR.PIN_AUTH_BLOCKED] * 2 + [
        ERR.PIN_INVALID,
        ERR.PIN_BLOCKED,
    ]
    assert cp.get_pin_retries()[0] == 0
    auth.power_on()
    assert _err(cp.get_pin_token, "2468", PERM.GET_ASSERTION) == ERR.PIN_BLOCKED  # until reset


def test_right_pin_restores_the_retries(protocol) -> None:
    auth = make_auth()
    ClientPin(ctap_for(auth), protocol).set_pin("2468")
    cp = ClientPin(ctap_for(auth), protocol)
    for _ in range(2):
        _err(cp.get_pin_token, "0000", PERM.GET_ASSERTION)
    assert cp.get_pin_retries()[0] == MAX_PIN_RETRIES - 2
    cp.get_pin_token("2468", PERM.GET_ASSERTION)
    assert cp.get_pin_retries() == (MAX_PIN_RETRIES, False)


def test_change_pin(protocol) -> None:
    auth = make_auth()
    ClientPin(ctap_for(auth), protocol).set_pin("2468")
    cp = ClientPin(ctap_for(auth), protocol)
    assert _err(cp.change_pin, "1111", "97531") == ERR.PIN_INVALID
    cp.change_pin("2468", "97531")
    assert _err(cp.get_pin_token, "2468", PERM.GET_ASSERTION) == ERR.PIN_INVALID
    assert len(cp.get_pin_token("97531", PERM.GET_ASSERTION)) == 32
    assert cp.get_pin_retries()[0] == MAX_PIN_RETRIES


def test_pin_policy_and_malformed_pin_messages(protocol) -> None:
    auth = make_auth()
    ctap = ctap_for(auth)
    cp = ClientPin(ctap, protocol)
    key_agreement, shared = cp._get_shared_secret()

    def set_pin_raw(padded: bytes, mac: bytes | None = None):
        enc = protocol.encrypt(shared, padded)
        return ctap.client_pin(
            protocol.VERSION,
            ClientPin.CMD.SET_PIN,
            key_agreement=key_agreement,
            new_pin_enc=enc,
            pin_uv_param=mac if mac is not None else protocol.authenticate(shared, enc),
        )

    assert _err(set_pin_raw, b"123".ljust(64, b"\0")) == ERR.PIN_POLICY_VIOLATION
    assert _err(set_pin_raw, b"1" * 64) == ERR.PIN_POLICY_VIOLATION  # 64 bytes: no terminating zero
    assert _err(set_pin_raw, b"2468".ljust(32, b"\0")) == ERR.INVALID_PARAMETER  # wrong padded length
    assert _err(set_pin_raw, b"2468".ljust(64, b"\0"), b"\0" * 32) == ERR.PIN_AUTH_INVALID
    assert _err(ctap.client_pin, protocol.VERSION, ClientPin.CMD.SET_PIN) == ERR.MISSING_PARAMETER
    assert _err(ctap.client_pin, protocol.VERSION, 0x42) == ERR.INVALID_SUBCOMMAND
    assert _err(ctap.client_pin, 9, ClientPin.CMD.GET_KEY_AGREEMENT) == ERR.INVALID_PARAMETER
    bad_key = {1: 2, 3: -25, -1: 1, -2: b"\1" * 32, -3: b"\2" * 32}  # not on the curve
    assert (
        _err(
            ctap.client_pin,
            protocol.VERSION,
            ClientPin.CMD.SET_PIN,
            key_agreement=bad_key,
            new_pin_enc=b"\0" * 64,
            pin_uv_param=b"\0" * 32,
        )
        == ERR.INVALID_PARAMETER
    )
    set_pin_raw("한글핀번".encode().ljust(64, b"\0"))  # 4 code points, 12 bytes: accepted
    assert auth.state.pin_set


def test_the_stored_pin_is_not_the_pin_or_its_ctap_hash(tmp_path) -> None:
    from emulators.card.store import CardStore

    path = tmp_path / "k.json"
    auth = make_auth(CardStore(path))
    ClientPin(ctap_for(auth)).set_pin("24681357")
    text = path.read_text()
    assert "24681357" not in text
    assert hashlib.sha256(b"24681357").digest()[:16].hex() not in text


def test_permissions_checks() -> None:
    auth = make_auth()
    ClientPin(ctap_for(auth)).set_pin("2468")
    ctap = ctap_for(auth)
    cp = ClientPin(ctap)
    key_agreement, shared = cp._get_shared_secret()
    pin_hash_enc = cp.protocol.encrypt(shared, hashlib.sha256(b"2468").digest()[:16])
    call = ctap.client_pin
    assert (
        _err(
            call,
            2,
            ClientPin.CMD.GET_TOKEN_USING_PIN,
            key_agreement=key_agreement,
            pin_hash_enc=pin_hash_enc,
            permissions=0,
        )
        == ERR.INVALID_PARAMETER
    )
    assert (
        _err(
            call,
            2,
            ClientPin.CMD.GET_TOKEN_USING_PIN,
            key_agreement=key_agreement,
            pin_hash_enc=pin_hash_enc,
            permissions=PERM.BIO_ENROLL,
        )
        == ERR.UNAUTHORIZED_PERMISSION
    )
    assert _err(call, 2, ClientPin.CMD.GET_TOKEN_USING_UV, key_agreement=key_agreement) == (
        ERR.INVALID_SUBCOMMAND
    )


def test_a_malformed_pin_hash_costs_no_try() -> None:
    auth = make_auth()
    ClientPin(ctap_for(auth)).set_pin("2468")
    ctap = ctap_for(auth)
    cp = ClientPin(ctap)
    key_agreement, _shared = cp._get_shared_secret()
    assert (
        _err(
            ctap.client_pin,
            2,
            ClientPin.CMD.GET_TOKEN_USING_PIN_LEGACY,
            key_agreement=key_agreement,
            pin_hash_enc=b"\0" * 20,
        )
        == ERR.INVALID_PARAMETER
    )
    assert cp.get_pin_retries() == (MAX_PIN_RETRIES, False)
