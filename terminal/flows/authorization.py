"""This terminal's authorization towards citizen cards (docs/card-profile.md §Terminal authentication).

:class:`TerminalAuthorization` holds the terminal id, its P-256 terminal key (the one that signs its server
requests) and its current city-issued terminal certificate; :meth:`TerminalAuthorization.authenticate`
runs terminal authentication on a citizen-applet session before PRESENT. :class:`CertificateRenewer` keeps
the certificate fresh from the city server in a background thread — never in a screen's request path: a
renewal the server refuses (the kiosk taken out of service on chain) simply lets the certificate expire,
after which cards refuse the kiosk.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import ec

from cityid.errors import CityIdError
from cityid.jose import es256_sign
from cityid.keys import P256PublicKey
from cityid.terminal_cert import TerminalCertificate
from terminal.server_client import TerminalCertificateAnswer

logger = logging.getLogger(__name__)

#: Renew when less than this share of the certificate's validity is left.
RENEW_AT_FRACTION = 0.5


class TerminalCertificateMissingError(CityIdError):
    """This terminal holds no valid terminal certificate (never issued, expired, or not renewed)."""


class TerminalAuthenticating(Protocol):
    """What terminal authentication needs from a citizen-applet session (:class:`CitizenSession`)."""

    def authenticate_terminal(
        self, certificate: TerminalCertificate, sign: Callable[[bytes], bytes], when: int
    ) -> None: ...


class TerminalAuthorization:
    """Terminal id + terminal key + current certificate (thread-safe; the renewer updates it)."""

    def __init__(
        self,
        terminal_id: str,
        key: ec.EllipticCurvePrivateKey,
        certificate: TerminalCertificate | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.terminal_id = terminal_id
        self._key = key
        self.public_key = P256PublicKey.from_crypto(key.public_key())
        self._clock = clock
        self._lock = threading.Lock()
        self._certificate: TerminalCertificate | None = None
        #: the city authorization root (from the server's certificate answer): what the counter writes to
        #: cards at personalization (Step BINDING)
        self.authority_key: P256PublicKey | None = None
        #: why the last renewal failed (None: it succeeded, or none was tried): what a counter that cannot
        #: personalize and ``kiosk doctor`` tell staff
        self.renewal_error: str | None = None
        if certificate is not None:
            self.update(certificate)

    def update(self, certificate: TerminalCertificate) -> None:
        """Install a (renewed) certificate; it must be for this terminal id and key."""
        if certificate.terminal_id != self.terminal_id or certificate.body.public_key != self.public_key:
            raise TerminalCertificateMissingError("the certificate is for another terminal or key")
        with self._lock:
            self._certificate = certificate
        logger.info("terminal certificate valid until %d", certificate.body.not_after)

    @property
    def certificate(self) -> TerminalCertificate | None:
        with self._lock:
            return self._certificate

    def current(self) -> TerminalCertificate:
        """The certificate valid now; :class:`TerminalCertificateMissingError` otherwise."""
        cert = self.certificate
        if cert is None or not cert.valid_at(int(self._clock())):
            raise TerminalCertificateMissingError("this terminal has no valid terminal certificate")
        return cert

    def sign(self, message: bytes) -> bytes:
        """ES256 (raw r||s) with the terminal key."""
        return es256_sign(self._key, message)

    @property
    def root(self) -> P256PublicKey:
        """The authorization root learnt from the server (:class:`TerminalCertificateMissingError` before)."""
        if self.authority_key is None:
            why = f": {self.renewal_error}" if self.renewal_error else " (no renewal yet)"
            raise TerminalCertificateMissingError(
                f"the city server has not given this terminal a certificate and authorization root{why}"
            )
        return self.authority_key

    def authenticate(self, session: TerminalAuthenticating) -> None:
        """Terminal authentication with the current certificate and the terminal's clock."""
        session.authenticate_terminal(self.current(), self.sign, int(self._clock()))


class CertificateRenewer:
    """Renews ``authorization``'s certificate through ``renew()`` before it expires (a daemon thread).

    ``renew`` is :meth:`terminal.server_client.ServerClient.terminal_certificate` bound to this terminal
    (its answer also names the authorization root) or anything returning a certificate; failures are
    logged and retried every ``retry_s``; the old certificate stays in use until it expires.
    """

    def __init__(
        self,
        authorization: TerminalAuthorization,
        renew: Callable[[], TerminalCertificate | TerminalCertificateAnswer],
        *,
        retry_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.authorization = authorization
        self._renew = renew
        self.retry_s = retry_s
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: Exception | None = None

    def due_in(self) -> float:
        """Seconds until the next renewal is due (0: now)."""
        cert = self.authorization.certificate
        if cert is None:
            return 0.0
        life = cert.body.not_after - cert.body.not_before
        due = cert.body.not_after - life * RENEW_AT_FRACTION
        return max(0.0, due - self._clock())

    def renew_once(self) -> bool:
        """One renewal attempt; True when a new certificate was installed."""
        try:
            answer = self._renew()
            if isinstance(answer, TerminalCertificate):
                self.authorization.update(answer)
            else:
                self.authorization.update(answer.certificate)
                self.authorization.authority_key = answer.authority_key
        except CityIdError as exc:  # server refused (revoked on chain, disabled) or unreachable
            self.last_error = exc
            self.authorization.renewal_error = str(exc)
            logger.warning("terminal certificate renewal failed: %s", exc)
            return False
        self.last_error = None
        self.authorization.renewal_error = None
        return True

    def _run(self, first_wait: float = 0.0) -> None:
        if first_wait:
            self._stop.wait(first_wait)
        while not self._stop.is_set():
            wait = self.due_in()
            if wait > 0:
                self._stop.wait(wait)
                continue
            if not self.renew_once():
                self._stop.wait(self.retry_s)

    def start(self) -> None:
        """Renew once now if due (start-up, never a screen's request), then keep renewing in a thread."""
        failed = self.due_in() == 0 and not self.renew_once()
        if self._thread is None:  # after a failed first attempt the thread retries in retry_s, not at once
            self._thread = threading.Thread(
                target=self._run, args=(self.retry_s if failed else 0.0,), name="terminal-cert-renewal",
                daemon=True,
            )  # fmt: skip
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
