"""Per-card management keys for counters (docs/card-profile.md, "Per-card management key"; docs/server.md
§Card management keys).

A counter never holds ``K_city`` and keeps no ``K_card``: it relays the card's 9B mutual authentication to
:meth:`CardKeyService.authenticate` and, once per card before its first enrollment, the SET MANAGEMENT KEY
data from :meth:`CardKeyService.set_key_data`. Both need a counter (or supervisor) terminal and a signed-in
clerk (the signed request), and both are audited with the card's serial hash — never a key or witness.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from cityid.piv import CARD_MANAGEMENT_KEY_ALGORITHM, Slot
from server.management_keys import CardKeyAnswer, CardKeyError, CardKeys
from server.models import Credential, TerminalRole
from server.service.context import ServiceContext, serial_hash
from server.service.errors import (
    ConflictError,
    ForbiddenError,
    ServiceError,
    StorageUnavailableError,
    ValidationError,
)
from server.service.scope import Actor

logger = logging.getLogger(__name__)

_COUNTER_ROLES = (TerminalRole.COUNTER.value, TerminalRole.SUPERVISOR.value)


class CardKeysUnavailableError(ServiceError):
    """This server has no management master key configured, or its HSM failed."""

    status = 503
    code = "card_keys_unavailable"


class CardKeyService:
    """The counter-facing half of :mod:`server.management_keys`."""

    def __init__(self, ctx: ServiceContext, keys: CardKeys | None) -> None:
        self.ctx = ctx
        self.keys = keys

    def _require(self, actor: Actor) -> CardKeys:
        if actor.role not in _COUNTER_ROLES or not actor.clerk:
            self.ctx.audit_now(actor, "cardkey", outcome="refused", detail="not a counter with a clerk")
            raise ForbiddenError("card management keys are for counter terminals with a signed-in clerk")
        if self.keys is None:
            raise CardKeysUnavailableError("no management master key is configured on this server")
        return self.keys

    def authenticate(self, actor: Actor, serial: bytes, algorithm: int, witness: bytes) -> CardKeyAnswer:
        """Answer the card's encrypted ``witness`` (step 1 of the 9B mutual authentication)."""
        keys = self._require(actor)
        if algorithm != CARD_MANAGEMENT_KEY_ALGORITHM:
            raise ValidationError("per-card management keys are AES-128 (algorithm 8)")
        try:
            answer = keys.answer(serial, witness)
        except ValueError as exc:
            raise ValidationError(str(exc)) from exc
        except CardKeyError as exc:
            logger.error("management-key HSM: %s", exc)
            raise CardKeysUnavailableError("the management-key HSM is unavailable") from exc
        self.ctx.audit_now(actor, "cardkey.authenticate", detail=f"card {serial_hash(serial)[:16]}")
        return answer

    def set_key_data(self, actor: Actor, serial: bytes) -> bytes:
        """``<alg 08> 9B <16> K_card``: the data of SET MANAGEMENT KEY for a card not enrolled yet.

        Refused (409) once the card serial has a credential: its key was set before its first enrollment,
        so a counter cannot later fetch the key of a card in circulation (a supervisor can, audited).
        """
        keys = self._require(actor)
        if len(serial) != 8:
            raise ValidationError("a card serial has 8 bytes")
        try:
            with self.ctx.db.sessions() as s:
                known = s.scalar(
                    select(Credential.id).where(Credential.card_serial_hash == serial_hash(serial)).limit(1)
                )
        except SQLAlchemyError as exc:
            raise StorageUnavailableError("database unavailable") from exc
        where = f"card {serial_hash(serial)[:16]}"
        if known is not None and actor.role != TerminalRole.SUPERVISOR.value:
            self.ctx.audit_now(actor, "cardkey.set", outcome="refused", cred=known, detail=where)
            raise ConflictError("this card was enrolled before: its management key is already set")
        try:
            key = keys.card_key(serial)
        except CardKeyError as exc:
            logger.error("management-key HSM: %s", exc)
            raise CardKeysUnavailableError("the management-key HSM is unavailable") from exc
        self.ctx.audit_now(actor, "cardkey.set", detail=where)
        return bytes([CARD_MANAGEMENT_KEY_ALGORITHM, Slot.CARD_MANAGEMENT, len(key)]) + key
