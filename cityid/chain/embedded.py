"""Embedded chain: an in-process py-evm node (eth-tester) behind a standard JSON-RPC interface.

The default network for the demo and unit tests. :class:`EmbeddedNode` answers JSON-RPC exactly like a real
node would (hex quantities, camelCase objects, geth-style revert errors with ``data``), so every layer above
(:class:`~cityid.chain.rpc.RpcClient`, writer, view, sync cache) runs the same code on the embedded chain, on
anvil and on a production node. :class:`EmbeddedChain` adds funded accounts and auto-deploys the contracts.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import threading
import warnings
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from eth_tester import EthereumTester, PyEVMBackend
    from eth_tester.exceptions import BlockNotFound, TransactionFailed, TransactionNotFound, ValidationError

from cityid.chain.network import NetworkConfig

if TYPE_CHECKING:
    from cityid.chain.rpc import RpcClient

logger = logging.getLogger(__name__)

_CAMEL = {
    "parent_hash": "parentHash",
    "sha3_uncles": "sha3Uncles",
    "logs_bloom": "logsBloom",
    "transactions_root": "transactionsRoot",
    "receipts_root": "receiptsRoot",
    "state_root": "stateRoot",
    "mix_hash": "mixHash",
    "total_difficulty": "totalDifficulty",
    "extra_data": "extraData",
    "gas_limit": "gasLimit",
    "gas_used": "gasUsed",
    "base_fee_per_gas": "baseFeePerGas",
    "block_hash": "blockHash",
    "block_number": "blockNumber",
    "transaction_hash": "transactionHash",
    "transaction_index": "transactionIndex",
    "log_index": "logIndex",
    "contract_address": "contractAddress",
    "cumulative_gas_used": "cumulativeGasUsed",
    "effective_gas_price": "effectiveGasPrice",
    "max_fee_per_gas": "maxFeePerGas",
    "max_priority_fee_per_gas": "maxPriorityFeePerGas",
    "gas_price": "gasPrice",
    "chain_id": "chainId",
    "access_list": "accessList",
}


def _hexify(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return hex(value)
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, dict):
        return {
            _CAMEL.get(k, k): _hexify(v) for k, v in value.items() if k != "type" or not isinstance(v, str)
        }
    if isinstance(value, list | tuple):
        return [_hexify(v) for v in value]
    return value


def _block_id(tag: Any) -> Any:
    if tag in (None, "latest", "safe", "finalized"):
        return "latest"
    if tag in ("pending", "earliest"):
        return tag
    if isinstance(tag, str) and tag.startswith("0x"):
        return int(tag, 16)
    raise ValueError(f"bad block tag {tag!r}")


def _revert_data(exc: TransactionFailed) -> bytes:
    arg = exc.args[0] if exc.args else b""
    if isinstance(arg, bytes):
        return arg
    inner = getattr(arg, "args", None)
    if inner and isinstance(inner[0], bytes):
        return inner[0]
    if isinstance(arg, str) and arg.startswith(("b'", 'b"')):
        try:
            value = ast.literal_eval(arg)
            if isinstance(value, bytes):
                return value
        except (ValueError, SyntaxError):
            pass
    if isinstance(arg, str):
        from eth_abi.abi import encode

        return bytes.fromhex("08c379a0") + encode(["string"], [arg])
    return b""


class _RpcFailure(Exception):
    def __init__(self, code: int, message: str, data: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


class EmbeddedNode:
    """JSON-RPC 2.0 over an in-process :class:`EthereumTester` (the transport is a method call)."""

    url = "embedded://"
    trusted = True  # in-process: no network between the kiosk and the chain (no proofs, no freshness bound)

    def __init__(self) -> None:
        self.backend = PyEVMBackend()
        self.tester = EthereumTester(self.backend)
        self.chain_id: int = self.backend.chain.chain_id
        self._lock = threading.RLock()
        # mined block -> its logs (cleared when a snapshot is reverted)
        self._logs: dict[int, list[dict[str, Any]]] = {}

    def _block_logs(self, number: int) -> list[dict[str, Any]]:
        """Logs of one mined block, formatted once (eth-tester's own get_logs re-reads every receipt)."""
        cached = self._logs.get(number)
        if cached is None:
            logs = self.tester.get_logs(from_block=number, to_block=number, address=None, topics=None)
            cached = self._logs[number] = [_hexify(dict(log)) for log in logs]
        return cached

    # Transport protocol
    def send(self, payload: Any) -> Any:
        if isinstance(payload, list):
            return [self._one(p) for p in payload]
        return self._one(payload)

    def _one(self, req: dict[str, Any]) -> dict[str, Any]:
        rid = req.get("id")
        try:
            with self._lock:
                result = self.handle(str(req.get("method")), list(req.get("params") or []))
            return {"jsonrpc": "2.0", "id": rid, "result": result}
        except _RpcFailure as exc:
            err: dict[str, Any] = {"code": exc.code, "message": exc.message}
            if exc.data is not None:
                err["data"] = exc.data
            return {"jsonrpc": "2.0", "id": rid, "error": err}
        except (ValidationError, ValueError, KeyError, TypeError, IndexError) as exc:
            return {
                "jsonrpc": "2.0",
                "id": rid,
                "error": {"code": -32602, "message": f"invalid params: {exc}"},
            }

    # JSON-RPC methods
    def _tx(self, tx: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"from": tx.get("from") or self.tester.get_accounts()[0]}
        if tx.get("to"):
            out["to"] = tx["to"]
        out["data"] = tx.get("data") or tx.get("input") or "0x"
        for k in ("gas", "value"):
            if tx.get(k) is not None:
                out[k] = int(tx[k], 16)
        return out

    def handle(self, method: str, params: list[Any]) -> Any:
        t = self.tester
        if method == "eth_chainId":
            return hex(self.chain_id)
        if method == "net_version":
            return str(self.chain_id)
        if method == "eth_blockNumber":
            return hex(t.get_block_by_number("latest")["number"])
        if method == "eth_accounts":
            return list(t.get_accounts())
        if method in ("eth_getBlockByNumber", "eth_getBlockByHash"):
            try:
                if method == "eth_getBlockByNumber":
                    block = t.get_block_by_number(
                        _block_id(params[0]), bool(params[1]) if len(params) > 1 else False
                    )
                else:
                    block = t.get_block_by_hash(params[0], bool(params[1]) if len(params) > 1 else False)
            except BlockNotFound:
                return None
            out = _hexify(dict(block))
            out["miner"] = out.get("coinbase")
            return out
        if method in ("eth_call", "eth_estimateGas"):
            tx = self._tx(params[0])
            block = _block_id(params[1] if len(params) > 1 else "latest")
            try:
                if method == "eth_call":
                    return t.call(tx, block)
                return hex(t.estimate_gas(tx, block))
            except TransactionFailed as exc:
                data = _revert_data(exc)
                raise _RpcFailure(3, "execution reverted", "0x" + data.hex()) from exc
        if method == "eth_sendRawTransaction":
            try:
                return t.send_raw_transaction(params[0])
            except TransactionFailed as exc:
                data = _revert_data(exc)
                raise _RpcFailure(3, "execution reverted", "0x" + data.hex()) from exc
            except Exception as exc:  # py-evm/eth-utils validation errors: answer like geth does
                m = re.search(r"Expected (\d+), but got (\d+)", str(exc))
                if m:
                    low = int(m[2]) < int(m[1])
                    raise _RpcFailure(-32000, f"nonce too {'low' if low else 'high'}: {exc}") from exc
                raise _RpcFailure(-32000, str(exc)) from exc
        if method == "eth_getTransactionReceipt":
            try:
                receipt = dict(t.get_transaction_receipt(params[0]))
            except TransactionNotFound:
                return None
            if receipt.get("block_number") is None:
                return None
            receipt.pop("state_root", None)
            receipt["contract_address"] = receipt.get("contract_address") or None
            receipt["to"] = receipt.get("to") or None
            return _hexify(receipt)
        if method == "eth_getTransactionByHash":
            try:
                return _hexify(dict(t.get_transaction_by_hash(params[0])))
            except TransactionNotFound:
                return None
        if method == "eth_getTransactionCount":
            return hex(t.get_nonce(params[0], _block_id(params[1] if len(params) > 1 else "latest")))
        if method == "eth_getBalance":
            return hex(t.get_balance(params[0], _block_id(params[1] if len(params) > 1 else "latest")))
        if method == "eth_getCode":
            return t.get_code(params[0], _block_id(params[1] if len(params) > 1 else "latest"))
        if method == "eth_gasPrice":
            return hex(t.get_block_by_number("pending")["base_fee_per_gas"] + 10**9)
        if method == "eth_maxPriorityFeePerGas":
            return hex(10**9)
        if method == "eth_getLogs":
            f = params[0]
            if f.get("blockHash"):
                number = t.get_block_by_hash(f["blockHash"])["number"]
                start = end = number
            else:
                start = _block_id(f.get("fromBlock", "latest"))
                end = _block_id(f.get("toBlock", "latest"))
                latest = t.get_block_by_number("latest")["number"]
                start = latest if start == "latest" else 0 if start == "earliest" else start
                end = latest if end in ("latest", "pending") else end
            if isinstance(end, int) and start > end:
                return []
            wanted = f.get("address")
            addresses = (
                None
                if wanted is None
                else {a.lower() for a in ([wanted] if isinstance(wanted, str) else wanted)}
            )
            out = []
            for number in range(start, end + 1):
                for log in self._block_logs(number):
                    if addresses is not None and log["address"].lower() not in addresses:
                        continue
                    if _topics_match(log["topics"], f.get("topics")):
                        out.append(log)
            return out
        if method == "evm_snapshot":
            return hex(t.take_snapshot())
        if method == "evm_revert":
            t.revert_to_snapshot(int(params[0], 16) if isinstance(params[0], str) else int(params[0]))
            self._logs.clear()
            return True
        if method == "evm_mine":
            t.mine_blocks(1)
            return "0x0"
        if method == "evm_increaseTime":
            seconds = int(params[0], 16) if isinstance(params[0], str) else int(params[0])
            latest = t.get_block_by_number("pending")["timestamp"]
            t.time_travel(latest + seconds)
            return hex(seconds)
        raise _RpcFailure(-32601, f"method {method} not supported by the embedded node")


def _topics_match(topics: list[str], wanted: list[Any] | None) -> bool:
    if not wanted:
        return True
    for i, want in enumerate(wanted):
        if want is None:
            continue
        if i >= len(topics):
            return False
        options = want if isinstance(want, list) else [want]
        if topics[i].lower() not in [o.lower() for o in options]:
            return False
    return True


@dataclass
class EmbeddedChain:
    """An in-process chain with funded accounts and the city contracts deployed (see :meth:`start`)."""

    node: EmbeddedNode
    accounts: list[LocalAccount]
    network: NetworkConfig

    @classmethod
    def start(cls, name: str = "embedded") -> EmbeddedChain:
        """Boot py-evm and take eth-tester's funded accounts (no contracts: the server deploys them,
        ``server.chain.registrar.start_embedded``)."""
        node = EmbeddedNode()
        accounts = [Account.from_key(k.to_bytes()) for k in node.backend.account_keys]
        network = NetworkConfig(name=name, chain_id=node.chain_id, rpc_url=EmbeddedNode.url)
        return cls(node=node, accounts=accounts, network=network)

    def client(self) -> RpcClient:
        """A fresh :class:`~cityid.chain.rpc.RpcClient` (own round-trip counter) on this chain."""
        from cityid.chain.rpc import RpcClient

        return RpcClient(self.node)


def serve_http(node: EmbeddedNode, host: str = "127.0.0.1", port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """Expose an embedded node as an HTTP JSON-RPC endpoint (for standard tools); returns (server, url).

    Call ``server.shutdown()`` to stop it. Bind to loopback only: the node has funded test accounts.
    """

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            logger.debug("embedded http: %s", format % args)

        def do_POST(self) -> None:
            try:
                payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                reply: Any = node.send(payload)
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
