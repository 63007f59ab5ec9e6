"""The real backends of the web app: card layer, flows, verifier and the city-server client.

* :class:`CardKioskBackend` — a citizen card in a reader: GET INFO for the tries left, then per service
  a :class:`terminal.flows.kiosk.KioskVerification` (nonce → VERIFY PIN → PRESENT → verifier). Each step
  opens its own connection (PC/SC handles are not shared between threads) and closes it with a card reset,
  so a verified PIN never outlives the request. Events come from :meth:`feed`.
* :class:`PcscKioskBackend` — the same, fed by :class:`terminal.pcsc.monitor.ReaderMonitor`.
* :class:`CardCounterBackend` — the clerk's operations: enrollment through
  :class:`terminal.flows.counter.CounterEnrollment` (resumable), PIN unblock with the PUK on the PIV applet,
  revocation and status through :class:`terminal.server_client.ServerClient`.

Connections are obtained through a ``connect(reader)`` callable returning a context manager, so the same
backends run over PC/SC (``PcscConnection``) or any other ``SmartCardConnection``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from cityid.apdu import SmartCardConnection
from cityid.citizen import CredentialState as CardCredentialState
from cityid.credential import CLAIM_NAMES
from cityid.errors import (
    ApplicationNotFoundError,
    CardRemovedError,
    CityIdError,
    InvalidPinError,
    NoCardError,
    PinBlockedError,
    UnusableTokenError,
)
from cityid.jose import b64url_encode
from terminal.fido.device import CtapSmartCardDevice, NotFidoError
from terminal.fido.errors import (
    FidoError,
    FidoInvalidPinError,
    FidoPinBlockedError,
    FidoPinNotSetError,
    FidoPinPowerCycleError,
)
from terminal.fido.session import FidoSession, FidoVerifier, PinState
from terminal.flows.counter import CitizenRequest, CounterEnrollment, EnrollmentInterrupted
from terminal.flows.kiosk import FidoPresenter, KioskVerification, Service, service
from terminal.server_client import ServerClient, ServerError
from terminal.sessions.citizen import CitizenSession
from terminal.sessions.piv import PivSession
from terminal.verifier import Verifier
from terminal.verifier.verifier import DEFAULT_RP_ID
from terminal.web.backend import (
    BackendEvent,
    BackendHealth,
    CredentialState,
    Enrollment,
    EnrollmentResult,
    FidoRegistration,
    ServiceInfo,
    SessionInfo,
    TokenKind,
    TokenPresent,
    TokenRemoved,
    VerdictView,
)
from terminal.web.verdicts import view_for

logger = logging.getLogger(__name__)

FIDO_SERVICE = "counter-fido-registration"
#: The claims the clerk enters (the server derives the age flags); what a key's credential is issued with.
ISSUED_CLAIMS = ("family_name", "given_name", "birthdate", "district", "busan_resident", "card_number")

Connect = Callable[[str], AbstractContextManager[SmartCardConnection]]


def pcsc_connect(reader: str) -> AbstractContextManager[SmartCardConnection]:
    """A PC/SC connection to the card in ``reader`` (transaction held; card reset on close)."""
    from terminal.pcsc.connection import PcscConnection

    return PcscConnection(reader)


class CardKioskBackend:
    """Kiosk backend over citizen cards reached through ``connect``; events pushed with :meth:`feed`."""

    def __init__(
        self,
        verifier: Verifier,
        services: Sequence[Service],
        connect: Connect,
        clock: Callable[[], float] = time.time,
        rp_id: str = DEFAULT_RP_ID,
    ) -> None:
        self.verifier = verifier
        self._services = tuple(services)
        self._connect = connect
        self._clock = clock
        self.rp_id = rp_id  # the city's WebAuthn relying party (the key's credential is scoped to it)
        self._on_event: Callable[[BackendEvent], None] | None = None
        self._lock = threading.Lock()
        self._reader: str | None = None
        self._kind = TokenKind.CARD
        self._hid: dict[str, Any] = {}  # "HID <name>" → terminal.fido.discovery.FidoKey (USB keys)
        self._verification: KioskVerification | None = None
        self.last_timings: dict[str, float] = {}

    def services(self) -> Sequence[ServiceInfo]:
        return [ServiceInfo(s.id, s.claims) for s in self._services]

    def start(self, on_event: Callable[[BackendEvent], None]) -> None:
        self._on_event = on_event

    def stop(self) -> None:
        self._on_event = None
        self.end()

    def feed(self, event: BackendEvent) -> None:
        """Deliver a card event to the web layer (from any thread)."""
        callback = self._on_event
        if callback is not None:
            callback(event)

    def start_session(self, reader: str) -> SessionInfo:
        """A citizen card (citizen applet: GET INFO) or else a FIDO2 key (CTAP GetInfo + PIN retries)."""
        hid_key = self._hid.get(reader)
        if hid_key is not None:
            kind, (tries, blocked) = TokenKind.FIDO, self._key_status(FidoSession(hid_key.open()))
        else:
            with self._connect(reader) as conn:
                try:
                    info = CitizenSession(conn).info()
                    state = info.credential_state
                    if state is not None and not state & CardCredentialState.ACTIVATED:
                        raise UnusableTokenError("blank", "the card holds no usable credential")
                    kind, tries, blocked = TokenKind.CARD, info.pin_tries, info.pin_tries == 0
                except ApplicationNotFoundError:
                    kind, tries, blocked = TokenKind.FIDO, *self._fido_status(conn)
        with self._lock:
            self._reader, self._kind = reader, kind
        return SessionInfo(reader, kind, tries, blocked)

    def on_fido_key_event(self, event: Any) -> None:
        """Feed a :mod:`terminal.fido.discovery` event: USB-HID keys become tokens like cards in readers."""
        from terminal.fido.discovery import FidoKeyInserted, FidoKeyRemoved

        if isinstance(event, FidoKeyInserted) and event.key.transport == "hid":
            name = f"HID {event.key.name}"
            self._hid[name] = event.key
            self.feed(TokenPresent(name, TokenKind.FIDO, time.monotonic()))
        elif isinstance(event, FidoKeyRemoved) and event.transport == "hid":
            name = f"HID {event.name}"
            self._hid.pop(name, None)
            self.feed(TokenRemoved(name, time.monotonic()))

    @classmethod
    def _fido_status(cls, conn: SmartCardConnection) -> tuple[int | None, bool]:
        try:
            session = FidoSession(CtapSmartCardDevice(conn))
        except (NotFidoError, ApplicationNotFoundError):
            raise UnusableTokenError("foreign", "neither a citizen card nor a FIDO2 key") from None
        return cls._key_status(session)

    @staticmethod
    def _key_status(session: FidoSession) -> tuple[int | None, bool]:
        status = session.pin_status()
        if status.state is PinState.NOT_SET:
            raise UnusableTokenError("unregistered_key", "this security key has no PIN")
        blocked = status.state in (PinState.BLOCKED, PinState.POWER_CYCLE_REQUIRED)
        return status.retries, blocked

    def present(self, service_id: str, pin: str) -> VerdictView:
        with self._lock:
            reader, kind = self._reader, self._kind
        if reader is None:
            raise CardRemovedError("the session has ended")
        svc = next((s for s in self._services if s.id == service_id), None) or service(service_id)
        verification = KioskVerification(self.verifier, svc, self._clock)
        with self._lock:
            self._verification = verification
        t0 = time.perf_counter()
        try:
            hid_key = self._hid.get(reader)
            if hid_key is not None:
                verdict = self._run_fido(verification, FidoSession(hid_key.open()), pin)
            else:
                with self._connect(reader) as conn:
                    if kind is TokenKind.FIDO:
                        verdict = self._run_fido(verification, FidoSession(CtapSmartCardDevice(conn)), pin)
                    else:
                        verdict = verification.run_card(CitizenSession(conn), pin)
            del pin
            view = view_for(service_id, verdict.ok, None if verdict.ok else verdict.reason, verdict.claims)
        finally:
            verification.end()  # the view holds what the screen shows; the verdict's claims are wiped
            with self._lock:
                self._verification = None
        self.last_timings = dict(verification.timings, total_s=time.perf_counter() - t0)
        return view

    def _run_fido(self, verification: KioskVerification, session: FidoSession, pin: str) -> Any:
        """The key's own PIN → PIN token → assertion-bound presentation; FIDO PIN states as card ones."""
        try:
            return verification.run(FidoPresenter(session, pin, self.rp_id))
        except FidoInvalidPinError as exc:
            raise InvalidPinError(exc.attempts_remaining) from None
        except (FidoPinBlockedError, FidoPinPowerCycleError, FidoPinNotSetError):
            raise PinBlockedError(what="key PIN") from None
        except FidoError as exc:
            raise CityIdError(f"security key: {exc}") from None

    def end(self) -> None:
        with self._lock:
            verification, self._verification, self._reader = self._verification, None, None
        if verification is not None:
            verification.end()

    def health(self) -> BackendHealth:
        """In-process cards: no pcscd to watch; the chain view's health (terminal.web.health)."""
        from terminal.web.health import chain_health

        return BackendHealth(None, (), chain_health(self.verifier.chain_view))


