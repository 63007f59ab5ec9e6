"""Terminal authorizations and short-lived terminal certificates (docs/card-profile.md §Terminal
authentication; docs/server.md §Terminal certificates).

The city decides which claims each kiosk/counter may ask a citizen card for. The decision is recorded twice:
in the ``terminal_authorizations`` table (the claims) and **on chain** as one bit per terminal in a terminal
status list of CityStatusRegistry (``Registrar.create_status_list`` / ``set_status``; VALID = authorized,
REVOKED = out of service). A terminal fetches its certificate (signed request ``GET
/v1/terminal/certificate``); the server signs one only while the terminal is registered and active and the
**on-chain bit reads VALID** — a revoked bit, or a chain it cannot read, refuses the renewal (never "valid"
when the fact is unknown). Certificates are short-lived (``terminal_certificate_seconds``), so a kiosk taken
out of service stops being able to read cards within one validity period.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from cityid.chain.view import ChainError, ChainView, CredentialStatus, StatusRef
from cityid.credential import CLAIM_NAMES
from cityid.keys import P256PublicKey
from cityid.terminal_cert import (
    CertificateError,
    TerminalCertificate,
    TerminalCertificateBody,
    authority_id,
)
from server.db import Database
from server.keys import IssuerSigner
from server.models import AuditEntry, Terminal, TerminalAuthorization
from server.service.errors import (
    ChainUnavailableError,
    ForbiddenError,
    NotFoundError,
    ServiceError,
    StorageUnavailableError,
    ValidationError,
)

logger = logging.getLogger(__name__)

#: Default certificate lifetime: one hour (renewed at half-life by ``kiosk serve``).
DEFAULT_CERTIFICATE_SECONDS = 3600
#: notBefore is back-dated this much so a terminal clock slightly behind the server's still fits.
CLOCK_SLACK_SECONDS = 300


class TerminalCertificatesDisabledError(ServiceError):
    """The server has no authorization key configured ([authorization_key])."""

    status = 503
    code = "terminal_certificates_disabled"


class TerminalRevokedError(ForbiddenError):
    """The terminal's authorization is revoked on chain (or it has none): no certificate."""

    code = "terminal_not_authorized"


class StatusListChain(Protocol):
    """The chain writes this service needs (``server.chain.gateway.ChainGateway``)."""

    def set_status(self, list_id: int, indexes: Sequence[int], status: CredentialStatus) -> None: ...


def _create_status_list(chain: Any, citizen_list_id: int) -> int:
    """A new status list owned by the registrar (``Registrar.create_status_list``) — never the citizens'
    list: that one must exist first, so the new list cannot take its id."""
    check = getattr(chain, "check_status_list", None)
    if check is not None:
        try:
            check(citizen_list_id)
        except ChainError as exc:
            raise ChainUnavailableError(
                f"the citizens' status list {citizen_list_id} must exist before the terminal list "
                f"(city-server status-list ensure): {exc}"
            ) from exc
    create = getattr(chain, "create_status_list", None)
    if create is None and getattr(chain, "registrar", None) is not None:
        create = chain.registrar.create_status_list
    if create is None:
        raise ChainUnavailableError("the chain gateway cannot create a terminal status list")
    try:
        list_id = int(create())
    except ChainError as exc:
        raise ChainUnavailableError(f"creating the terminal status list failed: {exc}") from exc
    if list_id == citizen_list_id:
        raise ChainUnavailableError(f"the new terminal status list got the citizens' id {list_id}")
    return list_id


