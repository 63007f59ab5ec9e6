"""PIV session (NIST SP 800-73-4 Part 2 §3): PIN, management key, key generation, signing, data objects.

Modelled on yubikit's ``PivSession``: the constructor SELECTs the PIV application; every verb is one card
operation and raises :mod:`cityid.errors` types. Wire constants come from :mod:`cityid.piv`.
"""

from __future__ import annotations

import logging

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from cityid.apdu import SmartCardConnection
from cityid.errors import ApduError, DecodeError, TlvError
from cityid.iso7816 import CLA, INS, SW
from cityid.piv import (
    CARD_MANAGEMENT_KEY_ALGORITHM,
    CERT_OBJECT_FOR_SLOT,
    DEFAULT_MANAGEMENT_KEY,
    INS_SET_MANAGEMENT_KEY,
    PIV_AID,
    Algorithm,
    ObjectId,
    Slot,
    Tag,
)
from cityid.tlv import Tlv, encode_tag, encode_tlv, encode_tlvs, parse_tlv_dict
from terminal.sessions import mgmt
from terminal.sessions.base import PinMixin, open_applet

logger = logging.getLogger(__name__)

_CURVES: dict[Algorithm, tuple[ec.EllipticCurve, hashes.HashAlgorithm]] = {
    Algorithm.ECC_P256: (ec.SECP256R1(), hashes.SHA256()),
    Algorithm.ECC_P384: (ec.SECP384R1(), hashes.SHA384()),
}


