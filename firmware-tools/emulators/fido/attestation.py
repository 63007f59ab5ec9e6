"""Packed attestation under a test attestation CA created on first run (WebAuthn §8.2, CTAP 2.1 §6.1.2).

First use creates, in the ``fido_attestation`` store section: a self-signed root CA ("Busan City ID Test
FIDO Attestation Root", P-256) and an attestation certificate signed by it that meets WebAuthn §8.2.1
(version 3; subject C, O, OU="Authenticator Attestation", CN; basic constraints CA=false; the non-critical
id-fido-gen-ce-aaguid extension 1.3.6.1.4.1.45724.1.1.4). The root's private key is dropped after issuing:
nothing more is ever signed with it. Relying parties trust the root (``cardtool fido attestation-root``).
"""

from __future__ import annotations

import datetime
import logging

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from emulators.card.store import CardStore
from emulators.fido.state import ATTESTATION

logger = logging.getLogger(__name__)

OID_FIDO_AAGUID = x509.ObjectIdentifier("1.3.6.1.4.1.45724.1.1.4")
ROOT_CN = "Busan City ID Test FIDO Attestation Root"
VALIDITY_DAYS = 20 * 365


def _name(cn: str, ou: str | None = None) -> x509.Name:
    attrs = [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "KR"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Busan Metropolitan City (test)"),
    ]
    if ou:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _create(aaguid: bytes) -> dict[str, str]:
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    until = now + datetime.timedelta(days=VALIDITY_DAYS)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    root = (
        x509.CertificateBuilder()
        .subject_name(_name(ROOT_CN))
        .issuer_name(_name(ROOT_CN))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    att_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("Busan City ID Virtual FIDO2 Key", "Authenticator Attestation"))
        .issuer_name(root.subject)
        .public_key(att_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # id-fido-gen-ce-aaguid: an OCTET STRING (04 10 <aaguid>) as the extension value
        .add_extension(x509.UnrecognizedExtension(OID_FIDO_AAGUID, b"\x04\x10" + aaguid), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return {
        "root": root.public_bytes(serialization.Encoding.PEM).decode(),
        "cert": leaf.public_bytes(serialization.Encoding.DER).hex(),
        "key": att_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
        "aaguid": aaguid.hex(),
    }


class AttestationAuthority:
    """The attestation key and certificates of one authenticator (created on first use)."""

    def __init__(self, store: CardStore, aaguid: bytes) -> None:
        data = store.section(ATTESTATION)
        if data.get("aaguid") != aaguid.hex() or "key" not in data:
            data = _create(aaguid)
            store.commit(ATTESTATION, data)
            logger.info("created the test FIDO attestation CA")
        self.root_pem: str = data["root"]
        self.cert_der = bytes.fromhex(data["cert"])
        key = serialization.load_pem_private_key(data["key"].encode(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self._key = key

    @property
    def root_der(self) -> bytes:
        return x509.load_pem_x509_certificate(self.root_pem.encode()).public_bytes(serialization.Encoding.DER)

    def statement(self, auth_data: bytes, client_data_hash: bytes) -> dict[str, object]:
        """The packed attStmt ``{alg: -7, sig, x5c: [attestation cert]}`` (WebAuthn §8.2)."""
        sig = self._key.sign(auth_data + client_data_hash, ec.ECDSA(hashes.SHA256()))
        return {"alg": -7, "sig": sig, "x5c": [self.cert_der]}


def export_root(store: CardStore) -> str | None:
    """The root certificate (PEM) stored in ``store``, or None if no authenticator ran on it yet."""
    return store.section(ATTESTATION).get("root")
