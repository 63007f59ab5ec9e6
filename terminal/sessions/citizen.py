"""Citizen applet session (docs/card-profile.md): card info, PIN, PRESENT, and the admin verbs.

The codecs live in :mod:`cityid.citizen` (shared with the emulator). A presentation is SELECT + VERIFY +
PRESENT: with extended APDUs each is one exchange; over short APDUs the request is chained (ISO 7816-4
§5.3.3) and the answer collected with GET RESPONSE.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cityid.apdu import SmartCardConnection
from cityid.citizen import (
    CITIZEN_AID,
    CLA_PROPRIETARY,
    MAX_DID,
    CredentialRecord,
    InfoTag,
    Ins,
    PresentRequest,
    PresentTag,
)
from cityid.errors import DecodeError, TlvError
from cityid.piv import DEFAULT_MANAGEMENT_KEY, Algorithm
from cityid.tlv import Tlv, parse_tlv_list
from terminal.sessions import mgmt
from terminal.sessions.base import PinMixin, open_applet

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CardInfo:
    """GET INFO, decoded (docs/card-profile.md, GET INFO)."""

    version: tuple[int, int]
    serial: str  # hex
    did: str | None
    vct: str | None
    claims: tuple[str, ...]
    pin_tries: int
    holder_key_slot: int | None = None

    @classmethod
    def decode(cls, data: bytes) -> CardInfo:
        """Decode the info TLVs (also accepted inside one constructed template); raise TlvError."""
        tlvs = parse_tlv_list(data)
        if len(tlvs) == 1 and tlvs[0].constructed:
            tlvs = tlvs[0].children()
        fields = {t.tag: t.value for t in tlvs}
        try:
            version_raw = fields[InfoTag.VERSION]
            tries_raw = fields[InfoTag.PIN_TRIES]
            if len(version_raw) != 2 or len(tries_raw) != 1:
                raise TlvError("bad version or PIN-tries field")
            claims_raw = fields.get(InfoTag.CLAIMS, b"")
            claims = tuple(c for c in claims_raw.decode().split("\x00") if c)
            did = fields[InfoTag.DID].decode() if fields.get(InfoTag.DID) else None
            vct = fields[InfoTag.CREDENTIAL_VCT].decode() if fields.get(InfoTag.CREDENTIAL_VCT) else None
            slot_raw = fields.get(InfoTag.HOLDER_KEY_SLOT)
        except KeyError as exc:
            raise TlvError(f"card info lacks tag {exc}") from exc
        except UnicodeDecodeError as exc:
            raise TlvError(f"card info is not UTF-8: {exc}") from exc
        return cls(
            version=(version_raw[0], version_raw[1]),
            serial=fields.get(InfoTag.SERIAL, b"").hex(),
            did=did,
            vct=vct,
            claims=claims,
            pin_tries=tries_raw[0],
            holder_key_slot=slot_raw[0] if slot_raw else None,
        )


class CitizenSession(PinMixin):
    """A session with the citizen applet (selected in the constructor)."""

    def __init__(self, connection: SmartCardConnection, extended: bool | None = None) -> None:
        self.connection = connection
        self.protocol, self.select_response = open_applet(connection, CITIZEN_AID, extended)
        logger.debug("citizen applet selected")

    def info(self) -> CardInfo:
        """GET INFO: version, serial, DID, credential vct, claim names, PIN tries left."""
        return CardInfo.decode(self.protocol.send_apdu(CLA_PROPRIETARY, Ins.GET_INFO, 0, 0))

    def present(self, claims: list[str] | tuple[str, ...], nonce: str, audience: str, iat: int) -> str:
        """PRESENT: the card returns ``<issuer-jwt>~<disclosures>~<kb-jwt>`` with only ``claims`` disclosed.

        Needs the PIN verified right before (PIN-always). Raises ApduError 6A88 for a claim the card lacks,
        SecurityStatusError without the PIN.
        """
        request = PresentRequest(tuple(claims), nonce, audience, int(iat))
        PresentRequest.decode(request.encode())  # the profile's limits, checked before the card sees it
        # sensitive: the answer carries the disclosed personal claims, which never go to the logs
        resp = self.protocol.send_apdu(CLA_PROPRIETARY, Ins.PRESENT, 0, 0, request.encode(), sensitive=True)
        try:
            text = Tlv.unpack(PresentTag.PRESENTATION, resp).decode("ascii")
        except UnicodeDecodeError as exc:
            raise DecodeError("presentation is not ASCII") from exc
        if text.count("~") < 2 or not text.split("~", 1)[0].count(".") == 2:
            raise DecodeError("card answer is not an SD-JWT+KB presentation")
        return text

    # --- admin verbs (behind the management key) -----------------------------------------------

    def authenticate(
        self, key: bytes = DEFAULT_MANAGEMENT_KEY, algorithm: Algorithm = Algorithm.TDEA_3KEY
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

    def erase(self) -> None:
        """ERASE: remove the DID and the credential."""
        self.protocol.send_apdu(CLA_PROPRIETARY, Ins.ERASE, 0, 0, le=None)
