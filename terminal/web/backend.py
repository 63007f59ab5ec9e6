"""The small interface the web layer needs from the terminal below it.

The web app (``terminal.web``) depends only on these protocols and value types (the token events and the
credential state are the flows' own, re-exported here). ``terminal.web.stack`` adapts them to the flows
(:mod:`terminal.flows`); ``tests.doubles.fake_backends`` is an
in-memory stand-in used for layout work and unit tests of the web layer.

Errors are the shared typed errors (:mod:`cityid.errors`): the PIN states ``WrongPinError``
(``attempts_remaining``), ``BlockedPinError``, ``PinPowerCycleError``, ``PinNotSetError`` — for cards and
FIDO keys alike — and ``CardRemovedError``; anything else deriving from ``CityIdError`` is shown as a
technical problem without details.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cityid.errors import CardError
from terminal.flows.lost_card import CredentialState
from terminal.flows.tokens import TokenEvent, TokenKind, TokenPresent, TokenRemoved

BackendEvent = TokenEvent


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """A kiosk service: what it asks for and why (catalogue keys ``service.<id>.*``, ``claim.<name>``)."""

    id: str
    claims: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What the kiosk knows about the token at the start of a session (no personal data)."""

    reader: str
    kind: TokenKind
    pin_tries: int | None  # None: unknown
    blocked: bool = False


