"""Embedded chain: web3's ``EthereumTesterProvider`` (eth-tester on py-evm) in process, answering like a node.

The default network for the demo and unit tests. :class:`EmbeddedProvider` is web3's tester provider with
two differences that make it answer exactly as anvil or geth do, so every layer above (web3 contracts, the
writer, the verification reads, the sync cache) runs the same code on the embedded chain, on anvil and on a
production node:

- results are JSON-RPC values (hex quantities and data; web3's tester middleware already renames the keys),
  so the raw reads of :class:`~cityid.chain.rpc.RpcClient` and the HTTP front end see what a node sends;
- a revert is a JSON-RPC error ``{code: 3, message: "execution reverted", data: 0x…}`` carrying the raw
  revert data taken from py-evm's exception object (eth-tester keeps only its ``str()``), and a transaction
  with a used or future nonce is refused as geth does ("nonce too low/high"), checked against the decoded
  transaction — so web3 raises its own ``ContractCustomError``/``ContractLogicError``/``Web3RPCError``.

:func:`serve_http` is a thin HTTP front end forwarding JSON-RPC to :meth:`EmbeddedProvider.make_request` for
other processes (``kiosk demo``, tests). :class:`EmbeddedChain` adds eth-tester's funded accounts.
"""

from __future__ import annotations

import json
import logging
import threading
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, TypeVar, cast

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address
from hexbytes import HexBytes
from web3 import Web3
from web3.middleware import combine_middleware
from web3.providers.eth_tester import EthereumTesterProvider
from web3.providers.eth_tester.defaults import API_ENDPOINTS
from web3.types import RPCEndpoint, RPCResponse

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from eth_tester import EthereumTester, PyEVMBackend
    from eth_tester.backends.pyevm.main import EVMSpoofTransaction, _execute_and_revert_transaction
    from eth_tester.exceptions import TransactionFailed, ValidationError
    from eth_tester.utils.filters import check_if_log_matches

from cityid.chain.network import NetworkConfig

if TYPE_CHECKING:
    from cityid.chain.rpc import RpcClient

logger = logging.getLogger(__name__)
_T = TypeVar("_T")


class _Reverted(Exception):
    """An EVM revert with its raw data (raised by the backend, answered as a JSON-RPC error)."""

    def __init__(self, data: bytes) -> None:
        super().__init__("execution reverted")
        self.data = data


class _RpcFailure(Exception):
    """A JSON-RPC error the embedded node answers (geth's codes and messages)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _revert_data(error: BaseException | None) -> bytes:
    """py-evm's ``Revert`` holds the revert data as its first argument (other VM errors carry none)."""
    arg = error.args[0] if error is not None and error.args else b""
    return bytes(arg) if isinstance(arg, bytes | bytearray) else b""


class _Backend(PyEVMBackend):
    """eth-tester's py-evm backend keeping a revert's data for ``call`` and ``estimate_gas``."""

    def call(self, transaction: Mapping[str, Any], block_number: Any = "latest") -> bytes:
        tx = dict(transaction)
        tx.setdefault("gas", self._max_available_gas())
        unsigned = self._get_normalized_and_unsigned_evm_transaction(tx, block_number)
        computation = _execute_and_revert_transaction(
            self.chain, EVMSpoofTransaction(unsigned, from_=transaction["from"]), block_number
        )
        if computation.is_error:
            raise _Reverted(_revert_data(computation.error))
        return computation.output

    def estimate_gas(self, transaction: Mapping[str, Any], block_number: Any = "latest") -> int:
        try:
            return super().estimate_gas(transaction, block_number)
        except TransactionFailed as exc:  # raised "from" py-evm's Revert/InvalidInstruction
            raise _Reverted(_revert_data(exc.__cause__)) from exc


