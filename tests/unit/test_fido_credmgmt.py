"""authenticatorCredentialManagement and authenticatorLargeBlobs (CTAP 2.1 §6.8, §6.10)."""

from __future__ import annotations

import hashlib
import os

import pytest
from fido2 import cbor
from fido2.ctap import CtapError
from fido2.ctap2.blob import LargeBlobs
from fido2.ctap2.credman import CredentialManagement
from fido2.ctap2.pin import ClientPin

from tests.unit.fido_support import ES256, RP, cdh, ctap_for, make_auth, user

ERR = CtapError.ERR

PERM = ClientPin.PERMISSION
R = CredentialManagement.RESULT


def _err(fn, *args, **kwargs):
    with pytest.raises(CtapError) as info:
        fn(*args, **kwargs)
    return info.value.code


def _with_pin(auth):
    ClientPin(ctap_for(auth)).set_pin("2468")
    ctap = ctap_for(auth)
    return ctap, ClientPin(ctap)


def _rk(ctap, cp, rp, n, **kw):
    token = cp.get_pin_token("2468", PERM.MAKE_CREDENTIAL, rp["id"])
    h = cdh()
    return ctap.make_credential(
        h,
        rp,
        user(n),
        ES256,
        options={"rk": True},
        pin_uv_param=cp.protocol.authenticate(token, h),
        pin_uv_protocol=cp.protocol.VERSION,
        **kw,
    )


def _credman(ctap, cp, rp_id=None):
    token = cp.get_pin_token("2468", PERM.CREDENTIAL_MGMT, rp_id)
    return CredentialManagement(ctap, cp.protocol, token)


def test_enumerate_update_and_delete() -> None:
    auth = make_auth()
    ctap, cp = _with_pin(auth)
    other = {"id": "kiosk.busan.go.kr", "name": "Kiosk"}
    made = [_rk(ctap, cp, RP, 1), _rk(ctap, cp, RP, 2), _rk(ctap, cp, other, 3)]
    cm = _credman(ctap, cp)
    meta = cm.get_metadata()
    assert meta[R.EXISTING_CRED_COUNT] == 3 and meta[R.MAX_REMAINING_COUNT] == 47
    rps = cm.enumerate_rps()
    assert sorted(r[R.RP]["id"] for r in rps) == ["busan.go.kr", "kiosk.busan.go.kr"]
    assert rps[0][R.TOTAL_RPS] == 2
    creds = cm.enumerate_creds(hashlib.sha256(b"busan.go.kr").digest())
    assert {c[R.USER]["id"] for c in creds} == {b"citizen-1", b"citizen-2"}
    keys = {c[R.CREDENTIAL_ID]["id"]: c[R.PUBLIC_KEY] for c in creds}
    for att in made[:2]:
        cred = att.auth_data.credential_data
        assert keys[cred.credential_id] == dict(cred.public_key)
    assert cm.enumerate_creds(hashlib.sha256(b"nobody.example").digest()) == []

    target = made[0].auth_data.credential_data.credential_id
    cm.update_user_info({"type": "public-key", "id": target}, {"id": b"citizen-1", "name": "renamed"})
    names = {c[R.USER].get("name") for c in cm.enumerate_creds(hashlib.sha256(b"busan.go.kr").digest())}
    assert "renamed" in names
    with pytest.raises(CtapError) as info:
        cm.update_user_info({"type": "public-key", "id": target}, {"id": b"someone-else", "name": "x"})
    assert info.value.code == ERR.INVALID_PARAMETER

    cm.delete_cred({"type": "public-key", "id": target})
    assert cm.get_metadata()[R.EXISTING_CRED_COUNT] == 2
    with pytest.raises(CtapError) as info:
        cm.delete_cred({"type": "public-key", "id": target})
    assert info.value.code == ERR.NO_CREDENTIALS
    # a deleted discoverable credential no longer signs, not even with its id in the allow list
    allow = [{"type": "public-key", "id": target}]
    token = cp.get_pin_token("2468", PERM.GET_ASSERTION, "busan.go.kr")
    h = cdh()
    uv = {"pin_uv_param": cp.protocol.authenticate(token, h), "pin_uv_protocol": cp.protocol.VERSION}
    assert _err(ctap.get_assertion, "busan.go.kr", h, allow_list=allow, **uv) == ERR.NO_CREDENTIALS


