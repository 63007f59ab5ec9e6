"""Typed wrappers per city contract over web3 contract objects: reads, transaction builders, multicall.

Each binding holds an :class:`RpcClient` and a ``w3.eth.contract`` at one address. Reads are
``functions.x(...).call()``; writes return :class:`~cityid.chain.tx.TxRequest` objects (a web3
``ContractFunction``) that the server's ``TxSender`` estimates, builds, signs and sends, so batching and
nonce handling stay in one place. Multicall entries are encoded with ``Contract.encode_abi``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from eth_utils.abi import collapse_if_tuple, function_abi_to_4byte_selector
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from web3.types import BlockIdentifier

from cityid.chain.contracts import DecodedEvent, Events, load_artifact, web3_errors
from cityid.chain.errors import MalformedReplyError
from cityid.chain.rpc import RpcClient, as_bytes
from cityid.chain.tx import TxRequest


@dataclass(frozen=True, slots=True)
class Call:
    """One read for :meth:`Multicall.aggregate`: target, calldata and how to decode the answer."""

    target: str
    data: bytes
    decode: Callable[[bytes], Any]


class _Binding:
    contract_name = ""

    def __init__(self, client: RpcClient, address: str) -> None:
        self.client = client
        self.address = to_checksum_address(address)
        self.contract = client.w3.eth.contract(
            address=self.address,
            abi=list(load_artifact(self.contract_name).abi),
        )
        self._types: dict[str, list[str]] = {}
        self._inputs: dict[str, tuple[bytes, list[str]]] = {}

    def decode_log(self, log: dict[str, Any]) -> DecodedEvent | None:
        """A raw JSON-RPC log of this contract decoded by web3 (None if not one of its events)."""
        return Events.of(self.contract_name).decode(log)

    def _outputs(self, fn: str) -> list[str]:
        types = self._types.get(fn)
        if types is None:
            item = self.contract.get_function_by_name(fn).abi
            types = self._types[fn] = [collapse_if_tuple(dict(p)) for p in item.get("outputs", [])]
        return types

    def decoder(self, fn: str) -> Callable[[bytes], tuple[Any, ...]]:
        """web3's codec for ``fn``'s return values; undecodable bytes are a MalformedReplyError."""
        types = self._outputs(fn)
        codec = self.client.w3.codec

        def decode(out: bytes) -> tuple[Any, ...]:
            try:
                return tuple(codec.decode(types, out))
            except Exception as exc:  # eth_abi raises several types on hostile bytes
                raise MalformedReplyError(f"cannot decode {fn}() result ({len(out)} bytes)") from exc

        return decode

    def encode(self, fn: str, *args: Any) -> bytes:
        """Calldata of ``fn(*args)``: selector + web3's codec, from the web3 contract's ABI element.

        Same bytes as ``Contract.encode_abi`` (tests/unit/test_chain_contracts.py) with the ABI lookup done
        once per function: ``encode_abi`` re-resolves the ABI element on every call (~4 ms against ~0.05 ms
        here on the shared test machine), and multicall entries are built on every unproven verification.
        """
        plan = self._inputs.get(fn)
        if plan is None:
            item = self.contract.get_function_by_name(fn).abi
            types = [collapse_if_tuple(dict(p)) for p in item.get("inputs", [])]
            plan = self._inputs[fn] = (function_abi_to_4byte_selector(item), types)
        return plan[0] + self.client.w3.codec.encode(plan[1], list(args))

    def _call(self, fn: str, *args: Any) -> Call:
        """A multicall entry: calldata and web3's codec for the answer."""
        return Call(self.address, self.encode(fn, *args), self.decoder(fn))

    def read(self, fn: str, *args: Any, block: BlockIdentifier = "latest") -> tuple[Any, ...]:
        """``functions.fn(*args).call()`` (one round trip); reverts become TransactionRevertedError."""
        with web3_errors():
            out = self.contract.functions[fn](*args).call(block_identifier=block)
        return tuple(out) if isinstance(out, list | tuple) and len(self._outputs(fn)) > 1 else (out,)

    def tx(self, fn: str, *args: Any, gas: int | None = None) -> TxRequest:
        return TxRequest(self.contract.functions[fn](*args), gas=gas, label=fn)


class DIDRegistry(_Binding):
    """CityDIDRegistry (ERC-1056 compatible)."""

    contract_name = "CityDIDRegistry"

    def identity_owner(self, identity: str) -> str:
        return to_checksum_address(self.read("identityOwner", identity)[0])

    def changed(self, identity: str) -> int:
        return int(self.read("changed", identity)[0])

    def is_registrar(self, account: str) -> bool:
        return bool(self.read("registrars", account)[0])

    def changed_call(self, identity: str) -> Call:
        return self._call("changed", identity)

    def owner_call(self, identity: str) -> Call:
        return self._call("identityOwner", identity)


