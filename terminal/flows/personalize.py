"""Card personalization: the steps, named once, shared by ``cardtool personalize`` and the counter.

:class:`Step` names them in order (SP 800-73-4 Part 2 for the PIV commands)::

    KEY          management-key authentication (Appendix A.1), GENERATE ASYMMETRIC KEY PAIR P-256 in 9A
                 (the holder key; it never leaves the card)
    CERTIFICATE  VERIFY the current PIN and let the card sign a TBSCertificate for its own key: a
                 self-signed X.509 certificate (RFC 5280 §4.1) proving the key is on the card — no city CA
                 key is needed, and it carries no personal data (subject: card serial only). Stored as the
                 9A certificate object so standard PIV middleware (OpenSC/PKCS#11) lists the key
                 (docs/card-profile.md)
    BINDING      citizen applet: PUT AUTHORIZATION ROOT (the city's terminal-authorization key, so the card
                 checks every kiosk from now on) and GENERATE BINDING KEY — the key the credential's
                 ``cnf`` and the DID registry name (docs/card-profile.md §Terminal authentication); only
                 when an authorization root is given (legacy cards bind presentations with 9A)
    ENROLL       (counter) the city server registers the DID and card key and signs the credential
    WRITE        citizen applet: PUT DID and PUT CREDENTIAL (behind the same management key)
    PIN          CHANGE REFERENCE DATA for the PUK, then the PIN
    CHECK        (counter) self-check: PIN → PRESENT of every claim → full verification

Each step is one card command or a short exchange, so a card pulled mid-way leaves the card's state old or
new per step. :class:`CardPersonalizer` runs the card steps on one connection and records what is done in
a :class:`Journal` (identifiers and public material only, never PINs or claims): the counter keeps one
journal per card serial across card pulls (:mod:`terminal.flows.counter`) and resumes at
:meth:`Journal.next_step`; ``cardtool personalize`` (:func:`personalize`) runs every step in one go and is
simply run again after a pull.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cityid.apdu import SmartCardConnection
from cityid.citizen import CredentialRecord, StoredDisclosure
from cityid.errors import BlockedPinError, CityIdError, DecodeError, WrongPinError
from cityid.jose import JoseError, b64url_decode, json_loads
from cityid.keys import P256PublicKey
from cityid.piv import DEFAULT_MANAGEMENT_KEY, Algorithm, Slot
from cityid.sdjwt import parse_disclosure, split
from cityid.tlv import encode_length
from terminal.sessions.base import InvalidPukError
from terminal.sessions.citizen import CardIdentity, CitizenSession
from terminal.sessions.piv import PivSession

logger = logging.getLogger(__name__)


class Step(StrEnum):
    """The personalization steps, in order (module docstring)."""

    KEY = "key"
    CERTIFICATE = "certificate"
    BINDING = "binding"
    ENROLL = "enroll"
    WRITE = "write"
    PIN = "pin"
    CHECK = "check"
    DONE = "done"


#: The steps ``cardtool personalize`` runs (no server, no self-check).
CARD_STEPS = (Step.KEY, Step.CERTIFICATE, Step.WRITE, Step.PIN)


class PinStateError(CityIdError):
    """The card's PIN/PUK is neither the initial nor the citizen's one: reset the card first."""


#: AlgorithmIdentifier ecdsa-with-SHA256 (RFC 5758 §3.2), DER.
_ECDSA_SHA256_ALG_ID = bytes.fromhex("300a06082a8648ce3d040302")
CERT_VALIDITY = dt.timedelta(days=10 * 365)


def _der(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + encode_length(len(body)) + body


def card_signed_certificate(
    piv: PivSession, slot: Slot, public_key: P256PublicKey, common_name: str
) -> x509.Certificate:
    """A self-signed certificate for ``public_key`` whose signature the card makes with ``slot``.

    The TBSCertificate is built host-side (with a throw-away key only to obtain the DER of the TBS with the
    right algorithm identifier), then signed on the card; the card's signature is checked before use.
    The PIN must be verified for ``slot`` first.
    """
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key.crypto)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CERT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
    )
    throwaway = ec.generate_private_key(ec.SECP256R1())
    tbs = builder.sign(throwaway, hashes.SHA256()).tbs_certificate_bytes
    signature = piv.sign(slot, tbs)
    der = _der(0x30, tbs + _ECDSA_SHA256_ALG_ID + _der(0x03, b"\x00" + signature))
    cert = x509.load_der_x509_certificate(der)
    try:
        cert.verify_directly_issued_by(cert)
    except Exception as exc:  # InvalidSignature / ValueError / TypeError
        raise DecodeError(f"the card's certificate signature does not verify: {exc}") from exc
    return cert


def load_credential(text: str) -> CredentialRecord:
    """A credential file: the SD-JWT ``<issuer-jwt>~<disclosure>~…~`` (RFC 9901 §4) → the card record."""
    try:
        issuer_jwt, disclosures, kb = split(text.strip())
        if kb:
            raise DecodeError("the credential file must not hold a key-binding JWT")
        payload = json_loads(b64url_decode(issuer_jwt.split(".")[1]))
        vct = payload.get("vct", "") if isinstance(payload, dict) else ""
        stored = []
        for enc in disclosures:
            d = parse_disclosure(enc)
            if d.name is None:
                raise DecodeError("array-element disclosures cannot be stored by claim name")
            stored.append(StoredDisclosure(d.name, enc))
    except JoseError as exc:
        raise DecodeError(f"not an SD-JWT credential: {exc}") from exc
    record = CredentialRecord(issuer_jwt, tuple(stored), vct if isinstance(vct, str) else "")
    CredentialRecord.decode(record.encode())  # the card profile's limits
    return record


@dataclass
class Journal:
    """What is done on one card (identifiers and public material only)."""

    key: P256PublicKey | None = None
    certified: bool = False
    binding_key: P256PublicKey | None = None  # Step BINDING: the presentation-binding key
    did: str | None = None
    credential: CredentialRecord | None = field(default=None, repr=False)
    written: bool = False
    pin_set: bool = False
    checked: bool = False
    restarts: int = 0

    def next_step(self, steps: tuple[Step, ...]) -> Step:
        """The first of ``steps`` not done yet (``Step.DONE`` when all are)."""
        done = {
            Step.KEY: self.key is not None,
            Step.CERTIFICATE: self.certified,
            Step.BINDING: self.binding_key is not None,
            Step.ENROLL: self.credential is not None,
            Step.WRITE: self.written,
            Step.PIN: self.pin_set,
            Step.CHECK: self.checked,
        }
        return next((s for s in steps if not done[s]), Step.DONE)

    @property
    def holder_key(self) -> P256PublicKey | None:
        """The key the credential binds (``cnf``): the binding key, else (legacy) the 9A key."""
        return self.binding_key or self.key


class CardPersonalizer:
    """The card steps on one connection, recorded in ``journal``.

    Keeps, for this connection, whether the management key is authenticated, so KEY then CERTIFICATE on
    one connection authenticate once (a resumed CERTIFICATE authenticates itself).
    """

    def __init__(
        self,
        connection: SmartCardConnection,
        journal: Journal,
        *,
        management_key: bytes = DEFAULT_MANAGEMENT_KEY,
        management_key_algorithm: Algorithm = Algorithm.TDEA_3KEY,
        progress: Callable[[str], None] = lambda _msg: None,
    ) -> None:
        self.connection = connection
        self.journal = journal
        self._mgmt = management_key
        self._mgmt_alg = management_key_algorithm
        self._progress = progress
        self._piv: PivSession | None = None
        self._authenticated = False

    def _piv_session(self) -> PivSession:
        if self._piv is None:
            self._piv = PivSession(self.connection)
        return self._piv

    def _authenticate(self) -> PivSession:
        piv = self._piv_session()
        if not self._authenticated:
            self._progress("authenticating with the management key")
            piv.authenticate_management_key(self._mgmt, self._mgmt_alg)
            self._authenticated = True
        return piv

    def generate_key(self) -> P256PublicKey:
        """Step KEY: a fresh P-256 holder key in 9A."""
        piv = self._authenticate()
        self._progress("generating the P-256 holder key in slot 9A")
        key = P256PublicKey.from_crypto(piv.generate_key(Slot.AUTHENTICATION, Algorithm.ECC_P256))
        self.journal.key = key
        self.journal.certified = False
        return key

    def keep_key(self) -> x509.Certificate:
        """KEY and CERTIFICATE already done earlier: the stored 9A certificate (and its key)."""
        cert = self._piv_session().get_certificate(Slot.AUTHENTICATION)
        try:
            key = P256PublicKey.from_crypto(cert.public_key())
        except DecodeError:
            raise DecodeError("the 9A certificate does not hold a P-256 key") from None
        self.journal.key, self.journal.certified = key, True
        return cert

    def certify(self, pin: str, serial: str) -> x509.Certificate:
        """Step CERTIFICATE: VERIFY ``pin``, the card signs its certificate, stored as the 9A object."""
        key = self.journal.key
        if key is None:
            raise ValueError("the certificate step needs the key step first")
        piv = self._authenticate()
        self._progress("verifying the PIN")
        piv.verify_pin(pin)
        self._progress("card signs its certificate")
        cert = card_signed_certificate(piv, Slot.AUTHENTICATION, key, f"Busan citizen card {serial}")
        self._progress("writing the certificate")
        piv.put_certificate(Slot.AUTHENTICATION, cert)
        self.journal.certified = True
        return cert

    def bind(self, root: P256PublicKey, date: int) -> P256PublicKey:
        """Step BINDING: the authorization root (with the card's initial date) and a fresh binding key."""
        citizen = CitizenSession(self.connection)
        self._piv, self._authenticated = None, False  # the citizen applet is selected now
        self._progress("writing the authorization root and generating the binding key")
        citizen.authenticate(self._mgmt, self._mgmt_alg)
        citizen.put_authorization_root(root, date)
        self.journal.binding_key = key = citizen.generate_binding_key()
        return key

    def write(self, did: str | None, credential: CredentialRecord | None) -> None:
        """Step WRITE: the DID and the credential into the citizen applet (PUT CREDENTIAL is atomic)."""
        if did is not None or credential is not None:
            citizen = CitizenSession(self.connection)
            self._piv = None  # the citizen applet is selected now
            self._progress("authenticating the citizen applet")
            citizen.authenticate(self._mgmt, self._mgmt_alg)
            if did is not None:
                self._progress("writing the DID")
                citizen.put_did(did)
            if credential is not None:
                self._progress(f"writing the credential ({len(credential.encode())} bytes)")
                citizen.put_credential(credential)
        self.journal.did, self.journal.written = did, True

    def activate(self) -> None:
        """ACTIVATE the written credential (docs/card-profile.md §ACTIVATE) — after Step PIN, always last."""
        citizen = CitizenSession(self.connection)
        self._piv, self._authenticated = None, False  # the citizen applet is selected now
        self._progress("activating the credential")
        citizen.authenticate(self._mgmt, self._mgmt_alg)
        citizen.activate()

    def set_pins(
        self,
        pin: str | None,
        new_pin: str | None,
        puk: str | None,
        new_puk: str | None,
        *,
        resume: bool = False,
    ) -> None:
        """Step PIN: CHANGE REFERENCE DATA for the PUK, then the PIN (each only when a new value is given).

        ``resume``: tolerate a previous attempt that already changed them (the counter's retry after a
        card pull) — changing the PUK to itself, or verifying the new PIN, proves it; anything else is a
        :class:`PinStateError`.
        """
        if new_puk is None and new_pin is None:
            self.journal.pin_set = True
            return
        piv = self._piv = PivSession(self.connection)  # PIN and PUK are managed through PIV (re-selected)
        if new_puk is not None:
            if puk is None:
                raise ValueError("changing the PUK needs the current PUK")
            self._progress("setting the PUK")
            try:
                piv.change_puk(puk, new_puk)
            except InvalidPukError:
                if not resume:
                    raise
                try:
                    piv.change_puk(new_puk, new_puk)
                except (WrongPinError, BlockedPinError) as exc:
                    raise PinStateError(
                        "the card's PUK is not the initial one: reset the card first"
                    ) from exc
        if new_pin is not None:
            if pin is None:
                raise ValueError("changing the PIN needs the current PIN")
            self._progress("setting the PIN")
            try:
                piv.change_pin(pin, new_pin)
            except WrongPinError:
                if not resume:
                    raise
                try:
                    piv.verify_pin(new_pin)
                except (WrongPinError, BlockedPinError) as exc:
                    raise PinStateError(
                        "the card's PIN is not the initial one: reset it with the PUK"
                    ) from exc
        self.journal.pin_set = True


@dataclass(frozen=True, slots=True)
class PersonalizationResult:
    """What personalization produced (public material only)."""

    key: P256PublicKey
    certificate: x509.Certificate
    serial: str
    did: str | None
    credential_vct: str | None
    binding_key: P256PublicKey | None = None  # the credential's holder key when an authorization root was set


def personalize(
    connection: SmartCardConnection,
    *,
    pin: str | None,
    management_key: bytes = DEFAULT_MANAGEMENT_KEY,
    generate_key: bool = True,
    new_pin: str | None = None,
    puk: str | None = None,
    new_puk: str | None = None,
    did: str | None = None,
    credential: CredentialRecord | None = None,
    progress: Callable[[str], None] = lambda _msg: None,
    management_key_algorithm: Algorithm = Algorithm.TDEA_3KEY,
    authorization_root: P256PublicKey | None = None,
    now: Callable[[], float] = time.time,
) -> PersonalizationResult:
    """Run :data:`CARD_STEPS` on one connected card (``cardtool personalize``).

    ``authorization_root``: the city's terminal-authorization key; adds Step BINDING (the card then
    requires terminal authentication, and the credential must bind :attr:`PersonalizationResult.binding_key`).

    ``generate_key=False`` keeps the existing 9A key and certificate (e.g. to write the credential the
    issuer made for that key in a second pass). ``management_key_algorithm``: the card's current 9B key
    (AES-128 once the per-card key is set, docs/card-profile.md).
    """
    mk = (management_key, management_key_algorithm)
    serial = card_identity(connection, *mk).serial
    journal = Journal()
    steps = CardPersonalizer(
        connection,
        journal,
        management_key=management_key,
        management_key_algorithm=management_key_algorithm,
        progress=progress,
    )
    if generate_key and pin is None:
        raise ValueError("generating the key needs the PIN (the card signs its certificate)")
    cert: x509.Certificate | None = None
    card_steps = CARD_STEPS
    if authorization_root is not None:
        card_steps = (Step.KEY, Step.CERTIFICATE, Step.BINDING, Step.WRITE, Step.PIN)
        if not generate_key:  # a second pass keeps the binding key the credential was made for
            journal.binding_key = card_identity(connection, *mk).binding_key
    while (step := journal.next_step(card_steps)) is not Step.DONE:
        if step is Step.KEY:
            if generate_key:
                steps.generate_key()
            else:
                cert = steps.keep_key()
        elif step is Step.CERTIFICATE:
            assert pin is not None
            cert = steps.certify(pin, serial)
        elif step is Step.BINDING:
            assert authorization_root is not None
            steps.bind(authorization_root, int(now()))
        elif step is Step.WRITE:
            steps.write(did, credential)
        elif step is Step.PIN:
            steps.set_pins(pin, new_pin, puk, new_puk)
    if credential is not None:
        steps.activate()  # last: the credential is usable only once the PINs are the citizen's
    assert journal.key is not None and cert is not None
    identity = card_identity(connection, *mk)
    return PersonalizationResult(
        journal.key, cert, serial, identity.did, identity.vct, identity.binding_key or journal.binding_key
    )


def card_identity(connection: SmartCardConnection, key: bytes, algorithm: Algorithm) -> CardIdentity:
    """Serial, DID, vct: from GET INFO on a legacy card, else GET IDENTITY behind the management key."""
    citizen = CitizenSession(connection)
    info = citizen.info()
    if info.identity_in_info is not None:
        return info.identity_in_info
    citizen.authenticate(key, algorithm)
    return citizen.identity()