def test_credential_management_needs_a_cm_token() -> None:
    auth = make_auth()
    ctap, cp = _with_pin(auth)
    _rk(ctap, cp, RP, 1)
    assert _err(ctap.credential_mgmt, CredentialManagement.CMD.GET_CREDS_METADATA) == ERR.PUAT_REQUIRED
    token = cp.get_pin_token("2468", PERM.GET_ASSERTION, "busan.go.kr")
    with pytest.raises(CtapError) as info:
        CredentialManagement(ctap, cp.protocol, token).get_metadata()
    assert info.value.code == ERR.PIN_AUTH_INVALID
    # "next" without a "begin" is refused
    assert _err(ctap.credential_mgmt, CredentialManagement.CMD.ENUMERATE_RPS_NEXT) == ERR.NOT_ALLOWED
    # an RP-bound cm token only manages that RP
    bound = _credman(ctap, cp, "other.example")
    with pytest.raises(CtapError) as info:
        bound.enumerate_creds(hashlib.sha256(b"busan.go.kr").digest())
    assert info.value.code == ERR.PIN_AUTH_INVALID
    assert _err(ctap.credential_mgmt, 0x33) == ERR.INVALID_SUBCOMMAND


def test_enumeration_state_is_dropped_by_another_command() -> None:
    auth = make_auth()
    ctap, cp = _with_pin(auth)
    for n in (1, 2):
        _rk(ctap, cp, RP, n)
    cm = _credman(ctap, cp)
    cm.enumerate_creds_begin(hashlib.sha256(b"busan.go.kr").digest())
    ctap.get_info()
    assert _err(cm.enumerate_creds_next) == ERR.NOT_ALLOWED


def test_large_blob_round_trip_without_pin() -> None:
    auth = make_auth()
    ctap = ctap_for(auth)
    att = ctap.make_credential(
        cdh(), RP, user(), ES256, options={"rk": True}, extensions={"largeBlobKey": True}
    )
    key = att.large_blob_key
    assert key is not None and len(key) == 32
    a = ctap.get_assertion("busan.go.kr", cdh(), extensions={"largeBlobKey": True})
    assert a.large_blob_key == key
    blobs = LargeBlobs(ctap)
    assert blobs.read_blob_array() == []
    payload = os.urandom(3000)  # incompressible: the array needs two fragments
    blobs.put_blob(key, payload)
    assert blobs.get_blob(key) == payload
    assert LargeBlobs(ctap).get_blob(b"\0" * 32) is None
    blobs.delete_blob(key)
    assert blobs.get_blob(key) is None
    # largeBlobKey is only for discoverable credentials
    assert _err(ctap.make_credential, cdh(), RP, user(2), ES256, extensions={"largeBlobKey": True}) == (
        ERR.INVALID_OPTION
    )


def test_large_blob_writes_need_a_token_once_a_pin_exists() -> None:
    auth = make_auth()
    ctap, cp = _with_pin(auth)
    att = _rk(ctap, cp, RP, 1, extensions={"largeBlobKey": True})
    with pytest.raises(CtapError) as info:
        LargeBlobs(ctap).put_blob(att.large_blob_key, b"credential")
    assert info.value.code == ERR.PUAT_REQUIRED
    token = cp.get_pin_token("2468", PERM.LARGE_BLOB_WRITE)
    LargeBlobs(ctap, cp.protocol, token).put_blob(att.large_blob_key, b"credential")
    assert LargeBlobs(ctap).get_blob(att.large_blob_key) == b"credential"  # reads need no token


def test_large_blob_fragment_rules() -> None:
    auth = make_auth()
    ctap = ctap_for(auth)
    array = cbor.encode([{1: b"x" * 40, 2: b"n" * 12, 3: 40}])
    data = array + hashlib.sha256(array).digest()[:16]
    lb = ctap.large_blobs
    assert _err(lb, 5, set=data[:10]) == ERR.INVALID_SEQ  # no write started
    assert _err(lb, 0, set=data[:10]) == ERR.INVALID_PARAMETER  # offset 0 needs the length
    assert _err(lb, 0, set=data[:10], length=10**6) == ERR.LARGE_BLOB_STORAGE_FULL
    assert _err(lb, 0, get=10, set=b"x") == ERR.INVALID_PARAMETER
    assert _err(lb, 0) == ERR.INVALID_PARAMETER
    assert _err(lb, 10**6, get=10) == ERR.INVALID_PARAMETER
    assert _err(lb, 0, get=10**6) == ERR.INVALID_LENGTH
    lb(0, set=data[:10], length=len(data))
    assert _err(lb, 20, set=data[10:]) == ERR.INVALID_SEQ
    lb(0, set=data[:10], length=len(data))  # restart
    lb(10, set=data[10:])
    assert lb(0, get=1000)[1] == data
    # a corrupted array is refused and the stored one kept
    bad = array + b"\0" * 16
    assert _err(lb, 0, set=bad, length=len(bad)) == ERR.INTEGRITY_FAILURE
    assert lb(0, get=1000)[1] == data
