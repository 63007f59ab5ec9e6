"""The emulator's PIV applet through the shared APDU pipeline (SP 800-73-4 Part 2 §3), no daemons."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from cityid.piv import PIV_AID, Algorithm, Slot, pad_pin
from cityid.tlv import Tlv, encode_tlv, parse_tlv_dict
from tests.emukit import Card, ecb

DEFAULT_MGMT = bytes.fromhex("010203040506070801020304050607080102030405060708")


@pytest.fixture
def card(tmp_path: Path) -> Card:
    c = Card(tmp_path / "card.json")
    c.select_piv()
    return c


def _point(resp: bytes) -> bytes:
    return parse_tlv_dict(Tlv.unpack(0x7F49, resp))[0x86]


def _sign(card: Card, digest: bytes, slot: int = Slot.AUTHENTICATION, alg: int = Algorithm.ECC_P256):
    body = encode_tlv(0x7C, encode_tlv(0x82, b"") + encode_tlv(0x81, digest))
    data, sw = card.sw(0, 0x87, alg, slot, body)
    if sw != 0x9000:
        return None, sw
    return parse_tlv_dict(Tlv.unpack(0x7C, data))[0x82], sw


def test_select_returns_application_property_template(card: Card) -> None:
    apt = parse_tlv_dict(Tlv.unpack(0x61, card.select_piv()))
    assert apt[0x4F] == PIV_AID[5:]
    assert Tlv.unpack(0x4F, apt[0x79]) == PIV_AID[:5]
    algs = [t.value[0] for t in Tlv.parse(encode_tlv(0xAC, apt[0xAC]))[0].children() if t.tag == 0x80]
    assert Algorithm.ECC_P256 in algs and Algorithm.TDEA_3KEY in algs
    assert card.p.select(PIV_AID[:9])  # the truncated AID middleware uses


def test_objects_middleware_reads(card: Card) -> None:
    disc = card.p.send_apdu(0, 0xCB, 0x3F, 0xFF, bytes.fromhex("5C017E"))
    assert parse_tlv_dict(Tlv.unpack(0x7E, disc))[0x4F] == PIV_AID
    chuid = parse_tlv_dict(
        Tlv.unpack(0x53, card.p.send_apdu(0, 0xCB, 0x3F, 0xFF, bytes.fromhex("5C035FC102")))
    )
    assert len(chuid[0x30]) == 25 and len(chuid[0x34]) == 16
    ccc = Tlv.unpack(0x53, card.p.send_apdu(0, 0xCB, 0x3F, 0xFF, bytes.fromhex("5C035FC107")))
    assert parse_tlv_dict(ccc)[0xF0][:7] == bytes.fromhex("A000000116FF02")
    assert card.sw(0, 0xCB, 0x3F, 0xFF, bytes.fromhex("5C035FC105")) == (b"", 0x6A82)  # no cert yet
    assert card.sw(0, 0xCB, 0x3F, 0xFF, bytes.fromhex("5C035FC109"))[1] == 0x6982  # printed info: PIN
    assert card.sw(0, 0xCB, 0x00, 0x00, bytes.fromhex("5C017E"))[1] == 0x6A86
    assert card.sw(0, 0xCB, 0x3F, 0xFF, bytes.fromhex("5C"))[1] == 0x6A80


def test_pin_tries_block_and_unblock_with_puk(card: Card) -> None:
    assert card.sw(0, 0x20, 0, 0x80) == (b"", 0x63C3)
    assert card.verify(b"000000") == 0x63C2
    assert card.verify(b"123456") == 0x9000
    assert card.sw(0, 0x20, 0, 0x80)[1] == 0x9000  # verified
    assert card.sw(0, 0x20, 0xFF, 0x80)[1] == 0x9000  # reset the security status
    assert card.sw(0, 0x20, 0, 0x80)[1] == 0x63C3  # a correct PIN restored the tries
    assert [card.verify(b"000000") for _ in range(4)] == [0x63C2, 0x63C1, 0x63C0, 0x6983]
    assert card.verify(b"123456") == 0x6983
    assert card.sw(0, 0x20, 0, 0x80)[1] == 0x6983
    # RESET RETRY COUNTER with a wrong PUK costs a PUK try; the right one sets a new PIN.
    assert card.sw(0, 0x2C, 0, 0x80, pad_pin(b"87654321") + pad_pin(b"654321"))[1] == 0x63C2
    assert card.sw(0, 0x2C, 0, 0x80, pad_pin(b"12345678") + pad_pin(b"654321"))[1] == 0x9000
    assert card.verify(b"123456") == 0x63C2
    assert card.verify(b"654321") == 0x9000


def test_change_pin_and_puk_rules(card: Card) -> None:
    assert card.sw(0, 0x24, 0, 0x80, pad_pin(b"123456") + pad_pin(b"24681357"))[1] == 0x9000
    assert card.verify(b"123456") == 0x63C2
    assert card.verify(b"24681357") == 0x9000
    assert card.sw(0, 0x24, 0, 0x80, pad_pin(b"24681357") + b"12a4\xff\xff\xff\xff")[1] == 0x6A80
    assert card.sw(0, 0x24, 0, 0x80, pad_pin(b"24681357") + b"1234\xff\xff\xff\xff")[1] == 0x6A80
    assert card.sw(0, 0x24, 0, 0x81, pad_pin(b"12345678") + pad_pin(b"11223344"))[1] == 0x9000
    assert card.sw(0, 0x24, 0, 0x81, pad_pin(b"12345678") + pad_pin(b"11223344"))[1] == 0x63C2
    assert card.sw(0, 0x24, 0, 0x80, b"short")[1] == 0x6A80
    assert card.sw(0, 0x20, 0, 0x00, pad_pin(b"24681357"))[1] == 0x6A88  # no global PIN
    assert card.sw(0, 0x20, 0, 0x80, b"12345678\xff")[1] == 0x6A80


@pytest.mark.parametrize("set_aes", [False, True])
def test_random_challenge_as_opensc_generate_random_sends_it(card: Card, set_aes: bool) -> None:
    """OpenSC's C_GenerateRandom: GENERAL AUTHENTICATE 00 87 00 9B 04 7C 02 81 00 00 (P1 00 = 3DES in
    SP 800-78-4 Table 6-2, taken as the card's management-key algorithm); answered 7C { 81 <one block> }."""
    block = 8
    if set_aes:
        key = bytes(range(16))
        assert card.authenticate() == 0x9000
        assert card.sw(0, 0xFF, 0xFF, 0xFF, bytes([Algorithm.AES_128, 0x9B, 16]) + key)[1] == 0x9000
        block = 16
    seen = set()
    for _ in range(4):
        raw = card.card.transmit(bytes.fromhex("0087009B047C02810000"))  # the bytes OpenSC sends
        data, sw = raw[:-2], int.from_bytes(raw[-2:], "big")
        assert sw == 0x9000
        challenge = parse_tlv_dict(Tlv.unpack(0x7C, data))[0x81]
        assert len(challenge) == block
        seen.add(challenge)
    assert len(seen) == 4  # fresh randomness every time
    # P1 00 also completes a one-way authentication with the current key (nothing else changes meaning)
    alg, key = (Algorithm.AES_128, bytes(range(16))) if set_aes else (Algorithm.TDEA_3KEY, DEFAULT_MGMT)
    card.sw(0, 0x87, 0x00, 0x9B, bytes.fromhex("7C028100"))
    wrong = encode_tlv(0x7C, encode_tlv(0x82, bytes(block)))
    assert card.sw(0, 0x87, 0x00, 0x9B, wrong)[1] == 0x6982
    assert card.sw(0, 0x87, 0x00, 0x9B, wrong)[1] == 0x6985  # the failed attempt consumed the challenge
    assert card.generate()[1] == 0x6982
    data, _ = card.sw(0, 0x87, 0x00, 0x9B, bytes.fromhex("7C028100"))
    challenge = parse_tlv_dict(Tlv.unpack(0x7C, data))[0x81]
    response = encode_tlv(0x7C, encode_tlv(0x82, ecb(alg, key, challenge)))
    assert card.sw(0, 0x87, 0x00, 0x9B, response)[1] == 0x9000
    assert card.generate()[1] == 0x9000  # authenticated
    assert card.sw(0, 0x87, 0x01, 0x9B, bytes.fromhex("7C028100"))[1] == 0x6A86  # 01 is no algorithm


