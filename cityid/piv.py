"""PIV wire constants (NIST SP 800-73-4 Part 1 §3, Part 2 §3; SP 800-78-4 algorithm ids).

Shared by the terminal's ``PivSession`` and the emulator's PIV applet.
"""

from __future__ import annotations

from enum import IntEnum

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

try:  # cryptography >= 43 keeps 3DES in the "decrepit" module
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # pragma: no cover
    TripleDES = algorithms.TripleDES

#: PIV application identifier with version (SP 800-73-4 Part 1 §2.2).
PIV_AID = bytes.fromhex("A000000308000010000100")
#: The truncated AID (RID + PIX without version) middleware selects.
PIV_AID_SHORT = bytes.fromhex("A00000030800001000")

DEFAULT_PIN = b"123456"
DEFAULT_PUK = b"12345678"
#: Default management key (9B), 3DES, as shipped by YubiKey and expected by yubico-piv-tool.
DEFAULT_MANAGEMENT_KEY = bytes.fromhex("010203040506070801020304050607080102030405060708")
PIN_TRIES = 3
PUK_TRIES = 3
PIN_PAD_BYTE = 0xFF
PIN_LEN_MAX = 8
PIN_LEN_MIN = 6


class Slot(IntEnum):
    """Key references (SP 800-73-4 Part 1 Table 4b)."""

    AUTHENTICATION = 0x9A
    CARD_MANAGEMENT = 0x9B
    SIGNATURE = 0x9C
    KEY_MANAGEMENT = 0x9D
    CARD_AUTH = 0x9E


class KeyRef(IntEnum):
    """Key references for VERIFY / CHANGE REFERENCE DATA / RESET RETRY COUNTER (Part 2 §3.2)."""

    GLOBAL_PIN = 0x00
    PIN = 0x80
    PUK = 0x81


class Algorithm(IntEnum):
    """Cryptographic mechanism identifiers (SP 800-78-4 Table 6-2)."""

    TDEA_3KEY = 0x03
    RSA_1024 = 0x06
    RSA_2048 = 0x07
    AES_128 = 0x08
    AES_192 = 0x0A
    AES_256 = 0x0C
    ECC_P256 = 0x11
    ECC_P384 = 0x14


class ObjectId(IntEnum):
    """Data object BER-TLV tags (SP 800-73-4 Part 1 Table 3)."""

    CAPABILITY = 0x5FC107  # CCC
    CHUID = 0x5FC102
    AUTHENTICATION = 0x5FC105  # certificate for 9A
    FINGERPRINTS = 0x5FC103
    SECURITY = 0x5FC106
    FACIAL = 0x5FC108
    PRINTED = 0x5FC109
    SIGNATURE = 0x5FC10A  # certificate for 9C
    KEY_MANAGEMENT = 0x5FC10B  # certificate for 9D
    CARD_AUTH = 0x5FC101  # certificate for 9E
    DISCOVERY = 0x7E
    KEY_HISTORY = 0x5FC10C
    IRIS = 0x5FC121
    BITGT = 0x7F61
    RETIRED_FIRST = 0x5FC10D  # retired key management certificates (keys 82..95)
    RETIRED_LAST = 0x5FC120
    SM_SIGNER = 0x5FC122
    PAIRING_CODE = 0x5FC123


#: Certificate object for each key slot.
CERT_OBJECT_FOR_SLOT = {
    Slot.AUTHENTICATION: ObjectId.AUTHENTICATION,
    Slot.SIGNATURE: ObjectId.SIGNATURE,
    Slot.KEY_MANAGEMENT: ObjectId.KEY_MANAGEMENT,
    Slot.CARD_AUTH: ObjectId.CARD_AUTH,
}


