"""Citizen applet session (docs/card-profile.md): card info, PIN, PRESENT, and the admin verbs.

The codecs live in :mod:`cityid.citizen` (shared with the emulator). A presentation is SELECT + VERIFY +
PRESENT: with extended APDUs each is one exchange; over short APDUs the request is chained (ISO 7816-4
§5.3.3) and the answer collected with GET RESPONSE.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from cityid.apdu import SmartCardConnection
from cityid.citizen import (
    CITIZEN_AID,
    CLA_PROPRIETARY,
    MAX_DID,
    PSO_VERIFY_CERTIFICATE,
    CredentialRecord,
    CredentialState,
    InfoTag,
    Ins,
    PresentRequest,
    PresentTag,
)
from cityid.errors import ApduError, CardError, DecodeError, TlvError
from cityid.iso7816 import SW
from cityid.keys import KeyFormatError, P256PublicKey
from cityid.piv import DEFAULT_MANAGEMENT_KEY, Algorithm
from cityid.terminal_cert import (
    CHALLENGE_BYTES,
    CertTag,
    TerminalAuthentication,
    TerminalCertificate,
    ta_signing_input,
)
from cityid.tlv import Tlv, encode_tlv, parse_tlv_list
from terminal.sessions import mgmt
from terminal.sessions.base import PinMixin, open_applet

logger = logging.getLogger(__name__)


class IdentityNotRevealedError(CardError):
    """The card keeps its serial and DID out of GET INFO (docs/card-profile.md, GET INFO): read them with
    :meth:`CitizenSession.identity` after the PIN (or the management key)."""


class TerminalNotAuthorizedError(CardError):
    """The card refused this terminal (docs/card-profile.md §Terminal authentication): its certificate is
    not from the card's root, expired, or does not allow the request; or its signature did not verify.
    ``sw``: the card's status word."""

    def __init__(self, sw: int, message: str) -> None:
        self.sw = sw
        super().__init__(f"{message} (SW {sw:04X})")


#: Terminal-side signer for EXTERNAL AUTHENTICATE: signing input -> ES256 raw r||s (a key or an HSM).
TerminalSigner = Callable[[bytes], bytes]


def _utf8(fields: dict[int, bytes], tag: int) -> str | None:
    value = fields.get(tag)
    return value.decode() if value else None


def _fields(data: bytes) -> dict[int, bytes]:
    tlvs = parse_tlv_list(data)
    if len(tlvs) == 1 and tlvs[0].constructed:
        tlvs = tlvs[0].children()
    return {t.tag: t.value for t in tlvs}


def _claims(fields: dict[int, bytes]) -> tuple[str, ...]:
    return tuple(c for c in fields.get(InfoTag.CLAIMS, b"").decode().split("\x00") if c)


@dataclass(frozen=True, slots=True)
class CardIdentity:
    """GET IDENTITY, decoded: what links the card to its citizen (docs/card-profile.md, GET IDENTITY)."""

    serial: str  # hex, 8 bytes
    did: str | None  # None before personalization
    vct: str | None
    claims: tuple[str, ...]
    binding_key: P256PublicKey | None = None  # the presentation-binding key (None: a legacy card, 9A binds)

    @classmethod
    def decode(cls, data: bytes) -> CardIdentity:
        """Decode the identity TLVs; raise TlvError (a serial is required)."""
        fields = _fields(data)
        try:
            serial = fields[InfoTag.SERIAL]
            if len(serial) != 8:
                raise TlvError("card serial must be 8 bytes")
            did, vct = _utf8(fields, InfoTag.DID), _utf8(fields, InfoTag.CREDENTIAL_VCT)
            raw_key = fields.get(InfoTag.BINDING_KEY)
            binding = P256PublicKey.from_point(raw_key) if raw_key else None
            return cls(serial.hex(), did, vct, _claims(fields), binding)
        except KeyFormatError as exc:
            raise TlvError(f"card identity: bad binding key: {exc}") from exc
        except KeyError as exc:
            raise TlvError(f"card identity lacks tag {exc}") from exc
        except UnicodeDecodeError as exc:
            raise TlvError(f"card identity is not UTF-8: {exc}") from exc