def test_pin_never_stored_in_clear(card: Card) -> None:
    card.sw(0, 0x24, 0, 0x80, pad_pin(b"123456") + pad_pin(b"97531864"))
    text = Path(card.state).read_text()
    assert "97531864" not in text and b"97531864".hex() not in text
    assert b"123456".hex() not in text and b"12345678".hex() not in text


@pytest.mark.parametrize(
    ("alg", "key"),
    [
        (Algorithm.TDEA_3KEY, bytes.fromhex("010203040506070801020304050607080102030405060708")),
        (Algorithm.AES_128, bytes(range(16))),
        (Algorithm.AES_256, bytes(range(32))),
    ],
)
def test_management_key_gates_admin_operations(card: Card, alg: int, key: bytes) -> None:
    put = encode_tlv(0x5C, bytes.fromhex("5FC109")) + encode_tlv(0x53, b"printed")
    assert card.sw(0, 0xDB, 0x3F, 0xFF, put)[1] == 0x6982
    assert card.generate()[1] == 0x6982
    assert card.authenticate() == 0x9000
    if alg != Algorithm.TDEA_3KEY:  # Yubico SET MANAGEMENT KEY, then authenticate with the new one
        assert card.sw(0, 0xFF, 0xFF, 0xFF, bytes([alg, 0x9B, len(key)]) + key)[1] == 0x9000
        assert card.authenticate() == 0x6A86  # the old algorithm is no longer accepted
        assert card.authenticate(bytes(len(key)), alg) == 0x6982  # wrong key
        assert card.authenticate(key, alg) == 0x9000
    assert card.sw(0, 0xDB, 0x3F, 0xFF, put)[1] == 0x9000
    card.verify()
    assert card.p.send_apdu(0, 0xCB, 0x3F, 0xFF, bytes.fromhex("5C035FC109")) == encode_tlv(0x53, b"printed")


