"""The counter enrollment flow (docs/server.md §Counter enrollment).

The clerk has checked the citizen in person. The steps are the personalization steps of
:mod:`terminal.flows.personalize` (the same code ``cardtool personalize`` runs), with the server and the
self-check in between::

    CARD_KEY     the card's own management key from the city HSM replaces the published default (SET
                 MANAGEMENT KEY); from here on every management-key authentication is answered by the HSM
                 through the server (docs/card-profile.md, "Per-card management key")
    KEY          generate the holder key on the card (PIV 9A, management key)
    CERTIFICATE  the card signs its own 9A certificate (initial PIN) so OpenSC/PKCS#11 lists the key
    ENROLL       the server registers DID + card key on chain, allocates a status index, signs the SD-JWT VC
    WRITE        write the DID and the credential to the citizen applet (PUT CREDENTIAL is atomic on the card)
    PIN          replace the initial PUK and PIN with the citizen's
    CHECK        ACTIVATE (last card write), then self-check: PIN → PRESENT of every claim → verification

Resumable: progress is journalled per card serial (never the claims or PINs) in a
:class:`terminal.flows.counter_journal.JournalStore` — a SQLite file beside the clerk sessions in
``kiosk serve``, so a counter restart resumes the same enrollment on the same DID. A card pulled at
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
from cityid.piv import DEFAULT_MANAGEMENT_KEY
from terminal.flows.authorization import TerminalAuthorization
from terminal.flows.counter_journal import JournalStore
from terminal.flows.personalize import CardKeySource, CardPersonalizer, Journal, PinStateError, Step
from terminal.server_client import EnrollmentResult, ServerCardKeys, ServerClient, ServerError
from terminal.sessions import mgmt
from terminal.sessions.citizen import CitizenSession
from terminal.verifier import CheckName, Verdict, Verifier

logger = logging.getLogger(__name__)

INITIAL_PIN = "123456"
INITIAL_PUK = "12345678"
SELF_CHECK_SERVICE = "counter-self-check"


#: The counter's steps (names from :class:`terminal.flows.personalize.Step`).
COUNTER_STEPS = (Step.CARD_KEY, Step.KEY, Step.CERTIFICATE, Step.ENROLL, Step.WRITE, Step.PIN, Step.CHECK)
#: … with an authorization root: the card gets the root and its presentation-binding key before ENROLL.
COUNTER_STEPS_BINDING = (
    Step.CARD_KEY,
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


class CardNotIdentifiedError(CityIdError):
    """The card keeps its serial private and has its own management key, and no unfinished enrollment of
    this counter matches it: it was personalized before (the citizen's PIN reveals it)."""


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
    """Progress for one card (identifiers and public material only): the personalization journal, the
    enrollment's idempotency key and the server's answer (the credential record only in memory)."""

    result: EnrollmentResult | None = None
    enrollment_key: str | None = None

    def to_record(self) -> dict[str, Any]:
        """What the journal file keeps: no claims (the credential record), no PINs, no key material."""
        r = self.result
        return {
            "card_key_set": self.card_key_set,
            "key": self.key.point.hex() if self.key is not None else None,
            "binding_key": self.binding_key.point.hex() if self.binding_key is not None else None,
            "certified": self.certified,
            "did": self.did,
            "written": self.written,
            "pin_set": self.pin_set,
            "restarts": self.restarts,
            "enrollment_key": self.enrollment_key,
            "credential_id": r.credential_id if r is not None else None,
            "citizen_did": r.citizen_did if r is not None else None,
        }

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> _Journal:
        """Back from the file. The credential record is not there: ENROLL runs again under the same
        idempotency key (the server answers the same credential and DID) and WRITE writes its answer."""
        try:
            key = P256PublicKey.from_point(bytes.fromhex(data["key"])) if data.get("key") else None
            bound = data.get("binding_key") if key is not None else None
            binding_key = P256PublicKey.from_point(bytes.fromhex(bound)) if bound else None
            return cls(
                card_key_set=bool(data.get("card_key_set")),
                key=key,
                binding_key=binding_key,
                certified=bool(data.get("certified")) and key is not None,
                pin_set=bool(data.get("pin_set")),
                restarts=int(data.get("restarts") or 0),
                enrollment_key=data.get("enrollment_key") if key is not None else None,
            )
        except (KeyError, TypeError, ValueError, DecodeError):
            logger.error("unusable journal entry for a card; starting its enrollment over")
            return cls()


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
        journal: JournalStore | None = None,
        card_keys: CardKeySource | None = None,
        authorization_root: P256PublicKey | None = None,
        authorization: TerminalAuthorization | None = None,
    ) -> None:
        """``management_key``: the key fresh cards have (the published default). ``card_keys``: each card's
        own key (default: the city HSM through ``server``). ``journal``: where progress survives a restart
        (default: in memory only)."""
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
        self._card_keys: CardKeySource = card_keys if card_keys is not None else ServerCardKeys(server)
        self._initial_pin = initial_pin
        self._initial_puk = initial_puk
        self._clock = clock
        self._store = journal if journal is not None else JournalStore()
        self._journal: dict[bytes, _Journal] = {}
        #: Test hook: called with each step name before it runs (raise CardRemovedError to simulate a pull).
        self.before_step: Callable[[Step], None] = lambda step: None

    def idempotency_key(self, serial: bytes, card_point: bytes) -> str:
        h = hashlib.sha256(b"|".join([b"counter-enroll", serial, self.clerk_session.encode(), card_point]))
        return "enr-" + h.hexdigest()[:40]

    def progress(self, serial: bytes) -> Step:
        """The next step for the card with ``serial``."""
        j = self._load(serial)
        return self._steps[0] if j is None else j.next_step(self._steps)

    def started(self, serial: bytes) -> bool:
        """This counter's journal holds progress for the card with ``serial`` (enrolling it resumes)."""
        return self._load(serial) is not None

    def _load(self, serial: bytes) -> _Journal | None:
        j = self._journal.get(serial)
        if j is None:
            data = self._store.get(serial)
            if data is not None:
                j = self._journal[serial] = _Journal.from_record(data)
                logger.info("resuming an enrollment from the journal")
        return j

    def _save(self, serial: bytes, j: _Journal) -> None:
        self._journal[serial] = j
        self._store.put(serial, j.to_record())

    def _forget(self, serial: bytes) -> _Journal | None:
        j = self._load(serial)
        self._journal.pop(serial, None)
        self._store.delete(serial)
        return j

    def _personalizer(self, connection: SmartCardConnection, j: _Journal, serial: bytes) -> CardPersonalizer:
        return CardPersonalizer(
            connection, j, management_key=self._mgmt, card_keys=self._card_keys, serial=serial
        )

    def card_serial(self, connection: SmartCardConnection, expect_serial: bytes | None = None) -> bytes:
        """The serial of the card in ``connection`` without the citizen's PIN: from GET INFO on a card that
        shows it; else GET IDENTITY behind the default key (a fresh card) or behind the own key of a card
        this counter has an unfinished enrollment for (``expect_serial`` first). A 9B attempt with the
        wrong card's key costs the card nothing (the management key has no retry counter)."""
        citizen = CitizenSession(connection)
        info = citizen.info()
        if info.reveals_identity:
            return bytes.fromhex(info.serial)
        try:
            citizen.authenticate(self._mgmt)
            return bytes.fromhex(citizen.identity().serial)
        except mgmt.ManagementKeyAlgorithmError:
            pass
        candidates = ([expect_serial] if expect_serial else []) + self._store.serials()
        for candidate in dict.fromkeys(candidates):
            try:
                citizen.authenticate(self._card_keys.responder(candidate))
            except mgmt.ManagementKeyError:
                continue
            serial = bytes.fromhex(citizen.identity().serial)
            if serial == candidate:
                return serial
        raise CardNotIdentifiedError(
            "this card was personalized before and keeps its serial private: use the citizen's PIN"
        )

    # --- the flow ----------------------------------------------------------------------------------

    def run(
        self, connection: SmartCardConnection, request: CitizenRequest, expect_serial: bytes | None = None
    ) -> EnrollmentOutcome:
        """Enroll the card in ``connection`` (or finish its interrupted enrollment)."""
        timings: dict[str, float] = {}
        step = self._steps[0]
        serial: bytes | None = None
        if self.authorization_root is None and self.authorization is not None:
            # No card leaves this counter without the city's authorization root: refuse before the first
            # card write (TerminalCertificateMissingError, e.g. the server has no [authorization_key]).
            _ = self.authorization.root
        try:
            serial = self.card_serial(connection, expect_serial)
            serial_text = serial.hex()
            if expect_serial is not None and serial != expect_serial:
                raise CardMismatchError("another card was inserted; put back the card being enrolled")
            j = self._load(serial) or _Journal()
            self._journal[serial] = j
            card = self._personalizer(connection, j, serial)
            while True:
                step = j.next_step(self._steps)
                self.before_step(step)
                t0 = time.perf_counter()
                if step is Step.CARD_KEY:
                    card.set_card_key()
                elif step is Step.KEY:
                    card.generate_key()
                elif step is Step.CERTIFICATE:
                    try:
                        self._certify(card, request, serial_text)
                    except DecodeError:
                        if j.restarts:
                            raise
                        # the card's key is not the one generated (a pull during GENERATE): start over
                        logger.warning("certificate: card key differs from the generated key; new key")
                        j = _Journal(restarts=1, pin_set=j.pin_set, card_key_set=j.card_key_set)
                        self._save(serial, j)
                        card = self._personalizer(connection, j, serial)
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
                    if j.enrollment_key is None:  # journalled before the call: a restart reuses it
                        j.enrollment_key = self.idempotency_key(serial, holder.point)
                        self._save(serial, j)
                    key = j.enrollment_key
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
                    self._await_chain(j.result)
                    verdict = self._self_check(connection, request, serial)
                    timings[step.value] = time.perf_counter() - t0
                    if verdict.ok:
                        self._forget(serial)
                        logger.info("enrolled card, credential %s", j.result.credential_id)
                        r = j.result
                        return EnrollmentOutcome(
                            r.credential_id, r.citizen_did, r.status_index, serial.hex(), verdict, timings
                        )
                    if verdict.failed in (CheckName.KEY_BINDING, CheckName.HOLDER_KEY) and j.restarts == 0:
                        # The card holds another key than the one enrolled: start over with a fresh key.
                        logger.warning("self-check: card key differs from the enrolled key; re-enrolling")
                        j = _Journal(restarts=1, pin_set=True, card_key_set=True)
                        self._save(serial, j)
                        card = self._personalizer(connection, j, serial)
                        continue
                    raise SelfCheckError(verdict)
                self._save(serial, j)
                timings[step.value] = time.perf_counter() - t0
        except CardRemovedError as exc:
            if serial is not None and serial in self._journal:
                self._save(serial, self._journal[serial])  # what the personalizer recorded before the pull
            raise EnrollmentInterrupted(step, exc) from exc
        except ServerError as exc:
            if exc.retryable:
                raise EnrollmentInterrupted(step, exc) from exc
            raise

    #: How long the self-check waits for the card key to be confirmed on chain (docs/server.md §Chain outbox).
    CHAIN_WAIT_S = 30.0

    def _await_chain(self, result: Any) -> None:
        """The server answered at once ("issued — on chain in ~N s"); the card was written meanwhile. The
        self-check reads the chain, so wait here until the key is confirmed (or the wait runs out)."""
        chain = getattr(result, "chain", None) or {}
        ids = chain.get("outbox_ids") or []
        if not ids or chain.get("state") == "confirmed":
            return
        logger.info("credential %s issued; waiting for the chain (~%ss)", result.credential_id,
                    chain.get("eta_seconds"))  # fmt: skip
        deadline = time.monotonic() + self.CHAIN_WAIT_S
        state = chain.get("state")
        while time.monotonic() < deadline:
            state = self.server.outbox(ids, wait=min(10.0, max(0.1, deadline - time.monotonic())))["state"]
            if state in ("confirmed", "failed"):
                break
        if state != "confirmed":
            # Not a card problem: the self-check would fail on the missing key and re-key the card. The clerk
            # resumes later (same journal, same credential).
            raise ServerError(503, "chain_pending", f"card key not on chain yet ({state}); resume shortly")

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
        return self.abandon(self.card_serial(connection), connection)

    def abandon(self, serial: bytes, connection: SmartCardConnection | None = None) -> list[str]:
        """Give up an unfinished enrollment: revoke its credential; erase the card if present (with the
        card's own key through the server, or the default key of a card not keyed yet)."""
        j = self._load(serial)
        revoked: list[str] = []
        credential_id = self._credential_id(serial, j)
        if credential_id is not None:
            revoked = self.server.revoke([credential_id], "revoked")
        self._forget(serial)
        if connection is not None:
            card = self._personalizer(connection, j or _Journal(card_key_set=True), serial)
            card.citizen_admin().erase()
        return revoked

    def erase_card(self, connection: SmartCardConnection, serial: bytes) -> None:
        """ERASE the citizen applet of the card with ``serial`` (its own key through the server, or the
        default key of a card not keyed yet) — the clerk confirmed replacing the citizen on it."""
        self._personalizer(connection, _Journal(card_key_set=True), serial).citizen_admin().erase()

    def _credential_id(self, serial: bytes, j: _Journal | None) -> str | None:
        """The credential of an unfinished enrollment (after a restart, from the journal file)."""
        if j is not None and j.result is not None:
            return j.result.credential_id
        data = self._store.get(serial)
        return str(data["credential_id"]) if data and data.get("credential_id") else None
