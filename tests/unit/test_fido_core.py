"""The CTAP 2.1 authenticator core: getInfo, makeCredential, getAssertion(+Next), extensions, reset, state."""

from __future__ import annotations

import hashlib
import json

import pytest
from cryptography import x509
from emulators.card.store import CardStore
from emulators.fido.attestation import OID_FIDO_AAGUID, AttestationBatch, export_root
from emulators.fido.presence import UserPresence
from fido2.attestation import AttestationVerifier
from fido2.attestation.base import UntrustedAttestation
from fido2.cose import CoseKey
from fido2.ctap import CtapError
from fido2.ctap2.pin import ClientPin, PinProtocolV2
from fido2.webauthn import AttestationObject, AuthenticatorData

from tests.unit.fido_support import ES256, RP, Clock, cdh, ctap_for, make_auth, user

ERR = CtapError.ERR


def _err(fn, *args, **kwargs) -> ERR:
    with pytest.raises(CtapError) as info:
        fn(*args, **kwargs)
    return info.value.code


class RootVerifier(AttestationVerifier):
    def __init__(self, root_der: bytes) -> None:
        super().__init__()
        self.root = root_der

    def ca_lookup(self, result, auth_data):
        return self.root


def _root_der(auth) -> bytes:
    from cryptography.hazmat.primitives import serialization

    pem = export_root(auth.store)
    return x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)


def test_get_info_advertises_the_implemented_features() -> None:
    info = ctap_for(make_auth()).info
    assert "FIDO_2_1" in info.versions
    assert set(info.extensions) == {"credProtect", "hmac-secret", "largeBlobKey"}
    assert info.options["rk"] and info.options["credMgmt"] and info.options["largeBlobs"]
    assert info.options["clientPin"] is False
    assert info.pin_uv_protocols == [2, 1]
    assert info.max_msg_size >= 1024
    assert {a["alg"] for a in info.algorithms} == {-7, -8}
    assert len(bytes(info.aaguid)) == 16


def test_get_info_is_the_same_on_every_key_of_the_model() -> None:
    """getInfo needs no PIN: two fresh keys answer it identically — one AAGUID per model, not per key
    (issue 12: nothing linkable before the PIN)."""
    from emulators.fido.state import MODEL_AAGUID

    auths = [make_auth(), make_auth()]
    first, second = (ctap_for(a).info for a in auths)
    assert first == second and bytes(first.aaguid) == MODEL_AAGUID
    assert auths[0].state.master_key != auths[1].state.master_key  # two different keys nonetheless


@pytest.mark.parametrize("alg", [-7, -8])
def test_make_credential_packed_attestation_verifies_against_the_root(alg: int) -> None:
    auth = make_auth()
    ctap = ctap_for(auth)
    client_data_hash = cdh()
    att = ctap.make_credential(client_data_hash, RP, user(), [{"type": "public-key", "alg": alg}])
    assert att.fmt == "packed"
    cred = att.auth_data.credential_data
    assert cred.public_key[3] == alg
    assert att.auth_data.flags & AuthenticatorData.FLAG.UP
    assert att.auth_data.rp_id_hash == hashlib.sha256(b"busan.go.kr").digest()
    obj = AttestationObject.create(att.fmt, att.auth_data, att.att_stmt)
    RootVerifier(_root_der(auth)).verify_attestation(obj, client_data_hash)  # raises on failure
    leaf = x509.load_der_x509_certificate(att.att_stmt["x5c"][0])
    ext = leaf.extensions.get_extension_for_oid(OID_FIDO_AAGUID)
    assert not ext.critical and ext.value.value[2:] == bytes(cred.aaguid)


def test_attestation_fails_against_another_root() -> None:
    """A key of another batch does not chain to this batch's root."""
    auth, other = make_auth(), make_auth(attestation=AttestationBatch.generate())
    client_data_hash = cdh()
    att = ctap_for(auth).make_credential(client_data_hash, RP, user(), ES256)
    obj = AttestationObject.create(att.fmt, att.auth_data, att.att_stmt)
    with pytest.raises(UntrustedAttestation):
        RootVerifier(_root_der(other)).verify_attestation(obj, client_data_hash)


def test_unsupported_algorithm_and_missing_parameters() -> None:
    ctap = ctap_for(make_auth())
    assert _err(ctap.make_credential, cdh(), RP, user(), [{"type": "public-key", "alg": -257}]) == (
        ERR.UNSUPPORTED_ALGORITHM
    )
    assert _err(ctap.send_cbor, 0x01, {1: cdh(), 2: RP}) == ERR.MISSING_PARAMETER
    assert _err(ctap.send_cbor, 0x01, {1: "not bytes", 2: RP, 3: user(), 4: ES256}) == (
        ERR.CBOR_UNEXPECTED_TYPE
    )
    assert _err(ctap.send_cbor, 0x02, {1: "busan.go.kr"}) == ERR.MISSING_PARAMETER
    assert _err(ctap.send_cbor, 0x55) == ERR.INVALID_COMMAND


