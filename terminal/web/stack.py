"""The real backends of the web app: adapters from the screens' protocols (:mod:`terminal.web.backend`) to
the flows (:mod:`terminal.flows`). No card, key or reader is touched here.

* :class:`CardKioskBackend` — :class:`terminal.flows.kiosk.KioskTerminal` (what was tapped, one
  verification per service) with its verdicts turned into what the screen shows; events from :meth:`feed`.
* :class:`PcscKioskBackend` — the same, fed by :class:`terminal.flows.tokens.TokenWatcher` (PC/SC readers
  and, when given a HID lister, USB-HID keys).
* :class:`CardCounterBackend` — the clerk's operations: enrollment
  (:class:`terminal.flows.counter.CounterEnrollment`, resumable), FIDO key registration
  (:class:`terminal.flows.fido_registration.FidoKeyRegistration`), PIN unblock
  (:func:`terminal.flows.pin.unblock_pin`), lost-card report and status
  (:class:`terminal.flows.lost_card.LostCardReport`).

Tokens are reached through a ``connect(reader)`` callable returning a context manager (injected by the
composition: ``kiosk serve`` uses PC/SC, the demo its in-process slots).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

from cityid.apdu import SmartCardConnection
from cityid.errors import CardRemovedError, CityIdError, NoCardError
from terminal.flows.authorization import TerminalAuthorization
from terminal.flows.counter import CardMismatchError, CitizenRequest, CounterEnrollment, EnrollmentInterrupted
from terminal.flows.counter_card import (
    abandon_unfinished,
    enrollment_started_here,
    inspect_card,
    reset_for_replacement,
)
from terminal.flows.counter_journal import JournalStore
from terminal.flows.fido_registration import FidoKeyRegistration
from terminal.flows.kiosk import KioskTerminal, Service
from terminal.flows.lost_card import LostCardReport
from terminal.flows.pin import unblock_pin
from terminal.flows.tokens import Connect, Tokens, TokenWatcher, open_fido, pcsc_connect, pcsc_readers
from terminal.server_client import ServerClient, ServerError
from terminal.verifier import Verdict, Verifier
from terminal.verifier.verifier import DEFAULT_RP_ID
from terminal.web.backend import (
    BackendEvent,
    BackendHealth,
    CardHolder,
    CredentialState,
    Enrollment,
    EnrollmentResult,
    FidoRegistration,
    Replacement,
    ServiceInfo,
    SessionInfo,
    TokenMissingError,
    VerdictView,
)
from terminal.web.verdicts import view_for

logger = logging.getLogger(__name__)

#: The confirmation's card reference for a private-profile card the counter cannot name before its PUK.
PRIVATE_CARD = "private"

__all__ = ["CardCounterBackend", "CardKioskBackend", "PcscKioskBackend"]


class CardKioskBackend:
    """Kiosk backend over the tokens reached through ``connect``; events pushed with :meth:`feed`."""

    def __init__(
        self,
        verifier: Verifier,
        services: Sequence[Service],
        connect: Connect,
        clock: Callable[[], float] = time.time,
        rp_id: str = DEFAULT_RP_ID,
        authorization: TerminalAuthorization | None = None,
    ) -> None:
        self.tokens = Tokens(connect)
        self.flow = KioskTerminal(verifier, services, self.tokens, clock, rp_id, authorization)
        self._on_event: Callable[[BackendEvent], None] | None = None

    @property
    def verifier(self) -> Verifier:
        return self.flow.verifier

    @property
    def last_timings(self) -> dict[str, float]:
        return self.flow.last_timings

    def services(self) -> Sequence[ServiceInfo]:
        return [ServiceInfo(s.id, s.claims) for s in self.flow.services]

    def start(self, on_event: Callable[[BackendEvent], None]) -> None:
        self._on_event = on_event

    def stop(self) -> None:
        self._on_event = None
        self.end()

    def feed(self, event: BackendEvent) -> None:
        """Deliver a token event to the web layer (from any thread)."""
        callback = self._on_event
        if callback is not None:
            callback(event)

    def on_fido_key_event(self, event: Any) -> None:
        """Feed a :mod:`terminal.fido.discovery` event: USB-HID keys become tokens like cards in readers."""
        token_event = self.tokens.on_fido_key_event(event)
        if token_event is not None:
            self.feed(token_event)

    def start_session(self, reader: str) -> SessionInfo:
        status = self.flow.start_session(reader)
        return SessionInfo(status.reader, status.kind, status.pin_tries, status.blocked)

    def present(self, service_id: str, pin: str) -> VerdictView:
        def show(verdict: Verdict) -> VerdictView:
            return view_for(service_id, verdict.ok, None if verdict.ok else verdict.reason, verdict.claims)

        return self.flow.present(service_id, pin, show)

    def end(self) -> None:
        self.flow.end()

    def health(self) -> BackendHealth:
        """In-process cards: no pcscd to watch; the chain view's health (terminal.web.health)."""
        from terminal.web.health import chain_health

        return BackendHealth(None, (), chain_health(self.verifier.chain_view), self._authorized())

    def _authorized(self) -> bool | None:
        """A valid terminal certificate now (None: the kiosk does not authenticate to cards)."""
        auth = self.flow.authorization
        if auth is None:
            return None
        try:
            auth.current()
        except CityIdError:
            return False
        return True


