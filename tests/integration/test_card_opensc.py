"""Standard PIV middleware against the virtual card through the real pcscd + vpcd: yubico-piv-tool provisions
(generate a P-256 key in 9A, import a certificate, read it back), OpenSC's PKCS#11 module lists the key and
signs with it after the PIN, and the signature verifies with the certificate's public key."""

from __future__ import annotations

import datetime
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID

pytestmark = pytest.mark.integration

OPENSC_PKCS11 = Path("/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so")


def _run(*cmd: str, input_: bytes | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, input=input_, timeout=60, check=False)
    out = (proc.stdout + proc.stderr).decode(errors="replace")
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{out}"
    return out


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (./dev setup installs it)")
    return path


def _certificate_for(public_pem: bytes) -> x509.Certificate:
    """A certificate for the card's key, issued by a throw-away test CA."""
    public = serialization.load_pem_public_key(public_pem)
    ca = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Busan citizen test")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Busan test CA")]))
        .public_key(public)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(ca, hashes.SHA256())
    )


def test_yubico_piv_tool_provisioning_then_opensc_pkcs11_signs(virtual_card, tmp_path: Path) -> None:
    ypt = _tool("yubico-piv-tool")
    p11 = _tool("pkcs11-tool")
    if not OPENSC_PKCS11.exists():
        pytest.fail(f"{OPENSC_PKCS11} missing (apt-get install opensc)")
    reader = virtual_card.reader_name
    pub = tmp_path / "pub.pem"
    cert_pem = tmp_path / "cert.pem"

    # --- provisioning, yubico-piv-tool style (default management key) ---
    out = _run(ypt, "-r", reader, "-a", "generate", "-s", "9a", "-A", "ECCP256", "-o", str(pub))
    assert "Successfully generated" in out
    cert = _certificate_for(pub.read_bytes())
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _run(ypt, "-r", reader, "-a", "import-certificate", "-s", "9a", "-i", str(cert_pem))
    read_back = _run(ypt, "-r", reader, "-a", "read-certificate", "-s", "9a")
    assert x509.load_pem_x509_certificate(read_back.encode()) == cert
    status = _run(ypt, "-r", reader, "-a", "status")
    assert "PIN tries left:\t3" in status

    # --- OpenSC PKCS#11: list, then sign with 9A after the PIN ---
    listing = _run(p11, "--module", str(OPENSC_PKCS11), "--list-objects")
    assert "Busan citizen test" in listing and "PIV AUTH" in listing
    message = tmp_path / "msg"
    message.write_bytes(b"Busan citizen card test message")
    signature = tmp_path / "sig"
    _run(
        p11, "--module", str(OPENSC_PKCS11), "--login", "--pin", "123456", "--sign", "--mechanism",
        "ECDSA-SHA256", "--id", "01", "--input-file", str(message), "--output-file", str(signature),
    )  # fmt: skip
    raw = signature.read_bytes()
    assert len(raw) == 64  # PKCS#11 gives r || s
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(der, message.read_bytes(), ec.ECDSA(hashes.SHA256()))  # raises if invalid

    # --- a wrong PIN is refused and counted ---
    proc = subprocess.run(
        [p11, "--module", str(OPENSC_PKCS11), "--login", "--pin", "000000", "--sign", "--mechanism",
         "ECDSA-SHA256", "--id", "01", "--input-file", str(message), "--output-file", str(signature)],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "PIN tries left:\t2" in _run(ypt, "-r", reader, "-a", "status")


def test_yubico_piv_tool_pin_management(virtual_card) -> None:
    ypt = _tool("yubico-piv-tool")
    reader = virtual_card.reader_name
    _run(ypt, "-r", reader, "-a", "change-pin", "-P", "123456", "-N", "24682468")
    _run(ypt, "-r", reader, "-a", "verify-pin", "-P", "24682468")
    for _ in range(3):
        subprocess.run(
            [ypt, "-r", reader, "-a", "verify-pin", "-P", "000000"], capture_output=True, check=False
        )
    assert "PIN tries left:\t0" in _run(ypt, "-r", reader, "-a", "status")
    _run(ypt, "-r", reader, "-a", "unblock-pin", "-P", "12345678", "-N", "135790")
    _run(ypt, "-r", reader, "-a", "verify-pin", "-P", "135790")


@pytest.mark.parametrize("aes", [False, True], ids=["3des-key", "aes128-key"])
def test_opensc_pkcs11_generate_random(vpcd_card_factory, tmp_path: Path, aes: bool) -> None:
    """OpenSC's C_GenerateRandom on PIV is GENERAL AUTHENTICATE 00 87 00 9B 7C{81 00} (P1 00): the card
    answers with fresh challenge blocks, with the default 3DES management key and a per-card AES-128 one."""
    from emulators.card.citizen_card import make_citizen_card

    from cityid.piv import Algorithm
    from tests.emukit import Card

    p11 = _tool("pkcs11-tool")
    if not OPENSC_PKCS11.exists():
        pytest.fail(f"{OPENSC_PKCS11} missing (apt-get install opensc)")
    state = tmp_path / "card.json"
    if aes:  # yubico-piv-tool 2.2 sets only 3DES keys: personalize the AES key in process
        setup = Card(state)
        setup.select_piv()
        assert setup.authenticate() == 0x9000
        key = bytes(range(16))
        assert setup.sw(0, 0xFF, 0xFF, 0xFF, bytes([Algorithm.AES_128, 0x9B, 16]) + key)[1] == 0x9000
    handle = vpcd_card_factory(lambda: make_citizen_card(state), state)
    challenges: list[bytes] = []

    def count(raw: bytes) -> None:
        if raw[:4] == bytes.fromhex("0087009B"):
            challenges.append(raw)

    handle.on_apdu = count
    outputs = []
    for i in range(2):
        out = tmp_path / f"random-{i}"
        _run(p11, "--module", str(OPENSC_PKCS11), "--generate-random", "32", "--output-file", str(out))
        outputs.append(out.read_bytes())
    handle.on_apdu = None
    assert [len(o) for o in outputs] == [32, 32] and outputs[0] != outputs[1]
    block = 16 if aes else 8
    assert len(challenges) == 2 * 32 // block  # one GENERAL AUTHENTICATE per challenge block
    assert all(raw[4:8] == bytes.fromhex("047C0281") for raw in challenges)


def test_counter_enrolled_card_is_listed_and_signs_through_opensc_pkcs11(
    virtual_card, tmp_path: Path
) -> None:
    """A card enrolled through the counter flow (the same personalization as ``cardtool personalize``) is
    a standard PIV card to OpenSC: its key is listed with the card-signed certificate and signs after the
    citizen's PIN; the signature verifies with the key the city server enrolled (docs/card-profile.md)."""
    from cityid.keys import P256PublicKey
    from server.models import Credential
    from terminal.flows.counter import CitizenRequest, CounterEnrollment
    from terminal.pcsc.connection import open_connection
    from terminal.verifier import NonceStore, Verifier
    from tests.unit.server_support import make_rig, memory_chain_view

    p11 = _tool("pkcs11-tool")
    if not OPENSC_PKCS11.exists():
        pytest.fail(f"{OPENSC_PKCS11} missing (apt-get install opensc)")
    rig = make_rig(f"sqlite:///{tmp_path}/server.db")
    counter = CounterEnrollment(
        rig.client, Verifier(memory_chain_view(rig.chain), "https://counter.busan.go.kr/c1", NonceStore())
    )
    request = CitizenRequest(
        family_name="Park", given_name="Jiwoo", birthdate="1958-07-01", district="Saha-gu",
        busan_resident=True, new_pin="246810", new_puk="97531864",
    )  # fmt: skip
    with open_connection(virtual_card.reader_name) as conn:
        outcome = counter.run(conn, request)
    assert outcome.verdict.ok
    with rig.db.sessions() as s:
        row = s.get(Credential, outcome.credential_id)
        assert row is not None
        enrolled = P256PublicKey.from_point(bytes.fromhex(row.card_key))

    listing = _run(p11, "--module", str(OPENSC_PKCS11), "--list-objects")
    assert f"Busan citizen card {outcome.card_serial}".lower() in listing.lower() and "PIV AUTH" in listing
    message = tmp_path / "msg"
    message.write_bytes(b"signed by a counter-enrolled Busan citizen card")
    signature = tmp_path / "sig"
    _run(
        p11, "--module", str(OPENSC_PKCS11), "--login", "--pin", request.new_pin, "--sign", "--mechanism",
        "ECDSA-SHA256", "--id", "01", "--input-file", str(message), "--output-file", str(signature),
    )  # fmt: skip
    raw = signature.read_bytes()
    assert len(raw) == 64  # PKCS#11 gives r || s
    assert enrolled.verify_raw(raw, message.read_bytes())
    assert not enrolled.verify_raw(raw, message.read_bytes() + b"!")


def test_opensc_over_contactless_sees_no_9a_key_before_or_after_login(
    vpcd_card_factory, tmp_path: Path
) -> None:
    """The contactless rule (docs/card-profile.md §PIV access rules): the 9A certificate answers 6982 before
    the PIN, and OpenSC builds its PKCS#11 objects from the certificates when it binds, before C_Login — so
    over contactless it lists no 9A key even after the login, as with any PIV card without VCI. In a contact
    reader the same card lists and signs as before (why the certificate is not PIN-protected over contact).
    OpenSC leaves the card with the PIN verified when it exits (SCARD_LEAVE_CARD): each step here starts from
    a reset card, as a card newly in the field does."""
    from emulators.card.citizen_card import make_citizen_card
    from emulators.card.os import Interface

    from cityid.tlv import Tlv, encode_tlv, parse_tlv_dict
    from tests.emukit import Card

    p11 = _tool("pkcs11-tool")
    if not OPENSC_PKCS11.exists():
        pytest.fail(f"{OPENSC_PKCS11} missing (apt-get install opensc)")
    state = tmp_path / "card.json"
    setup = Card(state)  # personalized in process, over contact
    setup.select_piv()
    assert setup.authenticate() == 0x9000
    point = parse_tlv_dict(Tlv.unpack(0x7F49, setup.generate()[0]))[0x86]
    pem = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    der = _certificate_for(pem).public_bytes(serialization.Encoding.DER)
    body = encode_tlv(0x5C, bytes.fromhex("5FC105")) + encode_tlv(
        0x53, encode_tlv(0x70, der) + encode_tlv(0x71, b"\0")
    )
    assert setup.sw(0, 0xDB, 0x3F, 0xFF, body)[1] == 0x9000
    message = tmp_path / "msg"
    message.write_bytes(b"contactless")
    signature = tmp_path / "sig"
    sign = [p11, "--module", str(OPENSC_PKCS11), "--login", "--pin", "123456", "--sign", "--mechanism",
            "ECDSA-SHA256", "--id", "01", "--input-file", str(message),
            "--output-file", str(signature)]  # fmt: skip

    handle = vpcd_card_factory(lambda: make_citizen_card(state, interface=Interface.CONTACTLESS), state)
    listing = _run(p11, "--module", str(OPENSC_PKCS11), "--login", "--pin", "123456", "--list-objects")
    assert "Busan citizen test" not in listing and "PIV AUTH" not in listing
    assert "Card Holder Unique Identifier" in listing  # the public objects are there
    _reset_card(handle.reader_name)
    refused = subprocess.run(sign, capture_output=True, timeout=60, check=False)
    assert refused.returncode != 0 and b"key not found" in refused.stdout + refused.stderr
    handle.stop()

    vpcd_card_factory(lambda: make_citizen_card(state, interface=Interface.CONTACT), state)
    assert "PIV AUTH" in _run(p11, "--module", str(OPENSC_PKCS11), "--list-objects")
    _run(*sign)
    assert len(signature.read_bytes()) == 64


def _reset_card(reader: str) -> None:
    """Connect and disconnect with SCARD_RESET_CARD: the card's PIN status is cleared (a new power-up)."""
    from smartcard import scard

    rv, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    assert rv == scard.SCARD_S_SUCCESS
    try:
        rv, card, _ = scard.SCardConnect(context, reader, scard.SCARD_SHARE_SHARED, scard.SCARD_PROTOCOL_T1)
        assert rv == scard.SCARD_S_SUCCESS
        assert scard.SCardDisconnect(card, scard.SCARD_RESET_CARD) == scard.SCARD_S_SUCCESS
    finally:
        scard.SCardReleaseContext(context)