def test_exclude_list_refuses_a_second_registration() -> None:
    ctap = ctap_for(make_auth())
    att = ctap.make_credential(cdh(), RP, user(), ES256)
    cred_id = att.auth_data.credential_data.credential_id
    exclude = [{"type": "public-key", "id": cred_id}]
    assert (
        _err(ctap.make_credential, cdh(), RP, user(), ES256, exclude_list=exclude) == ERR.CREDENTIAL_EXCLUDED
    )
    # another RP's credential id does not exclude
    other = {"id": "example.org", "name": "x"}
    ctap.make_credential(cdh(), other, user(), ES256, exclude_list=exclude)


def test_assertion_with_allow_list_verifies_and_counter_grows() -> None:
    ctap = ctap_for(make_auth())
    att = ctap.make_credential(cdh(), RP, user(), ES256)
    cred = att.auth_data.credential_data
    counters = [att.auth_data.counter]
    for _ in range(3):
        h = cdh()
        a = ctap.get_assertion(
            "busan.go.kr", h, allow_list=[{"type": "public-key", "id": cred.credential_id}]
        )
        a.verify(h, CoseKey.parse(cred.public_key))
        assert a.auth_data.flags & AuthenticatorData.FLAG.UP
        counters.append(a.auth_data.counter)
    assert counters == sorted(set(counters))
    # a credential id for this RP does not work for another RP
    allow = [{"type": "public-key", "id": cred.credential_id}]
    assert _err(ctap.get_assertion, "evil.example", cdh(), allow_list=allow) == ERR.NO_CREDENTIALS
    tampered = bytearray(cred.credential_id)
    tampered[-1] ^= 1
    allow = [{"type": "public-key", "id": bytes(tampered)}]
    assert _err(ctap.get_assertion, "busan.go.kr", cdh(), allow_list=allow) == ERR.NO_CREDENTIALS


def test_discoverable_credentials_and_get_next_assertion() -> None:
    ctap = ctap_for(make_auth())
    keys = {}
    for n in (1, 2, 3):
        att = ctap.make_credential(cdh(), RP, user(n), ES256, options={"rk": True})
        keys[att.auth_data.credential_data.credential_id] = att.auth_data.credential_data.public_key
    # same user again replaces the old credential
    att = ctap.make_credential(cdh(), RP, user(3), ES256, options={"rk": True})
    keys[att.auth_data.credential_data.credential_id] = att.auth_data.credential_data.public_key
    h = cdh()
    assertions = ctap.get_assertions("busan.go.kr", h)
    assert len(assertions) == 3
    assert assertions[0].number_of_credentials == 3
    assert [a.user["id"] for a in assertions] == [b"citizen-3", b"citizen-2", b"citizen-1"]  # newest first
    assert all(set(a.user) == {"id"} for a in assertions)  # no PII without UV
    for a in assertions:
        a.verify(h, CoseKey.parse(keys[a.credential["id"]]))
    assert _err(ctap.get_next_assertion) == ERR.NOT_ALLOWED
    assert _err(ctap.get_assertion, "other.example", cdh()) == ERR.NO_CREDENTIALS


def test_get_next_assertion_state_expires_and_is_cleared_by_other_commands() -> None:
    clock = Clock()
    ctap = ctap_for(make_auth(clock=clock))
    for n in (1, 2, 3):
        ctap.make_credential(cdh(), RP, user(n), ES256, options={"rk": True})
    ctap.get_assertion("busan.go.kr", cdh())
    ctap.get_info()
    assert _err(ctap.get_next_assertion) == ERR.NOT_ALLOWED
    ctap.get_assertion("busan.go.kr", cdh())
    clock.advance(31)
    assert _err(ctap.get_next_assertion) == ERR.NOT_ALLOWED


