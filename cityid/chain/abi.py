"""Compiled contract artifacts and a small ABI codec (Solidity ABI spec: calls, events, custom errors)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from eth_abi.abi import decode, encode
from eth_abi.exceptions import DecodingError
from eth_utils.abi import collapse_if_tuple
from eth_utils.crypto import keccak

from cityid.chain.errors import MalformedReplyError
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


def _types(params: list[AbiItem]) -> list[str]:
    return [collapse_if_tuple(p) for p in params]


def _signature(item: AbiItem) -> str:
    return f"{item['name']}({','.join(_types(item.get('inputs', [])))})"


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


class Abi:
    """Encode calls and decode results, logs and revert data for one contract ABI."""

    def __init__(self, abi: tuple[AbiItem, ...]) -> None:
        self.functions: dict[str, AbiItem] = {}
        self.events: dict[bytes, AbiItem] = {}
        self.event_topics: dict[str, bytes] = {}
        self.errors: dict[bytes, AbiItem] = {}
        for item in abi:
            kind = item.get("type")
            if kind == "function":
                self.functions[item["name"]] = item
            elif kind == "event":
                topic = keccak(text=_signature(item))
                self.events[topic] = item
                self.event_topics[item["name"]] = topic
            elif kind == "error":
                self.errors[keccak(text=_signature(item))[:4]] = item

    @classmethod
    @cache
    def of(cls, contract_name: str) -> Abi:
        return cls(load_artifact(contract_name).abi)

    def encode_call(self, name: str, *args: Any) -> bytes:
        fn = self.functions[name]
        return keccak(text=_signature(fn))[:4] + encode(_types(fn["inputs"]), list(args))

    def decode_output(self, name: str, data: bytes) -> tuple[Any, ...]:
        fn = self.functions[name]
        try:
            return tuple(decode(_types(fn["outputs"]), data))
        except (DecodingError, OverflowError, ValueError) as exc:
            raise MalformedReplyError(f"cannot decode {name}() result ({len(data)} bytes)") from exc

    def decode_log(self, log: dict[str, Any]) -> DecodedEvent | None:
        """Decode a JSON-RPC log object; None for events not in this ABI (or malformed for it)."""
        topics = [as_bytes(t, "log topic", 32) for t in as_list(log.get("topics"), "log topics")]
        if not topics or topics[0] not in self.events:
            return None
        item = self.events[topics[0]]
        data = as_bytes(log.get("data"), "log data")
        indexed = [p for p in item["inputs"] if p.get("indexed")]
        plain = [p for p in item["inputs"] if not p.get("indexed")]
        if len(topics) != 1 + len(indexed):
            return None
        try:
            values = dict(zip([p["name"] for p in plain], decode(_types(plain), data), strict=True))
            for p, t in zip(indexed, topics[1:], strict=True):
                values[p["name"]] = (
                    decode([collapse_if_tuple(p)], t)[0] if p["type"] not in ("string", "bytes") else t
                )
        except (DecodingError, OverflowError, ValueError):
            return None
        return DecodedEvent(
            name=item["name"],
            args={p["name"]: values[p["name"]] for p in item["inputs"]},
            address=str(log.get("address", "")),
            block_number=as_int(log.get("blockNumber"), "log blockNumber"),
            block_hash=as_bytes(log.get("blockHash"), "log blockHash", 32),
            log_index=as_int(log.get("logIndex"), "log logIndex"),
            tx_hash=as_bytes(log.get("transactionHash"), "log transactionHash", 32),
        )

    def decode_revert(self, data: bytes) -> str:
        """Human-readable revert reason: Error(string), Panic(uint256) or one of this ABI's custom errors."""
        if not data:
            return "reverted without a reason"
        selector, body = data[:4], data[4:]
        try:
            if selector == bytes.fromhex("08c379a0"):
                return str(decode(["string"], body)[0])
            if selector == bytes.fromhex("4e487b71"):
                return f"Panic(0x{decode(['uint256'], body)[0]:02x})"
            item = self.errors.get(selector)
            if item is not None:
                args = decode(_types(item["inputs"]), body)
                shown = ", ".join(
                    f"{p['name']}={'0x' + a.hex() if isinstance(a, bytes) else a}"
                    for p, a in zip(item["inputs"], args, strict=True)
                )
                return f"{item['name']}({shown})"
        except (DecodingError, OverflowError, ValueError):
            pass
        return f"unknown revert data 0x{data.hex()}"


def decode_revert_any(data: bytes) -> str:
    """Decode revert data against every contract's errors (for transactions whose target is unknown)."""
    for name in CONTRACT_NAMES:
        reason = Abi.of(name).decode_revert(data)
        if not reason.startswith("unknown revert data"):
            return reason
    return Abi.of(CONTRACT_NAMES[0]).decode_revert(data)
