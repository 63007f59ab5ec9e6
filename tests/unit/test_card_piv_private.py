"""Nothing linkable before the PIN on the PIV side of the citizen card (issue 12 item 1; docs/card-profile.md
§PIV access rules).

Two cards of one issuance, each personalized with its own keys, certificates, serial and management key,
answer every PIV command a stranger can send before the PIN byte for byte the same over the contactless
interface; over the contact interface they differ only in the certificates SP 800-73-4 makes readable there
(OpenSC needs them before the login). After VERIFY (or the management key) the standard objects are there.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from emulators.card.citizen_card import CITIZEN_ATR, make_citizen_card
from emulators.card.os import Interface
from emulators.card.piv import PivApplet
from emulators.card.transport import InProcessConnection

from cityid.apdu import SmartCardProtocol
from cityid.errors import SecurityStatusError
from cityid.iso7816 import SW
from cityid.piv import PIV_AID, PIV_AID_SHORT, Algorithm, ObjectId, Slot
from cityid.tlv import Tlv, encode_tag, encode_tlv, parse_tlv_dict
from terminal.sessions.piv import PivSession
from tests.emukit import Card

#: Every PIV object tag a middleware could ask for: Discovery, the 5FC1xx range (CHUID, CCC, certificates,
#: key history, retired certificates, biometrics, printed information, SM signer, pairing code), BITGT,
#: the vendor objects a personalization might write, and tags no one uses.
ALL_TAGS = (
    ObjectId.DISCOVERY,
    ObjectId.BITGT,
    *range(0x5FC101, 0x5FC124),
    0x5FFF00,
    0x5FFF01,
    0x5FFF10,
    0x5FC1FF,
)
#: The objects that hold per-card public keys and are readable over contact without the PIN (SP 800-73-4).
CONTACT_ONLY = {ObjectId.AUTHENTICATION, ObjectId.SIGNATURE, ObjectId.KEY_MANAGEMENT, ObjectId.KEY_HISTORY}
CERT_SLOTS = {
    Slot.AUTHENTICATION: ObjectId.AUTHENTICATION,
    Slot.SIGNATURE: ObjectId.SIGNATURE,
    Slot.KEY_MANAGEMENT: ObjectId.KEY_MANAGEMENT,
    Slot.CARD_AUTH: ObjectId.CARD_AUTH,
}


class InterfaceCard(Card):
    """tests.emukit.Card powered over a given interface (the same state file can be read either way)."""

    def __init__(self, state: Path | None, interface: Interface) -> None:
        super().__init__(state)
        self.card = make_citizen_card(state, interface=interface)
        self.conn = InProcessConnection(self.card)
        self.p = SmartCardProtocol(self.conn)

    @property
    def piv(self) -> PivApplet:
        applet = next(a for a in self.card.applets if isinstance(a, PivApplet))
        return applet


def _certificate(point: bytes, serial: bytes) -> bytes:
    """A certificate object ``70 cert 71 00`` for the card key ``point``, naming the card serial."""
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    ca = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Busan citizen {serial.hex()}")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Busan test CA")]))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(ca, hashes.SHA256())
    )
    return encode_tlv(0x70, cert.public_bytes(serialization.Encoding.DER)) + encode_tlv(0x71, b"\x00")


def _card_key(serial: bytes) -> bytes:
    """Each card's own AES-128 management key (a stand-in for the per-card derivation)."""
    return bytes(a ^ b for a, b in zip(serial * 2, range(16), strict=True))


def _put(card: Card, tag: int, value: bytes) -> None:
    body = encode_tlv(0x5C, encode_tag(tag)) + encode_tlv(0x53, value)
    assert card.sw(0, 0xDB, 0x3F, 0xFF, body)[1] == 0x9000


def _personalize(state: Path) -> dict[int, bytes]:
    """Keys in every slot, their certificates, per-card key history / printed info / vendor object, then the
    card's own AES-128 management key (as the counter leaves it). Returns the objects written."""
    card = InterfaceCard(state, Interface.CONTACT)
    card.select_piv()
    assert card.authenticate() == 0x9000
    serial = card.piv.security.serial
    written: dict[int, bytes] = {}
    for slot, obj in CERT_SLOTS.items():
        resp, sw = card.generate(slot)
        assert sw == 0x9000
        written[obj] = _certificate(parse_tlv_dict(Tlv.unpack(0x7F49, resp))[0x86], serial)
    written[ObjectId.KEY_HISTORY] = (
        encode_tlv(0xC1, b"\x00")
        + encode_tlv(0xC2, b"\x00")
        + encode_tlv(0xF3, b"https://pki.busan.go.kr/" + serial.hex().encode())
    )
    written[ObjectId.PRINTED] = encode_tlv(0x01, b"Park Jiwoo " + serial.hex().encode())
    written[0x5FFF00] = serial
    for tag, value in written.items():
        _put(card, tag, value)
    card.piv.security.set_management_key(Algorithm.AES_128, _card_key(serial))
    return written


