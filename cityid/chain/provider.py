"""The kiosk's bounded, untrusting transport as a web3 provider (docs/chain.md, "Transport").

:class:`BoundedHTTPProvider` is a :class:`web3.providers.base.JSONBaseProvider`: web3 builds the JSON-RPC
requests and formats the results; this class moves the bytes with ONE deadline for the whole request (not per
socket read), bounds reply size (32 MiB) and nesting (64) BEFORE decoding, checks the JSON-RPC envelope (id,
version, error object) of every reply and of every batch member, and raises only typed
:mod:`cityid.chain.errors`. ``https://`` is required off the loopback. Every request or batch is one round
trip; :attr:`BoundedHTTPProvider.round_trips` counts them (the verifier's budget, docs/chain.md).
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import json
import logging
import math
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any, cast

from web3._utils.encoding import FriendlyJsonSerde, Web3JsonEncoder
from web3.providers.base import JSONBaseProvider
from web3.types import RPCEndpoint, RPCResponse

from cityid.chain.errors import MalformedReplyError, NodeUnreachableError, RpcError, RpcTimeoutError

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
MAX_REPLY_BYTES = 32 * 1024 * 1024  # an eth_getLogs of a busy registry stays far below this
MAX_JSON_DEPTH = 64  # JSON-RPC replies of the methods we use nest < 10 levels
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # unrolled: ~6x faster than (?:[^"\\]|\\.)*
_BRACKETS = bytes(range(256)).translate(None, b"[]{}")  # translate(None, _BRACKETS) keeps the brackets
_MARKS = bytes(range(256)).translate(None, b'[]{}"')  # ... and this the brackets and quotes
_SQUARE = bytes.maketrans(b"{}", b"[]")


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_rpc_url(url: str, *, allow_plain: bool = False) -> urllib.parse.SplitResult:
    """``https://``/``wss://`` for any node off the loopback; plain only with ``allow_plain`` (logged loudly).

    Raises :class:`ChainConfigError` otherwise (docs/chain.md, "Transport").
    """
    from cityid.chain.errors import ChainConfigError

    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ChainConfigError(f"rpc_url must be https://host…, not {url!r}")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        if not allow_plain:
            raise ChainConfigError(
                f"rpc_url {url!r} is plain http to a node off the loopback: use https:// "
                "(or the test-only option allow_plain_http)"
            )
        logger.warning(
            "INSECURE: chain node %s is reached over plain http off the loopback (allow_plain_http is set; "
            "test use only — any host on the path can forge chain answers)",
            url,
        )
    return parts


def check_json_nesting(data: bytes, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Reject JSON nested deeper than ``max_depth`` BEFORE decoding it.

    Importing py_ecc raises the recursion limit to 100,000, so CPython's C JSON decoder overflows the C stack
    (SIGSEGV) on deep input instead of raising RecursionError (FIELD-NOTES "Chain trust").
    """
    if b"\\" in data:  # with escapes the (slower) regex finds the strings
        brackets = _JSON_STRING.sub(b"", data).translate(None, _BRACKETS)
    else:
        # Without escapes (node replies are hex) the k-th string lies between quotes 2k-1 and 2k. Keeping only
        # quotes and brackets, every string without brackets becomes an adjacent pair '""'; removing those
        # pairs (one left-to-right pass) leaves exactly the structural brackets when no quote is left. (A
        # string holding a bracket keeps its opening quote: then split on quotes, the exact way.)
        marks = data.translate(None, _MARKS)
        brackets = marks.replace(b'""', b"")
        if b'"' in brackets:
            brackets = b"".join(marks.split(b'"')[0::2])
    if len(brackets) <= 2 * max_depth:
        return  # cannot be deeper than max_depth
    # One pass of replace() drops every bracket pair adjacent in its input — the leaves of the nesting tree
    # (one kind of bracket: the bound counts "[" and "{" alike) — so a balanced sequence is empty after
    # exactly as many passes as it is deep. What is left after max_depth passes is counted exactly (deeper,
    # or unbalanced: json.loads rejects it).
    rest = brackets.translate(_SQUARE)
    for _ in range(max_depth):
        rest = rest.replace(b"[]", b"")
        if not rest:
            return
    depth = 0
    for c in brackets:
        if c in (0x5B, 0x7B):
            depth += 1
            if depth > max_depth:
                raise MalformedReplyError(f"JSON reply nested deeper than {max_depth} levels")
        else:
            depth -= 1


