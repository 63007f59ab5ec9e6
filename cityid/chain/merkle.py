"""Merkle tree over document hashes, matching CityAnchorRegistry.computeRoot (docs/chain.md).

leaf = keccak256(0x00 || documentHash); node = keccak256(0x01 || min(a, b) || max(a, b)); an odd node at the
end of a level is carried up unchanged. A proof is the list of sibling hashes from leaf to root.
"""

from __future__ import annotations

from collections.abc import Sequence

from eth_utils.crypto import keccak


def leaf_hash(document_hash: bytes) -> bytes:
    if len(document_hash) != 32:
        raise ValueError("document hashes are 32 bytes")
    return keccak(b"\x00" + document_hash)


def _node(a: bytes, b: bytes) -> bytes:
    return keccak(b"\x01" + min(a, b) + max(a, b))


def build_tree(document_hashes: Sequence[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """(root, proofs) for a batch; proofs[i] proves document_hashes[i]."""
    if not document_hashes:
        raise ValueError("cannot anchor an empty batch")
    level = [leaf_hash(h) for h in document_hashes]
    positions = list(range(len(level)))
    proofs: list[list[bytes]] = [[] for _ in level]
    while len(level) > 1:
        nxt = [
            _node(level[i], level[i + 1]) if i + 1 < len(level) else level[i] for i in range(0, len(level), 2)
        ]
        for doc, pos in enumerate(positions):
            sibling = pos ^ 1
            if sibling < len(level):
                proofs[doc].append(level[sibling])
            positions[doc] = pos // 2
        level = nxt
    return level[0], proofs


def compute_root(document_hash: bytes, proof: Sequence[bytes]) -> bytes:
    node = leaf_hash(document_hash)
    for sibling in proof:
        node = _node(node, sibling)
    return node
