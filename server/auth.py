"""Terminal request authentication (docs/server.md §Authentication; canonical form in cityid.requestsig).

A request is accepted when its terminal is registered and active, its timestamp is within ±window seconds,
its nonce was never seen from that terminal, and the ES256 signature over the canonical string verifies with
the terminal's registered P-256 key. Anything else is refused with 401 and a JSON error.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import DateTime, String, bindparam, delete, exists, insert, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from cityid.errors import CityIdError
from cityid.jose import JoseError, b64url_decode
from cityid.keys import KeyFormatError, P256PublicKey
from cityid.requestsig import (
    CLERK_PATTERN,
    HEADER_CLERK,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TERMINAL,
    HEADER_TIMESTAMP,
    NONCE_PATTERN,
    canonical_request,
)
from server.db import Database
from server.models import AuditEntry, Terminal, UsedNonce, utcnow
from server.service.scope import Actor

logger = logging.getLogger(__name__)

_TERMINAL_ROW = select(
    Terminal.name, Terminal.public_key_pem, Terminal.active, Terminal.office, Terminal.role
).where(Terminal.name == bindparam("name"))
_NAME = bindparam("terminal", type_=String)
#: The nonce, inserted only while the terminal's row is the one the signature was checked against.
_NONCE_IF_CURRENT = (
    insert(UsedNonce)
    .from_select(
        ["terminal", "nonce", "seen_at"],
        select(
            _NAME, bindparam("nonce", type_=String), bindparam("seen_at", type_=DateTime(timezone=True))
        ).where(
            exists().where(
                Terminal.name == _NAME,
                Terminal.active.is_(True),
                Terminal.public_key_pem == bindparam("pem"),
                Terminal.office == bindparam("office"),
                Terminal.role == bindparam("role"),
            )
        ),
    )
    .returning(UsedNonce.nonce)
)  # a row back: recorded (rowcount is not reliable for INSERT … SELECT)


@dataclass(frozen=True, slots=True)
class _TerminalRow:
    """A registered, active terminal as read from the database."""

    name: str
    pem: str
    key: P256PublicKey
    office: str
    role: str


class AuthError(CityIdError):
    """The request is not authenticated; ``reason`` is a stable code returned in the 401 body."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class HeaderLookup(Protocol):
    """What the authenticator reads from request headers (Flask's ``Headers`` or a plain dict)."""

    def get(self, key: str, default: str, /) -> str: ...


@dataclass(frozen=True, slots=True)
class SignedRequest:
    method: str
    path: str
    headers: HeaderLookup  # case-insensitive in Flask
    body: bytes