def test_user_presence_refused_timeout_and_silent_assertions() -> None:
    up = UserPresence()
    ctap = ctap_for(make_auth(up=up))
    att = ctap.make_credential(cdh(), RP, user(), ES256)
    allow = [{"type": "public-key", "id": att.auth_data.credential_data.credential_id}]
    up.mode = up.mode.__class__("deny")
    assert _err(ctap.get_assertion, "busan.go.kr", cdh(), allow_list=allow) == ERR.OPERATION_DENIED
    assert _err(ctap.make_credential, cdh(), RP, user(2), ES256) == ERR.OPERATION_DENIED
    up.mode = up.mode.__class__("timeout")
    assert _err(ctap.selection) == ERR.USER_ACTION_TIMEOUT
    # up=false: no touch needed, UP flag clear (the client's exclude-list pre-flight)
    a = ctap.get_assertion("busan.go.kr", cdh(), allow_list=allow, options={"up": False})
    assert not a.auth_data.flags & AuthenticatorData.FLAG.UP
    assert _err(ctap.make_credential, cdh(), RP, user(), ES256, options={"up": False}) == ERR.INVALID_OPTION
    assert _err(ctap.get_assertion, "busan.go.kr", cdh(), options={"rk": True}) == ERR.UNSUPPORTED_OPTION


def test_cred_protect_levels() -> None:
    auth = make_auth()
    ctap = ctap_for(auth)
    made = {}
    for level in (1, 2, 3):
        att = ctap.make_credential(
            cdh(), RP, user(level), ES256, extensions={"credProtect": level}, options={"rk": True}
        )
        assert att.auth_data.extensions == {"credProtect": level}
        made[level] = att.auth_data.credential_data.credential_id
    # without UV: only level 1 is discoverable
    found = ctap.get_assertions("busan.go.kr", cdh())
    assert [a.credential["id"] for a in found] == [made[1]]
    # level 2 works with its id in the allow list; level 3 never without UV
    a = ctap.get_assertion("busan.go.kr", cdh(), allow_list=[{"type": "public-key", "id": made[2]}])
    assert a.credential["id"] == made[2]
    allow3 = [{"type": "public-key", "id": made[3]}]
    assert _err(ctap.get_assertion, "busan.go.kr", cdh(), allow_list=allow3) == ERR.NO_CREDENTIALS
    assert _err(ctap.make_credential, cdh(), RP, user(9), ES256, extensions={"credProtect": 7}) == (
        ERR.INVALID_PARAMETER
    )
    # with a PIN token (UV) all three are found
    ClientPin(ctap).set_pin("2468")
    client_pin = ClientPin(ctap)
    token = client_pin.get_pin_token("2468", ClientPin.PERMISSION.GET_ASSERTION, "busan.go.kr")
    h = cdh()
    param = client_pin.protocol.authenticate(token, h)
    first = ctap.get_assertion(
        "busan.go.kr", h, pin_uv_param=param, pin_uv_protocol=client_pin.protocol.VERSION
    )
    assert first.number_of_credentials == 3
    assert first.user["name"].startswith("citizen")  # UV: full user entity
    assert first.auth_data.flags & AuthenticatorData.FLAG.UV
    # with the PIN set, no pinUvAuthParam: refused before anything else is looked at (alwaysUv)
    assert _err(ctap.make_credential, cdh(), RP, user(9), ES256, extensions={"credProtect": 7}) == (
        ERR.PUAT_REQUIRED
    )
    assert _err(ctap.get_assertion, "busan.go.kr", cdh(), allow_list=allow3) == ERR.PUAT_REQUIRED


def test_hmac_secret_is_stable_per_salt_and_differs_with_uv() -> None:
    auth = make_auth()
    ctap = ctap_for(auth)
    att = ctap.make_credential(
        cdh(), RP, user(), ES256, extensions={"hmac-secret": True}, options={"rk": True}
    )
    assert att.auth_data.extensions == {"hmac-secret": True}
    cred_id = att.auth_data.credential_data.credential_id
    protocol = PinProtocolV2()

    def secret(salt: bytes, **extra) -> bytes:
        peer = ClientPin(ctap)._get_shared_secret()  # (key agreement, shared secret)
        key_agreement, shared = peer
        salt_enc = protocol.encrypt(shared, salt)
        ext = {
            "hmac-secret": {1: key_agreement, 2: salt_enc, 3: protocol.authenticate(shared, salt_enc), 4: 2}
        }
        allow = [{"type": "public-key", "id": cred_id}]
        a = ctap.get_assertion("busan.go.kr", cdh(), allow_list=allow, extensions=ext, **extra)
        return protocol.decrypt(shared, a.auth_data.extensions["hmac-secret"])

    s1, s2 = b"\x01" * 32, b"\x02" * 32
    out1 = secret(s1)
    assert len(out1) == 32 and secret(s1) == out1 and secret(s2) != out1
    assert len(secret(s1 + s2)) == 64
    ClientPin(ctap).set_pin("2468")
    cp = ClientPin(ctap, PinProtocolV2())
    token = cp.get_pin_token("2468", ClientPin.PERMISSION.GET_ASSERTION, "busan.go.kr")
    h = cdh()
    peer = cp._get_shared_secret()
    salt_enc = protocol.encrypt(peer[1], s1)
    ext = {"hmac-secret": {1: peer[0], 2: salt_enc, 3: protocol.authenticate(peer[1], salt_enc), 4: 2}}
    a = ctap.get_assertion(
        "busan.go.kr",
        h,
        allow_list=[{"type": "public-key", "id": cred_id}],
        extensions=ext,
        pin_uv_param=protocol.authenticate(token, h),
        pin_uv_protocol=2,
    )
    assert protocol.decrypt(peer[1], a.auth_data.extensions["hmac-secret"]) != out1
    # a bad saltAuth is refused
    ext["hmac-secret"][3] = b"\0" * 32
    allow = [{"type": "public-key", "id": cred_id}]
    h = cdh()
    uv = {"pin_uv_param": protocol.authenticate(token, h), "pin_uv_protocol": 2}
    assert _err(ctap.get_assertion, "busan.go.kr", h, allow_list=allow, extensions=ext, **uv) == (
        ERR.PIN_AUTH_INVALID
    )


