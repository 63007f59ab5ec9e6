"""PivSession, CitizenSession and the personalization flow against the emulated card, in process.

The same flows run through pcscd + vpcd in tests/integration/test_card_terminal_flows.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from emulators.card.citizen_card import make_citizen_card
from emulators.card.transport import InProcessConnection

from cityid.errors import (
    ApduError,
    InvalidPinError,
    PinBlockedError,
    SecurityStatusError,
    TlvError,
)
from cityid.piv import Slot
from terminal.flows.personalize import load_credential, personalize
from terminal.sessions.citizen import CardIdentity, CitizenSession
from terminal.sessions.mgmt import ManagementKeyError
from terminal.sessions.piv import PivSession
from tests.card_terminal_support import (
    CLAIMS,
    DID,
    NEW_PIN,
    NEW_PUK,
    PIN,
    PUK,
    VCT,
    check_presentation,
    make_record,
    make_sd_jwt,
)

NONCE = "n-0123456789abcdef"
AUD = "https://kiosk.busan.example/counter-7"


class CountingConnection(InProcessConnection):
    """InProcessConnection counting APDUs and response bytes (what a PRESENT costs on the wire)."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.apdus = 0
        self.read = 0

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        data, sw = super().send_and_receive(apdu)
        self.apdus += 1
        self.read += len(data) + 2
        return data, sw


@pytest.fixture
def conn(tmp_path: Path) -> CountingConnection:
    return CountingConnection(make_citizen_card(tmp_path / "card.json"))


def _point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def _personalized(conn: CountingConnection) -> bytes:
    result = personalize(conn, pin=PIN, new_pin=NEW_PIN, puk=PUK, new_puk=NEW_PUK)
    point = result.key.point
    personalize(conn, pin=None, generate_key=False, did=DID, credential=make_record(point))
    return point


def _identity(conn: CountingConnection) -> CardIdentity:
    """GET IDENTITY behind the management key (the private GET INFO carries no serial/DID/claims)."""
    citizen = CitizenSession(conn)
    citizen.authenticate()
    return citizen.identity()


def test_fresh_card_info(conn: CountingConnection) -> None:
    info = CitizenSession(conn).info()
    assert info.version[0] >= 1 and not info.reveals_identity and info.vct is None
    ident = _identity(conn)
    assert len(ident.serial) == 16
    assert ident.did is None and ident.vct is None and ident.claims == ()
    assert info.pin_tries == 3
    assert PivSession(conn).pin_attempts() == 3


def test_personalize_then_present(conn: CountingConnection) -> None:
    point = _personalized(conn)
    info = _identity(conn)
    assert info.did == DID and info.vct == VCT and set(info.claims) == set(CLAIMS)
    piv = PivSession(conn)
    cert = piv.get_certificate(Slot.AUTHENTICATION)
    assert _point(cert.public_key()) == point  # type: ignore[arg-type]
    cert.verify_directly_issued_by(cert)  # the card signed its own certificate
    assert "Busan citizen card" in cert.subject.rfc4514_string()
    citizen = CitizenSession(conn)
    citizen.verify_pin(NEW_PIN)
    text = citizen.present(["age_over_65", "district"], NONCE, AUD, 1_780_000_000)
    disclosed = check_presentation(text, point, ["age_over_65", "district"], NONCE, AUD, 1_780_000_000)
    assert disclosed == {"age_over_65": True, "district": "Haeundae-gu"}
    assert "Kim" not in text and "1956" not in text


def test_present_needs_the_pin_every_time(conn: CountingConnection) -> None:
    _personalized(conn)
    citizen = CitizenSession(conn)
    with pytest.raises(SecurityStatusError):
        citizen.present(["age_over_19"], NONCE, AUD, 1)
    citizen.verify_pin(NEW_PIN)
    citizen.present(["age_over_19"], NONCE, AUD, 1)
    with pytest.raises(SecurityStatusError):  # PIN always: cleared by the previous PRESENT
        citizen.present(["age_over_19"], NONCE, AUD, 1)


def test_present_unknown_claim_and_bad_requests(conn: CountingConnection) -> None:
    _personalized(conn)
    citizen = CitizenSession(conn)
    citizen.verify_pin(NEW_PIN)
    with pytest.raises(ApduError) as exc:
        citizen.present(["shoe_size"], NONCE, AUD, 1)
    assert exc.value.sw == 0x6A88
    n = conn.apdus
    for claims, nonce in ((["age_over_19"], "short"), ([], NONCE), (["a"] * 2, NONCE)):
        with pytest.raises(TlvError):
            citizen.present(claims, nonce, AUD, 1)
    assert conn.apdus == n  # refused host-side, before the card


def test_present_apdu_budget_extended_and_short(tmp_path: Path) -> None:
    conn = CountingConnection(make_citizen_card(tmp_path / "card.json"))
    point = _personalized(conn)
    for extended, max_apdus in ((True, 3), (False, 12)):
        conn.apdus = conn.read = 0
        citizen = CitizenSession(conn, extended=extended)
        citizen.verify_pin(NEW_PIN)
        text = citizen.present(list(CLAIMS), NONCE, AUD, 7)
        check_presentation(text, point, list(CLAIMS), NONCE, AUD, 7)
        assert conn.apdus <= max_apdus, conn.apdus
        if extended:
            assert conn.apdus == 3  # SELECT + VERIFY + PRESENT
            assert conn.read <= 2048


def test_extended_probe_is_remembered(conn: CountingConnection) -> None:
    CitizenSession(conn)
    assert conn.extended is True  # type: ignore[attr-defined]
    n = conn.apdus
    CitizenSession(conn)
    assert conn.apdus == n + 1