class Tag(IntEnum):
    """Tags inside PIV commands and responses."""

    APT = 0x61  # application property template
    AID = 0x4F
    AUTHORITY = 0x79
    APP_LABEL = 0x50
    APP_URL = 0x5F50
    ALGORITHMS = 0xAC
    ALGORITHM = 0x80
    OBJECT_ID = 0x06
    DATA_OBJECT_LIST = 0x5C  # GET/PUT DATA tag list
    DATA = 0x53
    DYN_AUTH = 0x7C  # dynamic authentication template
    WITNESS = 0x80
    CHALLENGE = 0x81
    RESPONSE = 0x82
    EXPONENTIATION = 0x85
    KEY_TEMPLATE = 0xAC
    PUBLIC_KEY = 0x7F49
    EC_POINT = 0x86
    CERTIFICATE = 0x70
    CERT_INFO = 0x71
    ERROR_DETECTION = 0xFE


def pad_pin(pin: bytes) -> bytes:
    """Pad a PIN to 8 bytes with FF (Part 2 §3.2.1)."""
    if not PIN_LEN_MIN <= len(pin) <= PIN_LEN_MAX and len(pin) != 0:
        raise ValueError(f"PIN must be {PIN_LEN_MIN}-{PIN_LEN_MAX} bytes")
    return pin.ljust(PIN_LEN_MAX, bytes([PIN_PAD_BYTE]))


#: Management-key (9B) algorithms: (key length, cipher block size) — SP 800-78-4 Table 6-2.
MANAGEMENT_KEY_ALGORITHMS: dict[int, tuple[int, int]] = {
    Algorithm.TDEA_3KEY: (24, 8),
    Algorithm.AES_128: (16, 16),
    Algorithm.AES_192: (24, 16),
    Algorithm.AES_256: (32, 16),
}


def management_key_cipher(algorithm: int, key: bytes) -> Cipher[modes.ECB]:
    """The block cipher of the 9B challenge/response (single blocks, so ECB; SP 800-73-4 Part 2 §3.2.4)."""
    if algorithm == Algorithm.TDEA_3KEY:
        return Cipher(TripleDES(key), modes.ECB())  # noqa: S305 - one block per challenge
    return Cipher(algorithms.AES(key), modes.ECB())  # noqa: S305


#: Yubico SET MANAGEMENT KEY (yubikit ``INS_SET_MGMKEY``): ``00 FF FF FF|FE Lc <alg> 9B <len> <key>``.
INS_SET_MANAGEMENT_KEY = 0xFF
#: Per-card management keys (docs/card-profile.md, "Per-card management key"): AES-128, algorithm 08.
CARD_MANAGEMENT_KEY_ALGORITHM = Algorithm.AES_128
CITY_MASTER_KEY_BYTES = 32
CARD_SERIAL_BYTES = 8
#: The 8 bytes after the serial in the diversification block (a fixed label: key purpose and version).
MANAGEMENT_KEY_LABEL = b"CITYID9B"


def management_key_diversifier(serial: bytes) -> bytes:
    """The one 16-byte block the city master key encrypts: ``serial (8) ‖ "CITYID9B"``."""
    if len(serial) != CARD_SERIAL_BYTES:
        raise ValueError(f"a card serial has {CARD_SERIAL_BYTES} bytes")
    return serial + MANAGEMENT_KEY_LABEL


def derive_management_key(master_key: bytes, serial: bytes) -> bytes:
    """The card's AES-128 management key: ``AES-256-ECB(master_key, serial ‖ "CITYID9B")``.

    Key diversification by encrypting card-unique data (as EMV and GlobalPlatform issuers do). In production
    the master key never leaves the HSM: PKCS#11 ``C_DeriveKey`` with ``CKM_AES_ECB_ENCRYPT_DATA`` over the
    same block gives a sensitive, non-extractable AES key object equal to this value, and the server answers
    the card's 9B challenge with ``C_Encrypt``/``C_Decrypt`` on it. This software form is for test cards and
    is the reference the HSM path is checked against.
    """
    if len(master_key) != CITY_MASTER_KEY_BYTES:
        raise ValueError(f"the city master key is AES-256 ({CITY_MASTER_KEY_BYTES} bytes)")
    enc = Cipher(algorithms.AES(master_key), modes.ECB()).encryptor()  # noqa: S305 - one block, a PRF use
    return enc.update(management_key_diversifier(serial)) + enc.finalize()
