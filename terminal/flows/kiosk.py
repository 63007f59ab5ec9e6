"""The kiosk verification flow: a service asks for claims → the card (or FIDO key) presents → verdict.

:class:`KioskTerminal` is what the kiosk screens call: it tells what was tapped
(:meth:`KioskTerminal.start_session`), runs one verification per service chosen
(:meth:`KioskTerminal.present`) and wipes everything at the end of the session.

With a :class:`terminal.flows.authorization.TerminalAuthorization` the kiosk first authenticates itself to
the card (its city-issued terminal certificate and a signature over the card's challenge; docs/card-profile.md
§Terminal authentication): the card then presents only the claims the certificate allows, with ``aud`` = the
terminal id — which must be the verifier's audience.

A :class:`KioskVerification` lives for one tap. It issues a single-use nonce bound to the service, has the
card sign a presentation for this kiosk's audience (PIN verified right before: the applet is PIN-always),
verifies it and keeps the disclosed claims in memory until :meth:`KioskVerification.end` — called on card
removal, on "done", or on idle timeout — wipes them.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from fido2.ctap2.base import AssertionResponse
from fido2.ctap2.pin import ClientPin
from fido2.webauthn import CollectedClientData

from cityid.citizen import CredentialRecord
from cityid.credential import (
    AGE_OVER_65,
    BUSAN_RESIDENT,
    DISTRICT,
    FAMILY_NAME,
    GIVEN_NAME,
    fido_presentation,
)
from cityid.errors import CardRemovedError, CityIdError, PinError
from cityid.terminal_cert import TerminalCertificate
from terminal.fido.errors import FidoError
from terminal.fido.session import FidoSession
from terminal.flows.authorization import TerminalAuthorization
from terminal.flows.tokens import TokenKind, Tokens, TokenStatus
from terminal.sessions.citizen import CitizenSession
from terminal.verifier import Verdict, Verifier
from terminal.verifier.verifier import DEFAULT_RP_ID

logger = logging.getLogger(__name__)

#: ``presenter(claims, nonce, audience, iat) -> presentation`` — the card's PRESENT or the FIDO flow.
Presenter = Callable[[tuple[str, ...], str, str, int], str]
T = TypeVar("T")


class CitizenCard(Protocol):
    """What a presentation needs from a citizen-applet session (:class:`CitizenSession`)."""

    def verify_pin(self, pin: str | bytes) -> None: ...

    def present(self, claims: tuple[str, ...], nonce: str, audience: str, iat: int) -> str: ...

    def authenticate_terminal(
        self, certificate: TerminalCertificate, sign: Callable[[bytes], bytes], when: int
    ) -> None: ...


class UnknownServiceError(CityIdError, KeyError):
    """A service id this kiosk does not offer."""


@dataclass(frozen=True, slots=True)
class Service:
    """A kiosk service: the claims it needs and why (catalogue keys ``service.<id>.title``/``.purpose``)."""

    id: str
    claims: tuple[str, ...]

    @property
    def title_key(self) -> str:
        return f"service.{self.id}.title"

    @property
    def purpose_key(self) -> str:
        return f"service.{self.id}.purpose"


SERVICES: dict[str, Service] = {
    s.id: s
    for s in (
        # Senior benefits: lives in Busan and is 65 or older — nothing else (no name, no birthdate).
        Service("benefit-check", (BUSAN_RESIDENT, AGE_OVER_65)),
        # Residence confirmation: who and in which district.
        Service("residence", (FAMILY_NAME, GIVEN_NAME, DISTRICT, BUSAN_RESIDENT)),
    )
}


def service(service_id: str) -> Service:
    """The declared service ``service_id``; :class:`UnknownServiceError` otherwise."""
    try:
        return SERVICES[service_id]
    except KeyError:
        raise UnknownServiceError(f"unknown service {service_id!r}") from None


class CardPresenter:
    """A :data:`Presenter` over a citizen-applet session: [terminal authentication,] VERIFY PIN, PRESENT."""

    def __init__(
        self, session: CitizenCard, pin: str | bytes, authorization: TerminalAuthorization | None = None
    ) -> None:
        self._session = session
        self._pin: str | bytes | None = pin
        self._authorization = authorization

    def __call__(self, claims: tuple[str, ...], nonce: str, audience: str, iat: int) -> str:
        pin, self._pin = self._pin, None  # used once, then forgotten
        if pin is None:
            raise CityIdError("the PIN was already used for a presentation")
        if self._authorization is not None:
            if audience != self._authorization.terminal_id:
                raise CityIdError("the verifier's audience must be this terminal's id")
            self._authorization.authenticate(self._session)
        self._session.verify_pin(pin)
        return self._session.present(claims, nonce, audience, iat)


class FidoPresenter:
    """A :data:`Presenter` over a FIDO2 key holding the credential in its largeBlob (docs: §FIDO).

    1. a silent getAssertion (``up: false``, PIN token) finds the city credential and its ``largeBlobKey``;
    2. the credential record is read from the large-blob array and decrypted with that key;
    3. a second getAssertion (user presence + PIN token) signs the challenge committing to the presentation.
    """

    def __init__(self, session: FidoSession, pin: str, rp_id: str, origin: str | None = None) -> None:
        self._session = session
        self._pin: str | None = pin
        self.rp_id = rp_id
        self.origin = origin or f"https://{rp_id}"

    def __call__(self, claims: tuple[str, ...], nonce: str, audience: str, iat: int) -> str:
        pin, self._pin = self._pin, None
        if pin is None:
            raise CityIdError("the PIN was already used for a presentation")
        session = self._session
        token = session.token(pin, ClientPin.PERMISSION.GET_ASSERTION, self.rp_id)
        del pin

        def assertion(cdh: bytes, up: bool, allow: list[bytes], lbk: bool) -> AssertionResponse:
            return session.get_assertion(
                self.rp_id, cdh, allow=allow, pin_token=token, large_blob_key=lbk, user_presence=up
            )

        probe = assertion(secrets.token_bytes(32), False, [], True)
        if not probe.large_blob_key:
            raise FidoError("the key's city credential has no large blob")
        blob = session.read_blob(probe.large_blob_key)
        if blob is None:
            raise FidoError("no citizen credential is stored on this key")
        record = CredentialRecord.decode(blob)
        allow = [probe.credential["id"]]

        def get_assertion(challenge: bytes) -> tuple[bytes, bytes, bytes]:
            client_data = CollectedClientData.create(CollectedClientData.TYPE.GET, challenge, self.origin)
            resp = assertion(client_data.hash, True, allow, False)
            return bytes(resp.auth_data), bytes(client_data), resp.signature

        return fido_presentation(record, claims, audience, nonce, iat, get_assertion)


class KioskVerification:
    """One tap at the kiosk for ``service``; call :meth:`run`, show :attr:`verdict`, then :meth:`end`."""

    def __init__(self, verifier: Verifier, service_: Service, clock: Callable[[], float] = time.time) -> None:
        self.verifier = verifier
        self.service = service_
        self._clock = clock
        self._nonce: str | None = None
        self.verdict: Verdict | None = None
        self.timings: dict[str, float] = {}

    def run(self, presenter: Presenter) -> Verdict:
        """Nonce → presentation → verdict. Card errors (wrong PIN, card removed …) propagate unchanged."""
        if self.verdict is not None:
            self.end()
        t0 = time.perf_counter()
        self._nonce = self.verifier.nonce_store.issue(self.service.id)
        try:
            presentation = presenter(
                self.service.claims, self._nonce, self.verifier.audience, int(self._clock())
            )
        except BaseException:
            self.end()
            raise
        t1 = time.perf_counter()
        verdict = self.verifier.verify(presentation, self.service.claims, self.service.id)
        t2 = time.perf_counter()
        # consumed by an accepted presentation; after a rejection it was still exposed: never reuse it
        self.verifier.nonce_store.discard(self._nonce)
        self._nonce = None
        self.timings = {"present_s": t1 - t0, "verify_s": t2 - t1}
        self.verdict = verdict
        logger.info(
            "service %s: %s%s", self.service.id, "ok" if verdict.ok else "rejected",
            f" ({verdict.failed.value})" if verdict.failed else "",
        )  # fmt: skip
        return verdict

    def run_card(
        self, session: CitizenCard, pin: str | bytes, authorization: TerminalAuthorization | None = None
    ) -> Verdict:
        """:meth:`run` with a citizen-applet session (``terminal.sessions.citizen.CitizenSession``),
        terminal authentication first when ``authorization`` is given."""
        return self.run(CardPresenter(session, pin, authorization))

    @property
    def claims(self) -> dict[str, object]:
        """The disclosed claims of the current verdict (empty before, after a rejection and after end)."""
        return self.verdict.claims if self.verdict is not None else {}

    def end(self) -> None:
        """Wipe the session: the verdict's claims and any outstanding nonce (card removed, done, timeout)."""
        if self.verdict is not None:
            self.verdict.wipe()
        self.verdict = None
        if self._nonce is not None:
            self.verifier.nonce_store.discard(self._nonce)
            self._nonce = None


