"""Who may act on what: terminal office and role, the clerk, and the citizen's proof of presence
(docs/server.md §Scopes).

* A **counter** acts on credentials it issued, or on those of a citizen physically present — proved by a
  *presence* object: an ES256 signature by one of the DID's current keys (a live credential's card key or a
  registered FIDO key) over :func:`cityid.requestsig.canonical_presence`, naming this terminal, the DID and
  the target, fresh (±window) and single-use.
* A **supervisor** also acts on credentials issued by any terminal of its office.
* Adding a card or FIDO key to an existing DID needs presence, or a supervisor of an office that issued a
  credential of that DID. Every refusal is audited with terminal and clerk.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from cityid.jose import JoseError, b64url_decode, point_from_jwk
from cityid.keys import KeyFormatError, P256PublicKey
from cityid.requestsig import NONCE_PATTERN, canonical_presence
from server.models import (
    Citizen,
    Credential,
    CredentialState,
    FidoKey,
    Terminal,
    TerminalRole,
    UsedNonce,
    utcnow,
)
from server.service.context import ServiceContext
from server.service.errors import ForbiddenError, NotFoundError, StorageUnavailableError, ValidationError

_KEY_STATES = (CredentialState.ISSUED.value, CredentialState.SUSPENDED.value)


@dataclass(frozen=True, slots=True)
class Actor:
    """The authenticated caller: terminal, its office and role, and the clerk named in the signed request."""

    terminal: str
    office: str = "main"
    role: str = TerminalRole.COUNTER.value
    clerk: str = ""

    @property
    def supervisor(self) -> bool:
        return self.role == TerminalRole.SUPERVISOR.value


@dataclass(frozen=True, slots=True)
class Presence:
    """A citizen's fresh signature with a current key of ``citizen_did`` (parsed, not yet verified)."""

    point: bytes
    timestamp: int
    nonce: str
    signature: bytes

    @classmethod
    def parse(cls, data: object) -> Presence:
        """From the API's ``presence`` object: ``{"key": JWK, "timestamp", "nonce", "signature"}``."""
        if not isinstance(data, Mapping) or set(data) != {"key", "timestamp", "nonce", "signature"}:
            raise ValidationError("presence must be {key, timestamp, nonce, signature}")
        ts, nonce = data["timestamp"], data["nonce"]
        if not isinstance(ts, int) or isinstance(ts, bool) or not 0 < ts < 10**12:
            raise ValidationError("presence.timestamp must be unix seconds")
        if not isinstance(nonce, str) or not NONCE_PATTERN.match(nonce):
            raise ValidationError("presence.nonce must be 16-64 base64url characters")
        try:
            point = point_from_jwk(data["key"])
            sig = b64url_decode(data["signature"]) if isinstance(data["signature"], str) else b""
        except (JoseError, KeyFormatError, TypeError, ValueError) as exc:
            raise ValidationError("presence.key must be a P-256 JWK") from exc
        if len(sig) != 64:
            raise ValidationError("presence.signature must be a 64-byte ES256 signature (base64url)")
        return cls(point, ts, nonce, sig)


