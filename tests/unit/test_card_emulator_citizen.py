"""The citizen applet (docs/card-profile.md) in process: personalization behind the management key, GET INFO,
and PRESENT — only requested disclosures, a KB-JWT over exactly them signed by the 9A key, PIN always."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cityid import jose, sdjwt
from cityid.citizen import (
    CredentialRecord,
    InfoTag,
    Ins,
    PresentRequest,
    StoredDisclosure,
)
from cityid.piv import pad_pin
from cityid.tlv import Tlv, parse_tlv_dict
from tests.emukit import Card

ISSUER = ec.generate_private_key(ec.SECP256R1())
CLAIMS = {"family_name": "김", "given_name": "민수", "age_over_65": True, "district": "Haeundae-gu"}
DID = "did:ethr:0x7a69:0x3333333333333333333333333333333333333333"


def make_record(holder_point: bytes) -> CredentialRecord:
    """A small SD-JWT VC made here: every claim selectively disclosable, holder key in cnf."""
    discs = [sdjwt.create_disclosure(k, v) for k, v in CLAIMS.items()]
    payload = {
        "iss": "did:ethr:0x7a69:0x1111111111111111111111111111111111111111",
        "vct": "urn:busan:citizen:1",
        "_sd_alg": "sha-256",
        "_sd": sorted(d.digest for d in discs),
        "cnf": {"jwk": jose.jwk_from_point(holder_point)},
    }
    issuer_jwt = jose.sign_compact({"alg": "ES256", "typ": "dc+sd-jwt"}, payload, ISSUER)
    return CredentialRecord(
        issuer_jwt, tuple(StoredDisclosure(d.name or "", d.encoded) for d in discs), "urn:busan:citizen:1"
    )


def personalize(card: Card, activate: bool = True) -> tuple[CredentialRecord, bytes]:
    card.select_piv()
    assert card.authenticate() == 0x9000
    resp, sw = card.generate()
    assert sw == 0x9000
    point = parse_tlv_dict(Tlv.unpack(0x7F49, resp))[0x86]
    record = make_record(point)
    card.select_citizen()
    assert card.authenticate() == 0x9000
    assert card.sw(0x80, Ins.PUT_DID, 0, 0, DID.encode())[1] == 0x9000
    assert card.sw(0x80, Ins.PUT_CREDENTIAL, 0, 0, record.encode())[1] == 0x9000
    if activate:
        assert card.sw(0x80, Ins.ACTIVATE, 0, 0)[1] == 0x9000  # the last personalization step
    return record, point


@pytest.fixture
def card(tmp_path: Path) -> Card:
    return Card(tmp_path / "card.json")


def _present(card: Card, claims: tuple[str, ...], nonce: str = "n-0123456789", iat: int = 1_800_000_000):
    req = PresentRequest(claims, nonce, "https://kiosk.busan.go.kr/k1", iat)
    return card.sw(0x80, Ins.PRESENT, 0, 0, req.encode())


def test_get_info_before_and_after_personalization(card: Card) -> None:
    card.select_citizen()
    info = parse_tlv_dict(card.p.send_apdu(0x80, Ins.GET_INFO, 0, 0))
    assert info[InfoTag.VERSION] == b"\x01\x00" and len(info[InfoTag.SERIAL]) == 8
    assert InfoTag.DID not in info and InfoTag.CLAIMS not in info
    assert info[InfoTag.PIN_TRIES] == b"\x03" and info[InfoTag.HOLDER_KEY_SLOT] == b"\x9a"
    personalize(card)
    info = parse_tlv_dict(card.p.send_apdu(0x80, Ins.GET_INFO, 0, 0))
    assert info[InfoTag.DID].decode() == DID
    assert info[InfoTag.CREDENTIAL_VCT] == b"urn:busan:citizen:1"
    assert info[InfoTag.CLAIMS].decode().split("\x00") == list(CLAIMS)
    assert card.sw(0x80, Ins.GET_INFO, 1, 0)[1] == 0x6A86
    assert card.sw(0x00, Ins.GET_INFO, 0, 0)[1] == 0x6E00


def test_present_discloses_only_requested_claims_with_valid_kb_jwt(card: Card) -> None:
    record, holder = personalize(card)
    assert _present(card, ("age_over_65",))[1] == 0x6982  # PIN first
    assert card.verify() == 0x9000
    data, sw = _present(card, ("age_over_65", "district"))
    assert sw == 0x9000
    text = Tlv.unpack(0x53, data).decode("ascii")
    issuer_jwt, disclosures, kb_jwt = sdjwt.split(text)
    assert issuer_jwt == record.issuer_jwt
    names = {sdjwt.parse_disclosure(d).name for d in disclosures}
    assert names == {"age_over_65", "district"}
    assert "민수" not in json.dumps(
        [sdjwt.parse_disclosure(d).value for d in disclosures], ensure_ascii=False
    )
    kb = jose.parse_compact(kb_jwt)
    assert kb.header == {"alg": "ES256", "typ": "kb+jwt"}
    assert kb.payload == {
        "iat": 1_800_000_000,
        "aud": "https://kiosk.busan.go.kr/k1",
        "nonce": "n-0123456789",
        "sd_hash": sdjwt.sd_hash(sdjwt.presentation_without_kb(issuer_jwt, disclosures)),
    }
    assert jose.es256_verify(holder, kb.signing_input, kb.signature)
    # PIN always: a second PRESENT needs a second VERIFY.
    assert _present(card, ("age_over_65",))[1] == 0x6982
    card.verify()
    assert _present(card, ("age_over_65",))[1] == 0x9000


def test_present_errors(card: Card) -> None:
    card.select_citizen()
    card.verify()
    assert _present(card, ("age_over_65",))[1] == 0x6985  # no credential yet
    personalize(card)
    card.verify()
    assert _present(card, ("passport_number",))[1] == 0x6A88
    card.verify()
    assert card.sw(0x80, Ins.PRESENT, 0, 0, b"\x7d\x01")[1] == 0x6A80
    card.verify()
    assert _present(card, ("age_over_65",), nonce="short")[1] == 0x6A80
    card.verify()
    assert card.sw(0x80, Ins.PRESENT, 1, 0, b"")[1] == 0x6A86
    assert card.sw(0x80, 0x51, 0, 0)[1] == 0x6D00


def test_personalization_needs_management_key_and_valid_data(card: Card) -> None:
    card.select_citizen()
    assert card.sw(0x80, Ins.PUT_DID, 0, 0, DID.encode())[1] == 0x6982
    assert card.sw(0x80, Ins.ERASE, 0, 0)[1] == 0x6982
    card.verify()  # the PIN is not enough
    assert card.sw(0x80, Ins.PUT_CREDENTIAL, 0, 0, b"\x70\x00")[1] == 0x6982
    assert card.authenticate() == 0x9000
    assert card.sw(0x80, Ins.PUT_DID, 0, 0, b"not-a-did")[1] == 0x6A80
    assert card.sw(0x80, Ins.PUT_DID, 0, 0, b"did:\xff")[1] == 0x6A80
    assert card.sw(0x80, Ins.PUT_CREDENTIAL, 0, 0, b"\x70\x03\x71\x01a")[1] == 0x6A80
    assert card.sw(0x80, Ins.PUT_CREDENTIAL, 0, 0, bytes(9000))[1] == 0x6A84
    assert card.sw(0x80, Ins.ERASE, 0, 0)[1] == 0x9000


def test_erase_and_persistence(tmp_path: Path) -> None:
    card = Card(tmp_path / "card.json")
    record, _ = personalize(card)
    again = Card(tmp_path / "card.json")
    again.select_citizen()
    info = parse_tlv_dict(again.p.send_apdu(0x80, Ins.GET_INFO, 0, 0))
    assert info[InfoTag.DID].decode() == DID
    again.verify()
    assert _present(again, ("district",))[1] == 0x9000
    again.authenticate()
    assert again.sw(0x80, Ins.ERASE, 0, 0)[1] == 0x9000
    third = Card(tmp_path / "card.json")
    third.select_citizen()
    info = parse_tlv_dict(third.p.send_apdu(0x80, Ins.GET_INFO, 0, 0))
    assert InfoTag.DID not in info and InfoTag.CLAIMS not in info
    assert record.issuer_jwt not in (tmp_path / "card.json").read_text()


def test_pin_shared_between_applets(card: Card) -> None:
    card.select_citizen()
    assert card.verify(b"999999") == 0x63C2
    card.select_piv()
    assert card.sw(0, 0x20, 0, 0x80)[1] == 0x63C2
    card.select_citizen()
    assert card.sw(0, 0x20, 0, 0x80)[1] == 0x63C2
    assert card.verify() == 0x9000
    assert card.sw(0, 0x20, 0, 0x80)[1] == 0x9000
    assert card.sw(0, 0x20, 0xFF, 0x80)[1] == 0x9000
    assert card.sw(0, 0x20, 0, 0x80)[1] == 0x63C3


@pytest.mark.parametrize(
    ("p1", "p2", "data", "sw"),
    [
        (0x00, 0x80, b"", 0x63C3),  # status
        (0x00, 0x80, pad_pin(b"123456"), 0x9000),
        (0xFF, 0x80, b"", 0x9000),  # reset the verified status
        (0xFF, 0x80, pad_pin(b"123456"), 0x6700),
        (0x00, 0x80, b"12345678\xff", 0x6A80),
        (0x01, 0x80, pad_pin(b"123456"), 0x6A86),
        (0x00, 0x00, pad_pin(b"123456"), 0x6A88),  # global PIN: no such key reference
        (0x00, 0x00, b"", 0x6A88),
        (0x00, 0x81, pad_pin(b"12345678"), 0x6A88),  # the PUK is not a VERIFY reference
        (0x00, 0x96, b"", 0x6A88),  # OCC
        (0x00, 0x98, b"", 0x6A88),  # pairing code
        (0x01, 0x00, b"", 0x6A86),  # P1 is checked first
    ],
)
def test_verify_answers_alike_in_both_applets(card: Card, p1: int, p2: int, data: bytes, sw: int) -> None:
    """SP 800-73-4 Part 2 §3.2.1: one VERIFY, the same status word from the PIV and the citizen applet."""
    seen = []
    for select in (card.select_piv, card.select_citizen):
        select()
        seen.append(card.sw(0, 0x20, p1, p2, data)[1])
        card.sw(0, 0x20, 0xFF, 0x80)
    assert seen == [sw, sw]
    assert card.card.applets[0].security.pin_tries == 3  # no malformed VERIFY cost a try


def test_long_credential_through_chaining(card: Card) -> None:
    card.select_piv()
    card.authenticate()
    point = parse_tlv_dict(Tlv.unpack(0x7F49, card.generate()[0]))[0x86]
    base = make_record(point)
    extra = tuple(
        StoredDisclosure(f"extra_{i}", sdjwt.create_disclosure(f"extra_{i}", "x" * 300).encoded)
        for i in range(10)
    )
    record = CredentialRecord(base.issuer_jwt, base.disclosures + extra, base.vct)
    assert len(record.encode()) > 4000
    card.select_citizen()
    card.authenticate()
    assert card.sw(0x80, Ins.PUT_CREDENTIAL, 0, 0, record.encode())[1] == 0x9000
    assert card.sw(0x80, Ins.ACTIVATE, 0, 0)[1] == 0x9000
    card.verify()
    claims = tuple(f"extra_{i}" for i in range(10))
    data, sw = _present(card, claims)
    assert sw == 0x9000 and len(data) > 4000  # answered through 61xx / GET RESPONSE
    _, disclosures, _ = sdjwt.split(Tlv.unpack(0x53, data).decode())
    assert len(disclosures) == 10


@pytest.fixture(scope="module")
def personalized() -> tuple[Card, CredentialRecord, bytes]:
    card = Card(None)
    record, point = personalize(card)
    return card, record, point


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    claims=st.lists(st.sampled_from([*CLAIMS, "passport_number"]), min_size=1, max_size=5, unique=True),
    nonce=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=8, max_size=64),
    iat=st.integers(0, 2**40),
)
def test_present_any_subset_discloses_exactly_it(
    personalized: tuple[Card, CredentialRecord, bytes], claims: list[str], nonce: str, iat: int
) -> None:
    card, record, holder = personalized
    card.select_citizen()
    assert card.verify() == 0x9000
    data, sw = _present(card, tuple(claims), nonce=nonce, iat=iat)
    if "passport_number" in claims:
        assert (data, sw) == (b"", 0x6A88)  # an unknown claim: nothing leaves the card
        return
    assert sw == 0x9000
    issuer_jwt, disclosures, kb_jwt = sdjwt.split(Tlv.unpack(0x53, data).decode("ascii"))
    assert issuer_jwt == record.issuer_jwt
    assert sorted(sdjwt.parse_disclosure(d).name or "" for d in disclosures) == sorted(claims)
    kb = jose.parse_compact(kb_jwt)
    assert kb.payload["nonce"] == nonce and kb.payload["iat"] == iat
    assert kb.payload["sd_hash"] == sdjwt.sd_hash(sdjwt.presentation_without_kb(issuer_jwt, disclosures))
    assert jose.es256_verify(holder, kb.signing_input, kb.signature)