class TerminalAuthorizations:
    """Authorize / revoke terminals (admin) and issue their certificates (signed terminal requests)."""

    def __init__(
        self,
        db: Database,
        chain: Any,
        status_view: ChainView | None,
        signer: IssuerSigner | None,
        *,
        status_ref: Callable[[int, int], StatusRef],
        issuer_did: Callable[[], str],
        vct: str,
        citizen_list_id: int = 1,
        lifetime_seconds: int = DEFAULT_CERTIFICATE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.chain = chain
        self.status_view = status_view
        self.signer = signer
        self._status_ref = status_ref
        self._issuer_did = issuer_did
        self._vct = vct
        self.citizen_list_id = citizen_list_id
        self.lifetime = lifetime_seconds
        self._clock = clock

    @property
    def root(self) -> P256PublicKey:
        """The authorization root public key (what personalization writes to every card)."""
        if self.signer is None:
            raise TerminalCertificatesDisabledError("no authorization key is configured")
        return P256PublicKey.from_point(self.signer.public_point)

    # --- administration ----------------------------------------------------------------------------

    def authorize(self, name: str, claims: Sequence[str]) -> TerminalAuthorization:
        """Allow terminal ``name`` the ``claims``; allocate its on-chain bit (first time) and set it VALID."""
        claims = tuple(dict.fromkeys(claims))
        unknown = [c for c in claims if c not in CLAIM_NAMES]
        if not claims or unknown:
            raise ValidationError(f"claims must be 1-{len(CLAIM_NAMES)} of {', '.join(CLAIM_NAMES)}")
        try:
            with self.db.sessions() as s:
                if s.get(Terminal, name) is None:
                    raise NotFoundError(f"no terminal named {name!r}")
                row = s.get(TerminalAuthorization, name)
                any_row = s.scalars(select(TerminalAuthorization).limit(1)).first()
                taken = list(s.scalars(select(TerminalAuthorization.status_index)))
        except SQLAlchemyError as exc:
            raise StorageUnavailableError("database unavailable") from exc
        if row is not None:
            list_id, index = row.status_list_id, row.status_index
        else:
            list_id = (
                any_row.status_list_id
                if any_row is not None
                else _create_status_list(self.chain, self.citizen_list_id)
            )
            index = max(taken, default=-1) + 1
        try:
            self.chain.set_status(list_id, [index], CredentialStatus.VALID)
        except ChainError as exc:
            raise ChainUnavailableError(f"recording the authorization on chain failed: {exc}") from exc
        with self.db.sessions.begin() as s:
            row = s.get(TerminalAuthorization, name)
            if row is None:
                row = TerminalAuthorization(name=name, status_list_id=list_id, status_index=index)
                s.add(row)
            row.claims, row.revoked = "\n".join(claims), False
            detail = f"{name} list={list_id} index={index} claims={','.join(claims)}"[:200]
            s.add(AuditEntry(actor="admin", action="terminal.authorize", outcome="ok", detail=detail))
        logger.info("terminal %s authorized for %d claims (status %d/%d)", name, len(claims), list_id, index)
        return row

    def revoke(self, name: str) -> TerminalAuthorization:
        """Take terminal ``name`` out of service: its on-chain bit becomes REVOKED; no more certificates."""
        with self.db.sessions() as s:
            row = s.get(TerminalAuthorization, name)
        if row is None:
            raise NotFoundError(f"terminal {name!r} has no authorization")
        try:
            self.chain.set_status(row.status_list_id, [row.status_index], CredentialStatus.REVOKED)
        except ChainError as exc:
            raise ChainUnavailableError(f"revoking on chain failed: {exc}") from exc
        with self.db.sessions.begin() as s:
            stored = s.get(TerminalAuthorization, name)
            assert stored is not None
            stored.revoked = True
            s.add(AuditEntry(actor="admin", action="terminal.revoke", outcome="ok", detail=name))
            row = stored
        logger.info("terminal %s taken out of service on chain", name)
        return row

    # --- certificates ------------------------------------------------------------------------------

    def on_chain_status(self, row: TerminalAuthorization) -> CredentialStatus:
        """The terminal's bit as the chain says it now (:class:`ChainUnavailableError` if unreadable)."""
        if self.status_view is None:
            raise ChainUnavailableError("no chain view to read terminal authorizations")
        ref = self._status_ref(row.status_list_id, row.status_index)
        did = self._issuer_did()
        try:
            return self.status_view.verification_facts(did, did, self._vct, ref).status
        except ChainError as exc:
            raise ChainUnavailableError(f"reading the terminal's authorization failed: {exc}") from exc

    def certificate(self, name: str) -> TerminalCertificate:
        """A fresh certificate for terminal ``name`` (the caller, authenticated by its signed request)."""
        if self.signer is None:
            raise TerminalCertificatesDisabledError("no authorization key is configured")
        try:
            with self.db.sessions() as s:
                terminal = s.get(Terminal, name)
                row = s.get(TerminalAuthorization, name)
        except SQLAlchemyError as exc:
            raise StorageUnavailableError("database unavailable") from exc
        if terminal is None or not terminal.active or row is None or row.revoked:
            raise TerminalRevokedError(f"terminal {name!r} is not authorized")
        status = self.on_chain_status(row)
        if status is not CredentialStatus.VALID:
            self._audit(name, "refused", f"on-chain status {status.name.lower()}")
            raise TerminalRevokedError(f"terminal {name!r}: authorization {status.name.lower()} on chain")
        key = P256PublicKey.from_spki(terminal.public_key_pem.encode())
        now = int(self._clock())
        try:
            body = TerminalCertificateBody(
                authority=authority_id(self.root),
                terminal_id=name,
                public_key=key,
                claims=tuple(row.claims.split("\n")),
                not_before=now - CLOCK_SLACK_SECONDS,
                not_after=now + self.lifetime,
                status_list=row.status_list_id,
                status_index=row.status_index,
            )
        except CertificateError as exc:
            raise ValidationError(f"cannot certify terminal {name!r}: {exc}") from exc
        cert = TerminalCertificate(body, self.signer.sign(body.encode()))
        self._audit(name, "ok", f"until {body.not_after}")
        return cert

    def _audit(self, name: str, outcome: str, detail: str) -> None:
        try:
            with self.db.sessions.begin() as s:
                s.add(
                    AuditEntry(actor=name[:64], action="terminal.certificate", outcome=outcome, detail=detail)
                )
        except SQLAlchemyError:
            logger.warning("could not audit the certificate of %s", name[:64])
