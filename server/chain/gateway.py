"""The issuer's view of the chain: the few registrar operations the server performs.

``ChainGateway`` is the port the issuing service depends on; :class:`RegistrarGateway` implements it on
``cityid.chain`` (embedded py-evm chain or a JSON-RPC node such as anvil). Every operation is idempotent on
chain (setting a status bit twice, re-adding the same key), which is what makes enrollment retries safe.
Opening the gateway and starting the service send no transaction (docs/chain.md §Roles).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from cityid.chain.view import ChainError, CredentialStatus
from server.chain.issuer import IssuerState, check_status_list, default_issuer_did, read_issuer_state

if TYPE_CHECKING:
    from cityid.chain.embedded import EmbeddedChain

logger = logging.getLogger(__name__)

#: How long a key registered on a citizen DID stays valid (ERC-1056 attribute validity, seconds).
KEY_VALIDITY_SECONDS = 10 * 365 * 24 * 3600


class ChainGateway(Protocol):
    """Registrar operations used by :class:`server.service.IssuerService` (hot key: no issuer publishing)."""

    @property
    def chain_id(self) -> int: ...

    @property
    def status_registry(self) -> str: ...

    def new_citizen_identity(self) -> str:
        """A fresh identity address for a citizen DID (no private key; the registrar controls it)."""
        ...

    def did_for(self, identity: str) -> str: ...

    def register_keys(self, entries: Sequence[tuple[str, bytes]]) -> None:
        """Add P-256 keys (card or FIDO) to citizen DIDs, one batch."""
        ...

    def revoke_keys(self, entries: Sequence[tuple[str, bytes]]) -> None: ...

    def set_status(self, list_id: int, indexes: Sequence[int], status: CredentialStatus) -> None: ...

    def issuer_state(self, issuer_point: bytes, vct: str) -> IssuerState:
        """Read (never write) whether the issuer DID has this key published and is accredited for ``vct``."""
        ...


class RegistrarGateway:
    """:class:`ChainGateway` on ``server.chain.registrar.Registrar``.

    Citizen identities are derived from a public random hash and owned by the registrar (docs/chain.md §DID
    control). The issuer DID is configured (``issuer_did``) or, by default, the trusted-issuer root's DID;
    the gateway only reads it — publishing is the root's ceremony (:mod:`server.chain.issuer`).
    """

    embedded: EmbeddedChain  # set only for the embedded chain: the demo's kiosk reads the same chain

    def __init__(self, registrar: Any, issuer_did: str | None = None) -> None:
        self.registrar = registrar
        self._issuer_did = issuer_did or None

    @property
    def chain_id(self) -> int:
        return int(self.registrar.network.chain_id)

    @property
    def status_registry(self) -> str:
        return str(self.registrar.status.address)

    @property
    def issuer_did(self) -> str:
        if self._issuer_did is None:
            self._issuer_did = self._call("issuer DID", default_issuer_did, self.registrar)
        return self._issuer_did

    def new_citizen_identity(self) -> str:
        from cityid.chain.resolver import identity_from_public_hash

        return identity_from_public_hash(hashlib.sha256(secrets.token_bytes(32)).digest())

    def did_for(self, identity: str) -> str:
        return str(self.registrar.did_of(identity))

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ChainError:
            raise
        except (OSError, ValueError, RuntimeError) as exc:  # below the chain layer: surface as ChainError
            logger.warning("chain %s failed: %s", what, type(exc).__name__)
            raise ChainError(f"chain {what} failed: {type(exc).__name__}") from exc

    def register_keys(self, entries: Sequence[tuple[str, bytes]]) -> None:
        if entries:
            batch = [(identity, [point]) for identity, point in entries]
            self._call("enroll", self.registrar.enroll_citizens, batch, KEY_VALIDITY_SECONDS)

    def revoke_keys(self, entries: Sequence[tuple[str, bytes]]) -> None:
        """Revoke lost cards' keys in batched ``revokeKeysBatch`` transactions (standard events)."""
        if entries:
            self._call("revoke keys", self.registrar.revoke_keys, list(entries))

    def set_status(self, list_id: int, indexes: Sequence[int], status: CredentialStatus) -> None:
        if indexes:
            self._call("set status", self.registrar.set_status, list_id, list(indexes), status)

    def check_status_list(self, list_id: int) -> None:
        """Read-only: the list exists and this registrar owns it (else :class:`ChainError`)."""
        self._call("status list", check_status_list, self.registrar, list_id)

    def issuer_state(self, issuer_point: bytes, vct: str) -> IssuerState:
        did = self.issuer_did
        return self._call("issuer state", read_issuer_state, self.registrar, did, issuer_point, vct)


def open_chain(config: Any, issuer_point: bytes | None = None) -> RegistrarGateway:
    """The configured chain, opened without sending a transaction on a real network.

    ``embedded``: an in-process py-evm chain created now (fresh contracts); being new, it is set up here —
    status list, and, with ``issuer_point``, the issuer key published and accredited by the embedded dev
    root (:func:`server.chain.registrar.bootstrap_embedded`). Otherwise a NetworkConfig JSON file, the
    registrar's hot key from env ``CITY_CHAIN_PRIVATE_KEY``; the status list must already exist
    (``city-server status-list ensure``) and the issuer is only read (``city-server issuer publish``, the
    root's ceremony, writes it)."""
    from eth_account import Account

    from cityid.chain.network import NetworkConfig
    from cityid.chain.rpc import HttpTransport, RpcClient
    from server.chain.registrar import Registrar

    if config.chain == "embedded":
        from server.chain.registrar import HOT_INDEX, bootstrap_embedded, start_embedded

        chain = start_embedded(registrar_index=HOT_INDEX)
        roles = bootstrap_embedded(chain, issuer_point, config.status_list_id)
        gateway = RegistrarGateway(roles.registrar, roles.issuer_did)
        gateway.embedded = chain  # the demo's kiosk reads the same chain
        return gateway
    network = NetworkConfig.load(config.chain)
    if not config.chain_private_key:
        raise ChainError("registrar key missing (env CITY_CHAIN_PRIVATE_KEY)")
    try:
        account = Account.from_key(config.chain_private_key)
    except (ValueError, TypeError) as exc:
        raise ChainError("CITY_CHAIN_PRIVATE_KEY is not a valid private key") from exc
    registrar = Registrar(network, RpcClient(HttpTransport(network.rpc_url)), account)
    gateway = RegistrarGateway(registrar, getattr(config, "issuer_did", "") or None)
    gateway.check_status_list(config.status_list_id)
    return gateway