@pytest.fixture
def issuance(tmp_path: Path) -> tuple[Path, Path, dict[int, bytes]]:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    written_a = _personalize(a)
    written_b = _personalize(b)
    assert written_a[ObjectId.AUTHENTICATION] != written_b[ObjectId.AUTHENTICATION]
    return a, b, written_a


def _pre_pin_transcript(card: InterfaceCard) -> dict[str, tuple[bytes, int]]:
    """Every PIV command a stranger can send without the PIN or a key, on a freshly powered card.

    Random answers (the management key's witness and challenge) are left out here; they are tested for
    freshness below.
    """
    seen: dict[str, tuple[bytes, int]] = {}
    card.conn.reset()
    seen["atr"] = (card.card.atr, 0)

    def send(name: str, cla: int, ins: int, p1: int, p2: int, data: bytes = b"") -> None:
        seen[name] = card.sw(cla, ins, p1, p2, data)

    send("select", 0, 0xA4, 0x04, 0x00, PIV_AID)
    send("select short", 0, 0xA4, 0x04, 0x00, PIV_AID_SHORT)
    for tag in ALL_TAGS:
        send(f"get data {tag:X}", 0, 0xCB, 0x3F, 0xFF, encode_tlv(0x5C, encode_tag(tag)))
    send("verify status", 0, 0x20, 0x00, 0x80)
    send("verify global pin", 0, 0x20, 0x00, 0x00)
    send("get version", 0, 0xFD, 0, 0)
    send("get serial", 0, 0xF8, 0, 0)
    for ins in (0xF7, 0xF9, 0xFB, 0xFE):  # Yubico metadata, attest, reset, import: not supported
        send(f"yubico {ins:X}", 0, ins, 0, 0x9A)
    for slot in CERT_SLOTS:
        sign = encode_tlv(0x7C, encode_tlv(0x82, b"") + encode_tlv(0x81, bytes(32)))
        send(f"sign {slot:X}", 0, 0x87, Algorithm.ECC_P256, slot, sign)
        point = (
            ec.generate_private_key(ec.SECP256R1())
            .public_key()
            .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        )
        ecdh = encode_tlv(0x7C, encode_tlv(0x82, b"") + encode_tlv(0x85, point))
        send(f"ecdh {slot:X}", 0, 0x87, Algorithm.ECC_P256, slot, ecdh)
    send("9B default algorithm", 0, 0x87, Algorithm.TDEA_3KEY, 0x9B, encode_tlv(0x7C, encode_tlv(0x80, b"")))
    step2 = encode_tlv(0x7C, encode_tlv(0x80, bytes(16)) + encode_tlv(0x81, bytes(16)))
    send("9B step 2 without step 1", 0, 0x87, 0x08, 0x9B, step2)
    send("generate", 0, 0x47, 0, 0x9A, encode_tlv(0xAC, encode_tlv(0x80, b"\x11")))
    send("put data", 0, 0xDB, 0x3F, 0xFF, encode_tlv(0x5C, encode_tag(0x5FC105)) + encode_tlv(0x53, b""))
    send("set management key", 0, 0xFF, 0xFF, 0xFF, bytes([0x08, 0x9B, 16]) + bytes(16))
    return seen


def test_two_cards_of_one_issuance_answer_every_pre_pin_command_the_same_contactless(issuance) -> None:
    a, b, _ = issuance
    seen_a = _pre_pin_transcript(InterfaceCard(a, Interface.CONTACTLESS))
    seen_b = _pre_pin_transcript(InterfaceCard(b, Interface.CONTACTLESS))
    assert seen_a.keys() == seen_b.keys()
    differ = [name for name in seen_a if seen_a[name] != seen_b[name]]
    assert differ == []
    # ... and they are refusals, not empty answers of the same kind by accident:
    refused = (ObjectId.AUTHENTICATION, ObjectId.CARD_AUTH, ObjectId.KEY_HISTORY, ObjectId.PRINTED, 0x5FFF00)
    for tag in refused:
        assert seen_a[f"get data {tag:X}"] == (b"", SW.SECURITY_STATUS_NOT_SATISFIED)
    assert seen_a["get serial"] == (b"", SW.SECURITY_STATUS_NOT_SATISFIED)
    assert all(seen_a[f"sign {slot:X}"][1] == SW.SECURITY_STATUS_NOT_SATISFIED for slot in CERT_SLOTS)
    assert seen_a["verify status"] == (b"", 0x63C3)  # tries left: the kiosk shows them
    assert seen_a["atr"] == (CITIZEN_ATR, 0)


