"""The counter enrollment flow (docs/server.md §Counter enrollment).

The clerk has checked the citizen in person. The steps are the personalization steps of
:mod:`terminal.flows.personalize` (the same code ``cardtool personalize`` runs), with the server and the
self-check in between::

    KEY          generate the holder key on the card (PIV 9A, management key)
    CERTIFICATE  the card signs its own 9A certificate (initial PIN) so OpenSC/PKCS#11 lists the key
    ENROLL       the server registers DID + card key on chain, allocates a status index, signs the SD-JWT VC
    WRITE        write the DID and the credential to the citizen applet (PUT CREDENTIAL is atomic on the card)
    PIN          replace the initial PUK and PIN with the citizen's
    CHECK        self-check: PIN → PRESENT of every claim → full verification against the chain

Resumable: progress is journalled per card serial in memory (never the claims or PINs). A card pulled at
any step raises :class:`EnrollmentInterrupted`; calling :meth:`CounterEnrollment.run` again with the card
back finishes the work — each step re-checks the card and the server is idempotent under the key derived
from the card serial, the clerk session and the card key. If the card's key is not the one enrolled (a pull
during key generation), the self-check notices and the flow starts over with a fresh key; the server then
supersedes (revokes) the earlier credential of that card. :meth:`CounterEnrollment.abandon` cleans up an
enrollment the citizen does not finish: server-side revocation, and erasing the card when it is present.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cityid.apdu import SmartCardConnection
from cityid.credential import CLAIM_NAMES
from cityid.errors import CardRemovedError, CityIdError, DecodeError, WrongPinError
from cityid.keys import P256PublicKey
from cityid.piv import DEFAULT_MANAGEMENT_KEY, Algorithm
from terminal.flows.authorization import TerminalAuthorization
from terminal.flows.personalize import CardPersonalizer, Journal, PinStateError, Step, card_identity
from terminal.server_client import EnrollmentResult, ServerClient, ServerError
from terminal.sessions.citizen import CitizenSession
from terminal.verifier import CheckName, Verdict, Verifier

logger = logging.getLogger(__name__)

INITIAL_PIN = "123456"
INITIAL_PUK = "12345678"
SELF_CHECK_SERVICE = "counter-self-check"


#: The counter's steps (names from :class:`terminal.flows.personalize.Step`).
COUNTER_STEPS = (Step.KEY, Step.CERTIFICATE, Step.ENROLL, Step.WRITE, Step.PIN, Step.CHECK)
#: … with an authorization root: the card gets the root and its presentation-binding key before ENROLL.
COUNTER_STEPS_BINDING = (
    Step.KEY,
    Step.CERTIFICATE,
    Step.BINDING,
    Step.ENROLL,
    Step.WRITE,
    Step.PIN,
    Step.CHECK,
)


class EnrollmentInterrupted(CityIdError):
    """The card was pulled (or the server was unreachable) during ``step``; run again to finish."""

    def __init__(self, step: Step, cause: Exception) -> None:
        self.step = step
        self.cause = cause
        super().__init__(
            f"enrollment interrupted at step '{step.value}': {cause}; put the card back and retry"
        )


class SelfCheckError(CityIdError):
    """The card's presentation did not verify after enrollment (``verdict`` says which check failed)."""

    def __init__(self, verdict: Verdict) -> None:
        self.verdict = verdict
        super().__init__(
            f"self-check failed: {verdict.failed.value if verdict.failed else '?'} ({verdict.detail})"
        )


class CardMismatchError(CityIdError):
    """A different card is in the reader than the one this enrollment started with."""


@dataclass(frozen=True, slots=True)
class CitizenRequest:
    """What the clerk entered after checking the citizen in person. In memory only; PINs never logged."""

    family_name: str
    given_name: str
    birthdate: str  # YYYY-MM-DD
    district: str
    busan_resident: bool
    new_pin: str = field(repr=False)
    new_puk: str = field(repr=False)
    card_number: str | None = None  # printed card number; default derived from the card serial
    citizen_did: str | None = None  # re-enrollment of a known citizen (new card)
    revocation_password: str | None = field(default=None, repr=False)  # docs/server.md §Lost-card report

    def claims(self, serial: bytes) -> dict[str, Any]:
        return {
            "family_name": self.family_name,
            "given_name": self.given_name,
            "birthdate": self.birthdate,
            "district": self.district,
            "busan_resident": self.busan_resident,
            "card_number": self.card_number or f"BSN-{serial.hex().upper()}",
        }


