"""The kiosk verification flow: a service asks for claims → the card (or FIDO key) presents → verdict.

A :class:`KioskVerification` lives for one tap. It issues a single-use nonce bound to the service, has the
card sign a presentation for this kiosk's audience (PIN verified right before: the applet is PIN-always),
verifies it and keeps the disclosed claims in memory until :meth:`KioskVerification.end` — called on card
removal, on "done", or on idle timeout — wipes them.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fido2.ctap import CtapError
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
from cityid.errors import CityIdError
from terminal.fido.errors import FidoError, from_ctap
from terminal.verifier import Verdict, Verifier

logger = logging.getLogger(__name__)

#: ``presenter(claims, nonce, audience, iat) -> presentation`` — the card's PRESENT or the FIDO flow.
Presenter = Callable[[tuple[str, ...], str, str, int], str]


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
    """A :data:`Presenter` over a citizen-applet session: VERIFY PIN then PRESENT (PIN-always)."""

    def __init__(self, session: object, pin: str | bytes) -> None:
        self._session = session
        self._pin: str | bytes | None = pin

    def __call__(self, claims: tuple[str, ...], nonce: str, audience: str, iat: int) -> str:
        pin, self._pin = self._pin, None  # used once, then forgotten
        if pin is None:
            raise CityIdError("the PIN was already used for a presentation")
        self._session.verify_pin(pin)  # type: ignore[attr-defined]
        return self._session.present(claims, nonce, audience, iat)  # type: ignore[attr-defined]


class FidoPresenter:
    """A :data:`Presenter` over a FIDO2 key holding the credential in its largeBlob (docs: §FIDO).

    1. a silent getAssertion (``up: false``, PIN token) finds the city credential and its ``largeBlobKey``;
    2. the credential record is read from the large-blob array and decrypted with that key;
    3. a second getAssertion (user presence + PIN token) signs the challenge committing to the presentation.
    """

    def __init__(self, session: object, pin: str, rp_id: str, origin: str | None = None) -> None:
        self._session = session
        self._pin: str | None = pin
        self.rp_id = rp_id
        self.origin = origin or f"https://{rp_id}"

    def __call__(self, claims: tuple[str, ...], nonce: str, audience: str, iat: int) -> str:
        pin, self._pin = self._pin, None
        if pin is None:
            raise CityIdError("the PIN was already used for a presentation")
        session: Any = self._session
        protocol, token = session.token(pin, ClientPin.PERMISSION.GET_ASSERTION, self.rp_id)

        def assertion(cdh: bytes, up: bool, allow: list[dict[str, Any]] | None, lbk: bool) -> Any:
            try:
                return session.ctap.get_assertion(
                    self.rp_id, cdh, allow_list=allow, extensions={"largeBlobKey": True} if lbk else None,
                    options=None if up else {"up": False}, pin_uv_param=protocol.authenticate(token, cdh),
                    pin_uv_protocol=protocol.VERSION,
                )  # fmt: skip
            except CtapError as exc:
                raise from_ctap(exc) from None

        probe = assertion(secrets.token_bytes(32), False, None, True)
        if not probe.large_blob_key:
            raise FidoError("the key's city credential has no large blob")
        blob = session.read_blob(probe.large_blob_key)
        if blob is None:
            raise FidoError("no citizen credential is stored on this key")
        record = CredentialRecord.decode(blob)
        allow = [{"type": "public-key", "id": probe.credential["id"]}]

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

    def run_card(self, session: object, pin: str | bytes) -> Verdict:
        """:meth:`run` with a citizen-applet session (``terminal.sessions.citizen.CitizenSession``)."""
        return self.run(CardPresenter(session, pin))

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