def _send_raw_transaction(tester: EthereumTester, params: Any) -> Any:
    """``eth_sendRawTransaction`` refusing a used/future nonce as geth does (eth-tester mines at once)."""
    raw = bytes(HexBytes(params[0]))
    backend = cast(_Backend, tester.backend)
    tx = backend.chain.get_vm().get_transaction_builder().decode(raw)
    expected = tester.get_nonce(to_checksum_address(tx.sender))
    if tx.nonce != expected:
        word = "low" if tx.nonce < expected else "high"
        raise _RpcFailure(-32000, f"nonce too {word}: next nonce {expected}, tx nonce {tx.nonce}")
    return tester.send_raw_transaction(params[0])


def _hexify(value: Any) -> Any:
    """eth-tester's Python values as JSON-RPC values (QUANTITY and DATA as 0x-hex)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return hex(value)
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    if isinstance(value, dict):
        return {k: _hexify(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_hexify(v) for v in value]
    return value


class EmbeddedProvider(EthereumTesterProvider):
    """web3's ``EthereumTesterProvider`` on py-evm, answering JSON-RPC exactly like a node (module doc)."""

    url = endpoint_uri = "embedded://"
    trusted = True  # in-process: no network between the kiosk and the chain (no proofs, no freshness bound)
    _middleware = ()  # web3's tester middleware runs inside make_request (JSON-RPC in, JSON-RPC out)

    def __init__(self) -> None:
        self.backend = _Backend()
        endpoints = {ns: dict(fns) for ns, fns in API_ENDPOINTS.items()}
        endpoints["eth"]["sendRawTransaction"] = _send_raw_transaction
        chain_id = int(self.backend.chain.chain_id)
        endpoints["eth"]["chainId"] = lambda *_: chain_id
        endpoints["evm"]["revert"] = self._revert_to_snapshot
        endpoints["eth"]["getLogs"] = self._get_logs
        self._block_logs: dict[int, list[Any]] = {}  # mined block -> its log entries (eth-tester's form)
        super().__init__(EthereumTester(self.backend), api_endpoints=endpoints)
        self.chain_id = chain_id
        self.round_trips = 0
        self._lock = threading.RLock()
        self._depth = 0
        from web3.providers.eth_tester.middleware import (
            default_transaction_fields_middleware,
            ethereum_tester_middleware,
        )

        self._tester_request = combine_middleware(
            (default_transaction_fields_middleware, ethereum_tester_middleware),
            Web3(self, middleware=[]),
            super().make_request,
        )

    def _revert_to_snapshot(self, tester: EthereumTester, params: Any) -> bool:
        """``evm_revert`` answering ``true`` as anvil and hardhat do (eth-tester returns nothing)."""
        tester.revert_to_snapshot(params[0])
        self._block_logs.clear()
        return True

    def _get_logs(self, tester: EthereumTester, params: Any) -> list[Any]:
        """eth-tester's ``get_logs`` with each mined block's log entries kept: eth-tester re-reads every
        receipt of the range on every call (a verification's registry query from the deployment block took
        ~180 ms after a few hundred blocks). Matching is eth-tester's own ``check_if_log_matches``."""
        f = params[0]
        if f.get("block_hash") or f.get("blockHash"):
            return list(tester.get_logs(**f))
        kwargs = {k: f.get(k) for k in ("from_block", "to_block", "address", "topics")}
        tester.validator.validate_inbound_filter_params(**kwargs)
        normalizer = tester.normalizer
        raw_from, raw_to, raw_address, raw_topics = normalizer.normalize_inbound_filter_params(**kwargs)
        matches = partial(
            check_if_log_matches,
            from_block=raw_from,
            to_block=raw_to,
            addresses=raw_address,
            topics=raw_topics,
        )

        def bound(tag: Any) -> int:
            return tag if isinstance(tag, int) else int(tester.get_block_by_number(tag or "latest")["number"])

        out = []
        for number in range(bound(raw_from), bound(raw_to) + 1):
            entries = self._block_logs.get(number)
            if entries is None:
                block = tester.get_block_by_number(number)
                entries = [
                    tester.normalizer.normalize_inbound_log_entry(log)
                    for tx in block["transactions"]
                    for log in tester.get_transaction_receipt(tx)["logs"]
                ]
                self._block_logs[number] = entries
            out += [tester.normalizer.normalize_outbound_log_entry(e) for e in entries if matches(e)]
        return out

    @property
    def tester(self) -> EthereumTester:
        assert self.ethereum_tester is not None
        return self.ethereum_tester

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        return self._serve(lambda: self._answer(method, params))

    def make_batch_request(self, requests: list[tuple[RPCEndpoint, Any]]) -> list[RPCResponse]:
        return self._serve(lambda: [self._answer(m, p) for m, p in requests])

    def _serve(self, fn: Callable[[], _T]) -> _T:
        """Serialised; one round trip per outside request (the tester middleware's own lookups, such as the
        default ``from`` account, are nested calls and not counted)."""
        with self._lock:
            self._depth += 1
            try:
                if self._depth == 1:
                    self.round_trips += 1
                return fn()
            finally:
                self._depth -= 1

    def _answer(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        error: dict[str, Any]
        try:
            reply = dict(self._tester_request(method, list(params or [])))
        except _Reverted as exc:
            error = {"code": 3, "message": "execution reverted", "data": "0x" + exc.data.hex()}
        except _RpcFailure as exc:
            error = {"code": exc.code, "message": exc.message}
        except (ValidationError, TransactionFailed, ValueError, KeyError, TypeError, IndexError) as exc:
            error = {"code": -32602, "message": f"invalid params: {type(exc).__name__}: {exc}"[:300]}
        else:
            if "result" in reply:
                reply["result"] = _hexify(reply["result"])
            return cast(RPCResponse, reply)
        return cast(RPCResponse, {"jsonrpc": "2.0", "id": None, "error": error})


@dataclass
class EmbeddedChain:
    """An in-process chain with funded accounts (contracts: ``server.chain.registrar.start_embedded``)."""

    provider: EmbeddedProvider
    accounts: list[LocalAccount]
    network: NetworkConfig

    @classmethod
    def start(cls, name: str = "embedded") -> EmbeddedChain:
        """Boot py-evm and take eth-tester's funded accounts."""
        provider = EmbeddedProvider()
        accounts = [Account.from_key(k.to_bytes()) for k in provider.backend.account_keys]
        network = NetworkConfig(name=name, chain_id=provider.chain_id, rpc_url=EmbeddedProvider.url)
        return cls(provider=provider, accounts=accounts, network=network)

    @property
    def node(self) -> EmbeddedProvider:
        """The provider (the name earlier callers used for the in-process node)."""
        return self.provider

    def client(self) -> RpcClient:
        """A :class:`~cityid.chain.rpc.RpcClient` on this chain (round trips counted by the provider)."""
        from cityid.chain.rpc import RpcClient

        return RpcClient(self.provider)


def forward(provider: EmbeddedProvider, payload: Any) -> Any:
    """Answer a decoded JSON-RPC payload (one request object or a batch array) through ``make_request``."""

    def answer(req: Any) -> dict[str, Any]:
        if not isinstance(req, dict) or not isinstance(req.get("method"), str):
            return {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "invalid request"}}
        reply = dict(provider.make_request(RPCEndpoint(req["method"]), req.get("params") or []))
        reply["id"] = req.get("id")
        return reply

    return [answer(r) for r in payload] if isinstance(payload, list) else answer(payload)


def serve_http(
    provider: EmbeddedProvider, host: str = "127.0.0.1", port: int = 0
) -> tuple[ThreadingHTTPServer, str]:
    """A thin HTTP JSON-RPC front end forwarding to ``provider.make_request``; returns (server, url).

    For other processes (``kiosk demo``, tests, standard tools). Call ``server.shutdown()`` to stop it. Bind
    to loopback only: the node has funded test accounts.
    """

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            logger.debug("embedded http: %s", format % args)

        def do_POST(self) -> None:
            try:
                payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                reply: Any = forward(provider, payload)
            except ValueError:
                reply = {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error"}}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="embedded-rpc", daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}"