@dataclass
class _Journal(Journal):
    """Progress for one card (identifiers and public material only): the personalization journal and the
    server's answer."""

    result: EnrollmentResult | None = None


@dataclass(frozen=True, slots=True)
class EnrollmentOutcome:
    credential_id: str
    citizen_did: str
    status_index: int
    card_serial: str
    verdict: Verdict = field(repr=False)
    timings: Mapping[str, float] = field(default_factory=dict)


class CounterEnrollment:
    """One clerk session at a counter: enroll cards, resuming after interruptions."""

    def __init__(
        self,
        server: ServerClient,
        verifier: Verifier,
        *,
        clerk_session: str | None = None,
        management_key: bytes = DEFAULT_MANAGEMENT_KEY,
        initial_pin: str = INITIAL_PIN,
        initial_puk: str = INITIAL_PUK,
        clock: Callable[[], float] = time.time,
        authorization_root: P256PublicKey | None = None,
        authorization: TerminalAuthorization | None = None,
    ) -> None:
        self.server = server
        #: the city's terminal-authorization key written to every card (Step BINDING), and this counter's
        #: own terminal authorization for the self-check PRESENT (docs/card-profile.md §Terminal auth.)
        self.authorization_root = authorization_root
        self.authorization = authorization
        binding = authorization_root is not None or authorization is not None
        self._steps = COUNTER_STEPS_BINDING if binding else COUNTER_STEPS
        self.verifier = verifier
        self.clerk_session = clerk_session or secrets.token_hex(16)
        self._mgmt = management_key
        self._initial_pin = initial_pin
        self._initial_puk = initial_puk
        self._clock = clock
        self._journal: dict[bytes, _Journal] = {}
        #: Test hook: called with each step name before it runs (raise CardRemovedError to simulate a pull).
        self.before_step: Callable[[Step], None] = lambda step: None

    def idempotency_key(self, serial: bytes, card_point: bytes) -> str:
        h = hashlib.sha256(b"|".join([b"counter-enroll", serial, self.clerk_session.encode(), card_point]))
        return "enr-" + h.hexdigest()[:40]

    def progress(self, serial: bytes) -> Step:
        """The next step for the card with ``serial``."""
        j = self._journal.get(serial)
        return Step.KEY if j is None else j.next_step(self._steps)

    # --- the flow ----------------------------------------------------------------------------------

    def run(
        self, connection: SmartCardConnection, request: CitizenRequest, expect_serial: bytes | None = None
    ) -> EnrollmentOutcome:
        """Enroll the card in ``connection`` (or finish its interrupted enrollment)."""
        timings: dict[str, float] = {}
        step = Step.KEY
        try:
            # the private GET INFO has no serial: GET IDENTITY behind the management key (card-profile.md)
            serial_text = card_identity(connection, self._mgmt, Algorithm.TDEA_3KEY).serial
            serial = bytes.fromhex(serial_text)
            if expect_serial is not None and serial != expect_serial:
                raise CardMismatchError("another card was inserted; put back the card being enrolled")
            j = self._journal.setdefault(serial, _Journal())
            card = CardPersonalizer(connection, j, management_key=self._mgmt)
            while True:
                step = self.progress(serial)
                self.before_step(step)
                t0 = time.perf_counter()
                if step is Step.KEY:
                    card.generate_key()
                elif step is Step.CERTIFICATE:
                    try:
                        self._certify(card, request, serial_text)
                    except DecodeError:
                        if j.restarts:
                            raise
                        # the card's key is not the one generated (a pull during GENERATE): start over
                        logger.warning("certificate: card key differs from the generated key; new key")
                        self._journal[serial] = j = _Journal(restarts=1, pin_set=j.pin_set)
                        card = CardPersonalizer(connection, j, management_key=self._mgmt)
                        continue
                elif step is Step.BINDING:
                    root = self.authorization_root
                    if root is None:
                        assert self.authorization is not None
                        root = self.authorization.root  # learnt from the server's certificate answer
                    card.bind(root, int(self._clock()))
                elif step is Step.ENROLL:
                    holder = j.holder_key  # the binding key (or 9A on a legacy card): the credential's cnf
                    assert holder is not None
                    key = self.idempotency_key(serial, holder.point)
                    j.result = self.server.enroll(
                        key,
                        request.claims(serial),
                        holder.point,
                        serial,
                        request.citizen_did,
                        revocation_password=request.revocation_password or None,
                    )
                    j.credential = j.result.record
                elif step is Step.WRITE:
                    assert j.result is not None
                    card.write(j.result.citizen_did, j.result.record)
                elif step is Step.PIN:
                    card.set_pins(
                        self._initial_pin, request.new_pin, self._initial_puk, request.new_puk, resume=True
                    )
                elif step is Step.CHECK:
                    assert j.result is not None
                    card.activate()  # last card write, after the PINs (docs/card-profile.md §ACTIVATE)
                    verdict = self._self_check(connection, request, serial)
                    timings[step.value] = time.perf_counter() - t0
                    if verdict.ok:
                        self._journal.pop(serial, None)
                        logger.info("enrolled card, credential %s", j.result.credential_id)
                        r = j.result
                        return EnrollmentOutcome(
                            r.credential_id, r.citizen_did, r.status_index, serial.hex(), verdict, timings
                        )
                    if verdict.failed in (CheckName.KEY_BINDING, CheckName.HOLDER_KEY) and j.restarts == 0:
                        # The card holds another key than the one enrolled: start over with a fresh key.
                        logger.warning("self-check: card key differs from the enrolled key; re-enrolling")
                        self._journal[serial] = j = _Journal(restarts=1, pin_set=True)
                        card = CardPersonalizer(connection, j, management_key=self._mgmt)
                        continue
                    raise SelfCheckError(verdict)
                timings[step.value] = time.perf_counter() - t0
        except CardRemovedError as exc:
            raise EnrollmentInterrupted(step, exc) from exc
        except ServerError as exc:
            if exc.retryable:
                raise EnrollmentInterrupted(step, exc) from exc
            raise

    def _certify(self, card: CardPersonalizer, request: CitizenRequest, serial: str) -> None:
        """CERTIFICATE with the PIN the card has now: the initial one, or the citizen's after a restart."""
        pin = request.new_pin if card.journal.pin_set else self._initial_pin
        try:
            card.certify(pin, serial)
        except WrongPinError as exc:
            raise PinStateError("the card's PIN is not the initial one: reset it with the PUK") from exc

    def _self_check(self, connection: SmartCardConnection, request: CitizenRequest, serial: bytes) -> Verdict:
        citizen = CitizenSession(connection)
        nonce = self.verifier.nonce_store.issue(SELF_CHECK_SERVICE)
        if self.authorization is not None:
            self.authorization.authenticate(citizen)
        citizen.verify_pin(request.new_pin)
        presentation = citizen.present(CLAIM_NAMES, nonce, self.verifier.audience, int(self._clock()))
        verdict = self.verifier.verify(presentation, CLAIM_NAMES, SELF_CHECK_SERVICE)
        if verdict.ok:
            expected = request.claims(serial)
            wrong = [k for k, v in expected.items() if verdict.claims.get(k) != v]
            if wrong:
                verdict.wipe()
                raise SelfCheckError(Verdict(False, None, "verdict.reason.claims", f"claims differ: {wrong}"))
        verdict.wipe()  # the counter shows identifiers only
        return verdict

    # --- cleaning up -------------------------------------------------------------------------------

    def abandon_card(self, connection: SmartCardConnection) -> list[str]:
        """:meth:`abandon` for the card in ``connection`` (its serial read from the card)."""
        serial = card_identity(connection, self._mgmt, Algorithm.TDEA_3KEY).serial
        return self.abandon(bytes.fromhex(serial), connection)

    def abandon(self, serial: bytes, connection: SmartCardConnection | None = None) -> list[str]:
        """Give up an unfinished enrollment: revoke its credential; erase the card if present."""
        j = self._journal.pop(serial, None)
        revoked: list[str] = []
        if j is not None and j.result is not None:
            revoked = self.server.revoke([j.result.credential_id], "revoked")
        if connection is not None:
            citizen = CitizenSession(connection)
            citizen.authenticate(self._mgmt)
            citizen.erase()
        return revoked
