"""Card personalization: the steps, named once, shared by ``cardtool personalize`` and the counter.

:class:`Step` names them in order (SP 800-73-4 Part 2 for the PIV commands)::

    CARD_KEY     (with a :class:`CardKeySource`) replace the published default management key by the card's
                 own AES-128 key, SET MANAGEMENT KEY with data from the city HSM (docs/card-profile.md,
                 "Per-card management key"); every later step authenticates with the card's key
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
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cityid.apdu import SmartCardConnection
from cityid.citizen import CredentialRecord, StoredDisclosure
from cityid.errors import BlockedPinError, CityIdError, DecodeError, WrongPinError
from cityid.jose import JoseError, b64url_decode, json_loads
from cityid.keys import P256PublicKey
from cityid.piv import (
    CARD_MANAGEMENT_KEY_ALGORITHM,
    DEFAULT_MANAGEMENT_KEY,
    Algorithm,
    Slot,
    derive_management_key,
)
from cityid.sdjwt import parse_disclosure, split
from cityid.tlv import encode_length
from terminal.sessions import mgmt
from terminal.sessions.base import InvalidPukError
from terminal.sessions.citizen import CardIdentity, CitizenSession
from terminal.sessions.piv import PivSession

logger = logging.getLogger(__name__)


class Step(StrEnum):
    """The personalization steps, in order (module docstring)."""

    CARD_KEY = "card-key"
    KEY = "key"
    CERTIFICATE = "certificate"
    BINDING = "binding"
    ENROLL = "enroll"
    WRITE = "write"
    PIN = "pin"
    CHECK = "check"
    DONE = "done"


#: The steps ``cardtool personalize`` runs (no server, no self-check); CARD_KEY first with a key source.
CARD_STEPS = (Step.KEY, Step.CERTIFICATE, Step.WRITE, Step.PIN)


class CardKeySource(Protocol):
    """Where a card's own management key comes from (docs/card-profile.md, "Per-card management key"):
    the city HSM through the server (:class:`terminal.server_client.ServerCardKeys`) or, for test cards,
    a key the host holds (:class:`HostCardKeys`)."""

    def responder(self, serial: bytes) -> mgmt.Responder:
        """Answers the 9B challenge of the card with ``serial``."""
        ...

    def set_key_data(self, serial: bytes) -> bytes:
        """SET MANAGEMENT KEY data ``<alg> 9B <len> <key>`` for that card (relayed, never kept)."""
        ...


@dataclass(frozen=True, slots=True)
class HostCardKeys:
    """Test cards: the card key is ``key`` itself, or derived in software from ``master``
    (``cityid.piv.derive_management_key``; never a production master key)."""

    key: bytes | None = field(default=None, repr=False)
    master: bytes | None = field(default=None, repr=False)

    def _key(self, serial: bytes) -> bytes:
        if self.key is not None:
            return self.key
        if self.master is None:
            raise ValueError("HostCardKeys needs a key or a master key")
        return derive_management_key(self.master, serial)

    def responder(self, serial: bytes) -> mgmt.Responder:
        return mgmt.HostKey(self._key(serial), CARD_MANAGEMENT_KEY_ALGORITHM)

    def set_key_data(self, serial: bytes) -> bytes:
        key = self._key(serial)
        return bytes([CARD_MANAGEMENT_KEY_ALGORITHM, Slot.CARD_MANAGEMENT, len(key)]) + key


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

    card_key_set: bool = False
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
            Step.CARD_KEY: self.card_key_set,
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

    Management key: ``management_key``/``management_key_algorithm`` (the key a fresh card has: the
    published default). With ``card_keys`` and the card's ``serial``, the card's own key answers once it is
    set (step CARD_KEY): each authentication tries the key the card should have and falls back to the
    other when the card answers "another algorithm" (``6A86``) — so a card pulled during SET MANAGEMENT KEY
    works with whichever key it kept.
    """

    def __init__(
        self,
        connection: SmartCardConnection,
        journal: Journal,
        *,
        management_key: bytes = DEFAULT_MANAGEMENT_KEY,
        management_key_algorithm: Algorithm = Algorithm.TDEA_3KEY,
        card_keys: CardKeySource | None = None,
        serial: bytes | None = None,
        progress: Callable[[str], None] = lambda _msg: None,
    ) -> None:
        self.connection = connection
        self.journal = journal
        self._initial = mgmt.HostKey(management_key, Algorithm(management_key_algorithm))
        if card_keys is not None and serial is None:
            raise ValueError("a card key source needs the card serial")
        self._card_keys = card_keys
        self._serial = serial
        self._own: mgmt.Responder | None = None
        self._progress = progress
        self._piv: PivSession | None = None
        self._authenticated = False

    def _piv_session(self) -> PivSession:
        if self._piv is None:
            self._piv = PivSession(self.connection)
        return self._piv

    def _own_key(self) -> mgmt.Responder:
        if self._own is None:
            assert self._card_keys is not None and self._serial is not None
            self._own = self._card_keys.responder(self._serial)
        return self._own

    def _key_authenticate(self, authenticate: Callable[[mgmt.Responder], None]) -> None:
        """Authenticate with the key the card should have; on ``6A86`` with the other one."""
        if self._card_keys is None:
            authenticate(self._initial)
            return
        keys = [self._own_key(), self._initial]
        if not self.journal.card_key_set:
            keys.reverse()
        try:
            authenticate(keys[0])
        except mgmt.ManagementKeyAlgorithmError:
            authenticate(keys[1])
            self.journal.card_key_set = keys[1] is not self._initial

    def _authenticate(self) -> PivSession:
        piv = self._piv_session()
        if not self._authenticated:
            self._progress("authenticating with the management key")
            self._key_authenticate(piv.authenticate_management_key)
            self._authenticated = True
        return piv

    def set_card_key(self) -> None:
        """Step CARD_KEY: the card's own management key replaces the default (docs/card-profile.md).

        The SET MANAGEMENT KEY data comes from the key source (the city HSM) and goes to the card at once;
        nothing keeps or logs it (the APDU is sent as sensitive). A card that already has its own key (an
        earlier attempt whose answer was lost) is left as it is.
        """
        if self._card_keys is None or self._serial is None:
            raise ValueError("setting the card's own key needs a card key source and the serial")
        piv = self._authenticate()
        if not self.journal.card_key_set:
            self._progress("setting the card's own management key")
            piv.send_management_key(self._card_keys.set_key_data(self._serial))
            self.journal.card_key_set = True
        self._authenticated = False  # the next step authenticates with the card's own key, proving it

    def generate_key(self) -> P256PublicKey:
        """Step KEY: a fresh P-256 holder key in 9A."""
        piv = self._authenticate()
        self._progress("generating the P-256 holder key in slot 9A")
        key = P256PublicKey.from_crypto(piv.generate_key(Slot.AUTHENTICATION, Algorithm.ECC_P256))
        self.journal.key = key
        self.journal.certified = False
        return key

    def keep_key(self) -> x509.Certificate:
        """KEY and CERTIFICATE already done earlier: the stored 9A certificate (and its key).

        Read behind the management key: a contactless card shows it only after the PIN or the key
        (docs/card-profile.md §PIV access rules).
        """
        cert = self._authenticate().get_certificate(Slot.AUTHENTICATION)
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

    def citizen_admin(self) -> CitizenSession:
        """The citizen applet, management key authenticated (re-personalization: ERASE at the counter)."""
        citizen = CitizenSession(self.connection)
        self._piv, self._authenticated = None, False
        self._key_authenticate(citizen.authenticate)
        return citizen

    def bind(self, root: P256PublicKey, date: int) -> P256PublicKey:
        """Step BINDING: the authorization root (with the card's initial date) and a fresh binding key."""
        citizen = CitizenSession(self.connection)
        self._piv, self._authenticated = None, False  # the citizen applet is selected now
        self._progress("writing the authorization root and generating the binding key")
        self._key_authenticate(citizen.authenticate)
        citizen.put_authorization_root(root, date)
        self.journal.binding_key = key = citizen.generate_binding_key()
        return key

    def write(self, did: str | None, credential: CredentialRecord | None) -> None:
        """Step WRITE: the DID and the credential into the citizen applet (PUT CREDENTIAL is atomic)."""
        if did is not None or credential is not None:
            citizen = CitizenSession(self.connection)
            self._piv, self._authenticated = None, False  # the citizen applet is selected now
            self._progress("authenticating the citizen applet")
            self._key_authenticate(citizen.authenticate)
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
        self._key_authenticate(citizen.authenticate)
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
    card_keys: CardKeySource | None = None,
    authorization_root: P256PublicKey | None = None,
    now: Callable[[], float] = time.time,
) -> PersonalizationResult:
    """Run :data:`CARD_STEPS` on one connected card (``cardtool personalize``).

    ``authorization_root``: the city's terminal-authorization key; adds Step BINDING (the card then
    requires terminal authentication, and the credential must bind :attr:`PersonalizationResult.binding_key`).

    ``generate_key=False`` keeps the existing 9A key and certificate (e.g. to write the credential the
    issuer made for that key in a second pass). ``management_key_algorithm``: the card's current 9B key
    (AES-128 once the per-card key is set, docs/card-profile.md). ``card_keys``: the card's own key (the
    city HSM through the server, or a test card's key) — set first (step CARD_KEY) when the card still has
    ``management_key``, and used for every step after.
    """
    initial = mgmt.HostKey(management_key, Algorithm(management_key_algorithm))
    serial = card_identity(connection, initial, pin=pin, card_keys=card_keys).serial
    journal = Journal()
    steps = CardPersonalizer(
        connection,
        journal,
        management_key=management_key,
        management_key_algorithm=management_key_algorithm,
        card_keys=card_keys,
        serial=bytes.fromhex(serial) if card_keys is not None else None,
        progress=progress,
    )
    if generate_key and pin is None:
        raise ValueError("generating the key needs the PIN (the card signs its certificate)")
    cert: x509.Certificate | None = None
    card_steps = CARD_STEPS
    if authorization_root is not None:
        card_steps = (Step.KEY, Step.CERTIFICATE, Step.BINDING, Step.WRITE, Step.PIN)
        if not generate_key:  # a second pass keeps the binding key the credential was made for
            journal.binding_key = card_identity(
                connection, initial, pin=pin, card_keys=card_keys, serial=bytes.fromhex(serial)
            ).binding_key
    order = (Step.CARD_KEY, *card_steps) if card_keys is not None else card_steps
    while (step := journal.next_step(order)) is not Step.DONE:
        if step is Step.CARD_KEY:
            steps.set_card_key()
        elif step is Step.KEY:
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
    identity = card_identity(
        connection, initial, pin=new_pin or pin, card_keys=card_keys, serial=bytes.fromhex(serial)
    )
    return PersonalizationResult(
        journal.key, cert, serial, identity.did, identity.vct, identity.binding_key or journal.binding_key
    )


def card_identity(
    connection: SmartCardConnection,
    key: mgmt.Responder | bytes,
    algorithm: Algorithm = Algorithm.TDEA_3KEY,
    *,
    pin: str | None = None,
    card_keys: CardKeySource | None = None,
    serial: bytes | None = None,
) -> CardIdentity:
    """Serial, DID, vct: from GET INFO on a legacy card, else GET IDENTITY behind the management key
    ``key`` — or, on a card that has its own key already, behind that key when ``serial`` is known, else
    behind ``pin``."""
    citizen = CitizenSession(connection)
    info = citizen.info()
    if info.identity_in_info is not None:
        return info.identity_in_info
    try:
        citizen.authenticate(key, algorithm)
    except mgmt.ManagementKeyAlgorithmError:
        if card_keys is not None and serial is not None:
            citizen.authenticate(card_keys.responder(serial))
        elif pin is not None:
            citizen.verify_pin(pin)
        else:
            raise
    return citizen.identity()
