"""Per-card management keys answered by the city HSM (docs/card-profile.md, "Per-card management key").

``K_card = AES-256-ECB(K_city, serial ‖ "CITYID9B")``. ``K_city`` is the city's AES-256 management master
key; in production it lives in the HSM and never leaves it (:class:`Pkcs11CardKeys`: ``C_DeriveKey`` with
``CKM_AES_ECB_ENCRYPT_DATA`` gives ``K_card`` as a session object, the card's 9B mutual authentication is
answered with ``C_Decrypt``/``C_Encrypt`` on it and the object is destroyed). :class:`SoftwareCardKeys`
keeps ``K_city`` in memory: the demo and tests only, never a production master key.

Both implement :class:`CardKeys`:

* :meth:`CardKeys.answer` — step 2 of SP 800-73-4 Part 2 Appendix A.1 for the card's encrypted witness:
  the decrypted witness, a fresh host challenge chosen here (never by the caller, so the HSM is no
  encryption oracle) and the card's expected answer ``E(K_card, challenge)``;
* :meth:`CardKeys.card_key` — ``K_card`` itself, for Yubico SET MANAGEMENT KEY, which carries the key in
  the clear (no secure messaging in the card profile): the only moment a card key leaves the HSM.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

from cityid.errors import CityIdError
from cityid.piv import (
    CARD_MANAGEMENT_KEY_ALGORITHM,
    CARD_SERIAL_BYTES,
    CITY_MASTER_KEY_BYTES,
    MANAGEMENT_KEY_ALGORITHMS,
    derive_management_key,
    management_key_cipher,
    management_key_diversifier,
)
from server.config import ManagementKeyConfig

logger = logging.getLogger(__name__)

BLOCK = MANAGEMENT_KEY_ALGORITHMS[CARD_MANAGEMENT_KEY_ALGORITHM][1]
CARD_KEY_BYTES = MANAGEMENT_KEY_ALGORITHMS[CARD_MANAGEMENT_KEY_ALGORITHM][0]


class CardKeyError(CityIdError):
    """The management master key cannot be used (token, PIN or key missing; the HSM refused)."""


@dataclass(frozen=True, slots=True)
class CardKeyAnswer:
    """What the counter relays to the card at step 2 and what the card must answer (no key material)."""

    witness: bytes
    challenge: bytes
    expected: bytes = field(repr=False)


class CardKeys(Protocol):
    """The server's half of the per-card management key."""

    def answer(self, serial: bytes, encrypted_witness: bytes) -> CardKeyAnswer: ...

    def card_key(self, serial: bytes) -> bytes: ...


def _check(serial: bytes, encrypted_witness: bytes | None = None) -> None:
    if len(serial) != CARD_SERIAL_BYTES:
        raise ValueError(f"a card serial has {CARD_SERIAL_BYTES} bytes")
    if encrypted_witness is not None and len(encrypted_witness) != BLOCK:
        raise ValueError(f"the witness is one {BLOCK}-byte AES block")


class SoftwareCardKeys:
    """``K_city`` in memory (demo and tests only; the server logs a warning when configured)."""

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != CITY_MASTER_KEY_BYTES:
            raise CardKeyError(f"the management master key is AES-256 ({CITY_MASTER_KEY_BYTES} bytes)")
        self._master = master_key

    def card_key(self, serial: bytes) -> bytes:
        _check(serial)
        return derive_management_key(self._master, serial)

    def answer(self, serial: bytes, encrypted_witness: bytes) -> CardKeyAnswer:
        _check(serial, encrypted_witness)
        cipher = management_key_cipher(CARD_MANAGEMENT_KEY_ALGORITHM, self.card_key(serial))
        dec = cipher.decryptor()
        witness = dec.update(encrypted_witness) + dec.finalize()
        challenge = os.urandom(BLOCK)
        enc = cipher.encryptor()
        return CardKeyAnswer(witness, challenge, enc.update(challenge) + enc.finalize())