class PcscKioskBackend(CardKioskBackend):
    """:class:`CardKioskBackend` on PC/SC readers, watched by a :class:`TokenWatcher`.

    ``reader_filter`` limits the kiosk to readers whose name contains it (empty: every reader).
    """

    def __init__(
        self,
        verifier: Verifier,
        services: Sequence[Service],
        reader_filter: str = "",
        connect: Connect = pcsc_connect,
        hid_lister: Callable[[], Any] | None = None,
        authorization: TerminalAuthorization | None = None,
    ) -> None:
        super().__init__(verifier, services, connect, authorization=authorization)
        self.reader_filter = reader_filter
        self.hid_lister = hid_lister  # USB-HID security keys (terminal.fido.discovery); None: PC/SC only
        self._watcher: TokenWatcher | None = None

    def start(self, on_event: Callable[[BackendEvent], None]) -> None:
        super().start(on_event)
        self._watcher = TokenWatcher(self.tokens, self.feed, self.reader_filter, self.hid_lister).start()

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        super().stop()

    def health(self) -> BackendHealth:
        """pcscd up (the reader monitor's view), the matching readers, the chain view's health."""
        from terminal.web.health import chain_health

        pcscd, readers = self._watcher.pcsc_state() if self._watcher is not None else (None, ())
        return BackendHealth(pcscd, readers, chain_health(self.verifier.chain_view), self._authorized())


