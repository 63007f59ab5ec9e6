"""What a card on the counter reader already holds, before the clerk overwrites or erases it (docs/ui.md
§Counter, issue 15 item 4).

* :func:`inspect_card` — the card's serial, DID and credential state (GET INFO ``C7``), no PIN needed.
* :func:`abandon_unfinished` — "abandon unfinished enrollment" only for an enrollment that is unfinished: one
  in this counter's journal, or a card whose credential is written but not activated. A finished card
  (its credential valid on the server) raises :class:`EnrollmentFinishedError` and is left untouched; a
  card with nothing to give up raises :class:`NothingToAbandonError`.
* :func:`reset_for_replacement` — after the clerk confirmed replacing the citizen on a card: the card's PUK
  (the citizen's, typed by them) resets PUK and PIN to the initial values, and the card's DID and credential
  are erased, so the counter enrollment runs as on a blank card. The city server supersedes (revokes) the
  card's earlier credential when the new one is issued (server.service.enrollment).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cityid.apdu import SmartCardConnection
from cityid.citizen import CredentialState
from cityid.errors import CityIdError
from cityid.piv import DEFAULT_MANAGEMENT_KEY
from terminal.flows.counter import INITIAL_PIN, INITIAL_PUK, CardNotIdentifiedError, CounterEnrollment
from terminal.sessions.citizen import CitizenSession
from terminal.sessions.mgmt import ManagementKeyError
from terminal.sessions.piv import PivSession

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CardHolding:
    """What a citizen card holds now (identifiers only, docs/card-profile.md §GET INFO / GET IDENTITY)."""

    serial: str | None  # hex; None: a private-profile card this counter cannot name without PIN or PUK
    did: str | None
    state: CredentialState | None  # None: an older card profile that does not say

    @property
    def card_number(self) -> str:
        """The printed card number the counter derives from the serial (CitizenRequest.claims); "-" while
        the card keeps its serial private."""
        return f"BSN-{self.serial.upper()}" if self.serial is not None else "-"

    @property
    def written(self) -> bool:
        """A DID or credential is stored: the card holds a citizen (finished or not)."""
        return self.did is not None or bool(self.state and self.state & CredentialState.PRESENT)

    @property
    def finished(self) -> bool:
        """Personalization finished (ACTIVATE done; on an older profile: a DID is written)."""
        if self.state is None:
            return self.did is not None
        return bool(self.state & CredentialState.ACTIVATED)


class EnrollmentFinishedError(CityIdError):
    """The card's enrollment is finished (its credential is valid): abandoning would erase a working card."""

    def __init__(self, holding: CardHolding) -> None:
        self.holding = holding
        super().__init__("the card's enrollment is finished: revoke its credential instead of abandoning")


class NothingToAbandonError(CityIdError):
    """The card holds no unfinished enrollment (blank, or nothing written yet)."""


def inspect_card(connection: SmartCardConnection, enrollment: CounterEnrollment | None = None) -> CardHolding:
    """Serial, DID and credential state of the citizen card in ``connection`` (no PIN). A private-profile
    card shows serial and DID only behind its management key: the default key of a fresh card, or the own
    key of a card ``enrollment``'s journal knows (through the city HSM); any other private card gives a
    holding with only its credential state (``serial`` None: the citizen's PIN or PUK is needed)."""
    citizen = CitizenSession(connection)
    info = citizen.info()
    if info.reveals_identity:
        return CardHolding(info.serial, info.did, info.credential_state)
    try:
        if enrollment is None:
            citizen.authenticate(DEFAULT_MANAGEMENT_KEY)
        else:
            enrollment.card_serial(connection)  # leaves the citizen applet authenticated
    except (CardNotIdentifiedError, ManagementKeyError):
        return CardHolding(None, None, info.credential_state)
    identity = citizen.identity()
    return CardHolding(identity.serial, identity.did, info.credential_state)


def enrollment_started_here(enrollment: CounterEnrollment, holding: CardHolding) -> bool:
    """This counter's journal has progress for the card: enrolling it again resumes, abandoning is allowed."""
    return holding.serial is not None and enrollment.started(bytes.fromhex(holding.serial))


def abandon_unfinished(
    enrollment: CounterEnrollment,
    connection: SmartCardConnection,
) -> list[str]:
    """:meth:`CounterEnrollment.abandon` for the card in ``connection`` — only when its enrollment is
    unfinished; returns the credential ids revoked."""
    holding = inspect_card(connection, enrollment)
    if not enrollment_started_here(enrollment, holding):
        if holding.finished:
            raise EnrollmentFinishedError(holding)
        if not holding.written:
            raise NothingToAbandonError("the card holds no unfinished enrollment")
        if holding.serial is None:  # written elsewhere, unfinished, and private: its key is not ours to try
            raise CardNotIdentifiedError("the card keeps its serial private: abandon it at its own counter")
    assert holding.serial is not None
    logger.info("abandoning the unfinished enrollment of a card")
    return enrollment.abandon(bytes.fromhex(holding.serial), connection)


def reset_for_replacement(
    connection: SmartCardConnection,
    current_puk: str,
    enrollment: CounterEnrollment,
    *,
    initial_pin: str = INITIAL_PIN,
    initial_puk: str = INITIAL_PUK,
) -> bytes:
    """Make a card that holds a citizen ready for a new enrollment (the clerk confirmed the replacement);
    returns the card's serial (learnt after the PUK on a private-profile card).

    ``current_puk`` is the card's PUK (the citizen types it): PUK → initial PUK (CHANGE REFERENCE DATA),
    PIN → initial PIN (RESET RETRY COUNTER), then DID and credential erased with the card's own management
    key (through the city HSM, ``enrollment``). A wrong PUK raises :class:`~cityid.errors.WrongPinError`
    (``what == "PUK"``) before anything changed.
    """
    piv = PivSession(connection)
    piv.change_puk(current_puk, initial_puk)
    piv.unblock_pin(initial_puk, initial_pin)
    citizen = CitizenSession(connection)
    info = citizen.info()
    if info.reveals_identity:
        serial = info.serial
    else:  # a private card names its serial after the PIN (now the initial one)
        citizen.verify_pin(initial_pin)
        serial = citizen.identity().serial
    enrollment.erase_card(connection, bytes.fromhex(serial))
    logger.info("card reset for a new enrollment (PIN and PUK initial, DID and credential erased)")
    return bytes.fromhex(serial)