class PcscKioskBackend(CardKioskBackend):
    """:class:`CardKioskBackend` on PC/SC readers, watched by a ``ReaderMonitor``.

    ``reader_filter`` limits the kiosk to readers whose name contains it (empty: every reader).
    """

    def __init__(
        self,
        verifier: Verifier,
        services: Sequence[Service],
        reader_filter: str = "",
        connect: Connect = pcsc_connect,
        hid_lister: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__(verifier, services, connect)
        self.reader_filter = reader_filter
        self.hid_lister = hid_lister  # USB-HID security keys (terminal.fido.discovery); None: PC/SC only
        self._monitor: Any = None
        self._hid_watcher: Any = None
        self._pcscd: bool | None = None  # from the monitor's ServiceLost / ServiceRestored

    def start(self, on_event: Callable[[BackendEvent], None]) -> None:
        from terminal.pcsc.monitor import ReaderMonitor

        super().start(on_event)
        self._monitor = ReaderMonitor(self._on_reader_event, timeout_ms=1000).start()
        self._monitor.ready.wait(2.0)  # the first scan, so the start-up health check knows about pcscd
        if self.hid_lister is not None:
            from terminal.fido.discovery import FidoKeyWatcher

            self._hid_watcher = FidoKeyWatcher(None, self.hid_lister)
            self._hid_watcher.subscribe(self.on_fido_key_event)
            self._hid_watcher.start()

    def stop(self) -> None:
        if self._hid_watcher is not None:
            self._hid_watcher.stop()
            self._hid_watcher = None
        if self._monitor is not None:
            self._monitor.stop()
            self._monitor = None
        super().stop()

    def health(self) -> BackendHealth:
        """pcscd up (monitor's view), the readers matching ``reader_filter``, the chain view's health."""
        from terminal.web.health import chain_health

        monitor = self._monitor
        pcscd, readers = self._pcscd, ()
        if monitor is not None:
            readers = tuple(r for r in monitor.readers() if self.reader_filter in r)
            if pcscd is None and monitor.ready.is_set():
                pcscd = True
        return BackendHealth(pcscd, readers, chain_health(self.verifier.chain_view))

    def _on_reader_event(self, event: Any) -> None:
        from terminal.pcsc.monitor import CardInserted, CardRemoved, CardSwapped, ServiceLost, ServiceRestored

        if isinstance(event, ServiceLost | ServiceRestored):
            self._pcscd = isinstance(event, ServiceRestored)
            return
        now = time.monotonic()
        reader = getattr(event, "reader", "")
        if self.reader_filter and self.reader_filter not in reader:
            return
        if isinstance(event, CardInserted):
            self.feed(TokenPresent(reader, TokenKind.CARD, now))
        elif isinstance(event, CardRemoved):
            self.feed(TokenRemoved(reader, now))
        elif isinstance(event, CardSwapped):
            self.feed(TokenRemoved(reader, now))
            self.feed(TokenPresent(reader, TokenKind.CARD, now))


def cose_point(cose_key: Any) -> bytes:
    """The uncompressed P-256 point of an ES256 COSE key (RFC 9053 §7.1.1: -2 x, -3 y)."""
    return b"\x04" + bytes(cose_key[-2]) + bytes(cose_key[-3])


def _pcsc_readers() -> list[str]:
    from terminal.pcsc.connection import list_readers

    return list_readers()


class CardCounterBackend:
    """Counter backend: enrollment (resumable across card pulls), unblock, revoke, status."""

    def __init__(
        self,
        server: ServerClient,
        verifier: Verifier,
        connect: Connect = pcsc_connect,
        readers: Callable[[], Sequence[str]] = _pcsc_readers,
        reader_filter: str = "",
        *,
        rp_id: str = DEFAULT_RP_ID,
        fido_roots: Sequence[bytes] = (),
    ) -> None:
        self.server = server
        self.rp_id = rp_id
        self.fido_roots = tuple(fido_roots)  # trusted attestation roots (PEM/DER); empty: attestation "none"
        self.enrollment = CounterEnrollment(server, verifier)
        self._connect = connect
        self._readers = readers
        self.reader_filter = reader_filter
        self._lock = threading.Lock()  # one card operation at a time per counter

    def readers(self) -> Sequence[str]:
        return [r for r in self._readers() if self.reader_filter in r]

    def enroll(self, reader: str, enrollment: Enrollment) -> EnrollmentResult:
        request = CitizenRequest(
            family_name=enrollment.family_name,
            given_name=enrollment.given_name,
            birthdate=enrollment.birthdate,
            district=enrollment.district,
            busan_resident=enrollment.resident,
            new_pin=enrollment.pin,
            new_puk=enrollment.puk,
        )
        with self._lock:
            try:
                with self._connect(reader) as conn:
                    outcome = self.enrollment.run(conn, request)
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
        """Register the key in ``key_reader`` for the citizen whose card is in ``card_reader``.

        1. the card presents every claim to this counter (card PIN) and the presentation is verified —
           genuine, not revoked, the card key still on the citizen's DID;
        2. the key gets the city's discoverable credential (its PIN is set if it has none; UV by PIN,
           largeBlobKey; attestation checked against ``fido_roots`` when given);
        3. the server issues the citizen a credential bound to the key (cnf = the key's public key; the key
           is published on the citizen's DID) and it is written to the key's largeBlob.
        The claims exist only in memory during the call.
        """
        with self._lock:
            claims, did = self._claims_from_card(card_reader, card_pin)
            try:
                with self._connect(key_reader) as conn:
                    try:
                        session = FidoSession(CtapSmartCardDevice(conn))
                        if not session.pin_set:
                            session.set_pin(key_pin)
                        rp = FidoVerifier(self.rp_id, trusted_roots=self.fido_roots)
                        user_id = hashlib.sha256(did.encode()).digest()[:16]
                        reg = rp.register(session, user_id, did, pin=key_pin, large_blob=True)
                        serial = hashlib.sha256(reg.credential_id).digest()[:8]
                        key = (
                            "fido-" + hashlib.sha256(did.encode() + b"|" + reg.credential_id).hexdigest()[:40]
                        )
                        result = self.server.enroll(key, claims, cose_point(reg.public_key), serial, did)
                        session.write_blob(reg.large_blob_key, result.record.encode(), pin=key_pin)
                    except (NotFidoError, ApplicationNotFoundError):
                        raise NoCardError("the card in the key reader is not a FIDO2 security key") from None
                    except FidoInvalidPinError as exc:
                        raise InvalidPinError(exc.attempts_remaining) from None
                    except (FidoPinBlockedError, FidoPinPowerCycleError):
                        raise PinBlockedError(what="key PIN") from None
                    except FidoError as exc:
                        raise CityIdError(f"security key: {exc}") from None
            finally:
                claims.clear()
        logger.info("FIDO2 key registered, credential %s", result.credential_id)
        return FidoRegistration(did, b64url_encode(reg.credential_id), result.credential_id)

    def _claims_from_card(self, reader: str, pin: str) -> tuple[dict[str, Any], str]:
        """The citizen's verified claims (as issued) and DID: PRESENT of every claim to this counter."""
        verifier = self.enrollment.verifier
        with self._connect(reader) as conn:
            citizen = CitizenSession(conn)
            nonce = verifier.nonce_store.issue(FIDO_SERVICE)
            citizen.verify_pin(pin)
            presentation = citizen.present(CLAIM_NAMES, nonce, verifier.audience, int(time.time()))
        verdict = verifier.verify(presentation, CLAIM_NAMES, FIDO_SERVICE)
        try:
            if not verdict.ok:
                raise CityIdError(f"the citizen card did not verify ({verdict.failed})")
            claims = {k: verdict.claims[k] for k in ISSUED_CLAIMS if k in verdict.claims}
            return claims, verdict.subject
        finally:
            verdict.wipe()

    def abandon(self, reader: str) -> Sequence[str]:
        with self._lock, self._connect(reader) as conn:
            serial = bytes.fromhex(CitizenSession(conn).info().serial)
            return self.enrollment.abandon(serial, conn)

    def unblock_pin(self, reader: str, puk: str, new_pin: str) -> None:
        with self._lock, self._connect(reader) as conn:
            PivSession(conn).unblock_pin(puk, new_pin)

    def _state(self, data: dict[str, Any]) -> CredentialState:
        status = data.get("status") if isinstance(data.get("status"), dict) else {}
        index = status.get("index") if isinstance(status, dict) else None
        return CredentialState(
            str(data.get("credential_id", "")),
            str(data.get("state", "unknown")),
            str(data.get("citizen_did", "")),
            index if isinstance(index, int) else None,
        )

    def revoke(self, credential_id: str, reason: str) -> CredentialState:
        self.status(credential_id)  # 404 → KeyError before anything is written
        self.server.revoke([credential_id], reason)
        return self.status(credential_id)

    def status(self, credential_id: str) -> CredentialState:
        try:
            return self._state(self.server.status(credential_id))
        except ServerError as exc:
            if exc.status == 404:
                raise KeyError(credential_id) from None
            raise