class RequestAuthenticator:
    """Verifies signed terminal requests; nonces are stored single-use in the database."""

    def __init__(
        self, db: Database, window_seconds: int = 60, clock: Callable[[], float] = time.time
    ) -> None:
        self.db = db
        self.window = window_seconds
        self.clock = clock
        self._keys: dict[str, tuple[str, P256PublicKey]] = {}
        #: Terminal rows read before, by name (checked again by every nonce insert).
        self._rows: dict[str, _TerminalRow] = {}
        pg = db.engine.dialect.name == "postgresql"
        self._nonce_engine = db.engine.execution_options(isolation_level="AUTOCOMMIT") if pg else db.engine
        self._last_prune = 0.0

    def authenticate(self, req: SignedRequest) -> Actor:
        """Return the caller (terminal, office, role and the signed clerk id), or raise :class:`AuthError`."""
        terminal = req.headers.get(HEADER_TERMINAL, "")
        clerk = req.headers.get(HEADER_CLERK, "") or None
        if clerk is not None and not CLERK_PATTERN.match(clerk):
            raise AuthError("bad_clerk", "clerk id: 1-64 letters, digits, '.', '_', '@' or '-'")
        ts_text = req.headers.get(HEADER_TIMESTAMP, "")
        nonce = req.headers.get(HEADER_NONCE, "")
        sig_text = req.headers.get(HEADER_SIGNATURE, "")
        if not (terminal and ts_text and nonce and sig_text):
            raise AuthError("missing_signature", "request is not signed by a registered terminal")
        if not ts_text.isdigit() or len(ts_text) > 12:
            raise AuthError("bad_timestamp", "timestamp must be integer seconds")
        ts = int(ts_text)
        now = self.clock()
        if abs(now - ts) > self.window:
            raise AuthError(
                "stale", f"timestamp outside the ±{self.window}s window (check the terminal clock)"
            )
        if not NONCE_PATTERN.match(nonce):
            raise AuthError("bad_nonce", "nonce must be 16-64 base64url characters")
        try:
            raw = b64url_decode(sig_text)
        except JoseError as exc:
            raise AuthError("bad_signature", "signature is not base64url") from exc
        if len(raw) != 64:
            raise AuthError("bad_signature", "signature must be a 64-byte ES256 signature")
        message = canonical_request(req.method, req.path, ts, nonce, req.body, clerk)
        # The signature is checked in memory against the terminal's row (kept between requests), then the
        # nonce recorded in ONE statement that inserts it only while that row is still current — active,
        # same key, office and role (only after the signature: a forged request cannot burn a terminal's
        # nonces). A row changed since (disabled, re-keyed, moved) is read again, once.
        refused: str | None = None
        actor: Actor | None = None
        try:
            cached = self._rows.get(terminal)
            for row in (cached, None) if cached is not None else (None,):
                if row is None:
                    row = self._load(terminal)
                if not row.key.verify_raw(raw, message):
                    refused = "bad_signature"
                    continue  # a cached key may be stale: read the row again
                refused = None
                if self._record_nonce(row, nonce):
                    actor = Actor(row.name, row.office, row.role, clerk or "")
                    break
                self._rows.pop(terminal, None)
            if actor is None and refused is None:  # the row changed under a fresh read
                raise AuthError("unknown_terminal", "terminal unknown or disabled")
        except IntegrityError as exc:
            self._audit(terminal, "replay")
            raise AuthError("replayed", "request replayed (nonce already used)") from exc
        except SQLAlchemyError as exc:
            raise AuthError("unavailable", "authentication store unavailable") from exc
        if refused or actor is None:
            self._audit(terminal, refused or "bad_signature")
            raise AuthError("bad_signature", "signature does not verify")
        self._prune(now)
        return actor

    def _load(self, terminal: str) -> _TerminalRow:
        """The terminal's row from the database (kept for next time); refused if unknown or disabled."""
        with self.db.engine.connect() as conn:
            t = conn.execute(_TERMINAL_ROW, {"name": terminal}).one_or_none()
        if t is None or not t.active:
            self._rows.pop(terminal, None)
            raise AuthError("unknown_terminal", "terminal unknown or disabled")
        row = _TerminalRow(t.name, t.public_key_pem, self._key(terminal, t.public_key_pem), t.office, t.role)
        self._rows[terminal] = row
        return row

    def _record_nonce(self, row: _TerminalRow, nonce: str) -> bool:
        """Record ``nonce`` if ``row`` is still the terminal's current, active row (one statement; on
        PostgreSQL in autocommit: no BEGIN/COMMIT round trips); :class:`IntegrityError` on a replay."""
        params = {"terminal": row.name, "nonce": nonce, "seen_at": utcnow(), "pem": row.pem,
                  "office": row.office, "role": row.role}  # fmt: skip
        with self._nonce_engine.begin() as conn:
            return conn.execute(_NONCE_IF_CURRENT, params).first() is not None

    def _key(self, terminal: str, pem: str) -> P256PublicKey:
        """The terminal's registered key, parsed once per registered PEM (a re-registration replaces it)."""
        cached = self._keys.get(terminal)
        if cached is None or cached[0] != pem:
            try:
                key = P256PublicKey.from_spki(pem.encode())
            except KeyFormatError as exc:
                logger.error("terminal %s has an unusable registered key", terminal[:64])
                raise AuthError("unknown_terminal", "terminal unknown or disabled") from exc
            cached = (pem, key)
            self._keys[terminal] = cached
        return cached[1]

    def _audit(self, terminal: str, reason: str) -> None:
        try:
            with self.db.sessions.begin() as s:
                s.add(AuditEntry(actor=terminal[:64], action="auth", outcome="refused", detail=reason))
        except SQLAlchemyError:
            logger.warning("could not audit refused request from %s", terminal[:64])

    def _prune(self, now: float) -> None:
        """Forget nonces older than twice the window: their timestamps can no longer be accepted."""
        if now - self._last_prune < self.window:
            return
        self._last_prune = now
        cutoff = dt.datetime.fromtimestamp(now - 2 * self.window, dt.UTC)
        try:
            with self.db.sessions.begin() as s:
                s.execute(delete(UsedNonce).where(UsedNonce.seen_at < cutoff))
        except SQLAlchemyError:
            logger.warning("nonce pruning failed")
