"""JSON-RPC 2.0 client for EVM nodes, with timeouts, batches and typed errors.

Every request or batch is exactly one round trip to the node; :attr:`RpcClient.round_trips` counts them (the
verifier's budget is one per cold verification, see docs/chain.md). Transports: :class:`HttpTransport` for any
node URL, and the in-process transport of :mod:`cityid.chain.embedded`.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import requests

from cityid.chain.errors import MalformedReplyError, NodeUnreachableError, RpcError, RpcTimeoutError

logger = logging.getLogger(__name__)


class Transport(Protocol):
    """Moves one JSON-RPC payload (object or batch array) and returns the decoded JSON reply."""

    url: str

    def send(self, payload: Any) -> Any: ...


class HttpTransport:
    """HTTP(S) POST transport with connect/read timeouts and a keep-alive session."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url
        self.timeout = timeout
        self._session = requests.Session()

    def send(self, payload: Any) -> Any:
        try:
            reply = self._session.post(
                self.url,
                data=json.dumps(payload),
                headers={"Content-Type": "application/json"},
                timeout=self.timeout,
            )
        except requests.Timeout as exc:
            raise RpcTimeoutError(self.url, self.timeout) from exc
        except requests.ConnectionError as exc:
            raise NodeUnreachableError(self.url, type(exc).__name__) from exc
        except requests.RequestException as exc:
            raise NodeUnreachableError(self.url, str(exc)) from exc
        if reply.status_code >= 500 and not reply.content:
            raise NodeUnreachableError(self.url, f"HTTP {reply.status_code}")
        try:
            return reply.json()
        except ValueError as exc:
            raise MalformedReplyError(
                f"{self.url} answered HTTP {reply.status_code} with non-JSON ({len(reply.content)} bytes)"
            ) from exc

    def close(self) -> None:
        self._session.close()


def _result_of(reply: Any, request_id: int) -> Any:
    if not isinstance(reply, dict) or reply.get("jsonrpc") != "2.0":
        raise MalformedReplyError(f"not a JSON-RPC 2.0 response: {str(reply)[:120]}")
    if "error" in reply and reply["error"] is not None:
        err = reply["error"]
        if not isinstance(err, dict) or not isinstance(err.get("code"), int):
            raise MalformedReplyError(f"malformed JSON-RPC error object: {str(err)[:120]}")
        raise RpcError(err["code"], str(err.get("message", "")), err.get("data"))
    if "result" not in reply:
        raise MalformedReplyError("JSON-RPC response has neither result nor error")
    if reply.get("id") != request_id:
        raise MalformedReplyError(f"JSON-RPC response id {reply.get('id')!r} does not match {request_id}")
    return reply["result"]


class RpcClient:
    """Thread-safe JSON-RPC client over a :class:`Transport`."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.round_trips = 0
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return self.transport.url

    def _send(self, payload: Any) -> Any:
        with self._lock:
            self.round_trips += 1
        return self.transport.send(payload)

    def request(self, method: str, params: Sequence[Any] = ()) -> Any:
        """One call, one round trip; raises a :class:`ChainError` subclass on any failure."""
        request_id = next(self._ids)
        logger.debug("rpc %s", method)
        reply = self._send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": list(params)})
        return _result_of(reply, request_id)

    def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Several calls in ONE round trip (JSON-RPC 2.0 §6); results in call order.

        The first failing call's error is raised (all or nothing).
        """
        if not calls:
            return []
        ids = [next(self._ids) for _ in calls]
        payload = [
            {"jsonrpc": "2.0", "id": i, "method": m, "params": list(p)}
            for i, (m, p) in zip(ids, calls, strict=True)
        ]
        logger.debug("rpc batch %s", [m for m, _ in calls])
        reply = self._send(payload)
        if isinstance(reply, dict) and "error" in reply:
            _result_of(reply, reply.get("id"))  # raises RpcError for a whole-batch error
        if not isinstance(reply, list) or len(reply) != len(calls):
            raise MalformedReplyError(f"batch of {len(calls)} answered with {str(reply)[:120]}")
        by_id = {r.get("id"): r for r in reply if isinstance(r, dict)}
        if set(by_id) != set(ids):
            raise MalformedReplyError("batch response ids do not match the request ids")
        return [_result_of(by_id[i], i) for i in ids]


# ---- reply validation helpers (a malformed reply must never turn into a wrong answer) ----


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


def as_dict(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise MalformedReplyError(f"{what}: expected an object, got {type(value).__name__}")
    return value


def as_list(value: Any, what: str) -> list:
    if not isinstance(value, list):
        raise MalformedReplyError(f"{what}: expected an array, got {type(value).__name__}")
    return value


def connect(rpc_url: str, timeout: float = 5.0) -> RpcClient:
    """A client for an HTTP(S) JSON-RPC URL (the embedded chain hands out its own clients)."""
    from cityid.chain.errors import ChainConfigError

    if not rpc_url.startswith(("http://", "https://")):
        raise ChainConfigError(
            f"rpc_url must be http(s)://…, not {rpc_url!r} (embedded: use EmbeddedChain.client())"
        )
    return RpcClient(HttpTransport(rpc_url, timeout=timeout))