def test_over_contact_they_differ_only_in_the_certificates_sp800_73_makes_public(issuance) -> None:
    """SP 800-73-4 Part 1 Table 2: the 9A/9C/9D certificates and the key history are 'Always' readable over
    contact; OpenSC reads them before the login (docs/card-profile.md). Nothing else differs."""
    a, b, written = issuance
    seen_a = _pre_pin_transcript(InterfaceCard(a, Interface.CONTACT))
    seen_b = _pre_pin_transcript(InterfaceCard(b, Interface.CONTACT))
    differ = {name for name in seen_a if seen_a[name] != seen_b[name]}
    assert differ == {f"get data {tag:X}" for tag in CONTACT_ONLY}
    assert seen_a[f"get data {ObjectId.AUTHENTICATION:X}"] == (
        encode_tlv(0x53, written[ObjectId.AUTHENTICATION]),
        0x9000,
    )
    assert seen_a[f"get data {ObjectId.CARD_AUTH:X}"] == (b"", SW.SECURITY_STATUS_NOT_SATISFIED)


def test_fresh_cards_carry_per_issuance_chuid_and_ccc(tmp_path: Path) -> None:
    """A fresh card's CHUID has the all-zero GUID of a card without a UUID; CHUID and CCC are the same on
    every card (their serials differ)."""
    cards = [InterfaceCard(tmp_path / f"{n}.json", Interface.CONTACTLESS) for n in "ab"]
    objects = []
    for card in cards:
        card.select_piv()
        chuid = Tlv.unpack(0x53, card.p.send_apdu(0, 0xCB, 0x3F, 0xFF, bytes.fromhex("5C035FC102")))
        ccc = Tlv.unpack(0x53, card.p.send_apdu(0, 0xCB, 0x3F, 0xFF, bytes.fromhex("5C035FC107")))
        assert parse_tlv_dict(chuid)[0x34] == bytes(16)
        objects.append((chuid, ccc))
    assert objects[0] == objects[1]
    assert cards[0].piv.security.serial != cards[1].piv.security.serial


def test_management_key_answers_are_fresh_randoms(issuance) -> None:
    """The two answers left out of the transcript: step 1's encrypted witness and the random challenge
    (OpenSC's C_GenerateRandom) are new on every request, so they cannot name a card."""
    a, b, _ = issuance
    answers = []
    for state in (a, a, b):
        card = InterfaceCard(state, Interface.CONTACTLESS)
        card.select_piv()
        witness = card.sw(0, 0x87, 0x08, 0x9B, encode_tlv(0x7C, encode_tlv(0x80, b"")))
        challenge = card.sw(0, 0x87, 0x00, 0x9B, encode_tlv(0x7C, encode_tlv(0x81, b"")))
        assert witness[1] == challenge[1] == 0x9000
        answers.append((witness[0], challenge[0]))
    assert len({w for w, _ in answers}) == 3 and len({c for _, c in answers}) == 3
    assert {len(w) for w, _ in answers} == {len(c) for _, c in answers} == {20}  # 7C 12 80|81 10 <16 bytes>


@pytest.mark.parametrize("unlock", ["pin", "management key"])
def test_after_the_pin_or_the_key_the_standard_objects_are_there(issuance, unlock: str) -> None:
    a, _, written = issuance
    card = InterfaceCard(a, Interface.CONTACTLESS)
    card.select_piv()
    if unlock == "pin":
        assert card.verify() == 0x9000
    else:
        assert card.authenticate(_card_key(card.piv.security.serial), Algorithm.AES_128) == 0x9000
    for tag, value in written.items():
        if tag == ObjectId.PRINTED and unlock != "pin":
            assert card.sw(0, 0xCB, 0x3F, 0xFF, encode_tlv(0x5C, encode_tag(tag)))[1] == 0x6982  # PIN only
            continue
        got = card.p.send_apdu(0, 0xCB, 0x3F, 0xFF, encode_tlv(0x5C, encode_tag(tag)))
        assert got == encode_tlv(0x53, value)
    assert card.p.send_apdu(0, 0xF8, 0, 0) == card.piv.security.serial[-4:]
    if unlock == "pin":
        sign = encode_tlv(0x7C, encode_tlv(0x82, b"") + encode_tlv(0x81, bytes(32)))
        assert card.sw(0, 0x87, Algorithm.ECC_P256, Slot.AUTHENTICATION, sign)[1] == 0x9000
    # a protected object that does not exist: 6A82 once access is granted (6982 before, as if it existed)
    assert card.sw(0, 0xCB, 0x3F, 0xFF, encode_tlv(0x5C, encode_tag(0x5FC10D)))[1] == 0x6A82


