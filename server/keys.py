"""The issuer's ES256 signing key: an encrypted PKCS#8 keystore file (default) or a PKCS#11 token (HSM).

Both implement the credential signer interface used by ``cityid.credential.issue``:
``sign(signing_input) -> raw r||s`` (RFC 7518 §3.4) plus ``public_point`` (65-byte SEC1 point).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cityid.errors import CityIdError
from cityid.keys import KeyFormatError, P256PublicKey, es256_der_to_raw, low_s
from server.config import IssuerKeyConfig

logger = logging.getLogger(__name__)


class IssuerKeyError(CityIdError):
    """The issuer key cannot be loaded or used (missing file, wrong password, token or key not found)."""


class IssuerSigner(Protocol):
    """What the issuer needs from a key: ES256 signatures and the public point."""

    @property
    def public_point(self) -> bytes: ...

    def sign(self, signing_input: bytes) -> bytes: ...


class KeystoreSigner:
    """ES256 with a P-256 key kept in a password-encrypted PKCS#8 PEM file."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(private_key.curve, ec.SECP256R1):
            raise IssuerKeyError("the issuer key must be P-256")
        self._key = private_key
        self._point = P256PublicKey.from_crypto(private_key.public_key()).point

    @classmethod
    def generate(cls, path: str | Path, password: str) -> KeystoreSigner:
        """Create a new key and write it encrypted (file mode 0600); refuse to overwrite."""
        if not password:
            raise IssuerKeyError("a keystore password is needed (env CITY_ISSUER_KEY_PASSWORD)")
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password.encode()),
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError as exc:
            raise IssuerKeyError(f"keystore {path} already exists") from exc
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        logger.info("created issuer keystore %s", path)
        return cls(key)

    @classmethod
    def load(cls, path: str | Path, password: str) -> KeystoreSigner:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise IssuerKeyError(f"cannot read keystore {path}: {exc.strerror}") from exc
        try:
            key = serialization.load_pem_private_key(data, password.encode() if password else None)
        except (ValueError, TypeError) as exc:
            raise IssuerKeyError(f"cannot open keystore {path}: wrong password or not a PKCS#8 key") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise IssuerKeyError("the issuer key must be an EC P-256 key")
        return cls(key)

    @property
    def public_point(self) -> bytes:
        return self._point

    def sign(self, signing_input: bytes) -> bytes:
        return low_s(es256_der_to_raw(self._key.sign(signing_input, ec.ECDSA(hashes.SHA256()))))


class Pkcs11Signer:
    """ES256 with a P-256 key held in a PKCS#11 token (SoftHSM2 in tests, a real HSM in production).

    The private key never leaves the token: the host computes SHA-256 and the token signs with CKM_ECDSA,
    whose output is already raw r||s (PKCS#11 v2.40 §2.3.1).
    """

    def __init__(self, module: str, token_label: str, key_label: str, pin: str) -> None:
        try:
            import pkcs11
            from pkcs11 import Attribute, KeyType, ObjectClass
            from pkcs11.exceptions import PKCS11Error
        except ImportError as exc:
            raise IssuerKeyError("python-pkcs11 is not installed") from exc
        self._lock = threading.Lock()
        try:
            lib = pkcs11.lib(module)
            token = lib.get_token(token_label=token_label)
            self._session = token.open(user_pin=pin)
            key = self._session.get_key(
                key_type=KeyType.EC, object_class=ObjectClass.PRIVATE_KEY, label=key_label
            )
            if not isinstance(key, pkcs11.SignMixin):  # python-pkcs11 mixes this in when CKA_SIGN is set
                raise IssuerKeyError(f"PKCS#11: key {key_label!r} on token {token_label!r} cannot sign")
            self._key = key
            pub = self._session.get_key(
                key_type=KeyType.EC, object_class=ObjectClass.PUBLIC_KEY, label=key_label
            )
            ec_point = pub[Attribute.EC_POINT]
        except (PKCS11Error, RuntimeError, OSError) as exc:
            raise IssuerKeyError(
                f"PKCS#11: cannot use key {key_label!r} on token {token_label!r}: {type(exc).__name__}"
            ) from exc
        self._mechanism = pkcs11.Mechanism.ECDSA
        self._error = PKCS11Error
        # CKA_EC_POINT is a DER OCTET STRING wrapping the SEC1 point.
        point = ec_point[2:] if ec_point[:1] == b"\x04" and len(ec_point) == 67 else ec_point
        try:
            self._point = P256PublicKey.from_point(bytes(point)).point
        except KeyFormatError as exc:
            raise IssuerKeyError("PKCS#11 key is not an uncompressed P-256 point") from exc

    @staticmethod
    def generate(module: str, token_label: str, key_label: str, pin: str) -> None:
        """Generate a P-256 key pair on the token (non-extractable private key)."""
        import pkcs11
        from pkcs11 import Attribute, KeyType
        from pkcs11.util.ec import encode_named_curve_parameters

        lib = pkcs11.lib(module)
        token = lib.get_token(token_label=token_label)
        with token.open(user_pin=pin, rw=True) as session:
            params = session.create_domain_parameters(
                KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True
            )
            params.generate_keypair(
                store=True,
                label=key_label,
                private_template={Attribute.EXTRACTABLE: False, Attribute.SENSITIVE: True},
            )

    @property
    def public_point(self) -> bytes:
        return self._point

    def sign(self, signing_input: bytes) -> bytes:
        h = hashes.Hash(hashes.SHA256())
        h.update(signing_input)
        digest = h.finalize()
        try:
            with self._lock:
                raw = self._key.sign(digest, mechanism=self._mechanism)
        except self._error as exc:
            raise IssuerKeyError(f"PKCS#11 signing failed: {type(exc).__name__}") from exc
        if len(raw) != 64:
            raise IssuerKeyError("PKCS#11 returned a signature of unexpected length")
        return low_s(bytes(raw))

    def close(self) -> None:
        self._session.close()


def load_signer(cfg: IssuerKeyConfig) -> IssuerSigner:
    """Open the configured issuer key; raise :class:`IssuerKeyError` with a clear reason."""
    if cfg.source == "pkcs11":
        if not cfg.pkcs11_pin:
            raise IssuerKeyError("PKCS#11 user PIN missing (env CITY_PKCS11_PIN)")
        return Pkcs11Signer(cfg.pkcs11_module, cfg.pkcs11_token, cfg.pkcs11_key_label, cfg.pkcs11_pin)
    if not cfg.keystore_password:
        raise IssuerKeyError("keystore password missing (env CITY_ISSUER_KEY_PASSWORD)")
    if cfg.create_if_missing and not Path(cfg.keystore_path).exists():
        return KeystoreSigner.generate(cfg.keystore_path, cfg.keystore_password)
    return KeystoreSigner.load(cfg.keystore_path, cfg.keystore_password)
