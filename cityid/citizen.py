"""The Busan citizen applet profile: AID, instructions, tags and the shared request codecs.

The normative description is ``docs/card-profile.md``; this module is its executable half, imported by the
terminal's ``CitizenSession`` and by the emulator's applet so the two can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, IntFlag

from cityid.errors import TlvError
from cityid.tlv import encode_tlv, parse_tlv_dict, parse_tlv_list

#: Proprietary AID: 'D4 10' (national RID range, Korea 410) + "BUSAN" + applet 01 + version 01.
CITIZEN_AID = bytes.fromhex("D410000042555341 4E0101".replace(" ", ""))

CLA_PROPRIETARY = 0x80

# Limits a Java Card implementation must honour (docs/card-profile.md §Sizes).
MAX_CREDENTIAL_BYTES = 8192
MAX_CLAIMS = 16
MAX_CLAIM_NAME = 32
MIN_NONCE = 8
MAX_NONCE = 64
MAX_AUD = 128
MAX_DID = 128


class Ins(IntEnum):
    """Citizen applet instructions (CLA 0x80 unless noted)."""

    GET_INFO = 0x10  # 80 10 00 00 Le -> info TLVs (public part: nothing that tells two cards apart)
    GET_IDENTITY = 0x12  # 80 12 00 00 Le -> serial, DID, vct, claim names (PIN or management key first)
    PRESENT = 0x50  # 80 50 00 00 Lc <request> Le -> presentation (PIN verified first, "PIN always")
    PUT_CREDENTIAL = 0xD0  # 80 D0 00 00 Lc <credential> (chained, admin only); atomic on last part
    PUT_DID = 0xD2  # 80 D2 00 00 Lc <did utf-8> (admin only)
    ERASE = 0xDE  # 80 DE 00 00: erase DID and credential (admin only)
    ACTIVATE = 0xD4  # 80 D4 00 00: mark the stored credential usable — the last personalization step (admin)
    PUT_AUTHORIZATION_ROOT = 0xD6  # 80 D6 00 00 Lc 7F49{86 point} [5F25 date]: the city root (admin)
    GENERATE_BINDING_KEY = 0xD8  # 80 D8 00 00: new presentation-binding key -> 7F49{86 point} (admin)
    # ISO instructions also accepted with CLA 00 by the applet:
    PSO = 0x2A  # 00 2A 00 BE Lc <terminal certificate>: PSO VERIFY CERTIFICATE (TR-03110 terminal auth)
    GET_CHALLENGE = 0x84  # 00 84 00 00 10 -> 16-byte card challenge
    EXTERNAL_AUTHENTICATE = 0x82  # 00 82 00 00 Lc 7C{80 time, 81 signature}: terminal authentication
    VERIFY = 0x20  # 00 20 00 80 <PIN padded with FF to 8> — the card-wide PIN shared with PIV
    GENERAL_AUTHENTICATE = 0x87  # 00 87 03 9B: management-key challenge/response, as PIV


class InfoTag(IntEnum):
    """Tags of the GET INFO and GET IDENTITY responses (docs/card-profile.md, GET INFO / GET IDENTITY)."""

    VERSION = 0xC0  # 2 bytes major, minor
    SERIAL = 0xC1  # card serial number (8 bytes) — GET IDENTITY (and legacy GET INFO) only
    DID = 0xC2  # citizen DID, UTF-8 (absent before personalization) — GET IDENTITY (and legacy GET INFO)
    CREDENTIAL_VCT = 0xC3  # vct of the stored credential, UTF-8 (absent if none)
    CLAIMS = 0xC4  # claim names available, UTF-8 joined by 0x00 — GET IDENTITY (and legacy GET INFO)
    PIN_TRIES = 0xC5  # 1 byte: PIN tries left
    HOLDER_KEY_SLOT = 0xC6  # 1 byte: the PIV slot holding the holder key (9A)
    CREDENTIAL_STATE = 0xC7  # 1 byte, CredentialState bits
    BINDING_KEY = 0xC8  # GET IDENTITY: the presentation-binding public key, 04||X||Y (absent if none)
    AUTHORITY = 0xC9  # GET INFO: CAR of the authorization root the card trusts (8 bytes; absent: none)


#: P1 P2 of PSO VERIFY CERTIFICATE (ISO/IEC 7816-8 §5.2: P2 BE = certificate in the data field).
PSO_VERIFY_CERTIFICATE = (0x00, 0xBE)


class CredentialState(IntFlag):
    """GET INFO ``C7``: what a kiosk may know before the PIN — is there a credential, may it be presented."""

    NONE = 0x00
    PRESENT = 0x01  # a credential record is stored
    ACTIVATED = 0x02  # personalization finished: PRESENT may use it


class CredTag(IntEnum):
    """Tags of the PUT CREDENTIAL payload (constructed 0x70)."""

    CREDENTIAL = 0x70
    ISSUER_JWT = 0x71  # the issuer-signed JWT, ASCII compact serialization
    DISCLOSURE = 0xA2  # constructed: one disclosure
    CLAIM_NAME = 0x80  # inside A2: claim name, UTF-8
    DISCLOSURE_B64 = 0x81  # inside A2: the base64url disclosure string, ASCII
    VCT = 0x73  # the credential's vct, UTF-8


class PresentTag(IntEnum):
    """Tags of the PRESENT request (constructed 0x7D) and response."""

    REQUEST = 0x7D
    CLAIMS = 0xA0  # constructed: one 0x80 per requested claim name
    CLAIM_NAME = 0x80
    NONCE = 0x81  # 8..64 bytes, ASCII (the KB-JWT "nonce" string)
    AUDIENCE = 0x82  # ASCII (the KB-JWT "aud")
    IAT = 0x83  # 4 or 8 bytes big-endian seconds since epoch (the card has no clock)
    PRESENTATION = 0x53  # response: the SD-JWT+KB compact string, ASCII


@dataclass(frozen=True, slots=True)
class StoredDisclosure:
    """One disclosure as stored on the card: its claim name and the base64url disclosure."""

    claim: str
    disclosure: str


@dataclass(frozen=True, slots=True)
class CredentialRecord:
    """What personalization writes: the issuer JWT, its disclosures by claim name, and the vct."""

    issuer_jwt: str
    disclosures: tuple[StoredDisclosure, ...]
    vct: str = ""

    def encode(self) -> bytes:
        body = encode_tlv(CredTag.ISSUER_JWT, self.issuer_jwt.encode("ascii"))
        if self.vct:
            body += encode_tlv(CredTag.VCT, self.vct.encode())
        for d in self.disclosures:
            inner = encode_tlv(CredTag.CLAIM_NAME, d.claim.encode()) + encode_tlv(
                CredTag.DISCLOSURE_B64, d.disclosure.encode("ascii")
            )
            body += encode_tlv(CredTag.DISCLOSURE, inner)
        return encode_tlv(CredTag.CREDENTIAL, body)

    @classmethod
    def decode(cls, data: bytes) -> CredentialRecord:
        """Decode and validate; raise :class:`TlvError` on anything malformed."""
        try:
            outer = parse_tlv_list(data)
            if len(outer) != 1 or outer[0].tag != CredTag.CREDENTIAL:
                raise TlvError("credential must be one 0x70 template")
            issuer_jwt = ""
            vct = ""
            disclosures: list[StoredDisclosure] = []
            for tlv in outer[0].children():
                if tlv.tag == CredTag.ISSUER_JWT:
                    issuer_jwt = tlv.value.decode("ascii")
                elif tlv.tag == CredTag.VCT:
                    vct = tlv.value.decode()
                elif tlv.tag == CredTag.DISCLOSURE:
                    fields = parse_tlv_dict(tlv.value)
                    name = fields[CredTag.CLAIM_NAME].decode()
                    if not 0 < len(name) <= MAX_CLAIM_NAME:
                        raise TlvError("bad claim name length")
                    disclosures.append(StoredDisclosure(name, fields[CredTag.DISCLOSURE_B64].decode("ascii")))
                else:
                    raise TlvError(f"unexpected tag {tlv.tag:X} in credential")
        except (UnicodeDecodeError, KeyError) as exc:
            raise TlvError(f"malformed credential: {exc}") from exc
        if issuer_jwt.count(".") != 2:
            raise TlvError("issuer JWT missing or not a compact JWS")
        if len({d.claim for d in disclosures}) != len(disclosures):
            raise TlvError("duplicate claim name")
        return cls(issuer_jwt, tuple(disclosures), vct)


@dataclass(frozen=True, slots=True)
class PresentRequest:
    """A PRESENT request: which claims, for whom (aud), with which single-use nonce, at what time."""

    claims: tuple[str, ...]
    nonce: str
    audience: str
    iat: int

    def encode(self) -> bytes:
        claims = b"".join(encode_tlv(PresentTag.CLAIM_NAME, c.encode()) for c in self.claims)
        body = (
            encode_tlv(PresentTag.CLAIMS, claims)
            + encode_tlv(PresentTag.NONCE, self.nonce.encode("ascii"))
            + encode_tlv(PresentTag.AUDIENCE, self.audience.encode("ascii"))
            + encode_tlv(PresentTag.IAT, self.iat.to_bytes(8, "big"))
        )
        return encode_tlv(PresentTag.REQUEST, body)

    @classmethod
    def decode(cls, data: bytes) -> PresentRequest:
        """Decode and validate against the profile limits; raise :class:`TlvError`."""
        try:
            outer = parse_tlv_list(data)
            if len(outer) != 1 or outer[0].tag != PresentTag.REQUEST:
                raise TlvError("request must be one 0x7D template")
            fields = parse_tlv_dict(outer[0].value)
            claim_tlvs = parse_tlv_list(fields[PresentTag.CLAIMS])
            claims = []
            for t in claim_tlvs:
                if t.tag != PresentTag.CLAIM_NAME or not 0 < len(t.value) <= MAX_CLAIM_NAME:
                    raise TlvError("bad claim name")
                claims.append(t.value.decode())
            nonce = fields[PresentTag.NONCE].decode("ascii")
            aud = fields[PresentTag.AUDIENCE].decode("ascii")
            iat_raw = fields[PresentTag.IAT]
        except (UnicodeDecodeError, KeyError) as exc:
            raise TlvError(f"malformed PRESENT request: {exc}") from exc
        if not 0 < len(claims) <= MAX_CLAIMS or len(set(claims)) != len(claims):
            raise TlvError("need 1-16 distinct claims")
        if not MIN_NONCE <= len(nonce) <= MAX_NONCE or not nonce.isprintable():
            raise TlvError("nonce length out of range")
        if not 0 < len(aud) <= MAX_AUD or not aud.isprintable():
            raise TlvError("audience length out of range")
        if len(iat_raw) not in (4, 8):
            raise TlvError("iat must be 4 or 8 bytes")
        return cls(tuple(claims), nonce, aud, int.from_bytes(iat_raw, "big"))
