"""terminal.verifier: every check, each rejection with its named check and plain-words reason.

Presentations come from a software holder (cityid.sdjwt.present) so each field can be tampered with; the card
emulator's presentations are covered in test_credential_card.py.
"""

from __future__ import annotations

import hashlib
import json
from datetime import date

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from cityid import jose, sdjwt
from cityid.chain.view import ChainError, CredentialStatus, StaleChainDataError, StatusRef
from cityid.credential import (
    VCT,
    CitizenClaims,
    IssuedCredential,
    LocalSigner,
    assertion_challenge,
    issue,
    webauthn_kb_jwt,
)
from cityid.keys import P256PublicKey
from terminal.verifier import CheckName, NonceStore, Verdict, Verifier
from terminal.verifier.messages import MESSAGES
from tests.doubles.static_view import StaticChainView

NOW = 1_800_000_000
AUD = "https://kiosk.busan.go.kr/k1"
ISSUER_DID = "did:ethr:0x7a69:0x1111111111111111111111111111111111111111"
OTHER_ISSUER_DID = "did:ethr:0x7a69:0x2222222222222222222222222222222222222222"
CITIZEN_DID = "did:ethr:0x7a69:0x3333333333333333333333333333333333333333"
STATUS = StatusRef(31337, "0x" + "44" * 20, 1, 42)
SERVICE = "benefit-check"
CLAIMS = ("busan_resident", "age_over_65")


def _key(n: int) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(n, ec.SECP256R1())


ISSUER_KEY, OTHER_ISSUER_KEY, HOLDER_KEY, OTHER_HOLDER_KEY = _key(11), _key(12), _key(13), _key(14)


def point(k: ec.EllipticCurvePrivateKey) -> bytes:
    return P256PublicKey.from_crypto(k.public_key()).point


CITIZEN = CitizenClaims.derive(
    "김", "민수", date(1955, 3, 1), "Haeundae-gu", True, "BS-0000-0042", as_of=date(2027, 1, 1)
)


def make_credential(
    issuer_key: ec.EllipticCurvePrivateKey = ISSUER_KEY,
    holder: ec.EllipticCurvePrivateKey = HOLDER_KEY,
    iat: int = NOW - 3600,
    exp: int = NOW + 3600,
    issuer_did: str = ISSUER_DID,
) -> IssuedCredential:
    return issue(CITIZEN, point(holder), issuer_did, STATUS, LocalSigner(issuer_key), iat, exp, CITIZEN_DID)


CRED = make_credential()


class Env:
    def __init__(self) -> None:
        self.chain = StaticChainView(
            issuer_keys={ISSUER_DID: (point(ISSUER_KEY),), OTHER_ISSUER_DID: (point(OTHER_ISSUER_KEY),)},
            trusted={(ISSUER_DID, VCT)},
            holder_keys={CITIZEN_DID: (point(HOLDER_KEY),)},
        )
        self.nonces = NonceStore(ttl=120, clock=lambda: self.now)
        self.now: float = NOW
        self.verifier = Verifier(self.chain, AUD, self.nonces, clock=lambda: self.now, iat_window=60)

    def present(
        self,
        cred: IssuedCredential = CRED,
        claims: tuple[str, ...] = CLAIMS,
        aud: str = AUD,
        iat: int = NOW,
        holder: ec.EllipticCurvePrivateKey = HOLDER_KEY,
        nonce: str | None = None,
    ) -> str:
        nonce = nonce or self.nonces.issue(SERVICE)
        chosen = [d.encoded for d in cred.disclosures if d.name in claims]
        return sdjwt.present(cred.issuer_jwt, chosen, aud, nonce, iat, lambda b: jose.es256_sign(holder, b))

    def verify(self, presentation: str | bytes, claims: tuple[str, ...] = CLAIMS) -> Verdict:
        return self.verifier.verify(presentation, claims, SERVICE)


@pytest.fixture
def env() -> Env:
    return Env()


def assert_rejected(verdict: Verdict, check: CheckName, reason: str | None = None) -> None:
    assert not verdict.ok, verdict
    assert verdict.failed == check, verdict
    assert verdict.reason == (reason or f"verdict.reason.{check.value}")
    assert verdict.claims == {}
    assert verdict.message("en") and verdict.message("ko") != verdict.reason  # plain words exist