def test_the_terminal_session_reads_the_certificate_after_the_pin_contactless(issuance) -> None:
    """PivSession on a contactless card: the 9A certificate is refused with 6982 before VERIFY, read after."""
    a, _, written = issuance
    conn = InProcessConnection(make_citizen_card(a, interface=Interface.CONTACTLESS))
    piv = PivSession(conn)
    with pytest.raises(SecurityStatusError) as refused:  # typed: the PIN or a key comes first
        piv.get_certificate(Slot.AUTHENTICATION)
    assert refused.value.sw == SW.SECURITY_STATUS_NOT_SATISFIED
    piv.verify_pin("123456")
    cert = piv.get_certificate(Slot.AUTHENTICATION)
    der = parse_tlv_dict(written[ObjectId.AUTHENTICATION])[0x70]
    assert cert.public_bytes(serialization.Encoding.DER) == der


def test_counter_enrollment_and_kiosk_verification_on_a_contactless_card(tmp_path: Path) -> None:
    """The counter's personalization and the kiosk's verification never rely on a PIV object read before the
    PIN or the management key: both work on a card in an RF field, whose 9A certificate a stranger cannot
    read."""
    from terminal.flows.counter import CounterEnrollment
    from terminal.flows.kiosk import KioskVerification, service
    from terminal.sessions.citizen import CitizenSession
    from terminal.verifier import NonceStore, Verifier
    from tests.unit.server_support import make_rig, memory_chain_view
    from tests.unit.test_enrollment_counter import AUDIENCE, REQUEST

    rig = make_rig(f"sqlite:///{tmp_path}/server.db", role="supervisor")
    view = memory_chain_view(rig.chain)
    counter = CounterEnrollment(rig.client, Verifier(view, AUDIENCE, NonceStore()))
    conn = InProcessConnection(make_citizen_card(tmp_path / "card.json", interface=Interface.CONTACTLESS))
    out = counter.run(conn, REQUEST)
    assert out.verdict.ok
    conn.reset()
    piv = PivSession(conn)
    with pytest.raises(SecurityStatusError) as refused:  # typed: the PIN or a key comes first
        piv.get_certificate(Slot.AUTHENTICATION)
    assert refused.value.sw == SW.SECURITY_STATUS_NOT_SATISFIED
    kiosk = KioskVerification(
        Verifier(view, "https://kiosk.busan.go.kr/k1", NonceStore()), service("benefit-check")
    )
    verdict = kiosk.run_card(CitizenSession(conn), REQUEST.new_pin)
    assert verdict.ok, verdict
    assert verdict.subject == out.citizen_did
    kiosk.end()
    # the same card in a contact reader: the 9A certificate (made at the counter) is there for OpenSC
    contact = InProcessConnection(make_citizen_card(tmp_path / "card.json", interface=Interface.CONTACT))
    cert = PivSession(contact).get_certificate(Slot.AUTHENTICATION)
    assert out.card_serial.upper() in cert.subject.rfc4514_string().upper()


class _InfoConnection(InProcessConnection):
    reader = "in-process"


@pytest.mark.parametrize("interface", list(Interface))
def test_cardtool_info_says_the_certificate_is_hidden_contactless(issuance, interface: Interface) -> None:
    from firmware_tools.card_cli import gather_info

    a, _, _ = issuance
    shown = gather_info(_InfoConnection(make_citizen_card(a, interface=interface)))  # type: ignore[arg-type]
    if interface is Interface.CONTACTLESS:
        assert shown["piv_9a_certificate"] is None and shown["piv_9a_certificate_hidden"] is True
    else:
        assert "Busan citizen" in shown["piv_9a_certificate"] and "piv_9a_certificate_hidden" not in shown
    assert shown["pin_tries"] == 3
