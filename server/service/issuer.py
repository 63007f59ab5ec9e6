"""The issuer's readiness, read from chain — never written by the server (docs/chain.md §Roles and keys).

Publishing the issuer key on the issuer DID and accrediting that DID is the city root's ceremony
(``city-server issuer publish``); the server only reads the result: at start-up (so a restart sends no
transaction and a de-accredited issuer stays de-accredited) and before issuing, at most every
``RECHECK_SECONDS``, so it does not hand out credentials that every kiosk would refuse.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from cityid.chain.view import ChainError
from server.chain.issuer import IssuerState
from server.service.context import ServiceContext
from server.service.errors import ChainUnavailableError, ServiceError

logger = logging.getLogger(__name__)

#: How long a readiness answer is reused before issuing reads the chain again.
RECHECK_SECONDS = 30.0


class IssuerNotReadyError(ServiceError):
    """The issuer key is not published on the issuer DID, or the DID is not (or no longer) accredited."""

    status = 503
    code = "issuer_not_ready"


class IssuerReadiness:
    """Reads and caches the issuer's chain state; :meth:`require_ready` guards issuance."""

    def __init__(self, ctx: ServiceContext, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.ctx = ctx
        self._monotonic = monotonic
        self._state: IssuerState | None = None
        self._read_at = 0.0

    @property
    def state(self) -> IssuerState | None:
        return self._state

    def check(self) -> IssuerState:
        """The issuer's current chain state (read-only); sets the context's ``issuer_did``."""
        ctx = self.ctx
        try:
            state = ctx.chain.issuer_state(ctx.signer.public_point, ctx.vct)
        except ChainError as exc:
            raise ChainUnavailableError(str(exc)) from exc
        ctx.issuer_did = state.did
        self._state, self._read_at = state, self._monotonic()
        return state

    def start(self) -> IssuerState:
        """Start-up: read the state, warn and audit (in the database only) when kiosks would refuse."""
        state = self.check()
        if not state.ready:
            logger.warning(
                "issuer %s is not ready on chain (key published: %s, accredited: %s, revoked: %s): kiosks "
                "will refuse its credentials; the city root runs `city-server issuer publish`",
                state.did,
                state.key_published,
                state.accredited,
                state.revoked,
            )
        self.ctx.audit_now(
            "server",
            "issuer.check",
            outcome="ok" if state.ready else "not_ready",
            did=state.did,
            detail=(
                f"key_published={state.key_published} accredited={state.accredited} revoked={state.revoked}"
            ),
        )
        return state

    def require_ready(self) -> None:
        """Refuse to issue (503 ``issuer_not_ready``) while kiosks would refuse this issuer's credentials."""
        state = self._state
        if state is None or self._monotonic() - self._read_at >= RECHECK_SECONDS or not state.ready:
            state = self.check()
        if not state.ready:
            what = (
                "de-accredited"
                if state.revoked
                else "not accredited"
                if state.key_published
                else "unpublished"
            )
            raise IssuerNotReadyError(
                f"issuer {state.did} is {what} on chain; the city root must run `city-server issuer publish`"
            )