class StatusRegistry(_Binding):
    """CityStatusRegistry: 2-bit status entries in issuer-owned lists."""

    contract_name = "CityStatusRegistry"

    def list_owner(self, list_id: int) -> str:
        return to_checksum_address(self.read("listOwner", list_id)[0])

    def list_count(self) -> int:
        return int(self.read("listCount")[0])

    def status_of(self, list_id: int, index: int) -> int:
        return int(self.read("statusOf", list_id, index)[0])

    def statuses_of(self, list_id: int, indexes: Sequence[int]) -> list[int]:
        return [int(v) for v in self.read("statusesOf", list_id, list(indexes))[0]]

    def status_call(self, list_id: int, index: int) -> Call:
        return self._call("statusOf", list_id, index)


class TrustedIssuers(_Binding):
    """CityTrustedIssuers: accreditation of issuer identities per credential type (vct)."""

    contract_name = "CityTrustedIssuers"

    def root(self) -> str:
        return to_checksum_address(self.read("root")[0])

    def is_trusted(self, issuer: str, vct: str) -> bool:
        return bool(self.read("isTrusted", issuer, vct_hash(vct))[0])

    def accreditation(self, issuer: str, vct: str) -> tuple[int, int, bool]:
        a, b, c = self.read("accreditation", issuer, vct_hash(vct))
        return int(a), int(b), bool(c)

    def accreditation_call(self, issuer: str, vct: str) -> Call:
        return self._call("accreditation", issuer, vct_hash(vct))


class AnchorRegistry(_Binding):
    """CityAnchorRegistry: Merkle roots of document-hash batches."""

    contract_name = "CityAnchorRegistry"

    def anchor_of(self, root: bytes) -> tuple[int, int, str]:
        ts, block, who = self.read("anchorOf", root)
        return int(ts), int(block), to_checksum_address(who)

    def verify_proof(self, root: bytes, document_hash: bytes, proof: Sequence[bytes]) -> bool:
        return bool(self.read("verifyProof", root, document_hash, list(proof))[0])


class Multicall(_Binding):
    """CityMulticall (Multicall3 ``aggregate3`` ABI): many reads in one ``eth_call``."""

    contract_name = "CityMulticall"

    def aggregate_request(self, calls: Sequence[Call]) -> tuple[str, list[Any]]:
        """The ``eth_call`` (method, params) that runs ``calls`` plus block number and timestamp."""
        entries = [
            (self.address, False, self.encode("getBlockNumber")),
            (self.address, False, self.encode("getCurrentBlockTimestamp")),
        ]
        entries += [(c.target, True, c.data) for c in calls]
        data = self.encode("aggregate3", entries)
        return "eth_call", [{"to": self.address, "data": "0x" + data.hex()}, "latest"]

    def decode_aggregate(self, raw: Any, calls: Sequence[Call]) -> tuple[int, int, list[Any]]:
        """(block number, block timestamp, decoded results); a failed inner call raises its revert."""
        from cityid.chain.errors import TransactionRevertedError

        (results,) = self.decoder("aggregate3")(as_bytes(raw, "aggregate3 result"))
        if len(results) != len(calls) + 2:
            raise MalformedReplyError("aggregate3 returned the wrong number of results")
        block = int(self.decoder("getBlockNumber")(results[0][1])[0])
        ts = int(self.decoder("getCurrentBlockTimestamp")(results[1][1])[0])
        out: list[Any] = []
        for call, (ok, data) in zip(calls, results[2:], strict=True):
            if not ok:
                raise TransactionRevertedError(
                    f"read of {call.target} failed: 0x{bytes(data).hex()}", bytes(data)
                )
            out.append(call.decode(bytes(data)))
        return block, ts, out

    def aggregate(self, calls: Sequence[Call]) -> tuple[int, int, list[Any]]:
        method, params = self.aggregate_request(calls)
        return self.decode_aggregate(self.client.request(method, params), calls)


def vct_hash(vct: str) -> bytes:
    """keccak256 of the credential type string (the trusted-issuers key)."""
    return keccak(text=vct)


def name32(name: str) -> bytes:
    """An ERC-1056 bytes32 name (UTF-8, right-padded; longer than 32 bytes is an error, not truncation)."""
    raw = name.encode()
    if len(raw) > 32:
        raise ValueError(f"attribute name {name!r} is longer than 32 bytes")
    return raw.ljust(32, b"\0")


def signed_digest(registry: str, chain_id: int, nonce: int, identity: str, payload: bytes) -> bytes:
    """The hash a ``CityDIDRegistry`` ``…Signed`` call must be signed over (docs/chain.md §DID registry):
    keccak256(0x19 0x00 registry chainId nonce identity payload), ``payload`` = "fnName" || packed args.
    ERC-1056 has no ``chainId`` here; we add it so a signature for one chain never replays on another."""
    return keccak(
        b"\x19\x00"
        + bytes.fromhex(registry[2:])
        + int(chain_id).to_bytes(32, "big")
        + int(nonce).to_bytes(32, "big")
        + bytes.fromhex(identity[2:])
        + payload
    )