def test_valid_presentation(env: Env) -> None:
    v = env.verify(env.present())
    assert v.ok and v.failed is None and v.reason == "verdict.ok"
    assert v.claims == {"busan_resident": True, "age_over_65": True}
    assert v.subject == CITIZEN_DID and v.issuer == ISSUER_DID and v.kind == "card"
    assert v.message("ko") == "확인되었습니다."
    v.wipe()
    assert v.claims == {}


def test_only_requested_claims_returned(env: Env) -> None:
    v = env.verify(env.present(claims=("family_name", "given_name", "district")), ("family_name",))
    assert v.ok and v.claims == {"family_name": "김"}


def test_every_reason_key_has_both_languages() -> None:
    for key, texts in MESSAGES.items():
        assert set(texts) == {"en", "ko"}, key
    for check in CheckName:
        if check not in (CheckName.EXPIRY, CheckName.STATUS):
            assert f"verdict.reason.{check.value}" in MESSAGES


def _swap_disclosure_value(presentation: str, value: object) -> str:
    parts = presentation.split("~")
    salt, name, _ = json.loads(jose.b64url_decode(parts[1]))
    parts[1] = jose.b64url_encode(json.dumps([salt, name, value]).encode())
    return "~".join(parts)


def test_tampered_disclosure_breaks_sd_hash(env: Env) -> None:
    assert_rejected(env.verify(_swap_disclosure_value(env.present(), False)), CheckName.SD_HASH)


def test_tampered_disclosure_resigned_by_holder_fails_digest(env: Env) -> None:
    # the holder itself swaps a disclosure and signs a fresh KB-JWT: the issuer digests catch it
    nonce = env.nonces.issue(SERVICE)
    forged = sdjwt.create_disclosure("age_over_65", True)
    p = sdjwt.present(
        CRED.issuer_jwt, [forged.encoded], AUD, nonce, NOW, lambda b: jose.es256_sign(HOLDER_KEY, b)
    )
    assert_rejected(env.verify(p, ("age_over_65",)), CheckName.DISCLOSURES)


def test_tampered_issuer_payload(env: Env) -> None:
    h, p, s = CRED.issuer_jwt.split(".")
    payload = jose.decode_json_segment(p)
    payload["exp"] = NOW + 10**6
    cred = IssuedCredential(f"{h}.{jose.b64url_json(payload)}.{s}", CRED.disclosures, payload)
    assert_rejected(env.verify(env.present(cred)), CheckName.ISSUER_SIGNATURE)


def test_wrong_issuer_key(env: Env) -> None:
    # claims to be the city's issuer, signed by another key
    assert_rejected(
        env.verify(env.present(make_credential(issuer_key=OTHER_ISSUER_KEY))), CheckName.ISSUER_SIGNATURE
    )


def test_issuer_without_keys(env: Env) -> None:
    cred = make_credential(issuer_did="did:ethr:0x7a69:0x5555555555555555555555555555555555555555")
    assert_rejected(env.verify(env.present(cred)), CheckName.ISSUER_SIGNATURE)


def test_untrusted_issuer_for_vct(env: Env) -> None:
    cred = make_credential(issuer_key=OTHER_ISSUER_KEY, issuer_did=OTHER_ISSUER_DID)
    assert_rejected(env.verify(env.present(cred)), CheckName.ISSUER_TRUSTED)


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (CredentialStatus.REVOKED, "verdict.reason.revoked"),
        (CredentialStatus.SUSPENDED, "verdict.reason.suspended"),
    ],
)
def test_revoked_and_suspended(env: Env, status: CredentialStatus, reason: str) -> None:
    env.chain.statuses[(STATUS.list_id, STATUS.index)] = status
    assert_rejected(env.verify(env.present()), CheckName.STATUS, reason)


def test_other_index_revoked_does_not_matter(env: Env) -> None:
    env.chain.statuses[(STATUS.list_id, STATUS.index + 1)] = CredentialStatus.REVOKED
    assert env.verify(env.present()).ok


def test_expired(env: Env) -> None:
    assert_rejected(
        env.verify(env.present(make_credential(exp=NOW))), CheckName.EXPIRY, "verdict.reason.expired"
    )