def test_reset_only_in_the_window_after_power_up() -> None:
    clock = Clock()
    auth = make_auth(clock=clock)
    ctap = ctap_for(auth)
    att = ctap.make_credential(cdh(), RP, user(), ES256, options={"rk": True})
    ClientPin(ctap).set_pin("2468")
    clock.advance(10.5)
    assert _err(ctap.reset) == ERR.NOT_ALLOWED
    auth.power_on()
    clock.advance(9)
    before = auth.state.counter
    ctap.reset()
    info = ctap.get_info()
    assert info.options["clientPin"] is False
    allow = [{"type": "public-key", "id": att.auth_data.credential_data.credential_id}]
    assert _err(ctap.get_assertion, "busan.go.kr", cdh(), allow_list=allow) == ERR.NO_CREDENTIALS
    assert _err(ctap.get_assertion, "busan.go.kr", cdh()) == ERR.NO_CREDENTIALS
    att2 = ctap.make_credential(cdh(), RP, user(), ES256)
    assert att2.auth_data.counter > before  # the counter survives a reset
    up_denied = make_auth(clock=clock, up=UserPresence("deny"))
    assert _err(ctap_for(up_denied).reset) == ERR.OPERATION_DENIED


def test_state_persists_and_counter_never_goes_back(tmp_path) -> None:
    path = tmp_path / "key.json"
    auth = make_auth(CardStore(path))
    ctap = ctap_for(auth)
    att = ctap.make_credential(cdh(), RP, user(), ES256, options={"rk": True})
    cred = att.auth_data.credential_data
    last = 0
    for _ in range(5):
        last = ctap.get_assertion("busan.go.kr", cdh()).auth_data.counter
    # "power loss": a new authenticator on the same file
    ctap2 = ctap_for(make_auth(CardStore(path)))
    h = cdh()
    a = ctap2.get_assertion("busan.go.kr", h)
    a.verify(h, CoseKey.parse(cred.public_key))
    assert a.auth_data.counter > last
    state = json.loads(path.read_text())
    text = json.dumps(state)
    assert "citizen1" in text  # user name is metadata of the discoverable credential
    creds = state["sections"]["fido_credentials"]["creds"]
    assert set(creds[0]) == {
        "id",
        "rp_id",
        "rp_name",
        "user_id",
        "user_name",
        "display_name",
        "large_blob_key",
        "created",
    }  # no private keys: they are derived from the master key
    assert state["sections"]["fido"]["pin_retries"] == 8


def test_a_torn_state_write_leaves_old_or_new_state(tmp_path) -> None:
    path = tmp_path / "key.json"
    store = CardStore(path)
    auth = make_auth(store)
    ctap = ctap_for(auth)
    ctap.make_credential(cdh(), RP, user(1), ES256, options={"rk": True})
    counter_before = ctap.get_assertion("busan.go.kr", cdh()).auth_data.counter

    def tear(stage: str) -> None:
        if stage == "synced":
            raise OSError("power lost")

    store.fault_hook = tear
    # the credential write is torn: the command fails cleanly (no crash), the file keeps the old state
    assert _err(ctap.make_credential, cdh(), RP, user(2), ES256, options={"rk": True}) == ERR.OTHER
    store.fault_hook = None
    reloaded = ctap_for(make_auth(CardStore(path)))
    ids = [a.user["id"] for a in reloaded.get_assertions("busan.go.kr", cdh())]
    assert ids == [b"citizen-1"]
    assert reloaded.get_assertion("busan.go.kr", cdh()).auth_data.counter > counter_before
