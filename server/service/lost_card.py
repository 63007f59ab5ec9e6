"""Lost-card report by the citizen (docs/server.md §Lost-card report; issue 11 item 3).

At enrollment the citizen chooses a revocation password. The server keeps only
``HMAC-SHA256(CITY_REVOCATION_SECRET, normalised family name ‖ given name ‖ birth date ‖ password)`` → DID.
From the same four values a clerk (or the rate-limited citizen endpoint) revokes every live credential of
that DID and its card keys. A wrong password and an unknown citizen get the same answer, in about the same
time (one HMAC and one indexed lookup either way).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import unicodedata
from collections.abc import Mapping

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from server.models import Credential, CredentialState, RevocationLookup
from server.service.context import ServiceContext
from server.service.errors import StorageUnavailableError, ValidationError
from server.service.scope import Actor
from server.service.status import StatusChanges

logger = logging.getLogger(__name__)

MIN_PASSWORD = 6
MAX_PASSWORD = 128


def normalise_name(name: str) -> str:
    """NFKC, case-folded, inner whitespace collapsed (the citizen may type it differently later)."""
    return " ".join(unicodedata.normalize("NFKC", name).casefold().split())


def check_password(password: object) -> str:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ValidationError(f"revocation password: {MIN_PASSWORD}-{MAX_PASSWORD} characters")
    return unicodedata.normalize("NFKC", password)


def check_person(family_name: object, given_name: object, birthdate: object) -> tuple[str, str, str]:
    if not (
        isinstance(family_name, str)
        and isinstance(given_name, str)
        and isinstance(birthdate, str)
        and all(0 < len(v) <= 100 for v in (family_name, given_name, birthdate))
    ):
        raise ValidationError("family_name, given_name and birthdate are required strings")
    try:
        born = dt.date.fromisoformat(birthdate)
    except ValueError as exc:
        raise ValidationError("birthdate must be YYYY-MM-DD") from exc
    return normalise_name(family_name), normalise_name(given_name), born.isoformat()


class LostCards:
    """Stores lookups at enrollment and revokes by lookup."""

    def __init__(self, ctx: ServiceContext, statuses: StatusChanges) -> None:
        self.ctx = ctx
        self.statuses = statuses

    def _secret(self) -> bytes:
        secret = self.ctx.config.revocation_secret
        if not secret:
            raise ValidationError("revocation passwords are not enabled (CITY_REVOCATION_SECRET)")
        return secret.encode()

    def lookup_hash(
        self, family_name: object, given_name: object, birthdate: object, password: object
    ) -> str:
        family, given, born = check_person(family_name, given_name, birthdate)
        pw = check_password(password)
        # Length-prefixed fields: no two different inputs give the same message.
        msg = b"".join(len(p).to_bytes(4, "big") + p for p in (x.encode() for x in (family, given, born, pw)))
        return hmac.new(self._secret(), b"cityid-lost-card-v1|" + msg, hashlib.sha256).hexdigest()

    def remember(
        self, actor: Actor | str, citizen_did: str, claims: Mapping[str, object], password: str
    ) -> None:
        """At enrollment: keep the keyed hash for the citizen's DID (replaces an earlier one)."""
        lookup = self.lookup_hash(
            claims["family_name"], claims["given_name"], claims["birthdate"], password
        )
        try:
            with self.ctx.db.sessions.begin() as s:
                row = s.get(RevocationLookup, lookup)
                if row is None:
                    s.add(RevocationLookup(lookup=lookup, citizen_did=citizen_did))
                else:
                    row.citizen_did = citizen_did
                self.ctx.audit(s, actor, "lost_card.password", did=citizen_did)
        except SQLAlchemyError as exc:
            raise StorageUnavailableError("database unavailable") from exc

    def report(
        self, actor: Actor | str, family_name: object, given_name: object, birthdate: object, password: object
    ) -> int:
        """Revoke (reason lost) every live credential and card key of the citizen; the count is only
        for the caller's own answer — callers answer the same whether it is 0 or not."""
        lookup = self.lookup_hash(family_name, given_name, birthdate, password)
        try:
            with self.ctx.db.sessions() as s:
                row = s.get(RevocationLookup, lookup)
                ids = [] if row is None else list(
                    s.scalars(
                        select(Credential.id).where(
                            Credential.citizen_did == row.citizen_did,
                            Credential.state.in_([st.value for st in CredentialState if st.live]),
                        )
                    )
                )
        except SQLAlchemyError as exc:
            raise StorageUnavailableError("database unavailable") from exc
        if row is None or not ids:
            self.ctx.audit_now(actor, "lost_card.report", outcome="none")
            return 0
        # The four values and the password are the citizen's authority: no terminal scope applies.
        revoked = self.statuses.revoke_unscoped(actor, ids, "lost")
        self.ctx.audit_now(actor, "lost_card.report", did=row.citizen_did, detail=f"{len(revoked)} revoked")
        return len(revoked)