def test_management_key_wrong_witness_and_out_of_order(card: Card) -> None:
    # Step 2 without step 1.
    body = encode_tlv(0x7C, encode_tlv(0x80, bytes(8)) + encode_tlv(0x81, bytes(8)))
    assert card.sw(0, 0x87, 0x03, 0x9B, body)[1] == 0x6985
    # Step 1, then a wrong witness.
    assert card.sw(0, 0x87, 0x03, 0x9B, encode_tlv(0x7C, encode_tlv(0x80, b"")))[1] == 0x9000
    assert card.sw(0, 0x87, 0x03, 0x9B, body)[1] == 0x6982
    assert card.generate()[1] == 0x6982
    # One-way: 81 00 -> challenge, 82 E(challenge).
    data, sw = card.sw(0, 0x87, 0x03, 0x9B, encode_tlv(0x7C, encode_tlv(0x81, b"")))
    assert sw == 0x9000
    challenge = Tlv.unpack(0x81, Tlv.unpack(0x7C, data))
    key = bytes.fromhex("010203040506070801020304050607080102030405060708")
    resp = encode_tlv(0x7C, encode_tlv(0x82, ecb(Algorithm.TDEA_3KEY, key, challenge)))
    assert card.sw(0, 0x87, 0x03, 0x9B, resp) == (b"", 0x9000)
    assert card.generate()[1] == 0x9000
    assert card.sw(0, 0x87, 0x03, 0x9B, b"\x7c\x03\x80")[1] == 0x6A80


