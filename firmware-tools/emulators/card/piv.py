"""The emulator's PIV applet: the NIST SP 800-73-4 subset standard middleware (OpenSC, yubico-piv-tool,
yubikit) uses.

Commands (SP 800-73-4 Part 2 §3): SELECT (application property template), GET DATA / PUT DATA
(``00 CB|DB 3F FF``), VERIFY, CHANGE REFERENCE DATA, RESET RETRY COUNTER, GENERAL AUTHENTICATE (management
key 9B challenge/response; sign / ECDH with 9A 9C 9D 9E), GENERATE ASYMMETRIC KEY PAIR (P-256, P-384,
RSA-2048). Yubico extensions some tools send first: GET VERSION (``FD``), GET SERIAL (``F8``) and SET
MANAGEMENT KEY (``FF``). Access conditions: PIN for 9A/9D/9E, PIN-always for 9C; management key for PUT DATA
and key generation; PIN for the biometric and printed-information objects.

Private profile (docs/card-profile.md §PIV access rules, issue 12): before the PIN the applet answers nothing
that differs between two cards of one issuance. CHUID and CCC are per-issuance constants (all-zero GUID), GET
SERIAL needs the PIN or the management key, the card-authentication key 9E and its certificate need the PIN
(a key usable by anyone is a card identifier), and over the contactless interface the certificates of 9A, 9C
and 9D and the key history need the PIN or the management key — SP 800-73-4's own rule for those objects
(contact or VCI only). Over the contact interface they stay readable as the standard says: OpenSC builds its
PKCS#11 objects from them before the login, so hiding them there would hide the 9A key from standard
middleware even after the PIN.

Key material and data objects persist in section ``piv`` of the card store; every change is one atomic write.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from cityid.apdu import CommandApdu, ResponseApdu
from cityid.errors import ApduError, TlvError
from cityid.iso7816 import INS, SW
from cityid.piv import INS_SET_MANAGEMENT_KEY, PIV_AID, Algorithm, KeyRef, ObjectId, Slot, Tag
from cityid.tlv import Tlv, encode_tlv, parse_tlv_dict
from emulators.card.os import Applet, Interface
from emulators.card.security import MGMT_ALG_CURRENT, MGMT_KEY_ALGORITHMS, CardSecurity
from emulators.card.store import CardStore

logger = logging.getLogger(__name__)

SECTION = "piv"
VERSION = (1, 0, 0)
MAX_OBJECT_BYTES = 8192
INS_GET_VERSION = 0xFD  # Yubico extension
INS_GET_SERIAL = 0xF8  # Yubico extension

KEY_SLOTS = (Slot.AUTHENTICATION, Slot.SIGNATURE, Slot.KEY_MANAGEMENT, Slot.CARD_AUTH)
_CURVES: dict[int, tuple[ec.EllipticCurve, hashes.HashAlgorithm, int]] = {
    Algorithm.ECC_P256: (ec.SECP256R1(), hashes.SHA256(), 32),
    Algorithm.ECC_P384: (ec.SECP384R1(), hashes.SHA384(), 48),
}
RSA_BITS: dict[int, int] = {Algorithm.RSA_2048: 2048}

#: The key types the applet generates and stores.
SlotKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

#: Objects that need the PIN to read (SP 800-73-4 Part 1 Table 2: "PIN" access rule; the security object too).
PIN_PROTECTED_OBJECTS = frozenset(
    {ObjectId.FINGERPRINTS, ObjectId.FACIAL, ObjectId.PRINTED, ObjectId.IRIS, ObjectId.SECURITY}
)
#: Readable by anyone on every interface: each is one value per issuance (Discovery, CHUID, CCC).
PUBLIC_OBJECTS = frozenset({ObjectId.DISCOVERY, ObjectId.CHUID, ObjectId.CAPABILITY})
#: Readable by anyone over the contact interface only (SP 800-73-4 Part 1 Table 2: "Always", contact / VCI);
#: contactless they need the PIN or the management key. They hold per-card public keys.
CONTACT_OBJECTS = frozenset(
    {ObjectId.AUTHENTICATION, ObjectId.SIGNATURE, ObjectId.KEY_MANAGEMENT, ObjectId.KEY_HISTORY}
    | set(range(ObjectId.RETIRED_FIRST, ObjectId.RETIRED_LAST + 1))
)
#: Every other object (the 9E certificate, the pairing code, BITGT, vendor objects, unknown tags) needs the
#: PIN or the management key on every interface.

#: Per-issuance constants of a fresh card (docs/card-profile.md §PIV access rules): the FASC-N of a test
#: agency (agency code 9999), the GUID of a card without a UUID (16 zero bytes; OpenSC then takes the FASC-N
#: as the token serial), the CHUID expiry, and the CCC card identifier.
CHUID_FASCN = bytes.fromhex("D4E739DA739CED39CE739D836858210842108421C84210C3EB")
CHUID_GUID = bytes(16)
CHUID_EXPIRY = b"20351231"
CCC_CARD_ID = bytes.fromhex("A000000116FF02") + bytes(14)

#: Discovery object (Part 1 §3.3.2): PIV AID, PIN usage policy "PIV PIN only".
DISCOVERY = encode_tlv(
    ObjectId.DISCOVERY, encode_tlv(Tag.AID, PIV_AID) + encode_tlv(0x5F2F, bytes.fromhex("4000"))
)


def _writable_tag(tag: int) -> bool:
    """PIV data objects (5FC1xx, 7F61) and the vendor range 5FFFxx may be written with PUT DATA."""
    return 0x5FC101 <= tag <= 0x5FC1FF or tag == ObjectId.BITGT or 0x5FFF00 <= tag <= 0x5FFFFF


def default_chuid() -> bytes:
    """The CHUID (Part 1 §3.1.2) of a fresh card: test-agency FASC-N, all-zero GUID, expiry, no signature.

    One value per issuance: nothing in it tells two cards apart (docs/card-profile.md §PIV access rules).
    """
    return (
        encode_tlv(0x30, CHUID_FASCN)
        + encode_tlv(0x34, CHUID_GUID)
        + encode_tlv(0x35, CHUID_EXPIRY)
        + encode_tlv(0x3E, b"")
        + encode_tlv(Tag.ERROR_DETECTION, b"")
    )


def default_ccc() -> bytes:
    """The Card Capability Container (Part 1 §3.1.1) of a fresh card; its card identifier is per issuance."""
    parts = [
        (0xF0, CCC_CARD_ID),
        (0xF1, b"\x21"),
        (0xF2, b"\x21"),
        (0xF3, b""),
        (0xF4, b"\x00"),
        (0xF5, b"\x10"),
        (0xF6, b""),
        (0xF7, b""),
        (0xFA, b""),
        (0xFB, b""),
        (0xFC, b""),
        (0xFD, b""),
        (Tag.ERROR_DETECTION, b""),
    ]
    return b"".join(encode_tlv(t, v) for t, v in parts)


class PivApplet(Applet):
    """PIV card application (SP 800-73-4) backed by a :class:`CardStore` and the card-wide security object."""

    aid = PIV_AID
    name = "PIV"

    def __init__(
        self,
        store: CardStore,
        security: CardSecurity,
        rng: Callable[[int], bytes] = os.urandom,
        interface: Interface = Interface.CONTACT,
    ) -> None:
        self.store = store
        self.security = security
        self.rng = rng
        #: The interface the card is powered on (set by the card's owner; a tap makes it CONTACTLESS).
        self.interface = Interface(interface)
        state = store.section(SECTION)
        if not state:
            state = {
                "objects": {
                    f"{ObjectId.CHUID:X}": default_chuid().hex(),
                    f"{ObjectId.CAPABILITY:X}": default_ccc().hex(),
                },
                "keys": {},
            }
            store.commit(SECTION, state)
        self._state = state
        self._keys: dict[int, SlotKey] = {}  # slot -> private key object (parsed once)
        self._handlers: dict[int, Callable[[CommandApdu], bytes]] = {
            INS.GET_DATA: self._get_data,
            INS.PUT_DATA: self._put_data,
            INS.VERIFY: self._verify,
            INS.CHANGE_REFERENCE_DATA: self._change_reference,
            INS.RESET_RETRY_COUNTER: self._reset_retry_counter,
            INS.GENERAL_AUTHENTICATE: self._general_authenticate,
            INS.GENERATE_ASYMMETRIC_KEY_PAIR: self._generate,
            INS_GET_VERSION: self._get_version,
            INS_GET_SERIAL: self._get_serial,
            INS_SET_MANAGEMENT_KEY: self._set_management_key,
        }

    # --- lifecycle -----------------------------------------------------------------------------------

    def power_on(self) -> None:
        self.security.clear_session()

    def deselect(self) -> None:
        self.security.clear_session()

    def select(self) -> bytes:
        """Application property template (Part 2 §3.1.1)."""
        algs = b"".join(
            encode_tlv(Tag.ALGORITHM, bytes([a]))
            for a in (
                Algorithm.TDEA_3KEY,
                Algorithm.AES_128,
                Algorithm.AES_192,
                Algorithm.AES_256,
                Algorithm.RSA_2048,
                Algorithm.ECC_P256,
                Algorithm.ECC_P384,
            )
        )
        body = (
            encode_tlv(Tag.AID, PIV_AID[5:])
            + encode_tlv(Tag.AUTHORITY, encode_tlv(Tag.AID, PIV_AID[:5]))
            + encode_tlv(Tag.APP_LABEL, b"Busan citizen card PIV")
            + encode_tlv(Tag.ALGORITHMS, algs + encode_tlv(Tag.OBJECT_ID, b""))
        )
        return encode_tlv(Tag.APT, body)

    # --- state ---------------------------------------------------------------------------------------

    def _commit(self, state: dict[str, Any]) -> None:
        self.store.commit(SECTION, state)
        self._state = state

    def get_object(self, tag: int) -> bytes | None:
        value = self._state["objects"].get(f"{tag:X}")
        return bytes.fromhex(value) if value is not None else None

    def key_algorithm(self, slot: int) -> int | None:
        entry = self._state["keys"].get(f"{slot:X}")
        return int(entry["alg"]) if entry else None

    def private_key(self, slot: int) -> SlotKey:
        """The private key object in ``slot`` (raise ``6A88`` when the slot is empty)."""
        if slot in self._keys:
            return self._keys[slot]
        entry = self._state["keys"].get(f"{slot:X}")
        if not entry:
            raise ApduError(SW.REFERENCE_DATA_NOT_FOUND, f"no key in slot {slot:02X}")
        key = serialization.load_der_private_key(bytes.fromhex(entry["der"]), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise ApduError(SW.REFERENCE_DATA_NOT_FOUND, f"slot {slot:02X} holds an unsupported key type")
        self._keys[slot] = key
        return key

    # --- dispatch ------------------------------------------------------------------------------------

    def process(self, cmd: CommandApdu) -> ResponseApdu:
        if cmd.cla != 0x00:
            raise ApduError(SW.CLA_NOT_SUPPORTED)
        handler = self._handlers.get(cmd.ins)
        if handler is None:
            raise ApduError(SW.INS_NOT_SUPPORTED)
        return ResponseApdu(handler(cmd), SW.SUCCESS)

    @staticmethod
    def _p1p2(cmd: CommandApdu, p1: int, p2: int) -> None:
        if (cmd.p1, cmd.p2) != (p1, p2):
            raise ApduError(SW.INCORRECT_P1P2)

    # --- data objects (Part 2 §3.1.2, §3.3.2) --------------------------------------------------------

    def _get_data(self, cmd: CommandApdu) -> bytes:
        self._p1p2(cmd, 0x3F, 0xFF)
        try:
            tag_bytes = Tlv.unpack(Tag.DATA_OBJECT_LIST, cmd.data)
        except TlvError as exc:
            raise ApduError(SW.INCORRECT_DATA, str(exc)) from exc
        if not 1 <= len(tag_bytes) <= 3:
            raise ApduError(SW.INCORRECT_DATA, "bad object tag")
        tag = int.from_bytes(tag_bytes, "big")
        self._check_read_access(tag)
        if tag == ObjectId.DISCOVERY:
            return DISCOVERY
        value = self.get_object(tag)
        if value is None:
            raise ApduError(SW.FILE_NOT_FOUND)
        return encode_tlv(Tag.DATA, value)

    def _check_read_access(self, tag: int) -> None:
        """The read access rule of object ``tag`` (docs/card-profile.md §PIV access rules), checked before
        whether the object exists, so a protected object answers ``6982`` whether present or not.

        Public objects: always. Certificates of 9A/9C/9D, key history, retired certificates: always over the
        contact interface (SP 800-73-4), PIN or management key contactless. Biometric, printed information
        and security object: PIN. Everything else: PIN or management key.
        """
        if tag in PUBLIC_OBJECTS:
            return
        if tag in PIN_PROTECTED_OBJECTS:
            self.security.require_pin()
            return
        if tag in CONTACT_OBJECTS and self.interface is Interface.CONTACT:
            return
        self._require_pin_or_admin()

    def _require_pin_or_admin(self) -> None:
        """PIN verified (the citizen) or management key authenticated (personalization), else ``6982``."""
        if not self.security.mgmt_authenticated:
            self.security.require_pin()

    def _put_data(self, cmd: CommandApdu) -> bytes:
        self._p1p2(cmd, 0x3F, 0xFF)
        self.security.require_admin()
        try:
            fields = parse_tlv_dict(cmd.data)
        except TlvError as exc:
            raise ApduError(SW.INCORRECT_DATA, str(exc)) from exc
        if set(fields) != {Tag.DATA_OBJECT_LIST, Tag.DATA}:
            raise ApduError(SW.INCORRECT_DATA, "PUT DATA needs 5C and 53")
        tag_bytes = fields[Tag.DATA_OBJECT_LIST]
        tag = int.from_bytes(tag_bytes, "big") if 1 <= len(tag_bytes) <= 3 else -1
        if not _writable_tag(tag):
            raise ApduError(SW.INCORRECT_DATA, "not a writable PIV data object")
        value = fields[Tag.DATA]
        if len(value) > MAX_OBJECT_BYTES:
            raise ApduError(SW.NOT_ENOUGH_MEMORY)
        objects = dict(self._state["objects"])
        if value:
            objects[f"{tag:X}"] = value.hex()
        else:
            objects.pop(f"{tag:X}", None)
        self._commit(dict(self._state, objects=objects))
        return b""

    # --- PIN management (Part 2 §3.2.1–3.2.3) --------------------------------------------------------

    def _verify(self, cmd: CommandApdu) -> bytes:
        self.security.verify_command(cmd.p1, cmd.p2, cmd.data)
        return b""

    def _change_reference(self, cmd: CommandApdu) -> bytes:
        if cmd.p1 != 0x00 or cmd.p2 not in (KeyRef.PIN, KeyRef.PUK):
            raise ApduError(SW.INCORRECT_P1P2)
        if len(cmd.data) != 16:
            raise ApduError(SW.INCORRECT_DATA, "CHANGE REFERENCE DATA needs 16 bytes")
        if cmd.p2 == KeyRef.PIN:
            self.security.change_pin(cmd.data[:8], cmd.data[8:])
        else:
            self.security.change_puk(cmd.data[:8], cmd.data[8:])
        return b""

    def _reset_retry_counter(self, cmd: CommandApdu) -> bytes:
        self._p1p2(cmd, 0x00, KeyRef.PIN)
        if len(cmd.data) != 16:
            raise ApduError(SW.INCORRECT_DATA, "RESET RETRY COUNTER needs 16 bytes")
        self.security.unblock_pin(cmd.data[:8], cmd.data[8:])
        return b""

    # --- keys (Part 2 §3.2.4, §3.3.2) ----------------------------------------------------------------

    def _generate(self, cmd: CommandApdu) -> bytes:
        if cmd.p1 != 0x00 or cmd.p2 not in KEY_SLOTS:
            raise ApduError(SW.INCORRECT_P1P2)
        self.security.require_admin()
        try:
            template = Tlv.unpack(Tag.KEY_TEMPLATE, cmd.data)
            params = parse_tlv_dict(template)
        except TlvError as exc:
            raise ApduError(SW.INCORRECT_DATA, str(exc)) from exc
        alg_bytes = params.get(Tag.ALGORITHM, b"")
        if len(alg_bytes) != 1:
            raise ApduError(SW.INCORRECT_DATA, "algorithm missing")
        alg = alg_bytes[0]
        key: SlotKey
        if alg in _CURVES:
            key = ec.generate_private_key(_CURVES[alg][0])
            point = key.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
            public = encode_tlv(Tag.EC_POINT, point)
        elif alg in RSA_BITS:
            key = rsa.generate_private_key(65537, RSA_BITS[alg])
            numbers = key.public_key().public_numbers()
            n = numbers.n.to_bytes(RSA_BITS[alg] // 8, "big")
            public = encode_tlv(0x81, n) + encode_tlv(0x82, numbers.e.to_bytes(3, "big"))
        else:
            raise ApduError(SW.INCORRECT_DATA, "unsupported algorithm")
        der = key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        keys = dict(self._state["keys"])
        keys[f"{cmd.p2:X}"] = {"alg": alg, "der": der.hex()}
        self._commit(dict(self._state, keys=keys))
        self._keys[cmd.p2] = key
        logger.info("generated key alg %02X in slot %02X", alg, cmd.p2)
        return encode_tlv(Tag.PUBLIC_KEY, public)

    def _general_authenticate(self, cmd: CommandApdu) -> bytes:
        if cmd.p2 == Slot.CARD_MANAGEMENT:
            if cmd.p1 not in MGMT_KEY_ALGORITHMS and cmd.p1 != MGMT_ALG_CURRENT:
                raise ApduError(SW.INCORRECT_P1P2)
            return self.security.management_authenticate(cmd.p1, cmd.data)
        if cmd.p2 not in KEY_SLOTS:
            raise ApduError(SW.INCORRECT_P1P2)
        try:
            inner = parse_tlv_dict(Tlv.unpack(Tag.DYN_AUTH, cmd.data))
        except TlvError as exc:
            raise ApduError(SW.INCORRECT_DATA, str(exc)) from exc
        if inner.get(Tag.RESPONSE) != b"" or len(inner) != 2:
            raise ApduError(SW.INCORRECT_DATA, "expected 82 00 and one of 81/85")
        alg = self.key_algorithm(cmd.p2)
        if alg is None:
            raise ApduError(SW.REFERENCE_DATA_NOT_FOUND, f"no key in slot {cmd.p2:02X}")
        if alg != cmd.p1:
            raise ApduError(SW.INCORRECT_P1P2, "algorithm does not match the key")
        self._check_key_access(cmd.p2)
        try:
            if Tag.CHALLENGE in inner:
                result = self.sign(cmd.p2, inner[Tag.CHALLENGE])
            elif Tag.EXPONENTIATION in inner:
                result = self._ecdh(cmd.p2, alg, inner[Tag.EXPONENTIATION])
            else:
                raise ApduError(SW.INCORRECT_DATA, "expected 81 or 85")
        finally:
            if cmd.p2 == Slot.SIGNATURE:  # PIN always
                self.security.pin_verified = False
        return encode_tlv(Tag.DYN_AUTH, encode_tlv(Tag.RESPONSE, result))

    def _check_key_access(self, slot: int) -> None:
        """Every private key needs the PIN — 9E too (SP 800-73-4 lets anyone use it): a key anyone can make
        sign (public-key recovery from two signatures) or compute ECDH with is a card identifier."""
        self.security.require_pin()

    def sign(self, slot: int, data: bytes) -> bytes:
        """ECDSA over a hash (DER signature) or raw RSA over a padded block; no access checks here."""
        key = self.private_key(slot)
        alg = self.key_algorithm(slot)
        if isinstance(key, ec.EllipticCurvePrivateKey) and alg in _CURVES:
            _, hash_alg, size = _CURVES[alg]
            if not data or len(data) > 64:
                raise ApduError(SW.INCORRECT_DATA, "digest length")
            digest = data[:size].rjust(size, b"\x00")  # leftmost bits (ECDSA truncation) / left-pad
            return key.sign(digest, ec.ECDSA(Prehashed(hash_alg)))
        if not isinstance(key, rsa.RSAPrivateKey) or alg not in RSA_BITS:
            raise ApduError(SW.REFERENCE_DATA_NOT_FOUND, f"slot {slot:02X}: key and algorithm disagree")
        size = RSA_BITS[alg] // 8
        if len(data) != size:
            raise ApduError(SW.INCORRECT_DATA, "RSA input must be one modulus long")
        numbers = key.private_numbers()
        m = int.from_bytes(data, "big")
        if m >= numbers.public_numbers.n:
            raise ApduError(SW.INCORRECT_DATA, "RSA input out of range")
        return pow(m, numbers.d, numbers.public_numbers.n).to_bytes(size, "big")

    def _ecdh(self, slot: int, alg: int, point: bytes) -> bytes:
        if alg not in _CURVES:
            raise ApduError(SW.INCORRECT_DATA, "ECDH needs an EC key")
        try:
            peer = ec.EllipticCurvePublicKey.from_encoded_point(_CURVES[alg][0], point)
        except ValueError as exc:
            raise ApduError(SW.INCORRECT_DATA, "bad EC point") from exc
        key = self.private_key(slot)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ApduError(SW.INCORRECT_DATA, "ECDH needs an EC key")
        return key.exchange(ec.ECDH(), peer)

    # --- Yubico extensions ---------------------------------------------------------------------------

    def _get_version(self, cmd: CommandApdu) -> bytes:
        return bytes(VERSION)

    def _get_serial(self, cmd: CommandApdu) -> bytes:
        """Yubico GET SERIAL: the last 4 serial bytes, after the PIN or the management key only (``6982``)."""
        self._require_pin_or_admin()
        return self.security.serial[-4:]

    def _set_management_key(self, cmd: CommandApdu) -> bytes:
        """Yubico SET MANAGEMENT KEY: ``00 FF FF FF|FE <alg> 9B <len> <key>`` (admin only).

        How personalization replaces the published default key by the card's own (docs/card-profile.md,
        "Per-card management key"); P2 ``FE`` (touch required on a YubiKey) is accepted and ignored.
        """
        if cmd.p1 != 0xFF or cmd.p2 not in (0xFF, 0xFE):
            raise ApduError(SW.INCORRECT_P1P2)
        if len(cmd.data) < 3 or cmd.data[1] != Slot.CARD_MANAGEMENT or cmd.data[2] != len(cmd.data) - 3:
            raise ApduError(SW.INCORRECT_DATA)
        self.security.set_management_key(cmd.data[0], cmd.data[3:])
        return b""
