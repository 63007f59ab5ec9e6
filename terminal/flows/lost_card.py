"""Counter flow: report a lost or stolen card (docs/server.md §Status changes) and look up a credential.

The server flips the credential's status bit and revokes the card key on the citizen's DID; the flow checks
the credential exists first (``KeyError`` before anything is written) and answers the state after.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from terminal.server_client import ServerError

logger = logging.getLogger(__name__)


class StatusServer(Protocol):
    """What the flow needs from the city server (:class:`terminal.server_client.ServerClient`)."""

    def revoke(self, credential_ids: list[str], reason: str) -> list[str]: ...

    def status(self, credential_id: str) -> dict[str, Any]: ...

    def report_lost(self, family_name: str, given_name: str, birthdate: str, password: str) -> str: ...


@dataclass(frozen=True, slots=True)
class CredentialState:
    """A credential's status as the server and chain see it (identifiers only)."""

    credential_id: str
    state: str  # "issued", "revoked", "suspended", "superseded", "pending"
    did: str = ""
    status_index: int | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CredentialState:
        status = data.get("status") if isinstance(data.get("status"), dict) else {}
        index = status.get("index") if isinstance(status, dict) else None
        return cls(
            str(data.get("credential_id", "")),
            str(data.get("state", "unknown")),
            str(data.get("citizen_did", "")),
            index if isinstance(index, int) else None,
        )


class LostCardReport:
    """Revoke a lost or stolen card's credential; look up a credential's state."""

    def __init__(self, server: StatusServer) -> None:
        self.server = server

    def status(self, credential_id: str) -> CredentialState:
        """The credential's state; ``KeyError`` when the server does not know it."""
        try:
            return CredentialState.from_json(self.server.status(credential_id))
        except ServerError as exc:
            if exc.status == 404:
                raise KeyError(credential_id) from None
            raise

    def report_by_password(self, family_name: str, given_name: str, birthdate: str, password: str) -> None:
        """Lost-card report from the citizen's details and revocation password; the server answers the
        same whether or not they match, so there is nothing to return."""
        self.server.report_lost(family_name, given_name, birthdate, password)
        logger.info("lost-card report by revocation password sent")

    def report(self, credential_id: str, reason: str) -> CredentialState:
        """Revoke ``credential_id`` for ``reason`` ("lost", "stolen", …) and return its new state."""
        self.status(credential_id)  # 404 → KeyError before anything is written
        self.server.revoke([credential_id], reason)
        logger.info("credential %s revoked (%s)", credential_id, reason)
        return self.status(credential_id)