class PivSession(PinMixin):
    """A session with the card's PIV application (selected in the constructor)."""

    def __init__(self, connection: SmartCardConnection, extended: bool | None = None) -> None:
        self.connection = connection
        self.protocol, self.select_response = open_applet(connection, PIV_AID, extended)
        logger.debug("PIV selected")

    # --- management key --------------------------------------------------------------------------

    def authenticate_management_key(
        self, key: bytes | mgmt.Responder = DEFAULT_MANAGEMENT_KEY, algorithm: Algorithm = Algorithm.TDEA_3KEY
    ) -> None:
        """Mutual authentication with the 9B management key (Part 2 Appendix A.1, 3DES by default); ``key``
        may be a :class:`terminal.sessions.mgmt.Responder` (the city HSM through the server)."""
        mgmt.authenticate(self.protocol, key, algorithm)

    def set_management_key(self, key: bytes, algorithm: Algorithm = CARD_MANAGEMENT_KEY_ALGORITHM) -> None:
        """Yubico SET MANAGEMENT KEY ``00 FF FF FF`` (docs/card-profile.md, "Per-card management key").

        Needs :meth:`authenticate_management_key` with the current key first (``6982`` otherwise). After it
        the old key — the published default, at the counter — is refused.
        """
        algorithm = Algorithm(algorithm)
        mgmt.check_key(key, algorithm)
        self.send_management_key(bytes([algorithm, Slot.CARD_MANAGEMENT, len(key)]) + key)

    def send_management_key(self, data: bytes) -> None:
        """SET MANAGEMENT KEY with ready-made data ``<alg> 9B <len> <key>`` (from the city server: the
        counter relays it without keeping or logging it). ValueError if ``data`` is not of that form."""
        if len(data) < 3 or data[1] != Slot.CARD_MANAGEMENT or len(data) != 3 + data[2]:
            raise ValueError("SET MANAGEMENT KEY data must be <alg> 9B <len> <key>")
        mgmt.check_key(data[3:], Algorithm(data[0]))
        self.protocol.send_apdu(0x00, INS_SET_MANAGEMENT_KEY, 0xFF, 0xFF, data, le=None, sensitive=True)

    # --- keys --------------------------------------------------------------------------------------

    def generate_key(
        self, slot: Slot, algorithm: Algorithm = Algorithm.ECC_P256
    ) -> ec.EllipticCurvePublicKey:
        """GENERATE ASYMMETRIC KEY PAIR in ``slot`` (Part 2 §3.3.2; needs the management key)."""
        curve, _ = self._curve(algorithm)
        template = encode_tlv(Tag.KEY_TEMPLATE, encode_tlv(Tag.ALGORITHM, bytes([algorithm])))
        resp = self.protocol.send_apdu(CLA.ISO, INS.GENERATE_ASYMMETRIC_KEY_PAIR, 0, Slot(slot), template)
        try:
            point = parse_tlv_dict(Tlv.unpack(Tag.PUBLIC_KEY, resp))[Tag.EC_POINT]
            return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
        except KeyError as exc:
            raise DecodeError("generated key answer has no EC point (86)") from exc
        except ValueError as exc:
            if isinstance(exc, DecodeError):
                raise
            raise DecodeError(f"card returned an invalid public key: {exc}") from exc

    def sign(
        self,
        slot: Slot,
        message: bytes | None = None,
        *,
        digest: bytes | None = None,
        algorithm: Algorithm = Algorithm.ECC_P256,
    ) -> bytes:
        """ECDSA-sign ``message`` (hashed here) or a precomputed ``digest`` with ``slot``; return DER.

        GENERAL AUTHENTICATE ``7C{82 00, 81 digest}`` → ``7C{82 signature}`` (Part 2 §3.2.4, Appendix A.4).
        The slot's PIN policy applies (9A: PIN once per session; 9C: PIN always).
        """
        _, hash_alg = self._curve(algorithm)
        if (message is None) == (digest is None):
            raise ValueError("give either message or digest")
        if digest is None:
            h = hashes.Hash(hash_alg)
            h.update(message or b"")
            digest = h.finalize()
        if len(digest) != hash_alg.digest_size:
            raise ValueError(f"digest must be {hash_alg.digest_size} bytes for {Algorithm(algorithm).name}")
        body = encode_tlv(Tag.DYN_AUTH, encode_tlv(Tag.RESPONSE) + encode_tlv(Tag.CHALLENGE, digest))
        resp = self.protocol.send_apdu(CLA.ISO, INS.GENERAL_AUTHENTICATE, algorithm, Slot(slot), body)
        try:
            signature = parse_tlv_dict(Tlv.unpack(Tag.DYN_AUTH, resp))[Tag.RESPONSE]
        except KeyError as exc:
            raise DecodeError("signature answer has no response (82)") from exc
        if not signature or signature[0] != 0x30:
            raise DecodeError("card signature is not a DER SEQUENCE")
        return signature

    # --- data objects ------------------------------------------------------------------------------

    def get_object(self, object_id: int) -> bytes:
        """GET DATA ``00 CB 3F FF 5C{tag}`` → the value of ``53`` (Part 2 §3.1.2); 6A82 if absent."""
        resp = self.protocol.send_apdu(
            CLA.ISO, INS.GET_DATA, 0x3F, 0xFF, encode_tlv(Tag.DATA_OBJECT_LIST, encode_tag(object_id))
        )
        return Tlv.unpack(Tag.DATA, resp)

    def put_object(self, object_id: int, data: bytes) -> None:
        """PUT DATA ``00 DB 3F FF 5C{tag} 53{data}`` (Part 2 §3.3.1; needs the management key)."""
        body = encode_tlvs([(Tag.DATA_OBJECT_LIST, encode_tag(object_id)), (Tag.DATA, data)])
        self.protocol.send_apdu(CLA.ISO, INS.PUT_DATA, 0x3F, 0xFF, body, le=None)

    def has_object(self, object_id: int) -> bool:
        """Whether the object exists (GET DATA answered, not 6A82)."""
        try:
            self.get_object(object_id)
        except ApduError as exc:
            if exc.sw == SW.FILE_NOT_FOUND:
                return False
            raise
        return True

    def get_certificate(self, slot: Slot) -> x509.Certificate:
        """The X.509 certificate of ``slot``: object ``70 cert, 71 info`` (Part 1 Table 10)."""
        value = self.get_object(CERT_OBJECT_FOR_SLOT[Slot(slot)])
        try:
            fields = parse_tlv_dict(value)
            der = fields[Tag.CERTIFICATE]
        except KeyError as exc:
            raise TlvError("certificate object without tag 70") from exc
        if fields.get(Tag.CERT_INFO, b"\x00") not in (b"", b"\x00"):
            raise DecodeError("compressed certificates are not supported")
        try:
            return x509.load_der_x509_certificate(der)
        except ValueError as exc:
            raise DecodeError(f"slot {Slot(slot).name} holds no valid certificate: {exc}") from exc

    def put_certificate(self, slot: Slot, certificate: x509.Certificate) -> None:
        """Store ``certificate`` for ``slot`` (uncompressed, 71 00, FE empty LRC)."""
        der = certificate.public_bytes(Encoding.DER)
        value = encode_tlvs([(Tag.CERTIFICATE, der), (Tag.CERT_INFO, b"\x00"), (Tag.ERROR_DETECTION, b"")])
        self.put_object(CERT_OBJECT_FOR_SLOT[Slot(slot)], value)

    def get_chuid(self) -> bytes:
        """The Card Holder Unique Identifier object (Part 1 §3.1.2)."""
        return self.get_object(ObjectId.CHUID)

    @staticmethod
    def _curve(algorithm: Algorithm) -> tuple[ec.EllipticCurve, hashes.HashAlgorithm]:
        try:
            return _CURVES[Algorithm(algorithm)]
        except (KeyError, ValueError) as exc:
            raise ValueError(f"unsupported key algorithm {algorithm!r} (P-256 or P-384)") from exc
