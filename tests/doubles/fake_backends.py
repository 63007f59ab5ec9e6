"""In-memory stand-ins for the kiosk and counter backends (layout work and unit tests of the web layer).

Not used on any integration path: the real stack is :mod:`terminal.web.stack`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cityid.errors import CardRemovedError, InvalidPinError, NoCardError, PinBlockedError, UnusableTokenError
from terminal.flows.counter import CardMismatchError
from terminal.flows.counter_card import CardHolding, EnrollmentFinishedError
from terminal.sessions.base import InvalidPukError
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
    TokenKind,
    TokenPresent,
    TokenRemoved,
    VerdictView,
)
from terminal.web.verdicts import SERVICE_CLAIMS, view_for


@dataclass
class FakeToken:
    """A pretend card: PIN, tries, claims and what the verifier would say about it."""

    pin: str = "123456"
    tries: int = 3
    kind: TokenKind = TokenKind.CARD
    claims: dict[str, Any] = field(default_factory=dict)
    reject_reason: str | None = None  # a verifier reason key to fail with
    delay: float = 0.0  # seconds "signing" takes
    puk: str = "12345678"
    refuse: str | None = None  # UnusableTokenError reason raised at tap ("blank", "foreign", ...)
    did: str | None = None  # the citizen a counter enrolled on it (a finished enrollment)
    serial: str = "0011223344556677"


class FakeKioskBackend:
    """A kiosk backend over :class:`FakeToken` objects put in and taken out by the test."""

    def __init__(self) -> None:
        self._on_event: Callable[[BackendEvent], None] | None = None
        self.tokens: dict[str, FakeToken] = {}
        self.session_reader: str | None = None
        self.ended = 0
        self.presented: list[str] = []
        self.health_state = BackendHealth(pcscd=None, readers=())  # set by tests (out of service)

    def services(self) -> Sequence[ServiceInfo]:
        return [ServiceInfo(sid, claims) for sid, claims in SERVICE_CLAIMS.items()]

    def start(self, on_event: Callable[[BackendEvent], None]) -> None:
        self._on_event = on_event

    def stop(self) -> None:
        self._on_event = None

    def insert(self, token: FakeToken, reader: str = "Fake Reader 0") -> None:
        self.tokens[reader] = token
        if self._on_event:
            self._on_event(TokenPresent(reader, token.kind, time.monotonic()))

    def remove(self, reader: str = "Fake Reader 0") -> None:
        self.tokens.pop(reader, None)
        if self._on_event:
            self._on_event(TokenRemoved(reader, time.monotonic()))

    def start_session(self, reader: str) -> SessionInfo:
        token = self.tokens.get(reader)
        if token is None:
            raise NoCardError("no card")
        if token.refuse:
            raise UnusableTokenError(token.refuse)
        self.session_reader = reader
        return SessionInfo(reader, token.kind, token.tries, token.tries == 0)

    def present(self, service_id: str, pin: str) -> VerdictView:
        reader = self.session_reader
        token = self.tokens.get(reader or "")
        if token is None:
            raise CardRemovedError("card removed")
        if token.delay:
            time.sleep(token.delay)
            if self.tokens.get(reader or "") is not token:
                raise CardRemovedError("card removed")
        if token.tries == 0:
            raise PinBlockedError()
        if pin != token.pin:
            token.tries -= 1
            if token.tries == 0:
                raise PinBlockedError()
            raise InvalidPinError(token.tries)
        token.tries = 3
        self.presented.append(service_id)
        needed = SERVICE_CLAIMS.get(service_id, ())
        disclosed = {k: v for k, v in token.claims.items() if k in needed}
        return view_for(service_id, token.reject_reason is None, token.reject_reason, disclosed)

    def end(self) -> None:
        self.session_reader = None
        self.ended += 1

    def health(self) -> BackendHealth:
        return self.health_state


def screen_client(app: Any) -> Any:
    """A Flask test client bound as the kiosk's own screen (it opened the one-time launch URL)."""
    client = app.test_client()
    resp = client.get(app.extensions["cityid.screen"].launch_path())
    assert resp.status_code == 303, resp.status_code
    return client


class FakeCounterBackend:
    """A counter backend that remembers enrollments in memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.cards: dict[str, FakeToken] = {"Fake Counter Reader": FakeToken()}
        self.credentials: dict[str, CredentialState] = {}
        self.fido: list[FidoRegistration] = []

    def readers(self) -> Sequence[str]:
        return list(self.cards)

    def _card(self, reader: str) -> FakeToken:
        card = self.cards.get(reader)
        if card is None:
            raise NoCardError("no card")
        return card

    def card_holder(self, reader: str) -> CardHolder | None:
        card = self._card(reader)
        if card.did is None:
            return None
        return CardHolder(card.serial, f"BSN-{card.serial.upper()}", card.did, True)

    def enroll(
        self, reader: str, enrollment: Enrollment, replace: Replacement | None = None
    ) -> EnrollmentResult:
        card = self._card(reader)
        if replace is not None:
            if replace.serial != card.serial:
                raise CardMismatchError("another card")
            if replace.current_puk != card.puk:
                raise InvalidPukError(2)
        with self._lock:
            n = len(self.credentials)
            cred_id = f"cred-{n + 1:04d}"
            did = f"did:ethr:0x539:0x{n + 1:040x}"
            self.credentials[cred_id] = CredentialState(cred_id, "issued", did, n)
        card.pin, card.puk, card.tries = enrollment.pin, enrollment.puk, 3
        card.claims = {"busan_resident": enrollment.resident}
        card.did = did
        return EnrollmentResult(cred_id, did, n, True)

    def register_fido(
        self, card_reader: str, key_reader: str, card_pin: str, key_pin: str
    ) -> FidoRegistration:
        card = self._card(card_reader)
        if card_pin != card.pin:
            raise InvalidPinError(2)
        reg = FidoRegistration("did:ethr:0x539:0x" + "1" * 40, f"fido-{len(self.fido) + 1}", "cred-key")
        self.fido.append(reg)
        return reg

    def unblock_pin(self, reader: str, puk: str, new_pin: str) -> None:
        card = self._card(reader)
        if puk != card.puk:
            raise InvalidPinError(2)
        card.pin, card.tries = new_pin, 3

    def revoke(self, credential_id: str, reason: str) -> CredentialState:
        old = self.status(credential_id)
        new = CredentialState(old.credential_id, "revoked", old.did, old.status_index)
        self.credentials[credential_id] = new
        return new

    def abandon(self, reader: str) -> Sequence[str]:
        card = self._card(reader)
        if card.did is not None:  # finished: the real backend refuses too (terminal.flows.counter_card)
            raise EnrollmentFinishedError(CardHolding(card.serial, card.did, None))
        card.claims = {}
        return []

    def report_lost(self, family_name: str, given_name: str, birthdate: str, password: str) -> None:
        self.lost_reports = [*getattr(self, "lost_reports", []), (family_name, given_name, birthdate)]

    def status(self, credential_id: str) -> CredentialState:
        try:
            return self.credentials[credential_id]
        except KeyError:
            raise KeyError(credential_id) from None
