"""The issuer's view of the chain: the few registrar operations the server performs.

``ChainGateway`` is the port the issuing service depends on; :class:`RegistrarGateway` implements it on
``cityid.chain`` (embedded py-evm chain or a JSON-RPC node such as anvil). Every operation is idempotent on
chain (setting a status bit twice, re-adding the same key), which is what makes enrollment retries safe.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Sequence
from typing import Any, Protocol

from cityid.chain.view import ChainError, CredentialStatus

logger = logging.getLogger(__name__)

#: How long a key registered on a citizen DID stays valid (ERC-1056 attribute validity, seconds).
KEY_VALIDITY_SECONDS = 10 * 365 * 24 * 3600


class ChainGateway(Protocol):
    """Registrar operations used by :class:`server.service.IssuerService`."""

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

    def publish_issuer(self, issuer_point: bytes, vct: str) -> str:
        """Publish the issuer key on the issuer DID, accredit it for ``vct``; return the issuer DID."""
        ...


class RegistrarGateway:
    """:class:`ChainGateway` on ``server.chain.registrar.Registrar``.

    The issuer DID is the registrar account's own DID; citizen identities are derived from a public random
    hash and owned by the registrar (docs/chain.md §DID control). ``status_list_id`` is created on first use.
    """

    def __init__(self, registrar: Any) -> None:
        self.registrar = registrar

    @property
    def chain_id(self) -> int:
        return int(self.registrar.network.chain_id)

    @property
    def status_registry(self) -> str:
        return str(self.registrar.status.address)

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

    def ensure_status_list(self, list_id: int) -> None:
        """Create status lists until ``list_id`` exists; refuse a list another account owns."""
        status = self.registrar.status
        while self._call("status list", status.list_count) < list_id:
            self._call("create status list", self.registrar.create_status_list)
        owner = self._call("status list", status.list_owner, list_id)
        if owner.lower() != self.registrar.address.lower():
            raise ChainError(f"status list {list_id} belongs to {owner}, not to this registrar")

    def publish_issuer(self, issuer_point: bytes, vct: str) -> str:
        did = str(self.registrar.did)
        self._call("publish issuer key", self.registrar.publish_issuer_key, issuer_point)
        until = int(time.time()) + KEY_VALIDITY_SECONDS
        self._call("accredit issuer", self.registrar.accredit_issuer, did, vct, until)
        return did


def open_chain(config: Any) -> RegistrarGateway:
    """The configured chain: ``embedded`` (in-process py-evm, fresh contracts) or a NetworkConfig JSON file
    whose registrar account key comes from env ``CITY_CHAIN_PRIVATE_KEY``."""
    from eth_account import Account

    from cityid.chain.network import NetworkConfig
    from cityid.chain.rpc import HttpTransport, RpcClient
    from server.chain.registrar import Registrar

    if config.chain == "embedded":
        from server.chain.registrar import start_embedded

        chain = start_embedded()
        gateway = RegistrarGateway(Registrar(chain.network, chain.client(), chain.accounts[0]))
        gateway.embedded = chain  # type: ignore[attr-defined]  # the demo's kiosk reads the same chain
    else:
        network = NetworkConfig.load(config.chain)
        if not config.chain_private_key:
            raise ChainError("registrar key missing (env CITY_CHAIN_PRIVATE_KEY)")
        try:
            account = Account.from_key(config.chain_private_key)
        except (ValueError, TypeError) as exc:
            raise ChainError("CITY_CHAIN_PRIVATE_KEY is not a valid private key") from exc
        gateway = RegistrarGateway(Registrar(network, RpcClient(HttpTransport(network.rpc_url)), account))
    gateway.ensure_status_list(config.status_list_id)
    return gateway