def test_generate_and_sign_p256_with_pin(card: Card) -> None:
    assert _sign(card, bytes(32))[1] == 0x6A88  # fresh card: no 9A key
    card.authenticate()
    resp, sw = card.generate()
    assert sw == 0x9000
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), _point(resp))
    digest = hashes.Hash(hashes.SHA256())
    digest.update(b"hello")
    d = digest.finalize()
    assert _sign(card, d)[1] == 0x6982  # PIN first
    card.verify()
    sig, sw = _sign(card, d)
    assert sw == 0x9000
    public.verify(sig, d, ec.ECDSA(Prehashed(hashes.SHA256())))
    sig2, _ = _sign(card, d)  # 9A: PIN once per session
    public.verify(sig2, d, ec.ECDSA(Prehashed(hashes.SHA256())))
    assert _sign(card, d, alg=Algorithm.ECC_P384)[1] == 0x6A86  # algorithm does not match the key
    assert card.sw(0, 0x87, 0x11, 0x9A, encode_tlv(0x7C, encode_tlv(0x81, d)))[1] == 0x6A80


def test_signature_slot_is_pin_always_and_card_auth_needs_the_pin(card: Card) -> None:
    """9C: PIN always. 9E: the PIN too on this card (SP 800-73-4 lets anyone use it; a key anyone can make
    sign is a card identifier — docs/card-profile.md §PIV access rules)."""
    card.authenticate()
    card.generate(Slot.SIGNATURE)
    card.generate(Slot.CARD_AUTH)
    card.verify()
    assert _sign(card, bytes(32), Slot.SIGNATURE)[1] == 0x9000
    assert _sign(card, bytes(32), Slot.SIGNATURE)[1] == 0x6982
    assert _sign(card, bytes(32), Slot.CARD_AUTH)[1] == 0x6982
    card.verify()
    assert _sign(card, bytes(32), Slot.CARD_AUTH)[1] == 0x9000  # PIN once, like 9A
    assert _sign(card, bytes(32), Slot.CARD_AUTH)[1] == 0x9000
    card.sw(0, 0x20, 0xFF, 0x80)
    assert _sign(card, bytes(32), Slot.CARD_AUTH)[1] == 0x6982


def test_ecdh_with_key_management_slot(card: Card) -> None:
    card.authenticate()
    resp, _ = card.generate(Slot.KEY_MANAGEMENT)
    card_pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), _point(resp))
    peer = ec.generate_private_key(ec.SECP256R1())
    peer_point = peer.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    card.verify()
    body = encode_tlv(0x7C, encode_tlv(0x82, b"") + encode_tlv(0x85, peer_point))
    data = card.p.send_apdu(0, 0x87, 0x11, 0x9D, body)
    assert Tlv.unpack(0x82, Tlv.unpack(0x7C, data)) == peer.exchange(ec.ECDH(), card_pub)


def test_rsa2048_generate_and_raw_sign(card: Card) -> None:
    card.authenticate()
    resp, sw = card.generate(Slot.SIGNATURE, Algorithm.RSA_2048)
    assert sw == 0x9000  # long answer came back through 61xx / GET RESPONSE
    fields = parse_tlv_dict(Tlv.unpack(0x7F49, resp))
    public = rsa.RSAPublicNumbers(int.from_bytes(fields[0x82], "big"), int.from_bytes(fields[0x81], "big"))
    key = public.public_key()
    digest_info = bytes.fromhex("3031300d060960864801650304020105000420") + bytes(32)
    block = b"\x00\x01" + b"\xff" * (256 - 3 - len(digest_info)) + b"\x00" + digest_info
    card.verify()
    sig, sw = _sign(card, block, Slot.SIGNATURE, Algorithm.RSA_2048)
    assert sw == 0x9000
    key.verify(sig, bytes(32), padding.PKCS1v15(), Prehashed(hashes.SHA256()))