class CardCounterBackend:
    """Counter backend: enrollment (resumable across card pulls), FIDO keys, unblock, revoke, status."""

    def __init__(
        self,
        server: ServerClient,
        verifier: Verifier,
        connect: Connect = pcsc_connect,
        readers: Callable[[], Sequence[str]] = pcsc_readers,
        reader_filter: str = "",
        *,
        rp_id: str = DEFAULT_RP_ID,
        fido_roots: Sequence[bytes] = (),
        journal: JournalStore | None = None,
        authorization: TerminalAuthorization | None = None,
    ) -> None:
        self.server = server
        # Each card gets its own management key from the city HSM (through ``server``); progress is
        # journalled in ``journal`` (a file in ``kiosk serve``) so a restart resumes the same enrollment.
        # With a terminal authorization: cards get the city root and a binding key (Step BINDING) and the
        # self-check authenticates this counter to the card (docs/card-profile.md §Terminal authentication)
        self.enrollment = CounterEnrollment(server, verifier, journal=journal, authorization=authorization)
        self.fido = FidoKeyRegistration(
            server, verifier, rp_id=rp_id, trusted_roots=fido_roots, authorization=authorization
        )
        self.lost_cards = LostCardReport(server)
        self.tokens = Tokens(connect)
        self._readers = readers
        self.reader_filter = reader_filter
        self._lock = threading.Lock()  # one card operation at a time per counter

    def readers(self) -> Sequence[str]:
        return [r for r in self._readers() if self.reader_filter in r]

    @contextmanager
    def _card(self, reader: str) -> Iterator[SmartCardConnection]:
        """The card in ``reader``; :class:`TokenMissingError` (role "card") when there is none."""
        with ExitStack() as stack:
            try:
                conn = stack.enter_context(self.tokens.connect(reader))
            except NoCardError as exc:
                raise TokenMissingError("card", reader) from exc
            yield conn

    @contextmanager
    def _key(self, reader: str) -> Iterator[Any]:
        """The FIDO2 key in ``reader``; :class:`TokenMissingError` (role "key") when the reader is empty or
        holds something else than a security key."""
        if self.tokens.is_hid(reader):
            with self.tokens.fido(reader) as session:
                yield session
            return
        with ExitStack() as stack:
            try:
                conn = stack.enter_context(self.tokens.connect(reader))
            except NoCardError as exc:
                raise TokenMissingError("key", reader) from exc
            try:
                session = open_fido(conn)
            except NoCardError as exc:
                raise TokenMissingError("key", reader, wrong_kind=True) from exc
            yield session

    def card_holder(self, reader: str) -> CardHolder | None:
        with self._lock, self._card(reader) as conn:
            holding = inspect_card(conn, self.enrollment)
        if not holding.written or enrollment_started_here(self.enrollment, holding):
            return None
        return CardHolder(holding.serial or PRIVATE_CARD, holding.card_number, holding.did, holding.finished)

    def enroll(
        self, reader: str, enrollment: Enrollment, replace: Replacement | None = None
    ) -> EnrollmentResult:
        request = CitizenRequest(
            family_name=enrollment.family_name,
            given_name=enrollment.given_name,
            birthdate=enrollment.birthdate,
            district=enrollment.district,
            busan_resident=enrollment.resident,
            new_pin=enrollment.pin,
            new_puk=enrollment.puk,
            revocation_password=enrollment.revocation_password or None,
        )
        with self._lock:
            try:
                with self._card(reader) as conn:
                    expect: bytes | None = None
                    if replace is not None:
                        holding = inspect_card(conn, self.enrollment)
                        if (holding.serial or PRIVATE_CARD) != replace.serial:
                            raise CardMismatchError("another card is in the reader than the one confirmed")
                        # a retry after the reset (e.g. the server timed out later) must not reset again
                        if holding.written and not enrollment_started_here(self.enrollment, holding):
                            expect = reset_for_replacement(conn, replace.current_puk, self.enrollment)
                        elif holding.serial is not None:
                            expect = bytes.fromhex(holding.serial)
                    outcome = self.enrollment.run(conn, request, expect_serial=expect)
            except EnrollmentInterrupted as exc:
                # The journal keeps the progress: the same request with the card back resumes.
                logger.warning("enrollment interrupted at step %s", exc.step)
                if isinstance(exc.__cause__, ServerError):
                    raise exc.__cause__ from None
                raise CardRemovedError(f"card removed during {exc.step}") from exc
        return EnrollmentResult(
            outcome.credential_id, outcome.citizen_did, outcome.status_index, outcome.verdict.ok
        )

    def register_fido(
        self, card_reader: str, key_reader: str, card_pin: str, key_pin: str
    ) -> FidoRegistration:
        """Register the key in ``key_reader`` for the citizen whose card is in ``card_reader``."""
        with self._lock:
            reg = self.fido.run(
                lambda: self._card(card_reader), card_pin, lambda: self._key(key_reader), key_pin
            )
        return FidoRegistration(reg.did, reg.credential_id, reg.citizen_credential_id)

    def abandon(self, reader: str) -> Sequence[str]:
        with self._lock, self._card(reader) as conn:
            return abandon_unfinished(self.enrollment, conn)

    def unblock_pin(self, reader: str, puk: str, new_pin: str) -> None:
        with self._lock, self._card(reader) as conn:
            unblock_pin(conn, puk, new_pin)

    def revoke(self, credential_id: str, reason: str) -> CredentialState:
        return self.lost_cards.report(credential_id, reason)

    def report_lost(self, family_name: str, given_name: str, birthdate: str, password: str) -> None:
        self.lost_cards.report_by_password(family_name, given_name, birthdate, password)

    def status(self, credential_id: str) -> CredentialState:
        return self.lost_cards.status(credential_id)
