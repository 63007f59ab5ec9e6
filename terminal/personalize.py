"""Card personalization flow: holder key, card-signed certificate, PIN/PUK, DID and credential.

Steps (each one card command or a short exchange, so a card pulled mid-way leaves the card's state old or
new per step and personalization can simply be run again):

1. PIV: management-key authentication (SP 800-73-4 Part 2 Appendix A.1);
2. GENERATE ASYMMETRIC KEY PAIR, P-256, slot 9A (the holder key; it never leaves the card);
3. VERIFY the current PIN and let the card sign a TBSCertificate for its own public key: a self-signed
   X.509 certificate (RFC 5280 §4.1) proving the key is on the card — no city CA key is needed at the
   counter, and the certificate carries no personal data (subject: card serial only). Stored as the 9A
   certificate object so standard PIV middleware (OpenSC) lists the key;
4. citizen applet: optional PUT DID and PUT CREDENTIAL (behind the same management key);
5. CHANGE REFERENCE DATA for the PUK, then the PIN (optional: new values given).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cityid.apdu import SmartCardConnection
from cityid.citizen import CredentialRecord, StoredDisclosure
from cityid.errors import DecodeError
from cityid.jose import JoseError, b64url_decode, json_loads
from cityid.piv import DEFAULT_MANAGEMENT_KEY, Algorithm, Slot
from cityid.sdjwt import parse_disclosure, split
from cityid.tlv import encode_length
from terminal.sessions.citizen import CardIdentity, CitizenSession
from terminal.sessions.piv import PivSession

logger = logging.getLogger(__name__)

#: AlgorithmIdentifier ecdsa-with-SHA256 (RFC 5758 §3.2), DER.
_ECDSA_SHA256_ALG_ID = bytes.fromhex("300a06082a8648ce3d040302")
CERT_VALIDITY = dt.timedelta(days=10 * 365)


def _der(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + encode_length(len(body)) + body


def card_signed_certificate(
    piv: PivSession, slot: Slot, public_key: ec.EllipticCurvePublicKey, common_name: str
) -> x509.Certificate:
    """A self-signed certificate for ``public_key`` whose signature the card makes with ``slot``.

    The TBSCertificate is built host-side (with a throw-away key only to obtain the DER of the TBS with the
    right algorithm identifier), then signed on the card; the card's signature is checked before use.
    The PIN must be verified for ``slot`` first.
    """
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CERT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
    )
    throwaway = ec.generate_private_key(ec.SECP256R1())
    tbs = builder.sign(throwaway, hashes.SHA256()).tbs_certificate_bytes
    signature = piv.sign(slot, tbs)
    der = _der(0x30, tbs + _ECDSA_SHA256_ALG_ID + _der(0x03, b"\x00" + signature))
    cert = x509.load_der_x509_certificate(der)
    try:
        cert.verify_directly_issued_by(cert)
    except Exception as exc:  # InvalidSignature / ValueError / TypeError
        raise DecodeError(f"the card's certificate signature does not verify: {exc}") from exc
    return cert


def load_credential(text: str) -> CredentialRecord:
    """A credential file: the SD-JWT ``<issuer-jwt>~<disclosure>~…~`` (RFC 9901 §4) → the card record."""
    try:
        issuer_jwt, disclosures, kb = split(text.strip())
        if kb:
            raise DecodeError("the credential file must not hold a key-binding JWT")
        payload = json_loads(b64url_decode(issuer_jwt.split(".")[1]))
        vct = payload.get("vct", "") if isinstance(payload, dict) else ""
        stored = []
        for enc in disclosures:
            d = parse_disclosure(enc)
            if d.name is None:
                raise DecodeError("array-element disclosures cannot be stored by claim name")
            stored.append(StoredDisclosure(d.name, enc))
    except JoseError as exc:
        raise DecodeError(f"not an SD-JWT credential: {exc}") from exc
    record = CredentialRecord(issuer_jwt, tuple(stored), vct if isinstance(vct, str) else "")
    CredentialRecord.decode(record.encode())  # the card profile's limits
    return record


@dataclass(frozen=True, slots=True)
class PersonalizationResult:
    """What personalization produced (public material only)."""

    public_key: ec.EllipticCurvePublicKey
    certificate: x509.Certificate
    serial: str
    did: str | None
    credential_vct: str | None


def personalize(
    connection: SmartCardConnection,
    *,
    pin: str | None,
    management_key: bytes = DEFAULT_MANAGEMENT_KEY,
    generate_key: bool = True,
    new_pin: str | None = None,
    puk: str | None = None,
    new_puk: str | None = None,
    did: str | None = None,
    credential: CredentialRecord | None = None,
    progress: Callable[[str], None] = lambda _msg: None,
    management_key_algorithm: Algorithm = Algorithm.TDEA_3KEY,
) -> PersonalizationResult:
    """Run the personalization steps (module docstring) on one connected card.

    ``generate_key=False`` keeps the existing 9A key and certificate (e.g. to write the credential the
    issuer made for that key in a second pass). ``management_key_algorithm``: the card's current 9B key
    (AES-128 once the per-card key is set, docs/card-profile.md).
    """
    mk = (management_key, management_key_algorithm)
    serial = _identity(connection, *mk).serial
    piv = PivSession(connection)
    if generate_key:
        if pin is None:
            raise ValueError("generating the key needs the PIN (the card signs its certificate)")
        progress("authenticating with the management key")
        piv.authenticate_management_key(*mk)
        progress("generating the P-256 holder key in slot 9A")
        public_key = piv.generate_key(Slot.AUTHENTICATION, Algorithm.ECC_P256)
        progress("verifying the PIN")
        piv.verify_pin(pin)
        progress("card signs its certificate")
        cert = card_signed_certificate(piv, Slot.AUTHENTICATION, public_key, f"Busan citizen card {serial}")
        progress("writing the certificate")
        piv.put_certificate(Slot.AUTHENTICATION, cert)
    else:
        cert = piv.get_certificate(Slot.AUTHENTICATION)
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise DecodeError("the 9A certificate does not hold an EC key")
        public_key = key
    if did is not None or credential is not None:
        citizen = CitizenSession(connection)
        progress("authenticating the citizen applet")
        citizen.authenticate(*mk)
        if did is not None:
            progress("writing the DID")
            citizen.put_did(did)
        if credential is not None:
            progress(f"writing the credential ({len(credential.encode())} bytes)")
            citizen.put_credential(credential)
    if new_puk is not None or new_pin is not None:
        piv = PivSession(connection)  # the PIN and PUK are managed through PIV (re-selected)
    if new_puk is not None:
        if puk is None:
            raise ValueError("changing the PUK needs the current PUK")
        progress("setting the PUK")
        piv.change_puk(puk, new_puk)
    if new_pin is not None:
        if pin is None:
            raise ValueError("changing the PIN needs the current PIN")
        progress("setting the PIN")
        piv.change_pin(pin, new_pin)
    identity = _identity(connection, *mk)
    return PersonalizationResult(public_key, cert, serial, identity.did, identity.vct)


def _identity(connection: SmartCardConnection, key: bytes, algorithm: Algorithm) -> CardIdentity:
    """Serial, DID, vct: from GET INFO on a legacy card, else GET IDENTITY behind the management key."""
    citizen = CitizenSession(connection)
    info = citizen.info()
    if info.identity_in_info is not None:
        return info.identity_in_info
    citizen.authenticate(key, algorithm)
    return citizen.identity()