class Scopes:
    """Resolves actors and decides, auditing every refusal."""

    def __init__(
        self, ctx: ServiceContext, window_seconds: int = 120, clock: Callable[[], float] = time.time
    ) -> None:
        self.ctx = ctx
        self.window = window_seconds
        self.clock = clock

    def resolve(self, actor: Actor | str) -> Actor:
        """An :class:`Actor` (a bare terminal name gets its office and role from the database)."""
        if isinstance(actor, Actor):
            return actor
        with self.ctx.db.sessions() as s:
            t = s.get(Terminal, actor)
        if t is None:
            return Actor(actor)
        return Actor(t.name, t.office, t.role)

    def refuse(self, actor: Actor, action: str, message: str, **kw: Any) -> ForbiddenError:
        self.ctx.audit_now(actor, action, outcome="refused", **kw)
        return ForbiddenError(message)

    def _offices(self, terminals: Iterable[str]) -> dict[str, str]:
        names = set(terminals)
        with self.ctx.db.sessions() as s:
            return {t.name: t.office for t in s.scalars(select(Terminal).where(Terminal.name.in_(names)))}

    def check_credentials(
        self, actor: Actor, action: str, rows: list[Credential], presence: Presence | None
    ) -> None:
        """Refuse (403, audited) unless every row is in the actor's scope."""
        offices = self._offices(r.terminal for r in rows)
        present_for: str | None = None
        for r in rows:
            if r.terminal == actor.terminal:
                continue
            if actor.supervisor and offices.get(r.terminal) == actor.office:
                continue
            if presence is not None and present_for != r.citizen_did:
                self.verify_presence(actor, action, r.citizen_did, presence, cred=r.id)
                present_for = r.citizen_did
            if present_for == r.citizen_did:
                continue
            raise self.refuse(
                actor,
                action,
                "credential issued elsewhere: the citizen's card or key, or a supervisor of its office",
                cred=r.id,
                did=r.citizen_did,
                detail=f"out of scope (issued by {r.terminal})",
            )

    def check_add_key(self, actor: Actor, action: str, citizen_did: str, presence: Presence | None) -> None:
        """Adding a card or FIDO key to an existing DID: presence, or a supervisor of an issuing office."""
        with self.ctx.db.sessions() as s:
            if s.get(Citizen, citizen_did) is None:
                raise NotFoundError("unknown citizen DID")
        if presence is not None:
            self.verify_presence(actor, action, citizen_did, presence)
            return
        if actor.supervisor:
            with self.ctx.db.sessions() as s:
                issuers = set(
                    s.scalars(select(Credential.terminal).where(Credential.citizen_did == citizen_did))
                )
            if actor.office in self._offices(issuers).values():
                return
        raise self.refuse(
            actor,
            action,
            "adding a key to an existing DID needs the citizen's current card or key, or a supervisor",
            did=citizen_did,
            detail="no presence",
        )

    def current_keys(self, citizen_did: str) -> set[bytes]:
        """The DID's current keys: live credentials' card keys and registered FIDO keys."""
        with self.ctx.db.sessions() as s:
            cards = s.scalars(
                select(Credential.card_key).where(
                    Credential.citizen_did == citizen_did, Credential.state.in_(_KEY_STATES)
                )
            )
            fido = s.scalars(select(FidoKey.point).where(FidoKey.citizen_did == citizen_did))
            return {bytes.fromhex(k) for k in [*cards, *fido]}

    def verify_presence(
        self,
        actor: Actor,
        action: str,
        citizen_did: str,
        presence: Presence,
        cred: str | None = None,
    ) -> None:
        """Check the presence proof; a failure is a 403, audited (no detail on which check failed)."""

        def fail(why: str) -> ForbiddenError:
            return self.refuse(
                actor, action, "the citizen's presence proof was not accepted", cred=cred,
                did=citizen_did, detail=f"presence refused: {why}",
            )  # fmt: skip

        if abs(self.clock() - presence.timestamp) > self.window:
            raise fail("stale")
        if presence.point not in self.current_keys(citizen_did):
            raise fail("not a current key of the DID")
        message = canonical_presence(actor.terminal, citizen_did, action, presence.timestamp, presence.nonce)
        if not P256PublicKey.from_point(presence.point).verify_raw(presence.signature, message):
            raise fail("bad signature")
        tag = "presence:" + hashlib.sha256(citizen_did.encode()).hexdigest()[:40]
        try:
            with self.ctx.db.sessions.begin() as s:
                s.add(UsedNonce(terminal=tag, nonce=presence.nonce, seen_at=utcnow()))
        except IntegrityError as exc:
            raise fail("replayed") from exc
        except SQLAlchemyError as exc:
            raise StorageUnavailableError("database unavailable") from exc
