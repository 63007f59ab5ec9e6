"""The city contracts through web3: committed artifacts, ``w3.eth.contract`` objects, events and reverts.

ABI encoding and decoding are web3's (``Contract.encode_abi``, ``ContractFunction.call``, web3's event
decoder ``get_event_data``); this module only adds what is specific to the project: loading the committed
artifacts, decoding a raw JSON-RPC log of any city contract into a :class:`DecodedEvent`, a readable reason
for revert data (custom errors of every city contract, ``Error(string)``, ``Panic``), and the mapping of
web3's exceptions onto :mod:`cityid.chain.errors` (:func:`web3_errors`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from eth_abi.exceptions import DecodingError
from eth_utils.abi import collapse_if_tuple, event_abi_to_log_topic
from eth_utils.crypto import keccak
from web3 import Web3
from web3._utils.events import get_event_data
from web3.contract import Contract
from web3.exceptions import (
    BadFunctionCallOutput,
    BadResponseFormat,
    BlockNotFound,
    ContractLogicError,
    LogTopicError,
    MismatchedABI,
    TimeExhausted,
    TransactionNotFound,
    Web3RPCError,
    Web3ValueError,
)

from cityid.chain.errors import (
    ChainError,
    MalformedReplyError,
    RpcError,
    TransactionFailedError,
    TransactionRevertedError,
)
from cityid.chain.rpc import as_bytes, as_int, as_list

AbiItem = dict[str, Any]
"""One JSON ABI entry (function, event, error or one of their parameters) as solc emits it."""

CONTRACT_NAMES = (
    "CityDIDRegistry",
    "CityStatusRegistry",
    "CityTrustedIssuers",
    "CityAnchorRegistry",
    "CityMulticall",
)

_CODEC = Web3().codec  # web3's ABI codec (eth_abi registry with web3's normalisers); no provider needed


@dataclass(frozen=True, slots=True)
class Artifact:
    """One compiled contract as committed in ``cityid/chain/artifacts/<name>.json``."""

    name: str
    abi: tuple[AbiItem, ...]
    bytecode: bytes
    deployed_bytecode: bytes
    compiler: dict[str, Any]
    source_sha256: str


@cache
def load_artifact(name: str) -> Artifact:
    """Load a committed artifact (package data)."""
    raw = json.loads((resources.files("cityid.chain") / "artifacts" / f"{name}.json").read_text("utf-8"))
    return Artifact(
        name=raw["contractName"],
        abi=tuple(raw["abi"]),
        bytecode=bytes.fromhex(raw["bytecode"][2:]),
        deployed_bytecode=bytes.fromhex(raw["deployedBytecode"][2:]),
        compiler=raw["compiler"],
        source_sha256=raw["sourceSha256"],
    )


def contract(w3: Web3, name: str, address: str | None = None) -> type[Contract] | Contract:
    """``w3.eth.contract`` for a city contract (a factory with bytecode when ``address`` is None)."""
    artifact = load_artifact(name)
    if address is None:
        return w3.eth.contract(abi=list(artifact.abi), bytecode=artifact.bytecode)
    return w3.eth.contract(address=Web3.to_checksum_address(address), abi=list(artifact.abi))


@dataclass(frozen=True, slots=True)
class DecodedEvent:
    """A decoded log: event name and arguments by name, plus where it was emitted."""

    name: str
    args: dict[str, Any]
    address: str
    block_number: int
    block_hash: bytes
    log_index: int
    tx_hash: bytes


@dataclass(frozen=True, slots=True)
class _EventPlan:
    """How to decode one event, derived once from its ABI (web3's ``get_event_data``: once per log)."""

    abi: AbiItem
    names: tuple[str, ...]  # every input, in ABI order
    indexed: tuple[tuple[str, str], ...]  # (name, type) of the topics after topic 0
    data_names: tuple[str, ...]
    data_types: tuple[str, ...]
    addresses: tuple[str, ...]  # inputs of type address (returned checksummed, as web3 does)

    @classmethod
    def of(cls, item: AbiItem) -> _EventPlan:
        inputs = item.get("inputs", [])
        plain = [p for p in inputs if not p.get("indexed")]
        return cls(
            abi=item,
            names=tuple(p["name"] for p in inputs),
            indexed=tuple((p["name"], collapse_if_tuple(p)) for p in inputs if p.get("indexed")),
            data_names=tuple(p["name"] for p in plain),
            data_types=tuple(collapse_if_tuple(p) for p in plain),
            addresses=tuple(p["name"] for p in inputs if p["type"] == "address"),
        )


def _indexed_value(kind: str, topic: bytes) -> Any:
    """An indexed argument from its topic (dynamic types are stored hashed: the topic itself)."""
    if kind in ("string", "bytes") or kind.endswith("]") or kind.startswith("("):
        return topic
    return _CODEC.decode([kind], topic)[0]


class Events:
    """The events of one contract by topic 0, decoded with web3's ABI codec.

    Same result as web3's ``get_event_data`` (checked in tests/unit/test_chain_contracts.py) with the
    decoding plan derived once per event instead of once per log: the kiosk cache ingests millions of logs
    (bench/chain_sync.py measures both).
    """

    def __init__(self, abi: tuple[AbiItem, ...]) -> None:
        self.by_topic: dict[bytes, AbiItem] = {}
        self.topics: dict[str, bytes] = {}
        self._plans: dict[bytes, _EventPlan] = {}
        for item in abi:
            if item.get("type") == "event":
                topic = event_abi_to_log_topic(item)  # pyright: ignore[reportArgumentType]  # solc JSON ABI
                self.by_topic[topic] = item
                self.topics[item["name"]] = topic
                self._plans[topic] = _EventPlan.of(item)

    @classmethod
    @cache
    def of(cls, contract_name: str) -> Events:
        return cls(load_artifact(contract_name).abi)

    def decode(self, log: dict[str, Any]) -> DecodedEvent | None:
        """Decode a raw JSON-RPC log object; None for events not in this ABI (or malformed for it).

        The log's position fields are checked (hex of the right length) before its payload is decoded.
        """
        topics = [as_bytes(t, "log topic", 32) for t in as_list(log.get("topics"), "log topics")]
        if not topics:
            return None
        plan = self._plans.get(topics[0])
        if plan is None:
            return None
        data = as_bytes(log.get("data"), "log data")
        return self.decode_fields(
            topics,
            data,
            str(log.get("address", "")),
            as_int(log.get("blockNumber"), "log blockNumber"),
            as_bytes(log.get("blockHash"), "log blockHash", 32),
            as_int(log.get("logIndex"), "log logIndex"),
            as_bytes(log.get("transactionHash"), "log transactionHash", 32),
        )

    def decode_fields(
        self,
        topics: list[bytes],
        data: bytes,
        address: str,
        block_number: int,
        block_hash: bytes = b"",
        log_index: int = 0,
        tx_hash: bytes = b"",
    ) -> DecodedEvent | None:
        """Decode an already-parsed log (topics and data as bytes); None if not one of these events."""
        plan = self._plans.get(topics[0]) if topics else None
        if plan is None or len(topics) != 1 + len(plan.indexed):
            return None
        try:
            values = dict(zip(plan.data_names, _CODEC.decode(plan.data_types, data), strict=True))
            for (name, kind), topic in zip(plan.indexed, topics[1:], strict=True):
                values[name] = _indexed_value(kind, topic)
            for name in plan.addresses:
                values[name] = Web3.to_checksum_address(values[name])
        except (DecodingError, OverflowError, ValueError, TypeError):
            return None
        args = {n: values[n] for n in plan.names}
        return DecodedEvent(plan.abi["name"], args, address, block_number, block_hash, log_index, tx_hash)

    def decode_with_web3(self, log: dict[str, Any]) -> DecodedEvent | None:
        """The same through web3's generic ``get_event_data`` (reference for tests and the benchmark)."""
        topics = [as_bytes(t, "log topic", 32) for t in as_list(log.get("topics"), "log topics")]
        item = self.by_topic.get(topics[0]) if topics else None
        if item is None:
            return None
        where = (
            as_int(log.get("blockNumber"), "log blockNumber"),
            as_bytes(log.get("blockHash"), "log blockHash", 32),
            as_int(log.get("logIndex"), "log logIndex"),
            as_bytes(log.get("transactionHash"), "log transactionHash", 32),
        )
        entry = {
            "topics": topics,
            "data": as_bytes(log.get("data"), "log data"),
            "address": log.get("address"),
            "blockNumber": where[0],
            "blockHash": where[1],
            "logIndex": where[2],
            "transactionHash": where[3],
            "transactionIndex": 0,
        }
        try:
            ev = get_event_data(_CODEC, item, entry)  # pyright: ignore[reportArgumentType]  # solc JSON ABI
        except (DecodingError, LogTopicError, MismatchedABI, OverflowError, ValueError, TypeError):
            return None
        return DecodedEvent(ev["event"], dict(ev["args"]), str(log.get("address", "")), *where)


def decode_log(contract_name: str, log: dict[str, Any]) -> DecodedEvent | None:
    """A raw JSON-RPC log of ``contract_name`` decoded (None if it is not one of its events)."""
    return Events.of(contract_name).decode(log)


# ---- reverts ---------------------------------------------------------------------------------------------

_ERROR_STRING = bytes.fromhex("08c379a0")  # Error(string)
_PANIC = bytes.fromhex("4e487b71")  # Panic(uint256)


@cache
def _custom_errors() -> dict[bytes, AbiItem]:
    errors: dict[bytes, AbiItem] = {}
    for name in CONTRACT_NAMES:
        for item in load_artifact(name).abi:
            if item.get("type") == "error":
                sig = f"{item['name']}({','.join(collapse_if_tuple(p) for p in item['inputs'])})"
                errors[keccak(text=sig)[:4]] = item
    return errors


def decode_revert(data: bytes) -> str:
    """Readable revert reason: a city contract's custom error, ``Error(string)`` or ``Panic(uint256)``."""
    if not data:
        return "reverted without a reason"
    selector, body = data[:4], data[4:]
    try:
        if selector == _ERROR_STRING:
            return str(_CODEC.decode(["string"], body)[0])
        if selector == _PANIC:
            return f"Panic(0x{_CODEC.decode(['uint256'], body)[0]:02x})"
        item = _custom_errors().get(selector)
        if item is not None:
            args = _CODEC.decode([collapse_if_tuple(p) for p in item["inputs"]], body)
            shown = ", ".join(
                f"{p['name']}={'0x' + a.hex() if isinstance(a, bytes) else a}"
                for p, a in zip(item["inputs"], args, strict=True)
            )
            return f"{item['name']}({shown})"
    except (DecodingError, OverflowError, ValueError):
        pass
    return f"unknown revert data 0x{data.hex()}"


def _revert_bytes(data: Any) -> bytes:
    if isinstance(data, dict):  # some nodes nest it: {"data": "0x..."}
        data = data.get("data")
    if isinstance(data, bytes):
        return data
    if isinstance(data, str) and data.startswith("0x"):
        try:
            return bytes.fromhex(data[2:])
        except ValueError:
            return b""
    return b""


def revert_of(exc: BaseException) -> TransactionRevertedError | None:
    """The decoded revert behind a web3 or JSON-RPC error (geth/anvil: code 3 + data), or None."""
    if isinstance(exc, ContractLogicError):
        raw = _revert_bytes(exc.data)
        return TransactionRevertedError(decode_revert(raw) if raw else str(exc.message), raw)
    if isinstance(exc, RpcError) and (exc.code == 3 or "revert" in exc.message.lower()):
        raw = _revert_bytes(exc.data)
        return TransactionRevertedError(decode_revert(raw) if raw else exc.message, raw)
    return None


def rpc_error_of(exc: Web3RPCError) -> RpcError:
    """web3's JSON-RPC error as the project's :class:`RpcError` (code, message, data kept)."""
    err = (exc.rpc_response or {}).get("error") or {}
    code = err.get("code") if isinstance(err, dict) else None
    message = err.get("message") if isinstance(err, dict) else None
    data = err.get("data") if isinstance(err, dict) else None
    return RpcError(code if isinstance(code, int) else -32603, str(message or exc.message)[:500], data)


@contextmanager
def web3_errors() -> Iterator[None]:
    """Map web3's exceptions onto :mod:`cityid.chain.errors` (the provider already raises typed errors)."""
    try:
        yield
    except (ChainError, TransactionNotFound, BlockNotFound):
        raise  # typed already; "not found" is an answer the caller handles
    except ContractLogicError as exc:  # ContractCustomError / ContractPanicError / Error(string)
        revert = revert_of(exc)
        assert revert is not None
        raise revert from exc
    except Web3RPCError as exc:
        rpc = rpc_error_of(exc)
        raise (revert_of(rpc) or rpc) from exc
    except TimeExhausted as exc:
        raise TransactionFailedError(str(exc)) from exc
    except (BadFunctionCallOutput, BadResponseFormat, DecodingError, Web3ValueError, OverflowError) as exc:
        raise MalformedReplyError(f"malformed chain reply: {type(exc).__name__}: {str(exc)[:160]}") from exc
