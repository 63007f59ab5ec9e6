"""Terminal certificates and terminal authentication (docs/card-profile.md §Terminal authentication).

The city's answer to BSI TR-03110 Part 3 §C (card verifiable certificates and terminal authentication):
the city **authorization key** signs a short-lived certificate for each kiosk/counter — its terminal id,
its P-256 key, the claims it may request, its validity and where its authorization is recorded on chain.
The card holds the authorization root's public key (written at personalization), verifies the certificate
(PSO VERIFY CERTIFICATE), then a signature by the terminal over a fresh card challenge (EXTERNAL
AUTHENTICATE), and from then on releases to PRESENT only the certificate's claims, for the certificate's
terminal id as KB-JWT ``aud``.

Certificate (a compact CV certificate, BER-TLV with the TR-03110 tags)::

    7F21 {                                   CV certificate
      7F4E {                                 certificate body (the signed bytes: this whole TLV)
        5F29 01 <profile 00>
        42   08 <CAR: authority key id = SHA-256(root point)[:8]>
        5F20 L  <CHR: terminal id, printable ASCII 1..64>
        7F49 { 86 41 <04||X||Y> }            terminal public key (P-256)
        7F4C { 80 <claim name> ... }         authorized claims, 1..16 distinct, 1..32 bytes each
        5F25 04 <not before, uint32 BE seconds since 1970>
        5F24 04 <not after,  uint32 BE seconds since 1970>
        53   08 <authorization reference: status list id uint32 BE || index uint32 BE>
      }
      5F37 40 <ES256 signature r||s by the authorization key over the 7F4E TLV>
    }

Terminal authentication signing input (the terminal signs it, the card verifies it)::

    "CITYID-TA1" || challenge (16) || len(CHR) (1) || CHR || time (uint32 BE)

The card has no clock: ``time`` is the terminal's clock, signed; the card checks it lies inside the
certificate's validity and is not before the latest date the card has seen in a valid certificate.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from enum import IntEnum

from cryptography.hazmat.primitives.asymmetric import ec

from cityid.errors import DecodeError, TlvError
from cityid.jose import es256_sign
from cityid.keys import KeyFormatError, P256PublicKey
from cityid.tlv import Tlv, encode_tlv, parse_tlv_list

PROFILE = 0x00
MAX_TERMINAL_ID = 64
MAX_CLAIMS = 16
MAX_CLAIM_NAME = 32
CHALLENGE_BYTES = 16
AUTHORITY_ID_BYTES = 8
#: Upper bound of an encoded certificate (16 claims of 32 bytes + 64-byte id + key + signature).
MAX_CERTIFICATE_BYTES = 1024
TA_LABEL = b"CITYID-TA1"


class CertTag(IntEnum):
    """TLV tags of the terminal certificate (BSI TR-03110 Part 3 §D.2 names)."""

    CERTIFICATE = 0x7F21
    BODY = 0x7F4E
    PROFILE = 0x5F29
    AUTHORITY = 0x42  # CAR: certification authority reference
    HOLDER = 0x5F20  # CHR: certificate holder reference = terminal id
    PUBLIC_KEY = 0x7F49
    POINT = 0x86
    CLAIMS = 0x7F4C  # our CHAT: the claim names the terminal may request
    CLAIM = 0x80
    NOT_BEFORE = 0x5F25
    NOT_AFTER = 0x5F24
    AUTHORIZATION = 0x53  # discretionary data: the on-chain authorization reference
    SIGNATURE = 0x5F37


class TerminalAuthTag(IntEnum):
    """EXTERNAL AUTHENTICATE data: ``7C { 80 time(4), 81 signature(64) }``."""

    TEMPLATE = 0x7C
    TIME = 0x80
    SIGNATURE = 0x81


class CertificateError(DecodeError):
    """A terminal certificate that is malformed, or whose signature does not verify."""


def authority_id(root: P256PublicKey) -> bytes:
    """The CAR of certificates signed by ``root``: the first 8 bytes of SHA-256 of its SEC1 point."""
    return hashlib.sha256(root.point).digest()[:AUTHORITY_ID_BYTES]


def _printable_ascii(raw: bytes, what: str, max_len: int) -> str:
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise CertificateError(f"{what} is not ASCII") from None
    if not 0 < len(raw) <= max_len or not text.isprintable():
        raise CertificateError(f"{what}: 1-{max_len} printable ASCII characters")
    return text


def _uint32(raw: bytes, what: str) -> int:
    if len(raw) != 4:
        raise CertificateError(f"{what} must be 4 bytes")
    return int.from_bytes(raw, "big")


@dataclass(frozen=True, slots=True)
class TerminalCertificateBody:
    """What the authorization key certifies about one terminal."""

    authority: bytes  # CAR, 8 bytes
    terminal_id: str
    public_key: P256PublicKey
    claims: tuple[str, ...]
    not_before: int
    not_after: int
    status_list: int = 0  # on-chain authorization: CityStatusRegistry list id …
    status_index: int = 0  # … and this terminal's index in it

    def __post_init__(self) -> None:
        if len(self.authority) != AUTHORITY_ID_BYTES:
            raise CertificateError("authority reference must be 8 bytes")
        _printable_ascii(self.terminal_id.encode("ascii", "replace"), "terminal id", MAX_TERMINAL_ID)
        if not 0 < len(self.claims) <= MAX_CLAIMS or len(set(self.claims)) != len(self.claims):
            raise CertificateError(f"a certificate authorizes 1-{MAX_CLAIMS} distinct claims")
        if any(not 0 < len(c.encode()) <= MAX_CLAIM_NAME for c in self.claims):
            raise CertificateError(f"claim names are 1-{MAX_CLAIM_NAME} bytes")
        for v in (self.not_before, self.not_after, self.status_list, self.status_index):
            if not 0 <= v < 2**32:
                raise CertificateError("dates and the authorization reference are uint32")
        if self.not_after < self.not_before:
            raise CertificateError("not after lies before not before")

    def encode(self) -> bytes:
        """The 7F4E TLV: the bytes the authorization key signs."""
        claims = b"".join(encode_tlv(CertTag.CLAIM, c.encode()) for c in self.claims)
        body = (
            encode_tlv(CertTag.PROFILE, bytes([PROFILE]))
            + encode_tlv(CertTag.AUTHORITY, self.authority)
            + encode_tlv(CertTag.HOLDER, self.terminal_id.encode("ascii"))
            + encode_tlv(CertTag.PUBLIC_KEY, encode_tlv(CertTag.POINT, self.public_key.point))
            + encode_tlv(CertTag.CLAIMS, claims)
            + encode_tlv(CertTag.NOT_BEFORE, self.not_before.to_bytes(4, "big"))
            + encode_tlv(CertTag.NOT_AFTER, self.not_after.to_bytes(4, "big"))
            + encode_tlv(CertTag.AUTHORIZATION, struct.pack(">II", self.status_list, self.status_index))
        )
        return encode_tlv(CertTag.BODY, body)

    @classmethod
    def decode(cls, data: bytes) -> TerminalCertificateBody:
        """Strict: exactly the tags above, once each, in this order; :class:`CertificateError` otherwise."""
        try:
            outer = parse_tlv_list(data)
            if len(outer) != 1 or outer[0].tag != CertTag.BODY:
                raise CertificateError("certificate body must be one 7F4E template")
            fields = outer[0].children()
        except TlvError as exc:
            raise CertificateError(f"malformed certificate body: {exc}") from exc
        order = (
            CertTag.PROFILE, CertTag.AUTHORITY, CertTag.HOLDER, CertTag.PUBLIC_KEY, CertTag.CLAIMS,
            CertTag.NOT_BEFORE, CertTag.NOT_AFTER, CertTag.AUTHORIZATION,
        )  # fmt: skip
        if tuple(t.tag for t in fields) != order:
            raise CertificateError("certificate body: unexpected, missing or reordered fields")
        v = {t.tag: t for t in fields}
        if v[CertTag.PROFILE].value != bytes([PROFILE]):
            raise CertificateError("unknown certificate profile")
        try:
            key_fields = v[CertTag.PUBLIC_KEY].children()
            if len(key_fields) != 1 or key_fields[0].tag != CertTag.POINT:
                raise CertificateError("public key must be 7F49 { 86 point }")
            key = P256PublicKey.from_point(key_fields[0].value)
            claim_tlvs = v[CertTag.CLAIMS].children()
        except (TlvError, KeyFormatError) as exc:
            raise CertificateError(f"certificate key or claims: {exc}") from exc
        claims = []
        for t in claim_tlvs:
            if t.tag != CertTag.CLAIM:
                raise CertificateError("claims must be 80 entries")
            try:
                claims.append(t.value.decode())
            except UnicodeDecodeError:
                raise CertificateError("claim name is not UTF-8") from None
        auth = v[CertTag.AUTHORIZATION].value
        if len(auth) != 8:
            raise CertificateError("authorization reference must be 8 bytes")
        status_list, status_index = struct.unpack(">II", auth)
        return cls(
            authority=v[CertTag.AUTHORITY].value,
            terminal_id=_printable_ascii(v[CertTag.HOLDER].value, "terminal id", MAX_TERMINAL_ID),
            public_key=key,
            claims=tuple(claims),
            not_before=_uint32(v[CertTag.NOT_BEFORE].value, "not before"),
            not_after=_uint32(v[CertTag.NOT_AFTER].value, "not after"),
            status_list=status_list,
            status_index=status_index,
        )


@dataclass(frozen=True, slots=True)
class TerminalCertificate:
    """A signed terminal certificate: the body and the authorization key's ES256 signature (raw r||s)."""

    body: TerminalCertificateBody
    signature: bytes

    def encode(self) -> bytes:
        return encode_tlv(
            CertTag.CERTIFICATE, self.body.encode() + encode_tlv(CertTag.SIGNATURE, self.signature)
        )

    @classmethod
    def decode(cls, data: bytes) -> TerminalCertificate:
        """Parse (strictly) without checking the signature: see :meth:`verify`."""
        if len(data) > MAX_CERTIFICATE_BYTES:
            raise CertificateError("certificate too long")
        try:
            outer = parse_tlv_list(data)
            if len(outer) != 1 or outer[0].tag != CertTag.CERTIFICATE:
                raise CertificateError("certificate must be one 7F21 template")
            parts = outer[0].children()
        except TlvError as exc:
            raise CertificateError(f"malformed certificate: {exc}") from exc
        if [t.tag for t in parts] != [CertTag.BODY, CertTag.SIGNATURE]:
            raise CertificateError("certificate must hold a 7F4E body and a 5F37 signature")
        signature = parts[1].value
        if len(signature) != 64:
            raise CertificateError("signature must be 64 bytes (ES256 r||s)")
        cert = cls(TerminalCertificateBody.decode(bytes(parts[0])), signature)
        if cert.encode() != bytes(data):
            raise CertificateError("certificate is not in its canonical encoding")
        return cert

    def verify(self, root: P256PublicKey) -> bool:
        """The authority reference names ``root`` and the signature verifies with it."""
        return self.body.authority == authority_id(root) and root.verify_raw(
            self.signature, self.body.encode()
        )

    def valid_at(self, when: int) -> bool:
        return self.body.not_before <= when <= self.body.not_after

    @property
    def terminal_id(self) -> str:
        return self.body.terminal_id