class Pkcs11CardKeys:
    """``K_city`` in a PKCS#11 token (SoftHSM2 in tests, the city HSM in production).

    The master key object needs ``CKA_DERIVE`` only (:meth:`generate` makes it sensitive, non-extractable,
    no encrypt/decrypt). Each call derives ``K_card`` as a session object and destroys it afterwards.
    """

    def __init__(self, module: str, token_label: str, key_label: str, pin: str) -> None:
        try:
            import pkcs11
            from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
            from pkcs11.exceptions import PKCS11Error, UserAlreadyLoggedIn
        except ImportError as exc:
            raise CardKeyError("python-pkcs11 is not installed") from exc
        self._lock = threading.Lock()
        self._A, self._KT, self._M = Attribute, KeyType, Mechanism
        self._error: type[Exception] = PKCS11Error
        try:
            token = pkcs11.lib(module).get_token(token_label=token_label)
            try:
                self._session = token.open(user_pin=pin)
            except UserAlreadyLoggedIn:  # login is per process and token (e.g. shared with the issuer key)
                self._session = token.open()
            self._master: Any = self._session.get_key(
                key_type=KeyType.AES, object_class=ObjectClass.SECRET_KEY, label=key_label
            )
        except (PKCS11Error, RuntimeError, OSError) as exc:
            self._close_quietly()
            raise CardKeyError(
                f"PKCS#11: cannot use key {key_label!r} on token {token_label!r}: {type(exc).__name__}"
            ) from exc
        if not self._master[Attribute.DERIVE]:
            self._close_quietly()
            raise CardKeyError(f"PKCS#11: key {key_label!r} has no CKA_DERIVE")

    def _close_quietly(self) -> None:
        session = getattr(self, "_session", None)
        if session is not None:
            try:
                session.close()
            except self._error:
                logger.warning("PKCS#11: could not close a session")

    @staticmethod
    def generate(module: str, token_label: str, key_label: str, pin: str) -> None:
        """Create ``K_city`` in the token: AES-256, sensitive, never extractable, derive only."""
        import pkcs11
        from pkcs11 import Attribute, KeyType

        token = pkcs11.lib(module).get_token(token_label=token_label)
        with token.open(user_pin=pin, rw=True) as session:
            session.generate_key(
                KeyType.AES, 256, label=key_label, store=True,
                template={
                    Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.DERIVE: True,
                    Attribute.ENCRYPT: False, Attribute.DECRYPT: False, Attribute.WRAP: False,
                    Attribute.UNWRAP: False, Attribute.SIGN: False, Attribute.VERIFY: False,
                },
            )  # fmt: skip

    def _derive(self, serial: bytes, extractable: bool) -> Any:
        a = self._A
        template = {
            a.TOKEN: False, a.SENSITIVE: not extractable, a.EXTRACTABLE: extractable,
            a.ENCRYPT: True, a.DECRYPT: True, a.DERIVE: False, a.WRAP: False, a.UNWRAP: False,
        }  # fmt: skip
        return self._master.derive_key(
            self._KT.AES, CARD_KEY_BYTES * 8, mechanism=self._M.AES_ECB_ENCRYPT_DATA,
            mechanism_param=management_key_diversifier(serial), template=template,
        )  # fmt: skip

    def answer(self, serial: bytes, encrypted_witness: bytes) -> CardKeyAnswer:
        _check(serial, encrypted_witness)
        challenge = os.urandom(BLOCK)
        try:
            with self._lock:
                key = self._derive(serial, extractable=False)
                try:
                    witness = bytes(key.decrypt(encrypted_witness, mechanism=self._M.AES_ECB))
                    expected = bytes(key.encrypt(challenge, mechanism=self._M.AES_ECB))
                finally:
                    key.destroy()
        except self._error as exc:
            raise CardKeyError(f"PKCS#11: management-key answer failed: {type(exc).__name__}") from exc
        return CardKeyAnswer(witness, challenge, expected)

    def card_key(self, serial: bytes) -> bytes:
        _check(serial)
        try:
            with self._lock:
                key = self._derive(serial, extractable=True)
                try:
                    value = bytes(key[self._A.VALUE])
                finally:
                    key.destroy()
        except self._error as exc:
            raise CardKeyError(f"PKCS#11: card key derivation failed: {type(exc).__name__}") from exc
        if len(value) != CARD_KEY_BYTES:
            raise CardKeyError("PKCS#11 derived a card key of unexpected length")
        return value

    def close(self) -> None:
        self._session.close()


def load_card_keys(cfg: ManagementKeyConfig) -> CardKeys | None:
    """The configured management master key, or None when the server has none (``source = "none"``)."""
    if cfg.source == "none":
        return None
    if cfg.source == "software":
        if not cfg.software_master_key:
            raise CardKeyError("software management master key missing (env CITY_MANAGEMENT_MASTER_KEY)")
        try:
            master = bytes.fromhex(cfg.software_master_key)
        except ValueError as exc:
            raise CardKeyError("CITY_MANAGEMENT_MASTER_KEY must be 64 hex digits") from exc
        logger.warning("management master key held in software: demo/test only, never for real cards")
        return SoftwareCardKeys(master)
    if not cfg.pkcs11_pin:
        raise CardKeyError("PKCS#11 user PIN of the management-key token missing (env CITY_MGMT_PKCS11_PIN)")
    return Pkcs11CardKeys(cfg.pkcs11_module, cfg.pkcs11_token, cfg.pkcs11_key_label, cfg.pkcs11_pin)
