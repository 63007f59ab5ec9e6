"""Property tests: whatever a (signed or unsigned) client sends, the API answers JSON with a 4xx, never a
500 or a traceback, and a refused request allocates no status index."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.models import StatusAllocator
from terminal.server_client import sign_request
from tests.unit.server_support import CLAIMS, make_rig

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ("idempotency_key", "claims", "card_public_key", "card_serial", "citizen_did", "extra")


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    return make_rig(f"sqlite:///{tmp_path_factory.mktemp('fuzz')}/s.db")


def _post(rig, path: str, body: bytes, signed: bool = True, headers: dict | None = None):
    h = sign_request(rig.terminal_key, "counter-1", "POST", path, body, clerk="clerk-a") if signed else {}
    h.update(headers or {})
    h["Content-Type"] = "application/json"
    resp = rig.transport.client.open(path, method="POST", data=body, headers=h)
    return resp.status_code, resp.get_json(silent=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6) | json_values)
def test_random_enrollment_bodies_get_clean_4xx(rig, payload):
    status, body = _post(rig, "/v1/enrollments", json.dumps(payload).encode())
    assert 400 <= status < 500 and isinstance(body, dict) and body.get("error"), (status, body)
    with rig.db.sessions() as s:
        assert s.get(StatusAllocator, 1).next_index == 0


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(list(CLAIMS)), json_values, max_size=6), st.binary(max_size=40))
def test_random_claims_and_revocations(rig, claims, junk):
    status, body = _post(
        rig,
        "/v1/credentials/00000000-0000-0000-0000-000000000000/reissue",
        json.dumps({"idempotency_key": "fuzz-key-0001", "claims": claims}).encode(),
    )
    assert status in (400, 404) and body["error"]
    status, body = _post(rig, "/v1/revocations", junk)
    assert status == 400 and body["error"] == "invalid_request"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.dictionaries(
        st.sampled_from(["X-CityID-Terminal", "X-CityID-Timestamp", "X-CityID-Nonce", "X-CityID-Signature"]),
        st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=90),
        min_size=1,
    )
)
def test_random_auth_headers_are_401(rig, headers):
    status, body = _post(rig, "/v1/revocations", b"{}", signed=False, headers=headers)
    assert status == 401 and body["error"] == "unauthenticated"