def issue_certificate(
    authorization_key: ec.EllipticCurvePrivateKey,
    terminal_id: str,
    public_key: P256PublicKey,
    claims: tuple[str, ...] | list[str],
    not_before: int,
    not_after: int,
    status_list: int = 0,
    status_index: int = 0,
) -> TerminalCertificate:
    """Sign a terminal certificate with the city authorization key (ES256)."""
    root = P256PublicKey.from_crypto(authorization_key.public_key())
    body = TerminalCertificateBody(
        authority_id(root), terminal_id, public_key, tuple(claims), not_before, not_after, status_list,
        status_index,
    )  # fmt: skip
    return TerminalCertificate(body, es256_sign(authorization_key, body.encode()))


def ta_signing_input(challenge: bytes, terminal_id: str, when: int) -> bytes:
    """What the terminal signs in EXTERNAL AUTHENTICATE (module docstring)."""
    if len(challenge) != CHALLENGE_BYTES:
        raise ValueError(f"card challenge must be {CHALLENGE_BYTES} bytes")
    chr_ = terminal_id.encode("ascii")
    if not 0 < len(chr_) <= MAX_TERMINAL_ID:
        raise ValueError("terminal id: 1-64 ASCII characters")
    return TA_LABEL + challenge + bytes([len(chr_)]) + chr_ + when.to_bytes(4, "big")