@dataclass(frozen=True, slots=True)
class CardInfo:
    """GET INFO, decoded (docs/card-profile.md, GET INFO).

    A card in the private profile answers only the public part; then :attr:`serial` and :attr:`did` raise
    :class:`IdentityNotRevealedError` instead of inventing a value (use :meth:`CitizenSession.identity`).
    """

    version: tuple[int, int]
    identity_in_info: CardIdentity | None  # the legacy answer: serial, DID and claims in GET INFO
    vct: str | None
    pin_tries: int
    holder_key_slot: int | None = None
    credential_state: CredentialState | None = None  # None: the card does not say (older profile)
    authority: bytes | None = None  # CAR of the card's authorization root: terminal authentication needed

    @property
    def serial(self) -> str:
        """Hex serial from a legacy GET INFO; :class:`IdentityNotRevealedError` on a private card."""
        if self.identity_in_info is None:
            raise IdentityNotRevealedError("the card reveals its serial only after the PIN (GET IDENTITY)")
        return self.identity_in_info.serial

    @property
    def did(self) -> str | None:
        """DID from a legacy GET INFO (None before personalization); raises on a private card."""
        if self.identity_in_info is None:
            raise IdentityNotRevealedError("the card reveals its DID only after the PIN (GET IDENTITY)")
        return self.identity_in_info.did

    @property
    def claims(self) -> tuple[str, ...]:
        """Claim names from a legacy GET INFO; empty on a private card (GET IDENTITY has them)."""
        return self.identity_in_info.claims if self.identity_in_info is not None else ()

    @property
    def reveals_identity(self) -> bool:
        return self.identity_in_info is not None

    @classmethod
    def decode(cls, data: bytes) -> CardInfo:
        """Decode the info TLVs (also accepted inside one constructed template); raise TlvError."""
        fields = _fields(data)
        try:
            version_raw = fields[InfoTag.VERSION]
            tries_raw = fields[InfoTag.PIN_TRIES]
            if len(version_raw) != 2 or len(tries_raw) != 1:
                raise TlvError("bad version or PIN-tries field")
            identity = CardIdentity.decode(data) if InfoTag.SERIAL in fields else None
            slot_raw = fields.get(InfoTag.HOLDER_KEY_SLOT)
            state_raw = fields.get(InfoTag.CREDENTIAL_STATE)
            if state_raw is not None and len(state_raw) != 1:
                raise TlvError("bad credential-state field")
            vct = _utf8(fields, InfoTag.CREDENTIAL_VCT)
            authority = fields.get(InfoTag.AUTHORITY)
            if authority is not None and len(authority) != 8:
                raise TlvError("bad authority field")
        except KeyError as exc:
            raise TlvError(f"card info lacks tag {exc}") from exc
        except UnicodeDecodeError as exc:
            raise TlvError(f"card info is not UTF-8: {exc}") from exc
        return cls(
            version=(version_raw[0], version_raw[1]),
            identity_in_info=identity,
            vct=vct,
            pin_tries=tries_raw[0],
            holder_key_slot=slot_raw[0] if slot_raw else None,
            credential_state=CredentialState(state_raw[0] & 0x03) if state_raw is not None else None,
            authority=authority,
        )