def test_not_yet_valid(env: Env) -> None:
    cred = make_credential(iat=NOW + 3600, exp=NOW + 7200)
    assert_rejected(env.verify(env.present(cred)), CheckName.EXPIRY, "verdict.reason.not_yet_valid")


def test_replayed_nonce(env: Env) -> None:
    p = env.present()
    assert env.verify(p).ok
    assert_rejected(env.verify(p), CheckName.NONCE)


def test_unknown_nonce_and_other_service_and_expired_nonce(env: Env) -> None:
    assert_rejected(env.verify(env.present(nonce="not-issued-by-us-123")), CheckName.NONCE)
    other = env.nonces.issue("residence")
    assert_rejected(env.verify(env.present(nonce=other)), CheckName.NONCE)
    n = env.nonces.issue(SERVICE)
    env.now += 121
    assert_rejected(env.verify(env.present(nonce=n, iat=int(env.now))), CheckName.NONCE)


def test_forged_presentation_does_not_burn_nonce(env: Env) -> None:
    nonce = env.nonces.issue(SERVICE)
    assert_rejected(env.verify(env.present(nonce=nonce, holder=OTHER_HOLDER_KEY)), CheckName.KEY_BINDING)
    assert env.verify(env.present(nonce=nonce)).ok


def test_wrong_audience(env: Env) -> None:
    assert_rejected(env.verify(env.present(aud="https://kiosk.busan.go.kr/k2")), CheckName.AUDIENCE)


@pytest.mark.parametrize("delta", [-61, 61, -(10**6)])
def test_stale_or_future_iat(env: Env, delta: int) -> None:
    assert_rejected(env.verify(env.present(iat=NOW + delta)), CheckName.FRESHNESS)


def test_iat_window_edges_accepted(env: Env) -> None:
    assert env.verify(env.present(iat=NOW - 60)).ok
    assert env.verify(env.present(iat=NOW + 60)).ok


def test_kb_jwt_from_another_card(env: Env) -> None:
    assert_rejected(env.verify(env.present(holder=OTHER_HOLDER_KEY)), CheckName.KEY_BINDING)


def test_kb_jwt_swapped_between_presentations(env: Env) -> None:
    # another citizen's card signs over this SD-JWT: wrong key for cnf
    other_cred = make_credential(holder=OTHER_HOLDER_KEY)
    env.chain.holder_keys[CITIZEN_DID] = (point(HOLDER_KEY), point(OTHER_HOLDER_KEY))
    p_other = env.present(other_cred)
    p_mine = env.present()
    spliced = p_mine.rsplit("~", 1)[0] + "~" + p_other.rsplit("~", 1)[1]
    assert_rejected(env.verify(spliced), CheckName.SD_HASH)


def test_card_key_revoked_on_chain(env: Env) -> None:
    env.chain.holder_keys[CITIZEN_DID] = (point(OTHER_HOLDER_KEY),)
    assert_rejected(env.verify(env.present()), CheckName.HOLDER_KEY)


def test_status_unknown_beyond_staleness_bound(env: Env) -> None:
    env.chain.error = StaleChainDataError(900, 300)
    assert_rejected(env.verify(env.present()), CheckName.CHAIN)
    env.chain.error = ChainError("connection refused")
    assert_rejected(env.verify(env.present()), CheckName.CHAIN)


def _chain_faults() -> list[ChainError]:
    from cityid.chain.errors import MalformedReplyError, RpcTimeoutError
    from cityid.chain.live import ClockSkewError, InconsistentHistoryError, RewoundChainError
    from cityid.chain.proof import ProofError
    from cityid.chain.quorum import NoQuorumError
    from cityid.chain.sync import ChainResetError

    return [
        ClockSkewError("head in the future"),
        InconsistentHistoryError("forged log"),
        RewoundChainError("node rewound"),
        ProofError("bad proof"),
        NoQuorumError("nodes disagree"),
        ChainResetError("resyncing"),
        MalformedReplyError("deep JSON"),
        RpcTimeoutError("http://node", 5),
    ]


@pytest.mark.parametrize("fault", _chain_faults(), ids=lambda e: type(e).__name__)
def test_every_chain_fault_is_cannot_check_now(env: Env, fault: ChainError) -> None:
    """A lying, stale, rewound or hostile node is "this kiosk cannot check right now", never "invalid"."""
    env.chain.error = fault
    assert_rejected(env.verify(env.present()), CheckName.CHAIN, "verdict.reason.chain")