def test_wrong_pin_block_and_unblock(conn: CountingConnection) -> None:
    piv = PivSession(conn)
    for left in (2, 1):
        with pytest.raises(InvalidPinError) as exc:
            piv.verify_pin("000000")
        assert exc.value.attempts_remaining == left
    with pytest.raises(PinBlockedError):
        piv.verify_pin("000000")
    assert CitizenSession(conn).info().pin_tries == 0
    with pytest.raises(PinBlockedError):
        CitizenSession(conn).verify_pin(PIN)
    piv = PivSession(conn)
    with pytest.raises(InvalidPinError) as exc:
        piv.unblock_pin("00000000", NEW_PIN)
    assert exc.value.attempts_remaining == 2
    piv.unblock_pin(PUK, NEW_PIN)
    assert piv.pin_attempts() == 3
    piv.verify_pin(NEW_PIN)
    piv.change_pin(NEW_PIN, PIN)
    piv.change_puk(PUK, NEW_PUK)
    piv.verify_pin(PIN)


def test_wrong_management_key(conn: CountingConnection) -> None:
    with pytest.raises(ManagementKeyError):
        PivSession(conn).authenticate_management_key(bytes(24))
    with pytest.raises(ManagementKeyError):
        CitizenSession(conn).authenticate(bytes(24))
    with pytest.raises(SecurityStatusError):
        PivSession(conn).generate_key(Slot.AUTHENTICATION)
    with pytest.raises(SecurityStatusError):
        CitizenSession(conn).put_did(DID)


def test_piv_sign_and_objects(conn: CountingConnection) -> None:
    piv = PivSession(conn)
    piv.authenticate_management_key()
    key = piv.generate_key(Slot.SIGNATURE)
    assert not piv.has_object(0x5FC10A)
    piv.verify_pin(PIN)
    sig = piv.sign(Slot.SIGNATURE, b"message")
    key.verify(sig, b"message", ec.ECDSA(hashes.SHA256()))
    assert piv.get_chuid()
    piv.put_object(0x5FC10A, b"\x70\x01\x00\x71\x01\x00")
    assert piv.get_object(0x5FC10A) == b"\x70\x01\x00\x71\x01\x00"


def test_erase(conn: CountingConnection) -> None:
    _personalized(conn)
    citizen = CitizenSession(conn)
    citizen.authenticate()
    citizen.erase()
    info = citizen.identity()
    assert info.did is None and info.vct is None and citizen.info().vct is None


def test_load_credential_file(conn: CountingConnection) -> None:
    point = _point(ec.generate_private_key(ec.SECP256R1()).public_key())
    record = load_credential(make_sd_jwt(point) + "\n")
    assert record.vct == VCT and {d.claim for d in record.disclosures} == set(CLAIMS)
    with pytest.raises(ValueError):
        load_credential("not-an-sd-jwt")
    with pytest.raises(ValueError):
        load_credential(make_sd_jwt(point) + "a.b.c")


class PinPadReader(CountingConnection):
    """The emulated card behind a fake PIN-pad reader (PC/SC part 10): the "user" types ``typed``."""

    VERIFY_DIRECT = 0x42330006

    def __init__(self, card: object, typed: bytes) -> None:
        super().__init__(card)
        self.typed = typed

    def control(self, code: int, data: bytes = b"") -> bytes:
        from terminal.pcsc.pinpad import CM_IOCTL_GET_FEATURE_REQUEST

        if code == CM_IOCTL_GET_FEATURE_REQUEST:
            return bytes([0x06, 4]) + self.VERIFY_DIRECT.to_bytes(4, "big")
        assert code == self.VERIFY_DIRECT
        template = data[19:]
        assert template[5:] == b"\xff" * 8  # the host sent no PIN
        resp, sw = self.send_and_receive(template[:5] + self.typed.ljust(8, b"\xff"))
        return resp + sw.to_bytes(2, "big")


def test_citizen_present_with_the_pin_typed_on_the_reader(tmp_path: Path) -> None:
    state = tmp_path / "card.json"
    point = _personalized(CountingConnection(make_citizen_card(state)))
    reader = PinPadReader(make_citizen_card(state), NEW_PIN.encode())
    citizen = CitizenSession(reader)
    citizen.verify_pin(None)
    text = citizen.present(["age_over_19"], NONCE, AUD, 5)
    check_presentation(text, point, ["age_over_19"], NONCE, AUD, 5)
    reader.typed = b"000000"
    with pytest.raises(InvalidPinError) as exc:
        CitizenSession(reader).verify_pin(None)
    assert exc.value.attempts_remaining == 2


def test_trace_log_has_no_pin_and_no_personal_claims(
    conn: CountingConnection, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from cityid.apdu import TRACE

    with caplog.at_level(TRACE, logger="cityid.apdu"):
        point = _personalized(conn)
        citizen = CitizenSession(conn)
        citizen.verify_pin(NEW_PIN)
        text = citizen.present(["given_name", "birthdate"], NONCE, AUD, 9)
    check_presentation(text, point, ["given_name", "birthdate"], NONCE, AUD, 9)
    log = caplog.text
    assert "TRACE" in log or caplog.records  # tracing was on
    disclosures = text.split("~")[1:-1]
    for secret in (PIN, NEW_PIN, PUK, NEW_PUK):
        assert secret.encode().hex() not in log
    for d in disclosures:  # neither the presented nor the written disclosures appear, in any encoding
        assert d not in log and d.encode().hex() not in log
    assert not logging.getLogger("cityid.apdu").handlers
