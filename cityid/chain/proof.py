"""State proofs: block headers bound to their hash, EIP-1186 ``eth_getProof`` answers checked against them.

A node's word is not taken for the values a verification uses. The head header is re-hashed (keccak of its
RLP, Yellow Paper §4.3, with the fork fields the JSON carries), so its ``stateRoot`` and ``timestamp`` are
exactly those of the block hash a quorum agreed on; account and storage values are then read out of the
Merkle-Patricia proofs with the ``trie`` package (``HexaryTrie.get_from_proof``), as light clients such as
Helios verify an untrusted RPC (docs/chain.md, "Proven reads").

Storage slots follow the Solidity storage layout of server/contracts/*.sol (mappings: keccak(key . slot));
the anvil integration suite compares every proven value with the contract's own view function.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import rlp
from eth_hash.auto import keccak as _keccak
from eth_utils.crypto import keccak
from trie.hexary import HexaryTrie

from cityid.chain.errors import ChainError, MalformedReplyError
from cityid.chain.rpc import as_bytes, as_dict, as_int, as_list

EMPTY_TRIE_ROOT = keccak(rlp.encode(b""))
EMPTY_CODE_HASH = keccak(b"")

# Solidity storage slots of the state variables the kiosk proves (server/contracts/*.sol declaration order)
DID_ENTRIES_SLOT = 0  # CityDIDRegistry.entries: address => Entry{address owner; uint64 changed} (one word)
# CityStatusRegistry.words (after listCount, listOwner, pendingListOwner): list => word => 128 x 2 bits
STATUS_WORDS_SLOT = 3
# CityTrustedIssuers.accreditations (after root, pendingRoot): issuer => vct => {u64 from, until; bool}
ACCREDITATIONS_SLOT = 2


class ProofError(ChainError):
    """A node's answer does not match the state root of the block it claims (lying or broken node)."""


def _word(value: int | bytes) -> bytes:
    return value.rjust(32, b"\0") if isinstance(value, bytes) else value.to_bytes(32, "big")


def mapping_slot(key: int | bytes, slot: int | bytes) -> bytes:
    """Slot of ``mapping[key]`` for a mapping at ``slot`` (Solidity docs, "Mappings and Dynamic Arrays")."""
    return keccak(_word(key) + _word(slot))


def did_entry_slot(identity: str) -> bytes:
    return mapping_slot(bytes.fromhex(identity[2:]), DID_ENTRIES_SLOT)


def status_word_slot(list_id: int, word_index: int) -> bytes:
    return mapping_slot(word_index, mapping_slot(list_id, STATUS_WORDS_SLOT))


def accreditation_slot(issuer: str, vct_hash: bytes) -> bytes:
    return mapping_slot(vct_hash, mapping_slot(bytes.fromhex(issuer[2:]), ACCREDITATIONS_SLOT))


def unpack_did_entry(word: int) -> tuple[int, int]:
    """(owner as int, changed block) of a CityDIDRegistry Entry word."""
    return word & ((1 << 160) - 1), (word >> 160) & ((1 << 64) - 1)


def unpack_accreditation(word: int) -> tuple[int, int, bool]:
    """(validFrom, validUntil, revoked) of a CityTrustedIssuers Accreditation word."""
    return word & ((1 << 64) - 1), (word >> 64) & ((1 << 64) - 1), bool((word >> 128) & 0xFF)


# ---- headers ---------------------------------------------------------------------------------------------

_TAIL = (  # optional fields by fork, in header order: London, Shanghai, Cancun (3), Prague
    ("baseFeePerGas", "int"),
    ("withdrawalsRoot", 32),
    ("blobGasUsed", "int"),
    ("excessBlobGas", "int"),
    ("parentBeaconBlockRoot", 32),
    ("requestsHash", 32),
)


@dataclass(frozen=True, slots=True)
class Header:
    """The header fields a verification uses, from a header whose hash was recomputed."""

    number: int
    hash: bytes
    parent_hash: bytes
    state_root: bytes
    timestamp: int
    receipts_root: bytes = b""

    @property
    def hex_hash(self) -> str:
        return "0x" + self.hash.hex()


