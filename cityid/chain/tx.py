"""What a contract write is before it is signed: a web3 contract function (or constructor) and a label.

The server's ``TxSender`` (server/chain/writer.py) estimates, builds (``build_transaction``), signs, sends it.
"""

from __future__ import annotations

from dataclasses import dataclass

from web3.contract.contract import ContractConstructor, ContractFunction


@dataclass(frozen=True, slots=True)
class TxRequest:
    """What to send: a web3 ``ContractFunction`` (call of a deployed contract) or ``ContractConstructor``."""

    function: ContractFunction | ContractConstructor
    gas: int | None = None
    label: str = ""

    @property
    def to(self) -> str | None:
        """Target address (None for a contract creation)."""
        return None if isinstance(self.function, ContractConstructor) else str(self.function.address)

    @property
    def data(self) -> bytes:
        """The calldata (or init code) web3 encodes for it."""
        if isinstance(self.function, ContractConstructor):
            return bytes.fromhex(self.function.data_in_transaction[2:])
        return bytes.fromhex(self.function._encode_transaction_data()[2:])  # web3's own encoder of the call