class CitizenSession(PinMixin):
    """A session with the citizen applet (selected in the constructor)."""

    def __init__(self, connection: SmartCardConnection, extended: bool | None = None) -> None:
        self.connection = connection
        self.protocol, self.select_response = open_applet(connection, CITIZEN_AID, extended)
        logger.debug("citizen applet selected")

    def info(self) -> CardInfo:
        """GET INFO: version, vct, PIN tries left, credential state (legacy cards: serial, DID, claims)."""
        return CardInfo.decode(self.protocol.send_apdu(CLA_PROPRIETARY, Ins.GET_INFO, 0, 0))

    def identity(self) -> CardIdentity:
        """GET IDENTITY: serial, DID, vct, claim names. Needs :meth:`verify_pin` (or :meth:`authenticate`)
        first in this applet selection — SecurityStatusError (6982) otherwise. Keeps the PIN verified."""
        return CardIdentity.decode(self.protocol.send_apdu(CLA_PROPRIETARY, Ins.GET_IDENTITY, 0, 0))

    def serial(self) -> str:
        """The card serial (hex): from GET INFO on a legacy card, else GET IDENTITY (PIN or key first)."""
        info = self.info()
        return info.serial if info.reveals_identity else self.identity().serial

    def present(self, claims: list[str] | tuple[str, ...], nonce: str, audience: str, iat: int) -> str:
        """PRESENT: the card returns ``<issuer-jwt>~<disclosures>~<kb-jwt>`` with only ``claims`` disclosed.

        Needs the PIN verified right before (PIN-always). Raises ApduError 6A88 for a claim the card lacks,
        SecurityStatusError without the PIN.
        """
        request = PresentRequest(tuple(claims), nonce, audience, int(iat))
        PresentRequest.decode(request.encode())  # the profile's limits, checked before the card sees it
        # sensitive: the answer carries the disclosed personal claims, which never go to the logs
        try:
            resp = self.protocol.send_apdu(
                CLA_PROPRIETARY, Ins.PRESENT, 0, 0, request.encode(), sensitive=True
            )
        except ApduError as exc:
            if exc.sw == SW.COMMAND_NOT_ALLOWED:
                raise TerminalNotAuthorizedError(exc.sw, "the card refused this terminal's request") from None
            raise
        try:
            text = Tlv.unpack(PresentTag.PRESENTATION, resp).decode("ascii")
        except UnicodeDecodeError as exc:
            raise DecodeError("presentation is not ASCII") from exc
        if text.count("~") < 2 or not text.split("~", 1)[0].count(".") == 2:
            raise DecodeError("card answer is not an SD-JWT+KB presentation")
        return text

    def authenticate_terminal(
        self, certificate: TerminalCertificate, sign: TerminalSigner, when: int
    ) -> None:
        """Terminal authentication (docs/card-profile.md §Terminal authentication): PSO VERIFY CERTIFICATE,
        GET CHALLENGE, EXTERNAL AUTHENTICATE with ``sign(ta_signing_input(challenge, id, when))``.

        Raises :class:`TerminalNotAuthorizedError` when the card refuses the certificate or the signature.
        """
        p1, p2 = PSO_VERIFY_CERTIFICATE
        try:
            self.protocol.send_apdu(0x00, Ins.PSO, p1, p2, certificate.encode(), le=None)
            challenge = self.protocol.send_apdu(0x00, Ins.GET_CHALLENGE, 0, 0, le=CHALLENGE_BYTES)
            if len(challenge) != CHALLENGE_BYTES:
                raise DecodeError(f"card challenge must be {CHALLENGE_BYTES} bytes")
            message = ta_signing_input(challenge, certificate.terminal_id, when)
            auth = TerminalAuthentication(when, sign(message))
            self.protocol.send_apdu(0x00, Ins.EXTERNAL_AUTHENTICATE, 0, 0, auth.encode(), le=None)
        except ApduError as exc:
            if exc.sw in (
                SW.REFERENCE_DATA_NOT_FOUND, SW.SECURITY_STATUS_NOT_SATISFIED, SW.CONDITIONS_NOT_SATISFIED,
                SW.INCORRECT_DATA,
            ):  # fmt: skip
                raise TerminalNotAuthorizedError(exc.sw, "the card refused the terminal") from None
            raise
        logger.debug("terminal authenticated to the card")

    # --- admin verbs (behind the management key) -----------------------------------------------

    def generate_binding_key(self) -> P256PublicKey:
        """GENERATE BINDING KEY: a fresh presentation-binding key on the card (admin); its public key."""
        resp = self.protocol.send_apdu(CLA_PROPRIETARY, Ins.GENERATE_BINDING_KEY, 0, 0)
        try:
            return P256PublicKey.from_point(Tlv.unpack(CertTag.POINT, Tlv.unpack(CertTag.PUBLIC_KEY, resp)))
        except (TlvError, KeyFormatError) as exc:
            raise DecodeError(f"bad binding key answer: {exc}") from exc

    def put_authorization_root(self, root: P256PublicKey, date: int) -> None:
        """PUT AUTHORIZATION ROOT: the city's terminal-authorization key and the card's initial date."""
        data = encode_tlv(CertTag.PUBLIC_KEY, encode_tlv(CertTag.POINT, root.point)) + encode_tlv(
            CertTag.NOT_BEFORE, int(date).to_bytes(4, "big")
        )
        self.protocol.send_apdu(CLA_PROPRIETARY, Ins.PUT_AUTHORIZATION_ROOT, 0, 0, data, le=None)

    def authenticate(
        self, key: bytes | mgmt.Responder = DEFAULT_MANAGEMENT_KEY, algorithm: Algorithm = Algorithm.TDEA_3KEY
    ) -> None:
        """Management-key mutual authentication (same key and flow as PIV 9B)."""
        mgmt.authenticate(self.protocol, key, algorithm)

    def put_did(self, did: str) -> None:
        """PUT DID: store the citizen's DID (UTF-8, ≤ 128 bytes)."""
        raw = did.encode()
        if not 0 < len(raw) <= MAX_DID:
            raise ValueError(f"DID must be 1-{MAX_DID} bytes")
        self.protocol.send_apdu(CLA_PROPRIETARY, Ins.PUT_DID, 0, 0, raw, le=None)

    def put_credential(self, record: CredentialRecord) -> None:
        """PUT CREDENTIAL: store the issuer JWT and its disclosures (atomic on the last chained part)."""
        self.protocol.send_apdu(
            CLA_PROPRIETARY, Ins.PUT_CREDENTIAL, 0, 0, record.encode(), le=None, sensitive=True
        )

    def activate(self) -> None:
        """ACTIVATE: make the stored credential usable (the last personalization step, admin)."""
        self.protocol.send_apdu(CLA_PROPRIETARY, Ins.ACTIVATE, 0, 0, le=None)

    def erase(self) -> None:
        """ERASE: remove the DID and the credential."""
        self.protocol.send_apdu(CLA_PROPRIETARY, Ins.ERASE, 0, 0, le=None)
