"""Batch attestation under a test attestation CA (WebAuthn §8.2, CTAP 2.1 §6.1.2, FIDO Authenticator Security
Requirements "batch attestation": one attestation key and certificate shared by ≥ 100,000 authenticators).

An :class:`AttestationBatch` is a self-signed root CA ("Busan City ID Test FIDO Attestation Root <label>",
P-256) and one attestation key with its certificate, signed by that root and meeting WebAuthn §8.2.1
(version 3; subject C, O, OU="Authenticator Attestation", CN; basic constraints CA=false; the non-critical
id-fido-gen-ce-aaguid extension 1.3.6.1.4.1.45724.1.1.4 carrying the model's AAGUID). The root's private key
is dropped after issuing: nothing more is ever signed with it. Every emulated key of one batch signs its
attestation statements with the same key and sends the same ``x5c``, so a registration tells the relying
party the model and batch, never which key (issue 12; docs/fido.md "Attestation").

A batch lives in a directory, created once (``cardtool fido batch create DIR``, or on first use):
``batch.json`` (the attestation key, its certificate and the root; mode 0600) and ``root.pem`` (the root
alone, for relying parties). Creation is atomic and race-free (a hard link that fails when another process
won). Keys without a batch directory share :func:`default_batch`, one batch per process (tests, in-memory
keys). Each key's state records which batch it belongs to (section ``fido_attestation``: the batch id, its
directory if any, and the root certificate, which is public and the same for the whole batch).
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import logging
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cityid.errors import CityIdError
from emulators.card.store import CardStore
from emulators.fido.state import ATTESTATION, MODEL_AAGUID

logger = logging.getLogger(__name__)

OID_FIDO_AAGUID = x509.ObjectIdentifier("1.3.6.1.4.1.45724.1.1.4")
ROOT_CN = "Busan City ID Test FIDO Attestation Root"
LEAF_CN = "Busan City ID Virtual FIDO2 Key"
VALIDITY_DAYS = 20 * 365
BATCH_FILE = "batch.json"
ROOT_FILE = "root.pem"
BATCH_FORMAT = 1


class AttestationBatchError(CityIdError):
    """A batch directory cannot be read or created (not a batch, wrong model, unreadable)."""


def _name(cn: str, ou: str | None = None) -> x509.Name:
    attrs = [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "KR"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Busan Metropolitan City (test)"),
    ]
    if ou:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _issue(aaguid: bytes, label: str) -> dict[str, Any]:
    """A new root + attestation key/certificate (WebAuthn §8.2.1) as the ``batch.json`` document."""
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    until = now + datetime.timedelta(days=VALIDITY_DAYS)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    # The label keeps two batches' roots apart by subject (a relying party may trust several batches).
    root_name = _name(f"{ROOT_CN} {label}")
    root = (
        x509.CertificateBuilder()
        .subject_name(root_name)
        .issuer_name(root_name)
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
        .subject_name(_name(LEAF_CN, "Authenticator Attestation"))
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
        "format": BATCH_FORMAT,
        "label": label,
        "aaguid": aaguid.hex(),
        "root": root.public_bytes(serialization.Encoding.PEM).decode(),
        "cert": leaf.public_bytes(serialization.Encoding.DER).hex(),
        "key": att_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
    }


@dataclass(frozen=True)
class AttestationBatch:
    """One attestation key + certificate + test root shared by every emulated key of the batch."""

    aaguid: bytes
    label: str
    root_pem: str
    cert_der: bytes
    _key: ec.EllipticCurvePrivateKey
    directory: Path | None = None

    @classmethod
    def _from_doc(cls, doc: dict[str, Any], directory: Path | None) -> AttestationBatch:
        try:
            key = serialization.load_pem_private_key(str(doc["key"]).encode(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey) or doc.get("format") != BATCH_FORMAT:
                raise ValueError("not a P-256 batch of this format")
            return cls(
                bytes.fromhex(doc["aaguid"]), str(doc["label"]), str(doc["root"]), bytes.fromhex(doc["cert"]),
                key, directory,
            )
        except (KeyError, TypeError, ValueError) as exc:
            where = directory or "batch"
            raise AttestationBatchError(f"{where}: not a FIDO attestation batch ({exc})") from None

    @classmethod
    def generate(cls, aaguid: bytes = MODEL_AAGUID) -> AttestationBatch:
        """A new batch in memory only."""
        return cls._from_doc(_issue(aaguid, secrets.token_hex(4)), None)

    @classmethod
    def open(
        cls, directory: str | os.PathLike[str], aaguid: bytes = MODEL_AAGUID, create: bool = True
    ) -> AttestationBatch:
        """The batch in ``directory``; created there first if missing and ``create`` (atomic, race-free)."""
        path = Path(directory)
        file = path / BATCH_FILE
        if not file.exists():
            if not create:
                raise AttestationBatchError(f"no FIDO attestation batch in {path}")
            cls._create_files(path, _issue(aaguid, secrets.token_hex(4)))
        try:
            doc = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise AttestationBatchError(f"cannot read the attestation batch {file}: {exc}") from None
        batch = cls._from_doc(doc if isinstance(doc, dict) else {}, path)
        if batch.aaguid != aaguid:
            raise AttestationBatchError(
                f"{path}: the batch is for AAGUID {batch.aaguid.hex()}, not {aaguid.hex()}"
            )
        return batch

    @staticmethod
    def _create_files(path: Path, doc: dict[str, Any]) -> None:
        try:
            path.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".batch-", dir=path)  # mode 0600
            try:
                with os.fdopen(fd, "w") as fh:
                    json.dump(doc, fh, indent=1)
                    fh.flush()
                    os.fsync(fh.fileno())
                try:
                    os.link(tmp, path / BATCH_FILE)  # fails if another process created the batch first
                    logger.info("created the FIDO attestation batch %s in %s", doc["label"], path)
                except FileExistsError:
                    return
            finally:
                os.unlink(tmp)
            (path / ROOT_FILE).write_text(doc["root"])
        except OSError as exc:
            raise AttestationBatchError(f"cannot create the attestation batch in {path}: {exc}") from None

    @property
    def batch_id(self) -> str:
        """SHA-256 of the attestation certificate (hex): names the batch, the same for all its keys."""
        return hashlib.sha256(self.cert_der).hexdigest()

    @property
    def root_der(self) -> bytes:
        return x509.load_pem_x509_certificate(self.root_pem.encode()).public_bytes(serialization.Encoding.DER)

    def statement(self, auth_data: bytes, client_data_hash: bytes) -> dict[str, object]:
        """The packed attStmt ``{alg: -7, sig, x5c: [batch attestation cert]}`` (WebAuthn §8.2)."""
        sig = self._key.sign(auth_data + client_data_hash, ec.ECDSA(hashes.SHA256()))
        return {"alg": -7, "sig": sig, "x5c": [self.cert_der]}


@functools.cache
def default_batch(aaguid: bytes = MODEL_AAGUID) -> AttestationBatch:
    """The batch of every key in this process that names none: all such keys attest alike."""
    return AttestationBatch.generate(aaguid)


def stored_batch_dir(store: CardStore) -> Path | None:
    """The batch directory a key's state refers to (None: none recorded, or an in-memory batch)."""
    directory = store.section(ATTESTATION).get("dir")
    return Path(directory) if directory else None


def bind(store: CardStore, batch: AttestationBatch) -> None:
    """Record in the key's state that it belongs to ``batch``.

    A state written before batch attestation holds its own attestation key (section keys ``key``, ``cert``):
    that key identifies the emulated key, so it is dropped here (migration; docs/fido.md "Attestation").
    """
    data = store.section(ATTESTATION)
    record = {
        "batch": batch.batch_id,
        "dir": str(batch.directory.resolve()) if batch.directory else None,
        "root": batch.root_pem,
    }
    if data != record:
        if "key" in data:
            logger.warning("per-key FIDO attestation replaced by batch %s (migration)", batch.label)
        store.commit(ATTESTATION, record)


def export_root(store: CardStore) -> str | None:
    """The attestation root certificate (PEM) of the batch ``store``'s key belongs to, or None if no
    authenticator ran on it yet."""
    return store.section(ATTESTATION).get("root")


def export_batch_root(directory: str | os.PathLike[str]) -> str:
    """The root certificate (PEM) of the batch in ``directory`` (which must exist)."""
    return AttestationBatch.open(directory, create=False).root_pem
