"""Citizen card (emulator) latency, host side (median / p95), and what a real card would add.

Paths: the card OS in process (InProcessConnection, state file with fsync'ed atomic writes, as
``cardtool emulate citizen`` keeps it) and the same card in pcscd's vpcd reader through pyscard. Operations:
a trivial APDU (GET INFO), VERIFY (PBKDF2 check + two atomic writes: counter first, anti-tearing), PRESENT
(build SD-JWT+KB with 2 of 6 disclosures, ES256 with the 9A key), GENERATE P-256. The model line adds the
card-side costs of real hardware (FIELD-NOTES timing references) to the measured response sizes.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from emulators.card.citizen_card import make_citizen_card
from emulators.card.os import VirtualCard
from firmware_tools.vpcd_env import inserted_card
from smartcard.System import readers

from bench._stats import summary_ms, timed
from cityid import jose, sdjwt
from cityid.apdu import ApduFormat, SmartCardProtocol
from cityid.citizen import CITIZEN_AID, CredentialRecord, Ins, PresentRequest, StoredDisclosure
from cityid.piv import DEFAULT_MANAGEMENT_KEY, PIV_AID, Algorithm, Slot, pad_pin
from cityid.tlv import Tlv, encode_tlv, parse_tlv_dict
from terminal.sessions import mgmt

CLAIMS = {
    "family_name": "김",
    "given_name": "민수",
    "birthdate": "1955-03-01",
    "district": "Haeundae-gu",
    "busan_resident": True,
    "age_over_65": True,
}
REQUEST = ("age_over_65", "busan_resident")


class _Host:
    """Host-side steps written from the specs (SP 800-73-4 Part 2 §3.2.4; docs/card-profile.md)."""

    def __init__(self, p: SmartCardProtocol) -> None:
        self.p = p

    def authenticate(self) -> None:
        mgmt.authenticate(self.p, DEFAULT_MANAGEMENT_KEY, Algorithm.TDEA_3KEY)

    def personalize(self) -> None:
        self.p.select(PIV_AID)
        self.authenticate()
        resp = self.p.send_apdu(0, 0x47, 0, Slot.AUTHENTICATION, encode_tlv(0xAC, encode_tlv(0x80, b"\x11")))
        point = parse_tlv_dict(Tlv.unpack(0x7F49, resp))[0x86]
        discs = [sdjwt.create_disclosure(k, v) for k, v in CLAIMS.items()]
        payload = {
            "iss": "did:example:issuer",
            "vct": "urn:busan:citizen:1",
            "_sd_alg": "sha-256",
            "_sd": sorted(d.digest for d in discs),
            "cnf": {"jwk": jose.jwk_from_point(point)},
        }
        issuer_jwt = jose.sign_compact({"alg": "ES256"}, payload, ec.generate_private_key(ec.SECP256R1()))
        record = CredentialRecord(issuer_jwt, tuple(StoredDisclosure(d.name or "", d.encoded) for d in discs))
        self.p.select(CITIZEN_AID)
        self.authenticate()
        self.p.send_apdu(0x80, Ins.PUT_CREDENTIAL, 0, 0, record.encode())
        self.p.send_apdu(0x80, Ins.ACTIVATE, 0, 0)  # last (docs/card-profile.md, ACTIVATE)

    def verify(self) -> None:
        self.p.send_apdu(0, 0x20, 0, 0x80, pad_pin(b"123456"), sensitive=True)

    def present(self) -> bytes:
        self.verify()
        req = PresentRequest(REQUEST, "bench-nonce-0001", "https://kiosk.busan.go.kr/k1", 1_800_000_000)
        return self.p.send_apdu(0x80, Ins.PRESENT, 0, 0, req.encode())


class _Raw:
    def __init__(self, card: VirtualCard) -> None:
        self.card = card
        card.power_on()

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        raw = self.card.transmit(apdu)
        return raw[:-2], int.from_bytes(raw[-2:], "big")


def _bench_path(label: str, host: _Host, n: int) -> int:
    host.p.select(CITIZEN_AID)
    info = timed(lambda: host.p.send_apdu(0x80, Ins.GET_INFO, 0, 0), n * 5)
    verify = timed(host.verify, n)
    present_len = len(host.present())
    present = timed(host.present, n)
    print(f"   {label:<22} GET INFO (1 APDU)     {summary_ms(info)}")
    print(f"   {'':<22} VERIFY                {summary_ms(verify)}")
    print(f"   {'':<22} VERIFY + PRESENT      {summary_ms(present)}   ({present_len} bytes out)")
    return present_len


def run(args: argparse.Namespace) -> None:
    n = 10 if getattr(args, "quick", False) else 60
    with tempfile.TemporaryDirectory() as tmp:
        card = make_citizen_card(Path(tmp) / "card.json")
        host = _Host(SmartCardProtocol(_Raw(card), ApduFormat.EXTENDED))
        host.personalize()
        host.p.select(PIV_AID)
        host.authenticate()
        gen = timed(
            lambda: host.p.send_apdu(0, 0x47, 0, Slot.CARD_AUTH, encode_tlv(0xAC, encode_tlv(0x80, b"\x11"))),
            n,
        )
        print(f"   {'in process':<22} GENERATE P-256        {summary_ms(gen)}")
        size = _bench_path("in process", host, n)

        card2 = make_citizen_card(Path(tmp) / "card2.json")
        with inserted_card(card2) as (_, reader_name):
            conn = next(r for r in readers() if str(r) == reader_name).createConnection()
            try:
                conn.connect()

                class _Pyscard:
                    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
                        data, sw1, sw2 = conn.transmit(list(apdu))
                        return bytes(data), (sw1 << 8) | sw2

                host2 = _Host(SmartCardProtocol(_Pyscard(), ApduFormat.EXTENDED))
                host2.personalize()
                _bench_path("pcscd + vpcd", host2, n)
            finally:
                # Disconnect and release pyscard's PC/SC context now, while pcscd still runs: left to
                # __del__, it would fail ("Service not available") once a pcscd started here has stopped.
                conn.release()

    ta_bytes = _bench_terminal_auth(n)

    # Model of a real card for PRESENT: 2 APDUs (VERIFY, PRESENT), P-256 sign on card, response bytes over
    # ISO 14443 at 106 / 424 kbit/s (FIELD-NOTES: ~87 / ~22 ms per KiB), contact round trip ~9.5 ms each.
    for rate, per_kib in (("106 kbit/s", 87.0), ("424 kbit/s", 22.0)):
        for chip, sign_ms in (("SECORA ID 24 ms", 24.0), ("JCOP4 32 ms", 32.0), ("old JCOP 88 ms", 88.0)):
            total = 2 * 9.5 + sign_ms + size / 1024 * per_kib
            print(f"   model PRESENT {rate:<11} {chip:<16} ≈ {total:6.1f} ms card side")
    # Terminal authentication (docs/card-profile.md §Terminal authentication): 3 APDUs, two on-card P-256
    # verifications (certificate, terminal signature; ~1.25 x a sign, an assumption), one NVM write (date).
    for rate, per_kib in (("106 kbit/s", 87.0), ("424 kbit/s", 22.0)):
        for chip, verify_ms in (("SECORA ID 30 ms", 30.0), ("JCOP4 40 ms", 40.0), ("old JCOP 110 ms", 110.0)):
            total = 3 * 9.5 + 2 * verify_ms + 4.0 + ta_bytes / 1024 * per_kib
            print(f"   model TERMINAL AUTH {rate:<11} {chip:<16} ≈ {total:6.1f} ms card side")


def _bench_terminal_auth(n: int) -> int:
    """PSO VERIFY CERTIFICATE + GET CHALLENGE + EXTERNAL AUTHENTICATE on the in-process card; bytes moved."""
    from emulators.card.transport import InProcessConnection

    from cityid.keys import P256PublicKey
    from cityid.terminal_cert import issue_certificate
    from terminal.sessions.citizen import CitizenSession

    root_key, kiosk_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    conn = InProcessConnection(make_citizen_card(None))
    session = CitizenSession(conn)
    session.authenticate()
    session.put_authorization_root(P256PublicKey.from_crypto(root_key.public_key()), 1_800_000_000)
    cert = issue_certificate(root_key, "busan-kiosk-001", P256PublicKey.from_crypto(kiosk_key.public_key()),
                             REQUEST, 1_800_000_000, 1_800_003_600)  # fmt: skip
    sign = lambda m: jose.es256_sign(kiosk_key, m)  # noqa: E731
    times = timed(lambda: session.authenticate_terminal(cert, sign, 1_800_000_100), n)
    print(f"   {'in process':<22} TERMINAL AUTH (3 APDUs) {summary_ms(times)}")
    return len(cert.encode()) + 74 + 16 + 3 * 7
