"""What a contract write is before it is signed (:class:`TxRequest`) and how a node's revert is decoded.

Shared by the read bindings (a reverted ``eth_call``) and the server's transaction sender.
"""

from __future__ import annotations

from dataclasses import dataclass

from cityid.chain.abi import Abi, decode_revert_any
from cityid.chain.errors import RpcError, TransactionRevertedError


@dataclass(frozen=True, slots=True)
class TxRequest:
    """What to send: target (None = contract creation), calldata, and the ABI to decode its reverts."""

    to: str | None
    data: bytes
    abi: Abi | None = None
    gas: int | None = None
    label: str = ""



def revert_from_rpc(exc: RpcError, abi: Abi | None) -> TransactionRevertedError | None:
    """The decoded revert behind a JSON-RPC error (geth/anvil: code 3 + data), or None if it is not one."""
    if exc.code != 3 and "revert" not in exc.message.lower():
        return None
    data = exc.data
    if isinstance(data, dict):  # some nodes nest it: {"data": "0x..."}
        data = data.get("data")
    if isinstance(data, str) and data.startswith("0x"):
        try:
            raw = bytes.fromhex(data[2:])
        except ValueError:
            raw = b""
        reason = abi.decode_revert(raw) if abi else decode_revert_any(raw)
        return TransactionRevertedError(reason, raw)
    return TransactionRevertedError(exc.message)