def test_verifier_own_staleness_bound(env: Env) -> None:
    v = Verifier(env.chain, AUD, env.nonces, clock=lambda: env.now, max_chain_age=300)
    env.chain.synced_at = NOW - 301
    assert_rejected(v.verify(env.present(), CLAIMS, SERVICE), CheckName.CHAIN)
    env.chain.synced_at = NOW - 299
    assert v.verify(env.present(), CLAIMS, SERVICE).ok


def test_missing_requested_claim(env: Env) -> None:
    assert_rejected(env.verify(env.present(claims=("busan_resident",))), CheckName.CLAIMS)


def test_oversized(env: Env) -> None:
    p = env.present()
    assert_rejected(env.verify(p + "A" * 20_000), CheckName.SIZE)
    assert_rejected(env.verify(("x" * 17_000).encode()), CheckName.SIZE)


def test_wrong_vct_and_typ(env: Env) -> None:
    _, p, _ = CRED.issuer_jwt.split(".")
    payload = jose.decode_json_segment(p)
    payload["vct"] = "https://example.com/other"
    ij = jose.sign_compact({"alg": "ES256", "typ": "dc+sd-jwt"}, payload, ISSUER_KEY)
    assert_rejected(env.verify(env.present(IssuedCredential(ij, CRED.disclosures, payload))), CheckName.TYPE)
    ij = jose.sign_compact({"alg": "ES256", "typ": "JWT"}, jose.decode_json_segment(p), ISSUER_KEY)
    assert_rejected(env.verify(env.present(IssuedCredential(ij, CRED.disclosures, payload))), CheckName.TYPE)


def test_missing_kb(env: Env) -> None:
    assert_rejected(env.verify(CRED.sd_jwt), CheckName.FORMAT)


def test_disclosing_registered_claim_rejected(env: Env) -> None:
    nonce = env.nonces.issue(SERVICE)
    bad = sdjwt.create_disclosure("iss", OTHER_ISSUER_DID).encoded
    p = sdjwt.present(CRED.issuer_jwt, [bad], AUD, nonce, NOW, lambda b: jose.es256_sign(HOLDER_KEY, b))
    assert_rejected(env.verify(p, ()), CheckName.DISCLOSURES)


@pytest.mark.parametrize(
    "bad",
    ["", "~", "a~b", "a.b.c~", "a.b.c~~x.y.z", "\u00e9.b.c~x.y.z", b"\xff\xfe~", "e30.e30.AA~e30.e30.AA"],
)
def test_malformed(env: Env, bad: str | bytes) -> None:
    assert_rejected(env.verify(bad), CheckName.FORMAT)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from('ab.~_-=Q é0{}"[]:,e3'), max_size=200) | st.binary(max_size=200))
def test_random_input_gives_a_verdict(data: str | bytes) -> None:
    v = Env().verify(data)
    assert not v.ok and v.failed is not None


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_random_mutation_of_valid_presentation_is_rejected(data: st.DataObject) -> None:
    env = Env()
    p = env.present()
    i = data.draw(st.integers(0, len(p) - 1))
    c = data.draw(st.sampled_from("AQgz09_-.~"))
    if p[i] == c:
        return
    mutated = p[:i] + c + p[i + 1 :]
    v = env.verify(mutated)
    assert not v.ok, (i, c)


# --- FIDO assertion-bound presentations -------------------------------------------------------------


def fido_present(
    env: Env,
    holder: ec.EllipticCurvePrivateKey = HOLDER_KEY,
    flags: int = 0x05,
    origin: str = "https://id.busan.go.kr",
    rp_id: str = "id.busan.go.kr",
    challenge_aud: str = AUD,
) -> str:
    nonce = env.nonces.issue(SERVICE)
    chosen = [d.encoded for d in CRED.disclosures if d.name in CLAIMS]
    sdh = sdjwt.sd_hash(sdjwt.presentation_without_kb(CRED.issuer_jwt, chosen))
    challenge = assertion_challenge(challenge_aud, nonce, NOW, sdh)
    cdj = json.dumps(
        {
            "type": "webauthn.get",
            "challenge": jose.b64url_encode(challenge),
            "origin": origin,
            "crossOrigin": False,
        }
    ).encode()
    auth_data = hashlib.sha256(rp_id.encode()).digest() + bytes([flags]) + (7).to_bytes(4, "big")
    der = holder.sign(auth_data + hashlib.sha256(cdj).digest(), ec.ECDSA(hashes.SHA256()))
    kb = webauthn_kb_jwt(AUD, nonce, NOW, sdh, auth_data, cdj, der)
    return sdjwt.assemble(CRED.issuer_jwt, chosen, kb)


