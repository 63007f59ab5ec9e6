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

from cityid.chainview import ChainError, CredentialStatus

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


def identity_from_point(point: bytes) -> str:
    """The issuer's identity address: derived from its public key (keccak-256, like an Ethereum address)."""
    from eth_utils import keccak, to_checksum_address

    return to_checksum_address(keccak(b"busan-issuer:" + point)[12:])


class RegistrarGateway:
    """:class:`ChainGateway` on top of ``cityid.chain.registrar`` (written by the chain helper)."""

    def __init__(
        self, registrar: Any, chain_id: int, status_registry: str, network: str | None = None
    ) -> None:
        self._registrar = registrar
        self._chain_id = chain_id
        self._status_registry = status_registry
        self._network = network

    @property
    def chain_id(self) -> int:
        return self._chain_id

    @property
    def status_registry(self) -> str:
        return self._status_registry

    def new_citizen_identity(self) -> str:
        from eth_utils import keccak, to_checksum_address

        seed = hashlib.sha256(b"busan-citizen:" + secrets.token_bytes(32)).digest()
        return to_checksum_address(keccak(seed)[12:])

    def did_for(self, identity: str) -> str:
        return f"did:ethr:{self._network or hex(self._chain_id)}:{identity}"

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ChainError:
            raise
        except Exception as exc:  # a web3/py-evm failure below the registrar: surface as ChainError
            logger.warning("chain %s failed: %s", what, type(exc).__name__)
            raise ChainError(f"chain {what} failed: {type(exc).__name__}: {exc}") from exc

    def register_keys(self, entries: Sequence[tuple[str, bytes]]) -> None:
        if entries:
            self._call("enroll", self._registrar.enroll_citizens, list(entries), KEY_VALIDITY_SECONDS)

    def revoke_keys(self, entries: Sequence[tuple[str, bytes]]) -> None:
        for identity, point in entries:
            self._call("revoke key", self._registrar.revoke_key, identity, point)

    def set_status(self, list_id: int, indexes: Sequence[int], status: CredentialStatus) -> None:
        if indexes:
            self._call("set status", self._registrar.set_status, list_id, list(indexes), int(status))

    def publish_issuer(self, issuer_point: bytes, vct: str) -> str:
        identity = identity_from_point(issuer_point)
        did = self.did_for(identity)
        self._call("publish issuer key", self._registrar.publish_issuer_key, identity, issuer_point)
        self._call(
            "accredit issuer",
            self._registrar.accredit_issuer,
            did,
            vct,
            int(time.time()) + KEY_VALIDITY_SECONDS,
        )
        return did


def open_chain(config: Any) -> ChainGateway:
    """The configured chain: ``embedded`` (in-process py-evm) or a NetworkConfig JSON file."""
    try:
        from cityid.chain import registrar as _registrar  # noqa: F401
    except ImportError as exc:
        raise ChainError("the chain layer (cityid.chain) is not available") from exc
    raise ChainError("chain configuration not supported yet")