def verify_header(raw: Any, what: str = "block") -> Header:
    """Parse an ``eth_getBlockByNumber`` object and check that its fields hash to its ``hash``."""
    b = as_dict(raw, what)
    fields: list[Any] = [
        as_bytes(b.get("parentHash"), f"{what} parentHash", 32),
        as_bytes(b.get("sha3Uncles"), f"{what} sha3Uncles", 32),
        as_bytes(b.get("miner"), f"{what} miner", 20),
        as_bytes(b.get("stateRoot"), f"{what} stateRoot", 32),
        as_bytes(b.get("transactionsRoot"), f"{what} transactionsRoot", 32),
        as_bytes(b.get("receiptsRoot"), f"{what} receiptsRoot", 32),
        as_bytes(b.get("logsBloom"), f"{what} logsBloom", 256),
        as_int(b.get("difficulty"), f"{what} difficulty"),
        as_int(b.get("number"), f"{what} number"),
        as_int(b.get("gasLimit"), f"{what} gasLimit"),
        as_int(b.get("gasUsed"), f"{what} gasUsed"),
        as_int(b.get("timestamp"), f"{what} timestamp"),
        as_bytes(b.get("extraData"), f"{what} extraData"),
        as_bytes(b.get("mixHash"), f"{what} mixHash", 32),
        as_bytes(b.get("nonce"), f"{what} nonce", 8),
    ]
    for name, kind in _TAIL:
        if b.get(name) is None:
            break  # fork fields are a prefix: later ones never appear without the earlier ones
        fields.append(as_int(b[name], f"{what} {name}") if kind == "int" else as_bytes(b[name], name, 32))
    claimed = as_bytes(b.get("hash"), f"{what} hash", 32)
    if keccak(rlp.encode(fields)) != claimed:
        raise ProofError(f"{what} {fields[8]}: header fields do not hash to {('0x' + claimed.hex())[:18]}…")
    return Header(fields[8], claimed, fields[0], fields[3], fields[11], fields[5])


# ---- EIP-1186 proofs -------------------------------------------------------------------------------------


def _proof(raw: Any, what: str) -> tuple[str, ...]:
    nodes = as_list(raw, what)
    if not all(isinstance(n, str) for n in nodes):
        raise MalformedReplyError(f"{what}: proof nodes must be hex strings")
    return tuple(nodes)


@lru_cache(maxsize=8192)
def _walk(root: bytes, key: bytes, proof: tuple[str, ...]) -> bytes:
    """The value under ``key`` in the trie ``root``, using only the nodes of ``proof`` (memoised: a verified
    (root, key, proof) always gives the same answer, so consecutive verifications at one head re-use it)."""
    nodes = {}
    for hex_node in proof:
        raw = as_bytes(hex_node, "proof node")
        nodes[_keccak(raw)] = raw
    return HexaryTrie(nodes, root_hash=root).get(key)


def _from_proof(root: bytes, key: bytes, proof: tuple[str, ...], what: str) -> bytes:
    """``HexaryTrie.get_from_proof`` without its decode/re-encode round trip of every node.

    Same check: the lookup walks from ``root`` through nodes found by hash in the proof only; a node the
    path needs but the proof lacks raises ``MissingTrieNode`` (an absent key proves as ``b""``).
    """
    if root == EMPTY_TRIE_ROOT:
        return b""
    try:
        return _walk(root, key, proof)
    except Exception as exc:  # any failure of the trie walk on untrusted nodes is a failed proof
        raise ProofError(f"{what}: proof does not verify against the block's root") from exc


@dataclass(frozen=True, slots=True)
class ProvenAccount:
    address: str
    storage_root: bytes
    code_hash: bytes
    storage: dict[bytes, int]  # slot -> value, every one proven


