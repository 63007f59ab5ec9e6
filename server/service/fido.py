"""FIDO2 keys on a citizen DID: the key's P-256 point is published as a citizen key attribute (docs/chain.md
§DID control) and remembered (with a hash of its credential id) so one key belongs to one DID only."""

from __future__ import annotations

import hashlib

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from server.models import Citizen, FidoKey
from server.outbox.store import enqueue_key
from server.service.context import ServiceContext
from server.service.errors import ConflictError, NotFoundError
from server.service.scope import Actor, Presence, Scopes


class FidoKeys:
    """Registration of FIDO2 credentials' public keys on citizen DIDs."""

    def __init__(self, ctx: ServiceContext, scopes: Scopes | None = None) -> None:
        self.ctx = ctx
        self.scopes = scopes or Scopes(ctx)

    def register(
        self,
        actor: Actor | str,
        citizen_did: str,
        point: bytes,
        fido_credential_id: bytes,
        presence: Presence | None = None,
    ) -> bool:
        """Add a FIDO2 credential's P-256 key to the citizen DID; returns False if it was already there.

        Needs the citizen's presence proof (current card or key) or a supervisor (§Scopes)."""
        ctx = self.ctx
        terminal = self.scopes.resolve(actor)
        with ctx.db.sessions() as s:
            citizen = s.get(Citizen, citizen_did)
            if citizen is None:
                raise NotFoundError("unknown citizen DID")
            existing = s.scalar(select(FidoKey).where(FidoKey.point == point.hex()))
            identity = citizen.identity
        if existing is not None:
            if existing.citizen_did != citizen_did:
                raise ConflictError("this FIDO key is registered to another DID")
            ctx.audit_now(terminal, "fido.register", outcome="ok", did=citizen_did, detail="already")
            return False
        self.scopes.check_add_key(terminal, "fido.register", citizen_did, presence)
        try:
            with ctx.db.sessions.begin() as s:  # the key and its outbox row together (§Chain outbox)
                s.add(
                    FidoKey(
                        citizen_did=citizen_did,
                        point=point.hex(),
                        fido_credential_id_hash=hashlib.sha256(fido_credential_id).hexdigest(),
                    )
                )
                s.flush()
                enqueue_key(s, identity, point)
                ctx.audit(s, terminal, "fido.register", did=citizen_did)
        except IntegrityError:
            return False
        return True
