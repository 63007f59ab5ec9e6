"""A minimal raw JSON-RPC reader, for the benchmark's web3-overhead comparison ONLY (not used by the project).

What the chain client did before web3: one keep-alive ``http.client`` connection, ``json`` in and out,
calldata from ``eth_abi``. No limits, no envelope checks: the floor a web3-based read is compared against.
"""

from __future__ import annotations

import http.client
import itertools
import json
import socket
import urllib.parse
from typing import Any

from eth_abi.abi import decode, encode
from eth_utils.crypto import keccak


class RawReader:
    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self._conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=10)
        self._conn.connect()
        self._conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as the project's provider
        self._ids = itertools.count(1)

    def _post(self, payload: Any) -> Any:
        self._conn.request("POST", "/", json.dumps(payload).encode(), {"Content-Type": "application/json"})
        return json.loads(self._conn.getresponse().read())

    def request(self, method: str, params: list[Any]) -> Any:
        reply = self._post({"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params})
        return reply["result"]

    def batch(self, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        payload = [{"jsonrpc": "2.0", "id": next(self._ids), "method": m, "params": p} for m, p in calls]
        by_id = {r["id"]: r for r in self._post(payload)}
        return [by_id[r["id"]]["result"] for r in payload]

    def call(
        self, to: str, signature: str, types: list[str], args: list[Any], out: list[str]
    ) -> tuple[Any, ...]:
        """``eth_call`` of ``signature`` (e.g. ``statusOf(uint256,uint256)``), decoded with eth_abi."""
        data = keccak(text=signature)[:4] + encode(types, args)
        raw = self.request("eth_call", [{"to": to, "data": "0x" + data.hex()}, "latest"])
        return tuple(decode(out, bytes.fromhex(raw[2:])))

    def close(self) -> None:
        self._conn.close()