@dataclass(frozen=True, slots=True)
class TerminalAuthentication:
    """EXTERNAL AUTHENTICATE data: the terminal's clock and its ES256 signature (raw r||s)."""

    when: int
    signature: bytes

    def encode(self) -> bytes:
        body = encode_tlv(TerminalAuthTag.TIME, self.when.to_bytes(4, "big")) + encode_tlv(
            TerminalAuthTag.SIGNATURE, self.signature
        )
        return encode_tlv(TerminalAuthTag.TEMPLATE, body)

    @classmethod
    def decode(cls, data: bytes) -> TerminalAuthentication:
        try:
            fields = Tlv.unpack(TerminalAuthTag.TEMPLATE, data)
            parts = parse_tlv_list(fields)
        except TlvError as exc:
            raise CertificateError(f"malformed terminal authentication: {exc}") from exc
        if [t.tag for t in parts] != [TerminalAuthTag.TIME, TerminalAuthTag.SIGNATURE]:
            raise CertificateError("terminal authentication must be 7C { 80 time, 81 signature }")
        if len(parts[1].value) != 64:
            raise CertificateError("signature must be 64 bytes (ES256 r||s)")
        return cls(_uint32(parts[0].value, "time"), parts[1].value)

    @classmethod
    def sign(
        cls, key: ec.EllipticCurvePrivateKey, challenge: bytes, terminal_id: str, when: int
    ) -> TerminalAuthentication:
        """The terminal's answer to ``challenge`` (software key; a kiosk HSM signs the same input)."""
        return cls(when, es256_sign(key, ta_signing_input(challenge, terminal_id, when)))