def verify_account_proof(state_root: bytes, address: str, slots: Sequence[bytes], raw: Any) -> ProvenAccount:
    """Check an ``eth_getProof`` answer for ``address`` and ``slots`` against ``state_root``.

    The account must exist and hold code; every asked slot must come with a proof (of its value or of its
    absence, i.e. zero). Values are taken from the proofs, never from the node's ``value`` fields.
    """
    p = as_dict(raw, "eth_getProof result")
    what = f"proof of {address}"
    leaf = _from_proof(
        state_root, _keccak(bytes.fromhex(address[2:])), _proof(p.get("accountProof"), what), what
    )
    if not leaf:
        raise ProofError(f"{what}: no such account at this block")
    try:
        _nonce, _balance, storage_root, code_hash = rlp.decode(leaf)
    except (rlp.DecodingError, ValueError) as exc:
        raise ProofError(f"{what}: account leaf is not an account") from exc
    if code_hash == EMPTY_CODE_HASH:
        raise ProofError(f"{what}: no contract code at this block")
    entries = as_list(p.get("storageProof"), f"{what} storageProof")
    by_key: dict[bytes, Any] = {}
    for e in entries:
        e = as_dict(e, f"{what} storage entry")
        by_key[_word(as_bytes(e.get("key"), f"{what} storage key"))[-32:]] = e.get("proof")
    storage: dict[bytes, int] = {}
    for slot in slots:
        if slot not in by_key:
            raise ProofError(f"{what}: slot 0x{slot.hex()} not proven")
        sw = f"{what} slot 0x{slot.hex()[:8]}…"
        value = _from_proof(storage_root, _keccak(slot), _proof(by_key[slot], sw), sw)
        try:
            storage[slot] = int.from_bytes(rlp.decode(value), "big") if value else 0
        except rlp.DecodingError as exc:
            raise ProofError(f"{sw}: value is not RLP") from exc
    return ProvenAccount(address, storage_root, code_hash, storage)


# ---- receipts (logs bound to a block's receiptsRoot) -----------------------------------------------------


def _receipt_rlp(raw: Any, what: str) -> tuple[bytes, list[tuple[bytes, tuple[bytes, ...], bytes]]]:
    """EIP-2718 encoding of one ``eth_getBlockReceipts`` entry, and its logs (address, topics, data)."""
    r = as_dict(raw, what)
    kind = as_int(r.get("type", "0x0"), f"{what} type")
    status = as_int(r.get("status"), f"{what} status")
    logs = []
    for log in as_list(r.get("logs"), f"{what} logs"):
        log = as_dict(log, f"{what} log")
        topics = tuple(as_bytes(t, f"{what} topic", 32) for t in as_list(log.get("topics"), f"{what} topics"))
        logs.append(
            (
                as_bytes(log.get("address"), f"{what} log address", 20),
                topics,
                as_bytes(log.get("data"), "data"),
            )
        )
    body = bytes(rlp.encode(  # rlp.encode is typed loosely; it returns bytes
        [
            status,
            as_int(r.get("cumulativeGasUsed"), f"{what} cumulativeGasUsed"),
            as_bytes(r.get("logsBloom"), f"{what} logsBloom", 256),
            [[a, list(t), d] for a, t, d in logs],
        ]
    ))
    return (body if kind == 0 else bytes([kind]) + body), logs


def verify_receipts(
    receipts_root: bytes, raw: Any, what: str
) -> list[tuple[bytes, tuple[bytes, ...], bytes]]:
    """Check a block's receipts against its ``receiptsRoot``; return every log of the block in order."""
    trie = HexaryTrie({})
    logs: list[tuple[bytes, tuple[bytes, ...], bytes]] = []
    for i, receipt in enumerate(as_list(raw, what)):
        encoded, receipt_logs = _receipt_rlp(receipt, f"{what} receipt {i}")
        trie[rlp.encode(i)] = encoded
        logs += receipt_logs
    if trie.root_hash != receipts_root:
        raise ProofError(f"{what}: receipts do not hash to the block's receiptsRoot")
    return logs


def proof_request(address: str, slots: Sequence[bytes], block: str) -> tuple[str, list[Any]]:
    """The ``eth_getProof`` (method, params) for ``slots`` of ``address`` at ``block``."""
    return "eth_getProof", [address, ["0x" + s.hex() for s in slots], block]


__all__ = [
    "EMPTY_TRIE_ROOT",
    "Header",
    "MalformedReplyError",
    "ProofError",
    "ProvenAccount",
    "accreditation_slot",
    "did_entry_slot",
    "mapping_slot",
    "proof_request",
    "status_word_slot",
    "unpack_accreditation",
    "unpack_did_entry",
    "verify_account_proof",
    "verify_header",
]