def test_state_survives_restart(tmp_path: Path) -> None:
    c = Card(tmp_path / "card.json")
    c.select_piv()
    c.authenticate()
    point = _point(c.generate()[0])
    cert = encode_tlv(0x70, b"\x30\x03\x02\x01\x01") + encode_tlv(0x71, b"\x00")
    c.p.send_apdu(0, 0xDB, 0x3F, 0xFF, encode_tlv(0x5C, bytes.fromhex("5FC105")) + encode_tlv(0x53, cert))
    c.verify(b"111111")
    again = Card(tmp_path / "card.json")  # a new emulator process on the same state file
    again.select_piv()
    assert again.sw(0, 0x20, 0, 0x80)[1] == 0x63C2  # the failed try was persisted, the session was not
    assert again.p.send_apdu(0, 0xCB, 0x3F, 0xFF, bytes.fromhex("5C035FC105")) == encode_tlv(0x53, cert)
    again.verify()
    sig, sw = _sign(again, bytes(32))
    assert sw == 0x9000
    ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point).verify(
        sig, bytes(32), ec.ECDSA(Prehashed(hashes.SHA256()))
    )
    state = json.loads((tmp_path / "card.json").read_text())
    assert set(state["sections"]) >= {"security", "piv"}


def test_put_data_validation(card: Card) -> None:
    card.authenticate()
    assert card.sw(0, 0xDB, 0x3F, 0xFF, encode_tlv(0x5C, b"\x7e") + encode_tlv(0x53, b"x"))[1] == 0x6A80
    assert card.sw(0, 0xDB, 0x3F, 0xFF, encode_tlv(0x53, b"x"))[1] == 0x6A80
    assert card.sw(0, 0xDB, 0x3F, 0xFF, b"\x5c\x03\x5f")[1] == 0x6A80
    big = encode_tlv(0x5C, bytes.fromhex("5FC10A")) + encode_tlv(0x53, bytes(9000))
    assert card.sw(0, 0xDB, 0x3F, 0xFF, big)[1] == 0x6A84
    obj = encode_tlv(0x5C, bytes.fromhex("5FC10A"))
    assert card.sw(0, 0xDB, 0x3F, 0xFF, obj + encode_tlv(0x53, bytes(3000)))[1] == 0x9000  # chained
    assert len(card.p.send_apdu(0, 0xCB, 0x3F, 0xFF, bytes.fromhex("5C035FC10A"))) == 3004
    assert card.sw(0, 0xDB, 0x3F, 0xFF, obj + encode_tlv(0x53, b""))[1] == 0x9000  # delete
    assert card.sw(0, 0xCB, 0x3F, 0xFF, bytes.fromhex("5C035FC10A"))[1] == 0x6A82


def test_yubico_extensions_and_unknown_instructions(card: Card) -> None:
    assert card.p.send_apdu(0, 0xFD, 0, 0) == bytes([1, 0, 0])
    assert card.sw(0, 0xF8, 0, 0) == (b"", 0x6982)  # GET SERIAL: PIN or management key first
    card.verify()
    assert len(card.p.send_apdu(0, 0xF8, 0, 0)) == 4
    assert card.sw(0, 0x44, 0, 0)[1] == 0x6D00
    assert card.sw(0x80, 0xCB, 0x3F, 0xFF, bytes.fromhex("5C017E"))[1] == 0x6E00
    assert card.sw(0, 0x47, 0, 0x9B, encode_tlv(0xAC, encode_tlv(0x80, b"\x11")))[1] == 0x6A86
    card.authenticate()
    assert card.generate(alg=0x99)[1] == 0x6A80
    assert card.sw(0, 0x47, 0, 0x9A, b"\xac\x00")[1] == 0x6A80


def test_security_status_is_cleared_by_selecting_another_applet(card: Card) -> None:
    card.authenticate()
    card.verify()
    card.select_citizen()
    card.select_piv()
    assert card.sw(0, 0x20, 0, 0x80)[1] == 0x63C3
    assert card.generate()[1] == 0x6982
