"""The project's handle on one chain node: a :class:`web3.Web3` plus raw reads for the verification path.

:class:`RpcClient` holds ``w3`` (contracts, ABI, signing and sending go through web3: :mod:`.bindings`,
``server.chain.writer``) and exposes the provider's own ``make_request``/``make_batch_request`` for the reads
whose answers are checked field by field rather than believed (proofs, headers, logs: :mod:`.live`,
:mod:`.sync`, :mod:`.proof`). Providers: :class:`~cityid.chain.provider.BoundedHTTPProvider` for any node URL
and :class:`~cityid.chain.embedded.EmbeddedProvider` (web3's ``EthereumTesterProvider``) in process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from web3 import Web3
from web3.middleware.base import Web3Middleware
from web3.providers.base import BaseProvider
from web3.types import MakeBatchRequestFn, MakeRequestFn, RPCEndpoint, RPCResponse

from cityid.chain.errors import MalformedReplyError
from cityid.chain.provider import (
    MAX_JSON_DEPTH,
    MAX_REPLY_BYTES,
    BoundedHTTPProvider,
    check_json_nesting,
    check_rpc_url,
    decode_json,
    is_loopback,
    result_of,
)

logger = logging.getLogger(__name__)

#: The bounded provider by the name callers outside ``cityid.chain`` use: ``RpcClient(HttpTransport(url))``.
HttpTransport = BoundedHTTPProvider

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_REPLY_BYTES",
    "BoundedHTTPProvider",
    "HttpTransport",
    "RpcClient",
    "as_bytes",
    "as_dict",
    "as_int",
    "as_list",
    "check_json_nesting",
    "check_rpc_url",
    "connect",
    "decode_json",
    "is_loopback",
]


class RpcClient:
    """One node: ``w3`` for web3's API, :meth:`request`/:meth:`batch` for raw checked reads (thread-safe).

    Built without web3's default middleware (no hidden extra round trips: chain-id validation, gas
    buffering); its only middleware counts :attr:`round_trips` per client.
    """

    def __init__(self, provider: BaseProvider) -> None:
        self.provider = provider
        self.round_trips = 0  # requests + batches sent through THIS client (raw reads and web3 calls)
        self._count_lock = threading.Lock()
        self.w3 = Web3(provider, middleware=[_round_trip_counter(self)])

    @property
    def transport(self) -> BaseProvider:
        """The provider (``trusted`` tells whether its answers need proofs)."""
        return self.provider

    @property
    def url(self) -> str:
        provider = self.provider
        return str(getattr(provider, "url", None) or getattr(provider, "endpoint_uri", provider))

    def count(self) -> None:
        with self._count_lock:
            self.round_trips += 1

    def request(self, method: str, params: Sequence[Any] = ()) -> Any:
        """One call, one round trip, raw result; raises a :class:`ChainError` subclass on any failure."""
        self.count()
        return result_of(self.provider.make_request(RPCEndpoint(method), list(params)))

    def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Several calls in ONE round trip (the provider's JSON-RPC batch); raw results in call order.

        The first failing call's error is raised (all or nothing).
        """
        if not calls:
            return []
        make_batch = getattr(self.provider, "make_batch_request", None)
        if make_batch is None:  # pragma: no cover - both project providers batch
            raise MalformedReplyError(f"provider {self.provider} cannot batch")
        self.count()
        replies = make_batch([(RPCEndpoint(m), list(p)) for m, p in calls])
        if not isinstance(replies, list) or len(replies) != len(calls):
            raise MalformedReplyError(f"batch of {len(calls)} answered with {str(replies)[:120]}")
        return [result_of(r) for r in replies]


def _round_trip_counter(client: RpcClient) -> type[Web3Middleware]:
    """web3 middleware counting this client's requests and batches (the only middleware it runs)."""

    class RoundTrips(Web3Middleware):
        def wrap_make_request(self, make_request: MakeRequestFn) -> MakeRequestFn:
            def counted(method: RPCEndpoint, params: Any) -> RPCResponse:
                client.count()
                return make_request(method, params)

            return counted

        def wrap_make_batch_request(self, make_batch_request: MakeBatchRequestFn) -> MakeBatchRequestFn:
            def counted(requests: list[tuple[RPCEndpoint, Any]]) -> Any:
                client.count()
                return make_batch_request(requests)

            return counted

    return RoundTrips


# ---- raw reply validation helpers (a malformed reply must never turn into a wrong answer) ----


def as_int(value: Any, what: str) -> int:
    """A JSON-RPC QUANTITY (0x-hex, no leading zeros required) as int."""
    if isinstance(value, str) and value.startswith("0x"):
        try:
            return int(value, 16)
        except ValueError:
            pass
    raise MalformedReplyError(f"{what}: expected a hex quantity, got {str(value)[:80]!r}")


def as_bytes(value: Any, what: str, length: int | None = None) -> bytes:
    """A JSON-RPC DATA (0x-hex, even length) as bytes, optionally of an exact length."""
    if isinstance(value, str) and value.startswith("0x") and len(value) % 2 == 0:
        try:
            data = bytes.fromhex(value[2:])
        except ValueError:
            data = None
        if data is not None and (length is None or len(data) == length):
            return data
    raise MalformedReplyError(f"{what}: expected hex data{f' of {length} bytes' if length else ''}")


def as_dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedReplyError(f"{what}: expected an object, got {type(value).__name__}")
    return value


def as_list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise MalformedReplyError(f"{what}: expected an array, got {type(value).__name__}")
    return value


def connect(rpc_url: str, timeout: float = 5.0, *, allow_plain: bool = False) -> RpcClient:
    """A client for an HTTP(S) JSON-RPC URL on the bounded provider (the embedded chain hands out its own).

    ``https://`` is required off the loopback (:func:`check_rpc_url`).
    """
    return RpcClient(BoundedHTTPProvider(rpc_url, timeout=timeout, allow_plain=allow_plain))