class KioskTerminal:
    """The kiosk's citizen operations: what was tapped, one verification per service, wipe at the end.

    ``tokens`` reaches the card or key behind a reader name (:class:`terminal.flows.tokens.Tokens`). Each
    operation opens its own connection (PC/SC handles are not shared between threads) and closes it with a
    card reset, so a verified PIN never outlives the call. FIDO keys present through their own PIN
    (:class:`FidoPresenter`); their PIN states are the shared ones of :mod:`cityid.errors`.
    """

    def __init__(
        self,
        verifier: Verifier,
        services: Sequence[Service],
        tokens: Tokens,
        clock: Callable[[], float] = time.time,
        rp_id: str = DEFAULT_RP_ID,
        authorization: TerminalAuthorization | None = None,
    ) -> None:
        if authorization is not None and authorization.terminal_id != verifier.audience:
            raise ValueError("the verifier's audience must be the terminal id of the kiosk's certificate")
        self.authorization = authorization  # terminal authentication to cards (None: legacy cards only)
        self.verifier = verifier
        self.services = tuple(services)
        self.tokens = tokens
        self._clock = clock
        self.rp_id = rp_id  # the city's WebAuthn relying party (the key's credential is scoped to it)
        self._lock = threading.Lock()
        self._reader: str | None = None
        self._kind = TokenKind.CARD
        self._verification: KioskVerification | None = None
        self.last_timings: dict[str, float] = {}

    def service(self, service_id: str) -> Service:
        """One of this kiosk's services (else a declared one; :class:`UnknownServiceError` otherwise)."""
        return next((s for s in self.services if s.id == service_id), None) or service(service_id)

    def start_session(self, reader: str) -> TokenStatus:
        """Open a session with the token in ``reader`` (raises a ``CardError`` subclass)."""
        status = self.tokens.probe(reader)
        with self._lock:
            self._reader, self._kind = reader, status.kind
        return status

    def present(self, service_id: str, pin: str, show: Callable[[Verdict], T]) -> T:
        """Verify the PIN on the token, have it present for the service, verify; ``show(verdict)`` makes
        what the screen keeps, then the verdict's claims and the nonce are wiped.

        Raises the PIN states of :mod:`cityid.errors` (``WrongPinError`` …), ``CardRemovedError`` or another
        ``CityIdError``.
        """
        with self._lock:
            reader, kind = self._reader, self._kind
        if reader is None:
            raise CardRemovedError("the session has ended")
        verification = KioskVerification(self.verifier, self.service(service_id), self._clock)
        with self._lock:
            self._verification = verification
        t0 = time.perf_counter()
        try:
            if kind is TokenKind.FIDO or self.tokens.is_hid(reader):
                with self.tokens.fido(reader) as session:
                    verdict = self._run_fido(verification, session, pin)
            else:
                with self.tokens.connect(reader) as conn:
                    verdict = verification.run_card(CitizenSession(conn), pin, self.authorization)
            del pin
            shown = show(verdict)
        finally:
            verification.end()  # what is shown is kept by the caller; the verdict's claims are wiped
            with self._lock:
                self._verification = None
        self.last_timings = dict(verification.timings, total_s=time.perf_counter() - t0)
        return shown

    def _run_fido(self, verification: KioskVerification, session: FidoSession, pin: str) -> Verdict:
        """The key's own PIN → PIN token → assertion-bound presentation."""
        try:
            return verification.run(FidoPresenter(session, pin, self.rp_id))
        except PinError:
            raise
        except FidoError as exc:
            raise CityIdError(f"security key: {exc}") from None

    def end(self) -> None:
        """End the session: wipe an outstanding verification (claims, nonce)."""
        with self._lock:
            verification, self._verification, self._reader = self._verification, None, None
        if verification is not None:
            verification.end()
