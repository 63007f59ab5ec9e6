"""The card-wide security object shared by the PIV and citizen applets.

Persistent (section ``security`` of the :class:`CardStore`): a salted HMAC-SHA-256 of the PIN and of the PUK
(never the values; a slow KDF would buy nothing for a 6–8 digit secret stored beside the plain-text keys of
this test card — the retry counter is the protection, as on a real card — and cost ~10 ms per VERIFY),
their retry counters, the management key (9B) and its algorithm, the card serial.
Volatile (cleared on power-up and when another applet is selected): "PIN verified", "management key
authenticated" and a pending management-key challenge.

Retry counters follow the anti-tearing rule of real cards: the counter is decremented and written *before* the
PIN is compared, and restored only after a match, so pulling the card during VERIFY never saves a try.

PIN rules (SP 800-73-4 Part 2 §3.2.1, card-wide here): 6–8 ASCII digits, padded with ``FF`` to 8 bytes.
Management key challenge/response: SP 800-73-4 Part 2 §3.2.4 (GENERAL AUTHENTICATE, key reference 9B),
witness (``80``) / challenge (``81``) / response (``82``) inside ``7C``, as yubico-piv-tool and yubikit do it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Callable
from typing import Any

from cityid.errors import ApduError, TlvError
from cityid.iso7816 import SW
from cityid.piv import (
    DEFAULT_MANAGEMENT_KEY,
    DEFAULT_PIN,
    DEFAULT_PUK,
    MANAGEMENT_KEY_ALGORITHMS,
    PIN_LEN_MAX,
    PIN_LEN_MIN,
    PIN_PAD_BYTE,
    PIN_TRIES,
    PUK_TRIES,
    Algorithm,
    KeyRef,
    Tag,
    management_key_cipher,
)
from cityid.tlv import encode_tlv, parse_tlv_dict
from emulators.card.store import CardStore

logger = logging.getLogger(__name__)

SECTION = "security"
#: Older state files (no "kdf" field) hashed with PBKDF2-SHA-256 at this many iterations.
LEGACY_PBKDF2_ITERATIONS = 20_000
KDF = "hmac-sha256"
SALT_BYTES = 16

#: Management key algorithms: key length and cipher block size (defined once in cityid.piv).
MGMT_KEY_ALGORITHMS = MANAGEMENT_KEY_ALGORITHMS
#: P1 ``00`` in GENERAL AUTHENTICATE with key 9B: SP 800-78-4 Table 6-2 lists ``00`` as 3 Key TDEA-ECB (the
#: pre-AES identifier); OpenSC's ``C_GenerateRandom`` sends it. Accepted as "the card's management-key
#: algorithm", as YubiKeys accept 00 for their 3DES key.
MGMT_ALG_CURRENT = 0x00


def unpad_pin(padded: bytes) -> bytes:
    """Strip the FF padding of an 8-byte PIN field; raise ``6A80`` when it is not 6–8 digits + padding."""
    if len(padded) != PIN_LEN_MAX:
        raise ApduError(SW.INCORRECT_DATA, "PIN field must be 8 bytes")
    pin = padded.rstrip(bytes([PIN_PAD_BYTE]))
    if not PIN_LEN_MIN <= len(pin) <= PIN_LEN_MAX or not pin.isdigit():
        raise ApduError(SW.INCORRECT_DATA, "PIN must be 6-8 digits padded with FF")
    return pin


def _hash(secret: bytes, salt: bytes, kdf: str = KDF) -> bytes:
    if kdf == KDF:
        return hmac.new(salt, secret, hashlib.sha256).digest()
    return hashlib.pbkdf2_hmac("sha256", secret, salt, LEGACY_PBKDF2_ITERATIONS)


class CardSecurity:
    """PIN, PUK and management key of one card, with the volatile security status."""

    def __init__(self, store: CardStore, rng: Callable[[int], bytes] = os.urandom) -> None:
        self.store = store
        self.rng = rng
        state = store.section(SECTION)
        if not state:
            state = self._fresh_state()
            store.commit(SECTION, state)
        self._state = state
        self._kdf = str(state.get("kdf", "pbkdf2-sha256"))
        self.pin_verified = False
        self.mgmt_authenticated = False
        self._challenge: tuple[str, bytes] | None = None  # ("witness"|"challenge", expected plain value)

    def _fresh_state(self) -> dict[str, Any]:
        pin_salt, puk_salt = self.rng(SALT_BYTES), self.rng(SALT_BYTES)
        return {
            "serial": self.rng(8).hex(),
            "kdf": KDF,
            "pin_salt": pin_salt.hex(),
            "pin_hash": _hash(DEFAULT_PIN, pin_salt).hex(),
            "pin_tries": PIN_TRIES,
            "pin_max": PIN_TRIES,
            "puk_salt": puk_salt.hex(),
            "puk_hash": _hash(DEFAULT_PUK, puk_salt).hex(),
            "puk_tries": PUK_TRIES,
            "puk_max": PUK_TRIES,
            "mgmt_alg": int(Algorithm.TDEA_3KEY),
            "mgmt_key": DEFAULT_MANAGEMENT_KEY.hex(),
        }

    # --- state ---------------------------------------------------------------------------------------

    @property
    def serial(self) -> bytes:
        return bytes.fromhex(self._state["serial"])

    @property
    def pin_tries(self) -> int:
        return int(self._state["pin_tries"])

    @property
    def puk_tries(self) -> int:
        return int(self._state["puk_tries"])

    @property
    def mgmt_algorithm(self) -> int:
        return int(self._state["mgmt_alg"])

    def _commit(self, **changes: Any) -> None:
        new = dict(self._state, **changes)
        self.store.commit(SECTION, new)  # raises before the in-memory state changes
        self._state = new

    def clear_session(self) -> None:
        """Forget the volatile security status (power-up, another applet selected)."""
        self.pin_verified = False
        self.mgmt_authenticated = False
        self._challenge = None

    # --- PIN and PUK (SP 800-73-4 Part 2 §3.2.1–3.2.3) -----------------------------------------------

    def _check(self, which: str, secret: bytes) -> None:
        """Compare ``secret`` with the stored PIN/PUK, counting the try first (anti-tearing)."""
        tries_key = f"{which}_tries"
        tries = int(self._state[tries_key])
        if tries == 0:
            raise ApduError(SW.AUTH_METHOD_BLOCKED, f"{which.upper()} blocked")
        self._commit(**{tries_key: tries - 1})
        expected = bytes.fromhex(self._state[f"{which}_hash"])
        salt = bytes.fromhex(self._state[f"{which}_salt"])
        if not hmac.compare_digest(_hash(secret, salt, self._kdf), expected):
            if which == "pin":
                self.pin_verified = False
            left = tries - 1
            raise ApduError(SW.VERIFY_FAILED | left, f"wrong {which}")
        self._commit(**{tries_key: int(self._state[f"{which}_max"])})

    def pin_status(self) -> None:
        """VERIFY without data: return if verified, else raise ``63Cx`` (or ``6983`` when blocked)."""
        if self.pin_verified:
            return
        if self.pin_tries == 0:
            raise ApduError(SW.AUTH_METHOD_BLOCKED)
        raise ApduError(SW.VERIFY_FAILED | self.pin_tries)

    def verify_pin(self, padded: bytes) -> None:
        pin = unpad_pin(padded)
        self._check("pin", pin)
        self.pin_verified = True

    def change_pin(self, padded_old: bytes, padded_new: bytes) -> None:
        old, new = unpad_pin(padded_old), unpad_pin(padded_new)
        self._check("pin", old)
        salt = self.rng(SALT_BYTES)
        self._commit(pin_salt=salt.hex(), pin_hash=_hash(new, salt, self._kdf).hex())
        self.pin_verified = True

    def change_puk(self, padded_old: bytes, padded_new: bytes) -> None:
        old, new = unpad_pin(padded_old), unpad_pin(padded_new)
        self._check("puk", old)
        salt = self.rng(SALT_BYTES)
        self._commit(puk_salt=salt.hex(), puk_hash=_hash(new, salt, self._kdf).hex())

    def unblock_pin(self, padded_puk: bytes, padded_new_pin: bytes) -> None:
        """RESET RETRY COUNTER: the PUK sets a new PIN and restores its tries."""
        puk, new = unpad_pin(padded_puk), unpad_pin(padded_new_pin)
        self._check("puk", puk)
        salt = self.rng(SALT_BYTES)
        pin_hash = _hash(new, salt, self._kdf).hex()
        self._commit(pin_salt=salt.hex(), pin_hash=pin_hash, pin_tries=self._state["pin_max"])

    def verify_command(self, p1: int, p2: int, data: bytes) -> None:
        """The VERIFY command of both applets (SP 800-73-4 Part 2 §3.2.1), one implementation.

        P1 ``00`` verifies (or, without data, asks the status: ``9000`` / ``63Cx`` / ``6983``), P1 ``FF``
        with no data resets the verified status; any other P1 → ``6A86``. P2 is the key reference: only
        ``80`` (PIV Card Application PIN) exists; every other reference — the global PIN ``00``, OCC
        ``96``/``97``, the pairing code ``98``, the PUK ``81`` (not a VERIFY reference) — answers ``6A88``
        (key reference not found, the status word Part 2 lists for VERIFY).
        """
        if p1 not in (0x00, 0xFF):
            raise ApduError(SW.INCORRECT_P1P2)
        if p2 != KeyRef.PIN:
            raise ApduError(SW.REFERENCE_DATA_NOT_FOUND, f"no key reference {p2:02X} for VERIFY")
        if p1 == 0xFF:
            if data:
                raise ApduError(SW.WRONG_LENGTH)
            self.pin_verified = False
        elif not data:
            self.pin_status()
        else:
            self.verify_pin(data)

    def require_pin(self) -> None:
        if not self.pin_verified:
            raise ApduError(SW.SECURITY_STATUS_NOT_SATISFIED, "PIN not verified")

    def require_admin(self) -> None:
        if not self.mgmt_authenticated:
            raise ApduError(SW.SECURITY_STATUS_NOT_SATISFIED, "management key not authenticated")

    # --- management key (SP 800-73-4 Part 2 §3.2.4, key reference 9B) --------------------------------

    def set_management_key(self, algorithm: int, key: bytes) -> None:
        """Replace the management key (admin only; the Yubico SET MANAGEMENT KEY extension uses this)."""
        self.require_admin()
        spec = MGMT_KEY_ALGORITHMS.get(algorithm)
        if spec is None:
            raise ApduError(SW.INCORRECT_P1P2, "unsupported management key algorithm")
        if len(key) != spec[0]:
            raise ApduError(SW.INCORRECT_DATA, "wrong management key length")
        self._commit(mgmt_alg=int(algorithm), mgmt_key=key.hex())

    def management_authenticate(self, algorithm: int, data: bytes) -> bytes:
        """One GENERAL AUTHENTICATE step with key 9B; return the response data (``7C`` template or empty).

        ``algorithm`` is P1: the key's algorithm, or ``00`` (:data:`MGMT_ALG_CURRENT`) for whatever it is.

        * ``7C { 80 00 }`` → card sends ``7C { 80 E(witness) }`` (mutual authentication, step 1);
        * ``7C { 80 witness, 81 challenge }`` → card checks the decrypted witness and sends
          ``7C { 82 E(challenge) }`` (step 2; the host checks it);
        * ``7C { 81 00 }`` → card sends ``7C { 81 challenge }``; ``7C { 82 E(challenge) }`` → empty (one-way).
        """
        if algorithm == MGMT_ALG_CURRENT:
            algorithm = self.mgmt_algorithm
        if algorithm != self.mgmt_algorithm:
            self._challenge = None
            raise ApduError(SW.INCORRECT_P1P2, "wrong management key algorithm")
        _, block = MGMT_KEY_ALGORITHMS[algorithm]
        try:
            fields = parse_tlv_dict(data)
            if set(fields) != {Tag.DYN_AUTH}:
                raise TlvError("expected one 7C template")
            inner = parse_tlv_dict(fields[Tag.DYN_AUTH])
        except TlvError as exc:
            self._challenge = None
            raise ApduError(SW.INCORRECT_DATA, str(exc)) from exc
        cipher = management_key_cipher(algorithm, bytes.fromhex(self._state["mgmt_key"]))
        witness = inner.get(Tag.WITNESS)
        challenge = inner.get(Tag.CHALLENGE)
        response = inner.get(Tag.RESPONSE)
        pending, self._challenge = self._challenge, None
        self.mgmt_authenticated = False

        if witness == b"" and challenge is None and response is None:
            plain = self.rng(block)
            self._challenge = ("witness", plain)
            enc = cipher.encryptor()
            return encode_tlv(Tag.DYN_AUTH, encode_tlv(Tag.WITNESS, enc.update(plain) + enc.finalize()))
        if witness and challenge is not None and response is None:
            if pending is None or pending[0] != "witness":
                raise ApduError(SW.CONDITIONS_NOT_SATISFIED, "no witness was requested")
            if len(witness) != block or not hmac.compare_digest(witness, pending[1]):
                raise ApduError(SW.SECURITY_STATUS_NOT_SATISFIED, "management key authentication failed")
            if len(challenge) != block:
                raise ApduError(SW.INCORRECT_DATA, "challenge must be one cipher block")
            enc = cipher.encryptor()
            self.mgmt_authenticated = True
            return encode_tlv(Tag.DYN_AUTH, encode_tlv(Tag.RESPONSE, enc.update(challenge) + enc.finalize()))
        if challenge == b"" and witness is None and response is None:
            plain = self.rng(block)
            self._challenge = ("challenge", plain)
            return encode_tlv(Tag.DYN_AUTH, encode_tlv(Tag.CHALLENGE, plain))
        if response and witness is None and challenge is None:
            if pending is None or pending[0] != "challenge":
                raise ApduError(SW.CONDITIONS_NOT_SATISFIED, "no challenge was requested")
            enc = cipher.encryptor()
            expected = enc.update(pending[1]) + enc.finalize()
            if not hmac.compare_digest(response, expected):
                raise ApduError(SW.SECURITY_STATUS_NOT_SATISFIED, "management key authentication failed")
            self.mgmt_authenticated = True
            return b""
        raise ApduError(SW.INCORRECT_DATA, "unexpected GENERAL AUTHENTICATE template")