@dataclass(frozen=True, slots=True)
class VerdictView:
    """A verdict ready for display.

    ``outcome`` is a catalogue key (``verdict.*``); ``reason`` a catalogue key explaining a "no";
    ``facts`` are (label key, value) pairs shown to the citizen — only the claims the service asked for,
    held in memory for this session only. ``printable``: for an accepted verdict, the disclosed claims of
    the service as (claim name, value) — what "print my certificate" may print (terminal.web.printing);
    never logged (``repr=False``), wiped with the session.
    """

    ok: bool
    outcome: str
    reason: str | None = None
    facts: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    printable: tuple[tuple[str, Any], ...] = field(default=(), repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class ChainHealth:
    """How current the chain facts are (docs/ui.md §Out of service). ``None``: not known."""

    head_block: int | None = None
    head_age: float | None = None  # seconds between the head block's own timestamp and the kiosk clock
    cache_lag: float | None = None  # seconds since the sync cache was last current (None: no cache)
    error: str | None = None  # why the chain could not be asked (no personal data)


@dataclass(frozen=True, slots=True)
class BackendHealth:
    """What the kiosk's card layer and chain view can say about themselves right now.

    ``pcscd``: True running, False gone, None not used (in-process cards) or not known yet.
    ``readers``: the readers this kiosk would use. ``chain``: None when the backend does not know.
    ``authorized``: the kiosk holds a valid terminal certificate (None: terminal authentication is off).
    """

    pcscd: bool | None
    readers: tuple[str, ...]
    chain: ChainHealth | None = None
    authorized: bool | None = None


class KioskBackend(Protocol):
    """Card events and the presentation flow of an unattended kiosk."""

    def services(self) -> Sequence[ServiceInfo]:
        """The services this kiosk offers, in display order."""
        ...

    def start(self, on_event: Callable[[BackendEvent], None]) -> None:
        """Start watching readers; call ``on_event`` from any thread for each arrival/removal."""
        ...

    def stop(self) -> None:
        """Stop watching readers and release everything."""
        ...

    def start_session(self, reader: str) -> SessionInfo:
        """Open a session with the token in ``reader`` (raises a ``CardError`` subclass)."""
        ...

    def present(self, service_id: str, pin: str) -> VerdictView:
        """Verify the PIN on the token, get a presentation for the service and verify it.

        The PIN goes straight to the card layer and is not kept. Raises a PIN state (``WrongPinError``,
        ``BlockedPinError``, ``PinPowerCycleError``, ``PinNotSetError``), ``CardRemovedError`` or another
        ``CityIdError``.
        """
        ...

    def end(self) -> None:
        """End the session and wipe everything it held (claims, nonce, connection)."""
        ...

    def health(self) -> BackendHealth:
        """pcscd, readers and chain state for the out-of-service screen and ``/health`` (no card I/O)."""
        ...


@dataclass(frozen=True, slots=True)
class Enrollment:
    """What the clerk typed after checking the citizen in person. Held in memory only."""

    family_name: str
    given_name: str
    birthdate: str  # ISO 8601 date
    district: str  # a key of ``district.*``
    resident: bool
    pin: str = field(repr=False)
    puk: str = field(repr=False)
    #: The citizen's revocation password (docs/server.md §Lost-card report); never logged.
    revocation_password: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class EnrollmentResult:
    """Outcome of a counter enrollment (identifiers only)."""

    credential_id: str
    did: str
    status_index: int
    self_check_ok: bool


@dataclass(frozen=True, slots=True)
class FidoRegistration:
    """A FIDO2 key registered on a citizen's DID, with the credential issued to it."""

    did: str
    credential_id: str  # the key's WebAuthn credential id (base64url)
    citizen_credential_id: str = ""  # the city credential issued to the key


@dataclass(frozen=True, slots=True)
class CardHolder:
    """The citizen a card already holds, shown to the clerk before enrolling over it (identifiers only)."""

    serial: str  # hex; the confirmation names it and the enrollment checks the same card is still there
    card_number: str
    did: str | None
    finished: bool  # personalization finished: its credential is valid on the server


@dataclass(frozen=True, slots=True)
class Replacement:
    """The clerk's confirmation to enroll over the citizen on card ``serial``; ``current_puk`` is the card's
    PUK (typed by the citizen), which resets PIN and PUK to the initial values first."""

    serial: str
    current_puk: str = field(repr=False)


class TokenMissingError(CardError):
    """No usable token on a reader the clerk chose. ``role``: ``"card"`` (the citizen-card reader) or
    ``"key"`` (the security-key reader); ``wrong_kind``: a token is there, but not of that kind."""

    def __init__(self, role: str, reader: str, wrong_kind: bool = False) -> None:
        self.role, self.reader, self.wrong_kind = role, reader, wrong_kind
        what = "citizen card" if role == "card" else "FIDO2 security key"
        super().__init__(f"{'not a ' + what if wrong_kind else 'no ' + what} in {reader!r}")


class CounterBackend(Protocol):
    """The clerk's operations at a post-office counter."""

    def readers(self) -> Sequence[str]:
        """Readers the counter can use (for the reader choice)."""
        ...

    def card_holder(self, reader: str) -> CardHolder | None:
        """The citizen the card in ``reader`` already holds — None for a blank card or one whose enrollment
        this counter has started (enrolling it again resumes)."""
        ...

    def enroll(
        self, reader: str, enrollment: Enrollment, replace: Replacement | None = None
    ) -> EnrollmentResult:
        """Generate the key on the card, enroll with the server, write the credential, set PIN/PUK.
        ``replace``: the card holds a citizen and the clerk confirmed replacing them (same card serial)."""
        ...

    def register_fido(
        self, card_reader: str, key_reader: str, card_pin: str, key_pin: str
    ) -> FidoRegistration:
        """Register the FIDO2 key in ``key_reader`` for the citizen whose card is in ``card_reader``: the
        card presents (card PIN), the key gets a credential of its own (key PIN) in its largeBlob."""
        ...

    def unblock_pin(self, reader: str, puk: str, new_pin: str) -> None:
        """Reset the card PIN with the PUK (``WrongPinError`` carries PUK tries left)."""
        ...

    def revoke(self, credential_id: str, reason: str) -> CredentialState:
        """Revoke a lost or stolen card's credential (status bit and card key on chain)."""
        ...

    def abandon(self, reader: str) -> Sequence[str]:
        """Give up the unfinished enrollment of the card in ``reader``: revoke what the server issued for
        it (credential ids returned) and erase the card's DID and credential. A finished card raises
        ``EnrollmentFinishedError``, one with nothing to abandon ``NothingToAbandonError``
        (:mod:`terminal.flows.counter_card`); neither is changed."""
        ...

    def report_lost(self, family_name: str, given_name: str, birthdate: str, password: str) -> None:
        """Lost-card report from the citizen's details and revocation password (one answer either way)."""
        ...

    def status(self, credential_id: str) -> CredentialState:
        """Look up a credential's status."""
        ...


__all__ = [
    "BackendEvent",
    "CardHolder",
    "CounterBackend",
    "CredentialState",
    "Enrollment",
    "EnrollmentResult",
    "FidoRegistration",
    "KioskBackend",
    "Replacement",
    "ServiceInfo",
    "SessionInfo",
    "TokenKind",
    "TokenMissingError",
    "TokenPresent",
    "TokenRemoved",
    "VerdictView",
]
