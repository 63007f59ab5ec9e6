"""The emulator's Busan citizen applet (profile: docs/card-profile.md, codecs: :mod:`cityid.citizen`).

It holds the citizen DID and one issuer-signed SD-JWT credential with its disclosures, written at
personalization behind the management key. PRESENT builds an SD-JWT+KB presentation (RFC 9901 §4.3) *on the
card*: only the requested disclosures, and a KB-JWT signed with the applet's own presentation-binding key
(generated on the card, usable by nothing but PRESENT; legacy cards without one sign with PIV 9A). The card,
not the terminal, decides what leaves it; the PIN must be verified right before every PRESENT ("PIN always").

Terminal authentication (docs/card-profile.md §Terminal authentication, after BSI TR-03110 Part 3 §B.11):
a card holding the city authorization root verifies a terminal certificate (PSO VERIFY CERTIFICATE) and the
terminal's signature over a card challenge (GET CHALLENGE, EXTERNAL AUTHENTICATE); PRESENT then releases only
the certificate's claims, with ``aud`` = the certificate's terminal id. The card has no clock: it keeps the
latest date seen in a valid certificate and refuses certificates that expired before it; the terminal's
current time comes signed inside EXTERNAL AUTHENTICATE. ``iat`` comes from the terminal as well.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cityid.apdu import CommandApdu, ResponseApdu
from cityid.citizen import (
    CITIZEN_AID,
    CLA_PROPRIETARY,
    MAX_CREDENTIAL_BYTES,
    MAX_DID,
    PSO_VERIFY_CERTIFICATE,
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
from cityid.keys import KeyFormatError, P256PublicKey
from cityid.piv import Algorithm, Slot
from cityid.sdjwt import kb_jwt_signing_input, presentation_without_kb, sd_hash
from cityid.terminal_cert import (
    CHALLENGE_BYTES,
    CertificateError,
    CertTag,
    TerminalAuthentication,
    TerminalCertificate,
    authority_id,
    ta_signing_input,
)
from cityid.tlv import encode_tlv, parse_tlv_list
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
        private_info: bool = True,
        activation_required: bool = False,
        terminal_auth_required: bool = False,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.store = store
        self.security = security
        self.piv = piv  # the holder key lives in PIV slot 9A
        #: GET INFO answers only its public part (docs/card-profile.md, GET INFO): no serial, DID or claim
        #: names before the PIN; they come from GET IDENTITY. Off = the legacy answer of older profiles.
        self.private_info = private_info
        #: PUT CREDENTIAL stores the credential inactive; ACTIVATE (the last personalization step) makes it
        #: usable (docs/card-profile.md, ACTIVATE). Off = legacy: every stored credential is usable.
        self.activation_required = activation_required
        #: PRESENT needs terminal authentication even before an authorization root is written (a card with
        #: a root always needs it; docs/card-profile.md §Terminal authentication).
        self.terminal_auth_required = terminal_auth_required
        self._rng = rng
        # volatile terminal-authentication state (cleared at power-up and deselection)
        self._challenge: bytes | None = None
        self._pending: TerminalCertificate | None = None
        self._terminal: TerminalCertificate | None = None
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
            (CLA_PROPRIETARY, Ins.PUT_AUTHORIZATION_ROOT): self._put_authorization_root,
            (CLA_PROPRIETARY, Ins.GENERATE_BINDING_KEY): self._generate_binding_key,
            (0x00, Ins.PSO): self._verify_certificate,
            (0x00, Ins.GET_CHALLENGE): self._get_challenge,
            (0x00, Ins.EXTERNAL_AUTHENTICATE): self._external_authenticate,
            (0x00, Ins.VERIFY): self._verify,
            (0x00, Ins.GENERAL_AUTHENTICATE): self._general_authenticate,
        }

    # --- lifecycle -----------------------------------------------------------------------------------

    def power_on(self) -> None:
        self.security.clear_session()
        self._clear_terminal()

    def deselect(self) -> None:
        self.security.clear_session()
        self._clear_terminal()

    def _clear_terminal(self) -> None:
        self._challenge = self._pending = self._terminal = None

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
        root = self._root()
        if root is not None:  # one value per issuance: which certificates the kiosk must bring
            out += encode_tlv(InfoTag.AUTHORITY, authority_id(root))
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
        binding = self._binding_key()
        if binding is not None:
            out += encode_tlv(InfoTag.BINDING_KEY, P256PublicKey.from_crypto(binding.public_key()).point)
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
        # the authorization root and the card's date stay (the date never goes back); the binding key goes
        self._commit({k: v for k, v in self._state.items() if k in ("auth_root", "auth_date")})
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
        if self._ta_required():
            terminal = self._terminal
            if terminal is None:
                raise ApduError(SW.COMMAND_NOT_ALLOWED, "no terminal authentication")
            if request.audience != terminal.terminal_id:
                raise ApduError(SW.COMMAND_NOT_ALLOWED, "aud is not the authenticated terminal")
            if not set(request.claims) <= set(terminal.body.claims):
                raise ApduError(SW.COMMAND_NOT_ALLOWED, "claim outside the terminal's certificate")
        binding = self._binding_key()
        if binding is None and self.piv.key_algorithm(Slot.AUTHENTICATION) != Algorithm.ECC_P256:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED, "no presentation-binding key and no P-256 key in 9A")
        available = {d.claim for d in cred.disclosures}
        if any(claim not in available for claim in request.claims):
            raise ApduError(SW.REFERENCE_DATA_NOT_FOUND, "claim not on the card")
        wanted = set(request.claims)
        disclosures = [d.disclosure for d in cred.disclosures if d.claim in wanted]
        sd_part = presentation_without_kb(cred.issuer_jwt, disclosures)
        signing_input = kb_jwt_signing_input(request.audience, request.nonce, request.iat, sd_hash(sd_part))
        key = binding if binding is not None else self.piv.private_key(Slot.AUTHENTICATION)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        der = key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
        kb_jwt = attach_signature(signing_input, der_to_raw_p256(der))
        logger.info("presented %d of %d disclosures", len(disclosures), len(cred.disclosures))
        return encode_tlv(PresentTag.PRESENTATION, (sd_part + kb_jwt).encode("ascii"))

    # --- presentation-binding key and terminal authentication ------------------------------------------

    def _binding_key(self) -> ec.EllipticCurvePrivateKey | None:
        der = self._state.get("binding_key")
        if not der:
            return None
        key = serialization.load_der_private_key(bytes.fromhex(der), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key

    def _generate_binding_key(self, cmd: CommandApdu) -> bytes:
        """GENERATE BINDING KEY: a fresh P-256 key only PRESENT can use; answers its public point."""
        self._p1p2(cmd)
        if cmd.data:
            raise ApduError(SW.WRONG_LENGTH)
        self.security.require_admin()
        key = ec.generate_private_key(ec.SECP256R1())
        der = key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self._commit(dict(self._state, binding_key=der.hex()))
        point = P256PublicKey.from_crypto(key.public_key()).point
        return encode_tlv(CertTag.PUBLIC_KEY, encode_tlv(CertTag.POINT, point))

    def _root(self) -> P256PublicKey | None:
        raw = self._state.get("auth_root")
        return P256PublicKey.from_point(bytes.fromhex(raw)) if raw else None

    def _ta_required(self) -> bool:
        return self.terminal_auth_required or self._root() is not None

    def _put_authorization_root(self, cmd: CommandApdu) -> bytes:
        """PUT AUTHORIZATION ROOT: ``7F49 { 86 point }`` [``5F25`` date]; the date only moves forward."""
        self._p1p2(cmd)
        self.security.require_admin()
        try:
            tlvs = parse_tlv_list(cmd.data)
            if not 1 <= len(tlvs) <= 2 or tlvs[0].tag != CertTag.PUBLIC_KEY:
                raise ApduError(SW.INCORRECT_DATA, "expected 7F49 { 86 point } [5F25 date]")
            inner = tlvs[0].children()
            if len(inner) != 1 or inner[0].tag != CertTag.POINT:
                raise ApduError(SW.INCORRECT_DATA, "expected 7F49 { 86 point }")
            root = P256PublicKey.from_point(inner[0].value)
            date = 0
            if len(tlvs) == 2:
                if tlvs[1].tag != CertTag.NOT_BEFORE or len(tlvs[1].value) != 4:
                    raise ApduError(SW.INCORRECT_DATA, "date must be 5F25 with 4 bytes")
                date = int.from_bytes(tlvs[1].value, "big")
        except (TlvError, KeyFormatError) as exc:
            raise ApduError(SW.INCORRECT_DATA, str(exc)) from exc
        state = dict(self._state, auth_root=root.hex(), auth_date=max(date, self._state.get("auth_date", 0)))
        self._commit(state)
        self._clear_terminal()
        return b""

    def _verify_certificate(self, cmd: CommandApdu) -> bytes:
        """PSO VERIFY CERTIFICATE: check a terminal certificate against the root and the card's date."""
        self._p1p2(cmd, *PSO_VERIFY_CERTIFICATE)
        self._pending = self._terminal = None  # a new certificate ends any earlier authentication
        root = self._root()
        try:
            cert = TerminalCertificate.decode(cmd.data)
        except CertificateError as exc:
            raise ApduError(SW.INCORRECT_DATA, str(exc)) from exc
        if root is None or cert.body.authority != authority_id(root):
            raise ApduError(SW.REFERENCE_DATA_NOT_FOUND, "certificate not issued by the card's root")
        if not cert.verify(root):
            raise ApduError(SW.SECURITY_STATUS_NOT_SATISFIED, "certificate signature does not verify")
        card_date = int(self._state.get("auth_date", 0))
        if cert.body.not_after < card_date:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED, "certificate expired before the card's date")
        if cert.body.not_before > card_date:  # TR-03110: the card's date advances with valid certificates
            self._commit(dict(self._state, auth_date=cert.body.not_before))
        self._pending = cert
        return b""

    def _get_challenge(self, cmd: CommandApdu) -> bytes:
        """GET CHALLENGE: 16 fresh random bytes, valid for the next EXTERNAL AUTHENTICATE only."""
        self._p1p2(cmd)
        if cmd.data:
            raise ApduError(SW.WRONG_LENGTH)
        self._challenge = self._rng(CHALLENGE_BYTES)
        return self._challenge

    def _external_authenticate(self, cmd: CommandApdu) -> bytes:
        """EXTERNAL AUTHENTICATE: the terminal's signature over challenge ‖ terminal id ‖ its time."""
        self._p1p2(cmd)
        challenge, self._challenge = self._challenge, None  # one answer per challenge, right or wrong
        cert, self._pending = self._pending, None
        self._terminal = None
        if challenge is None or cert is None:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED, "GET CHALLENGE and a verified certificate first")
        try:
            auth = TerminalAuthentication.decode(cmd.data)
        except CertificateError as exc:
            raise ApduError(SW.INCORRECT_DATA, str(exc)) from exc
        if not cert.valid_at(auth.when) or auth.when < int(self._state.get("auth_date", 0)):
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED, "terminal time outside the certificate's validity")
        message = ta_signing_input(challenge, cert.terminal_id, auth.when)
        if not cert.body.public_key.verify_raw(auth.signature, message):
            raise ApduError(SW.SECURITY_STATUS_NOT_SATISFIED, "terminal signature does not verify")
        self._terminal = cert
        logger.info("terminal authenticated (%d claims authorized)", len(cert.body.claims))
        return b""
