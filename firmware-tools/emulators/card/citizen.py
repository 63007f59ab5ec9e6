"""The emulator's Busan citizen applet (profile: docs/card-profile.md, codecs: :mod:`cityid.citizen`).

It holds the citizen DID and one issuer-signed SD-JWT credential with its disclosures, written at
personalization behind the management key. PRESENT builds an SD-JWT+KB presentation (RFC 9901 §4.3) *on the
card*: only the requested disclosures, and a KB-JWT signed with the PIV 9A key (ES256, raw r‖s). The card, not
the terminal, decides what leaves it; the PIN must be verified right before every PRESENT ("PIN always").
The card has no clock: ``iat`` comes from the terminal, the verifier checks it against its own clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from cityid.apdu import CommandApdu, ResponseApdu
from cityid.citizen import (
    CITIZEN_AID,
    CLA_PROPRIETARY,
    MAX_CREDENTIAL_BYTES,
    MAX_DID,
    CredentialRecord,
    CredentialState,
    InfoTag,
    Ins,
    PresentRequest,
    PresentTag,
)
from cityid.errors import ApduError, TlvError
from cityid.iso7816 import SW
from cityid.jose import attach_signature, der_to_raw_p256
from cityid.piv import Algorithm, Slot
from cityid.sdjwt import kb_jwt_signing_input, presentation_without_kb, sd_hash
from cityid.tlv import encode_tlv
from emulators.card.os import Applet
from emulators.card.piv import PivApplet
from emulators.card.security import CardSecurity
from emulators.card.store import CardStore

logger = logging.getLogger(__name__)

SECTION = "citizen"
VERSION = (1, 0)


class CitizenApplet(Applet):
    """Citizen DID + SD-JWT credential store with on-card selective disclosure (PRESENT)."""

    aid = CITIZEN_AID
    name = "citizen"

    def __init__(
        self,
        store: CardStore,
        security: CardSecurity,
        piv: PivApplet,
        private_info: bool = False,
        activation_required: bool = False,
    ) -> None:
        self.store = store
        self.security = security
        self.piv = piv  # the holder key lives in PIV slot 9A
        #: GET INFO answers only its public part (docs/card-profile.md, GET INFO): no serial, DID or claim
        #: names before the PIN; they come from GET IDENTITY. Off = the legacy answer current terminals read.
        self.private_info = private_info
        #: PUT CREDENTIAL stores the credential inactive; ACTIVATE (the last personalization step) makes it
        #: usable (docs/card-profile.md, ACTIVATE). Off = legacy: every stored credential is usable.
        self.activation_required = activation_required
        self._state: dict[str, Any] = store.section(SECTION)
        self._credential: CredentialRecord | None = None
        if self._state.get("credential"):
            self._credential = CredentialRecord.decode(bytes.fromhex(self._state["credential"]))
        self._handlers: dict[tuple[int, int], Callable[[CommandApdu], bytes]] = {
            (CLA_PROPRIETARY, Ins.GET_INFO): self._get_info,
            (CLA_PROPRIETARY, Ins.GET_IDENTITY): self._get_identity,
            (CLA_PROPRIETARY, Ins.PRESENT): self._present,
            (CLA_PROPRIETARY, Ins.PUT_CREDENTIAL): self._put_credential,
            (CLA_PROPRIETARY, Ins.PUT_DID): self._put_did,
            (CLA_PROPRIETARY, Ins.ERASE): self._erase,
            (CLA_PROPRIETARY, Ins.ACTIVATE): self._activate,
            (0x00, Ins.VERIFY): self._verify,
            (0x00, Ins.GENERAL_AUTHENTICATE): self._general_authenticate,
        }

    # --- lifecycle -----------------------------------------------------------------------------------

    def power_on(self) -> None:
        self.security.clear_session()

    def deselect(self) -> None:
        self.security.clear_session()

    def select(self) -> bytes:
        return encode_tlv(InfoTag.VERSION, bytes(VERSION))

    @property
    def did(self) -> str | None:
        return self._state.get("did")

    @property
    def credential(self) -> CredentialRecord | None:
        return self._credential

    def process(self, cmd: CommandApdu) -> ResponseApdu:
        handler = self._handlers.get((cmd.cla, cmd.ins))
        if handler is None:
            if any(ins == cmd.ins for _, ins in self._handlers):
                raise ApduError(SW.CLA_NOT_SUPPORTED)
            raise ApduError(SW.INS_NOT_SUPPORTED)
        return ResponseApdu(handler(cmd), SW.SUCCESS)

    @staticmethod
    def _p1p2(cmd: CommandApdu, p1: int = 0, p2: int = 0) -> None:
        if (cmd.p1, cmd.p2) != (p1, p2):
            raise ApduError(SW.INCORRECT_P1P2)

    def _commit(self, state: dict[str, Any]) -> None:
        self.store.commit(SECTION, state)
        self._state = state

    # --- commands ------------------------------------------------------------------------------------

    def _credential_state(self) -> CredentialState:
        if self._credential is None:
            return CredentialState.NONE
        if self.activation_required and not self._state.get("activated"):
            return CredentialState.PRESENT  # written, personalization not finished
        return CredentialState.PRESENT | CredentialState.ACTIVATED

    def _get_info(self, cmd: CommandApdu) -> bytes:
        """GET INFO: version, vct, PIN tries, holder-key slot, credential state — identical on every card of
        one issuance in the same state. The legacy answer (``private_info`` off) adds serial, DID, claims."""
        self._p1p2(cmd)
        if cmd.data:
            raise ApduError(SW.WRONG_LENGTH)
        out = encode_tlv(InfoTag.VERSION, bytes(VERSION))
        if not self.private_info:
            out += self._identity_tlvs(with_vct=False)
        elif self._credential is not None and self._credential.vct:
            out += encode_tlv(InfoTag.CREDENTIAL_VCT, self._credential.vct.encode())
        out += encode_tlv(InfoTag.PIN_TRIES, bytes([self.security.pin_tries]))
        out += encode_tlv(InfoTag.HOLDER_KEY_SLOT, bytes([Slot.AUTHENTICATION]))
        out += encode_tlv(InfoTag.CREDENTIAL_STATE, bytes([self._credential_state()]))
        return out

    def _identity_tlvs(self, with_vct: bool = True) -> bytes:
        out = encode_tlv(InfoTag.SERIAL, self.security.serial)
        if self.did:
            out += encode_tlv(InfoTag.DID, self.did.encode())
        cred = self._credential
        if cred is not None:
            if cred.vct:
                out += encode_tlv(InfoTag.CREDENTIAL_VCT, cred.vct.encode())
            out += encode_tlv(InfoTag.CLAIMS, b"\x00".join(d.claim.encode() for d in cred.disclosures))
        return out

    def _get_identity(self, cmd: CommandApdu) -> bytes:
        """GET IDENTITY: serial, DID, vct, claim names — after VERIFY or management-key authentication
        (``6982`` otherwise). Does not use up the PIN verification (PRESENT still may follow)."""
        self._p1p2(cmd)
        if cmd.data:
            raise ApduError(SW.WRONG_LENGTH)
        if not (self.security.pin_verified or self.security.mgmt_authenticated):
            raise ApduError(SW.SECURITY_STATUS_NOT_SATISFIED, "GET IDENTITY needs the PIN or management key")
        return self._identity_tlvs()

    def _verify(self, cmd: CommandApdu) -> bytes:
        """VERIFY of the card-wide PIN: the PIV applet's command (SP 800-73-4 Part 2 §3.2.1), same code."""
        self.security.verify_command(cmd.p1, cmd.p2, cmd.data)
        return b""

    def _general_authenticate(self, cmd: CommandApdu) -> bytes:
        if cmd.p2 != Slot.CARD_MANAGEMENT:
            raise ApduError(SW.INCORRECT_P1P2)
        return self.security.management_authenticate(cmd.p1, cmd.data)

    def _put_credential(self, cmd: CommandApdu) -> bytes:
        self._p1p2(cmd)
        self.security.require_admin()
        if len(cmd.data) > MAX_CREDENTIAL_BYTES:
            raise ApduError(SW.NOT_ENOUGH_MEMORY, "credential too large")
        try:
            record = CredentialRecord.decode(cmd.data)
        except TlvError as exc:
            raise ApduError(SW.INCORRECT_DATA, str(exc)) from exc
        self._commit(dict(self._state, credential=record.encode().hex(), activated=False))
        self._credential = record
        return b""

    def _put_did(self, cmd: CommandApdu) -> bytes:
        self._p1p2(cmd)
        self.security.require_admin()
        try:
            did = cmd.data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ApduError(SW.INCORRECT_DATA, "DID must be UTF-8") from exc
        if not 0 < len(cmd.data) <= MAX_DID or not did.startswith("did:") or not did.isprintable():
            raise ApduError(SW.INCORRECT_DATA, "not a DID")
        self._commit(dict(self._state, did=did))
        return b""

    def _erase(self, cmd: CommandApdu) -> bytes:
        self._p1p2(cmd)
        if cmd.data:
            raise ApduError(SW.WRONG_LENGTH)
        self.security.require_admin()
        self._commit({})
        self._credential = None
        return b""

    def _activate(self, cmd: CommandApdu) -> bytes:
        """ACTIVATE (docs/card-profile.md §ACTIVATE): the stored credential becomes usable by PRESENT."""
        self._p1p2(cmd)
        if cmd.data:
            raise ApduError(SW.WRONG_LENGTH)
        self.security.require_admin()
        if self._credential is None:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED, "no credential to activate")
        self._commit(dict(self._state, activated=True))
        return b""

    def _present(self, cmd: CommandApdu) -> bytes:
        """PRESENT (docs/card-profile.md §PRESENT): SD-JWT+KB with only the requested disclosures."""
        self._p1p2(cmd)
        self.security.require_pin()
        try:
            return self._build_presentation(cmd.data)
        finally:
            self.security.pin_verified = False  # PIN always: one verification, one presentation

    def _build_presentation(self, data: bytes) -> bytes:
        try:
            request = PresentRequest.decode(data)
        except TlvError as exc:
            raise ApduError(SW.INCORRECT_DATA, str(exc)) from exc
        cred = self._credential
        if cred is None:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED, "no credential on the card")
        if not self._credential_state() & CredentialState.ACTIVATED:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED, "credential not activated yet")
        if self.piv.key_algorithm(Slot.AUTHENTICATION) != Algorithm.ECC_P256:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED, "no P-256 holder key in slot 9A")
        available = {d.claim for d in cred.disclosures}
        if any(claim not in available for claim in request.claims):
            raise ApduError(SW.REFERENCE_DATA_NOT_FOUND, "claim not on the card")
        wanted = set(request.claims)
        disclosures = [d.disclosure for d in cred.disclosures if d.claim in wanted]
        sd_part = presentation_without_kb(cred.issuer_jwt, disclosures)
        signing_input = kb_jwt_signing_input(request.audience, request.nonce, request.iat, sd_hash(sd_part))
        key = self.piv.private_key(Slot.AUTHENTICATION)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        der = key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
        kb_jwt = attach_signature(signing_input, der_to_raw_p256(der))
        logger.info("presented %d of %d disclosures", len(disclosures), len(cred.disclosures))
        return encode_tlv(PresentTag.PRESENTATION, (sd_part + kb_jwt).encode("ascii"))