def decode_json(data: bytes, what: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Bounded JSON decoding of an untrusted reply; any failure is a :class:`MalformedReplyError`."""
    check_json_nesting(data, max_depth)
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise MalformedReplyError(f"{what} is not JSON ({len(data)} bytes)") from exc


class _DeadlineSocket:
    """Wraps a connected socket so that every receive waits at most until the request's deadline.

    ``requests``/``http.client`` timeouts are per socket read: a node dripping one byte every 0.5 s would hold
    a verification forever. Here each ``recv_into`` gets the time left until ONE deadline for the request.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.deadline = math.inf

    def _arm(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request deadline passed")
        self._sock.settimeout(left)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        self._arm()
        return self._sock.recv_into(buffer, nbytes, flags)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self._arm()
        return self._sock.recv(bufsize, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        self._arm()
        self._sock.sendall(data, flags)

    def makefile(self, mode: str = "rb", buffering: int = -1, **_: Any) -> io.BufferedReader:
        self._sock._io_refs += 1  # like socket.makefile: close waits for it
        return io.BufferedReader(
            socket.SocketIO(self, "rb")  # pyright: ignore[reportArgumentType]  # a socket wrapper (duck type)
        )

    def _decref_socketios(self) -> None:
        self._sock._decref_socketios()  # pyright: ignore[reportAttributeAccessIssue]  # CPython socket internal

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _deadline_connection(base: type[http.client.HTTPConnection]) -> type[http.client.HTTPConnection]:
    class Conn(base):  # type: ignore[misc, valid-type]
        def connect(self) -> None:
            super().connect()
            self.sock = _DeadlineSocket(self.sock)  # type: ignore[assignment]
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    return Conn


_HTTP = _deadline_connection(http.client.HTTPConnection)
_HTTPS = _deadline_connection(http.client.HTTPSConnection)



class BoundedHTTPProvider(JSONBaseProvider):
    """web3 HTTP(S) provider with one deadline per request, bounded replies and typed errors (issue 10).

    ``timeout`` bounds the whole request (connect, send, every byte of the reply), not each socket read.
    Plain ``http://`` only on the loopback unless ``allow_plain`` (test option, logged loudly). One keep-alive
    connection per thread.
    """

    trusted = False  # a network node: its answers are proven, not believed (cityid.chain.live)

    def __init__(
        self,
        url: str,
        timeout: float = 5.0,
        *,
        max_reply_bytes: int = MAX_REPLY_BYTES,
        max_depth: int = MAX_JSON_DEPTH,
        allow_plain: bool = False,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__()
        parts = check_rpc_url(url, allow_plain=allow_plain)
        self.url = self.endpoint_uri = url
        self.timeout = timeout
        self.max_reply_bytes = max_reply_bytes
        self.max_depth = max_depth
        self.round_trips = 0
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._ssl = ssl_context or (ssl.create_default_context() if self._https else None)
        self._local = threading.local()
        self._count_lock = threading.Lock()

    def __str__(self) -> str:
        return f"BoundedHTTPProvider({self.url})"

    # ---- web3 provider interface ----
    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        """One JSON-RPC call, one round trip; the envelope is checked (its error is left to the caller)."""
        request_id = next(self.request_counter)
        logger.debug("rpc %s", method)
        reply = self.post(_encode(method, params, request_id))
        return check_response(reply, request_id)

    def make_batch_request(self, requests: list[tuple[RPCEndpoint, Any]]) -> list[RPCResponse]:
        """Several calls in ONE round trip (JSON-RPC 2.0 §6); responses in request order, ids checked."""
        if not requests:
            return []
        ids = [next(self.request_counter) for _ in requests]
        body = b"[" + b",".join(_encode(m, p, i) for i, (m, p) in zip(ids, requests, strict=True)) + b"]"
        logger.debug("rpc batch %s", [m for m, _ in requests])
        reply = self.post(body)
        return check_batch_response(reply, ids)

    def is_connected(self, show_traceback: bool = False) -> bool:
        try:
            return "result" in self.make_request(RPCEndpoint("eth_chainId"), [])
        except (NodeUnreachableError, RpcTimeoutError, MalformedReplyError):
            if show_traceback:
                raise
            return False

    # ---- the bytes ----
    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._https:
                conn = _HTTPS(self._host, self._port, timeout=timeout, context=self._ssl)  # pyright: ignore[reportCallIssue]
            else:
                conn = _HTTP(self._host, self._port, timeout=timeout)
            self._local.conn = conn
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def post(self, body: bytes) -> Any:
        """POST one JSON-RPC payload under one deadline; the bounded-decoded JSON reply."""
        with self._count_lock:
            self.round_trips += 1
        deadline = time.monotonic() + self.timeout
        for attempt in (0, 1):  # a keep-alive connection the node closed meanwhile is retried once
            conn = self._connection(self.timeout)
            fresh = conn.sock is None
            try:
                if fresh:
                    conn.connect()
                conn.sock.deadline = deadline  # pyright: ignore[reportAttributeAccessIssue]  # our _DeadlineSocket
                conn.request("POST", self._path, body, {"Content-Type": "application/json"})
                reply = conn.getresponse()
                data = self._read(reply)
                status = reply.status
                if reply.will_close:
                    self._drop()
                break
            except TimeoutError as exc:
                self._drop()
                raise RpcTimeoutError(self.url, self.timeout) from exc
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._drop()
                if fresh or attempt or time.monotonic() >= deadline:
                    raise NodeUnreachableError(self.url, type(exc).__name__) from exc
            except ssl.SSLError as exc:
                self._drop()
                raise NodeUnreachableError(self.url, f"TLS: {exc.reason or exc}") from exc
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                raise NodeUnreachableError(self.url, type(exc).__name__) from exc
            except BaseException:
                self._drop()
                raise
        else:  # the second attempt always breaks or raises; this keeps status/data bound for the checker
            raise NodeUnreachableError(self.url, "no attempt completed")
        if status >= 500 and not data:
            raise NodeUnreachableError(self.url, f"HTTP {status}")
        return decode_json(data, f"{self.url} reply (HTTP {status})", self.max_depth)

    def _read(self, reply: http.client.HTTPResponse) -> bytes:
        length = reply.getheader("Content-Length")
        if length is not None and length.isdigit() and int(length) > self.max_reply_bytes:
            raise MalformedReplyError(f"{self.url} reply of {length} bytes exceeds {self.max_reply_bytes}")
        chunks: list[bytes] = []
        size = 0
        try:
            while reply.length != 0:
                chunk = reply.read1(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > self.max_reply_bytes:
                    raise MalformedReplyError(f"{self.url} reply exceeds {self.max_reply_bytes} bytes")
                chunks.append(chunk)
        finally:
            reply.close()  # frees the keep-alive connection for the next request
        return b"".join(chunks)

    def close(self) -> None:
        self._drop()


def _encode(method: str, params: Any, request_id: int) -> bytes:
    """A JSON-RPC 2.0 request object, encoded with web3's JSON encoder (bytes/HexBytes as 0x-hex)."""
    payload = {"jsonrpc": "2.0", "method": method, "params": list(params or []), "id": request_id}
    return FriendlyJsonSerde().json_encode(payload, Web3JsonEncoder).encode()


# ---- JSON-RPC envelope checks (a malformed reply must never turn into a wrong answer) ----


def _id_of(reply: Any) -> int | None:
    """The integer id of a reply object (ours are ints); anything else (lists, dicts, bools) is None."""
    rid = reply.get("id") if isinstance(reply, dict) else None
    return rid if isinstance(rid, int) and not isinstance(rid, bool) else None


def check_response(reply: Any, request_id: int | None) -> RPCResponse:
    """A JSON-RPC 2.0 response object answering ``request_id`` (error objects well-formed), else raise."""
    if not isinstance(reply, dict) or reply.get("jsonrpc") != "2.0":
        raise MalformedReplyError(f"not a JSON-RPC 2.0 response: {str(reply)[:120]}")
    err = reply.get("error")
    if err is not None:
        if not isinstance(err, dict) or not isinstance(err.get("code"), int):
            raise MalformedReplyError(f"malformed JSON-RPC error object: {str(err)[:120]}")
    elif "result" not in reply:
        raise MalformedReplyError("JSON-RPC response has neither result nor error")
    if _id_of(reply) != request_id and not (err is not None and reply.get("id") is None):
        shown = str(reply.get("id"))[:40]
        raise MalformedReplyError(f"JSON-RPC response id {shown} does not match {request_id}")
    return cast(RPCResponse, reply)


def check_batch_response(reply: Any, ids: Sequence[int]) -> list[RPCResponse]:
    """The members of a batch reply in request order; a whole-batch error object is raised."""
    if isinstance(reply, dict) and "error" in reply:
        raise_error(check_response(reply, None))
    if not isinstance(reply, list) or len(reply) != len(ids):
        raise MalformedReplyError(f"batch of {len(ids)} answered with {str(reply)[:120]}")
    by_id = {_id_of(r): r for r in reply}
    if set(by_id) != set(ids):
        raise MalformedReplyError("batch response ids do not match the request ids")
    return [check_response(by_id[i], i) for i in ids]


def raise_error(response: RPCResponse) -> None:
    """Raise the response's JSON-RPC error object as :class:`RpcError` (nothing when it has a result)."""
    err = response.get("error")
    if err is not None:
        raise RpcError(int(err["code"]), str(err.get("message", ""))[:500], err.get("data"))


def result_of(response: RPCResponse) -> Any:
    """The ``result`` of a checked response; its error object becomes :class:`RpcError`."""
    raise_error(response)
    if "result" not in response:
        raise MalformedReplyError("JSON-RPC response has neither result nor error")
    return response["result"]