def test_fido_presentation_ok(env: Env) -> None:
    v = env.verify(fido_present(env))
    assert v.ok and v.kind == "fido" and v.claims == {"busan_resident": True, "age_over_65": True}


def test_fido_replay(env: Env) -> None:
    p = fido_present(env)
    assert env.verify(p).ok
    assert_rejected(env.verify(p), CheckName.NONCE)


def test_fido_rejections(env: Env) -> None:
    assert_rejected(env.verify(fido_present(env, holder=OTHER_HOLDER_KEY)), CheckName.KEY_BINDING)
    assert_rejected(env.verify(fido_present(env, flags=0x01)), CheckName.USER_VERIFICATION)
    assert_rejected(env.verify(fido_present(env, origin="https://evil.example")), CheckName.AUDIENCE)
    assert_rejected(env.verify(fido_present(env, rp_id="evil.example")), CheckName.AUDIENCE)
    assert_rejected(env.verify(fido_present(env, challenge_aud="other-kiosk")), CheckName.KEY_BINDING)
    env.chain.holder_keys[CITIZEN_DID] = ()
    assert_rejected(env.verify(fido_present(env)), CheckName.HOLDER_KEY)


# --- structurally valid JOSE with arbitrary JSON inside: always a verdict, never an exception --------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=8) | st.sampled_from(
        ["ES256", "dc+sd-jwt", "kb+jwt", "webauthn-kb+jwt", VCT, ISSUER_DID, CITIZEN_DID, AUD, "sha-256"]
    ),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["alg", "typ", "iss", "sub", "exp", "iat", "nbf", "vct", "cnf", "jwk", "status",
                         "status_list", "idx", "uri", "_sd", "_sd_alg", "aud", "nonce", "sd_hash", "webauthn",
                         "authenticatorData", "clientDataJSON", "...", "x", "y", "kty", "crv"]),
        inner, max_size=6),
    max_leaves=8,
)  # fmt: skip


def _seg(obj: object) -> str:
    return jose.b64url_encode(json.dumps(obj).encode())


@settings(max_examples=120, deadline=None)
@given(st.data())
def test_arbitrary_json_in_valid_structure_gives_a_verdict(data: st.DataObject) -> None:
    env = Env()
    real = jose.parse_compact(CRED.issuer_jwt)
    header = data.draw(st.sampled_from([real.header, {"alg": "ES256", "typ": "dc+sd-jwt"}]) | _json)
    payload = data.draw(st.just(dict(real.payload)) | _json)
    if isinstance(payload, dict) and data.draw(st.booleans()):
        payload.update(data.draw(st.dictionaries(st.sampled_from(list(real.payload)), _json, max_size=3)))
    kb_header = data.draw(st.sampled_from([{"alg": "ES256", "typ": "kb+jwt"},
                                           {"alg": "ES256", "typ": "webauthn-kb+jwt"}]) | _json)  # fmt: skip
    kb_payload = data.draw(
        st.fixed_dictionaries({"iat": st.just(NOW) | _json, "aud": st.just(AUD) | _json,
                               "nonce": st.just("n" * 22) | _json, "sd_hash": _json,
                               "webauthn": st.fixed_dictionaries({"authenticatorData": _json,
                                                                  "clientDataJSON": _json}) | _json})
        | _json
    )  # fmt: skip
    disclosures = data.draw(st.lists(_json.map(_seg) | st.sampled_from([d.encoded for d in CRED.disclosures]),
                                     max_size=3))  # fmt: skip
    sig = jose.b64url_encode(bytes(64))
    p = sdjwt.assemble(
        f"{_seg(header)}.{_seg(payload)}.{sig}", disclosures, f"{_seg(kb_header)}.{_seg(kb_payload)}.{sig}"
    )
    v = env.verify(p)
    assert isinstance(v, Verdict) and not v.ok
