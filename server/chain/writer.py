"""Transaction sender on web3: local nonces for many in-flight transactions, padded gas, receipts, retries.

Built with web3 (``ContractFunction.estimate_gas``/``build_transaction``,
``w3.eth.account.sign_transaction``, ``w3.eth.send_raw_transaction``, ``w3.eth.get_transaction_receipt``).
A transaction is signed ONCE (fixed nonce, fixed bytes, so a fixed hash); a retry after a timeout or a
dropped connection re-sends those same bytes and then looks the hash up, so a retry can never apply a
change twice. Reverts are decoded (custom errors,
``Error(string)``) into :class:`TransactionRevertedError` before sending (gas estimation replays the call) and
after mining (the failed transaction is replayed with ``eth_call`` at the block before).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from web3.exceptions import TransactionNotFound
from web3.types import TxParams, TxReceipt

from cityid.chain.contracts import web3_errors
from cityid.chain.errors import (
    ChainError,
    MalformedReplyError,
    NodeUnreachableError,
    RpcError,
    RpcTimeoutError,
    TransactionFailedError,
    TransactionRevertedError,
)
from cityid.chain.rpc import RpcClient
from cityid.chain.tx import TxRequest

logger = logging.getLogger(__name__)

GAS_PAD_RATIO = 0.20  # +20 %: estimates on anvil/hardhat came out 500-630 gas short (FIELD-NOTES)
GAS_PAD_FIXED = 1000


@dataclass(frozen=True, slots=True)
class Receipt:
    """A mined, successful transaction."""

    tx_hash: str
    block_number: int
    block_hash: str
    gas_used: int
    contract_address: str | None
    logs: tuple[dict[str, Any], ...]


def pad_gas(estimate: int) -> int:
    """Padded gas limit for an estimate (+20 % and +1000)."""
    return int(estimate * (1 + GAS_PAD_RATIO)) + GAS_PAD_FIXED


class TxSender:
    """Signs with a local account and sends through one :class:`RpcClient`."""

    def __init__(
        self,
        client: RpcClient,
        account: LocalAccount,
        chain_id: int,
        *,
        receipt_timeout: float = 60.0,
        poll_interval: float = 0.05,
        send_retries: int = 3,
    ) -> None:
        self.client = client
        self.account = account
        self.chain_id = chain_id
        self.receipt_timeout = receipt_timeout
        self.poll_interval = poll_interval
        self.send_retries = send_retries
        self.w3 = client.w3
        self._lock = threading.Lock()
        self._nonce: int | None = None

    @property
    def address(self) -> str:
        return self.account.address

    # ---- nonces ----
    def _take_nonce(self) -> int:
        with self._lock:
            nonce = self._nonce
            if nonce is None:
                with web3_errors():
                    nonce = int(self.w3.eth.get_transaction_count(self.account.address, "pending"))
            self._nonce = nonce + 1
            return nonce

    def resync_nonce(self) -> None:
        """Forget the local nonce; the next transaction asks the node (after a conflict or restart)."""
        with self._lock:
            self._nonce = None

    # ---- building ----
    def _fees(self) -> dict[str, int]:
        """EIP-1559 fees from the latest block's base fee (legacy ``gasPrice`` before London)."""
        with web3_errors():
            block = self.w3.eth.get_block("latest")
            gas_price = self.w3.eth.gas_price
        base = block.get("baseFeePerGas")
        if base is None:  # pre-London chain: legacy pricing
            return {"gasPrice": gas_price}
        priority = max(gas_price - base, 10**9 // 1000)
        return {"maxFeePerGas": 2 * base + priority, "maxPriorityFeePerGas": priority}

    def estimate(self, req: TxRequest) -> int:
        """Padded gas for ``req``; a revert is raised now, decoded, before anything is signed."""
        if req.gas is not None:
            return req.gas
        with web3_errors():
            return pad_gas(req.function.estimate_gas({"from": self.account.address}))

    def _sign(self, req: TxRequest, nonce: int, gas: int, fees: dict[str, int]) -> tuple[HexBytes, str]:
        fields = cast(
            TxParams,
            {"from": self.account.address, "chainId": self.chain_id, "nonce": nonce, "gas": gas, "value": 0}
            | fees,
        )
        with web3_errors():
            tx = req.function.build_transaction(fields)  # all fields given: no node round trip
        signed = self.w3.eth.account.sign_transaction(tx, self.account.key)
        return HexBytes(signed.raw_transaction), "0x" + signed.hash.hex()

    # ---- sending ----
    def _broadcast(self, raw: HexBytes, tx_hash: str) -> None:
        """Send signed bytes; retry the SAME bytes on transport failures (cannot double-apply)."""
        for attempt in range(self.send_retries + 1):
            try:
                with web3_errors():
                    got = "0x" + bytes(self.w3.eth.send_raw_transaction(raw)).hex()
                if got.lower() != tx_hash.lower():
                    raise TransactionFailedError(f"node returned hash {got}, expected {tx_hash}")
                return
            except (NodeUnreachableError, RpcTimeoutError):
                if attempt == self.send_retries:
                    raise
                logger.warning("send of %s failed, retrying the same signed transaction", tx_hash)
                time.sleep(self.poll_interval * (attempt + 1))
            except RpcError as exc:
                text = exc.message.lower()
                if attempt > 0 and (
                    "already known" in text or "nonce too low" in text or "known transaction" in text
                ):
                    return  # an earlier attempt arrived; the receipt tells what happened
                if "nonce too low" in text or "nonce too high" in text:
                    self.resync_nonce()
                raise

    def _receipt(self, tx_hash: str, req: TxRequest) -> Receipt:
        deadline = time.monotonic() + self.receipt_timeout
        while True:
            try:
                with web3_errors():
                    r: TxReceipt = self.w3.eth.get_transaction_receipt(HexBytes(tx_hash))
                if r.get("blockNumber") is not None:
                    break
            except TransactionNotFound:
                pass
            if time.monotonic() > deadline:
                raise TransactionFailedError(
                    f"{req.label or 'transaction'} {tx_hash} not mined within {self.receipt_timeout:g}s"
                )
            time.sleep(self.poll_interval)
        try:
            status, block_number = int(r["status"]), int(r["blockNumber"])
            block_hash = bytes(r["blockHash"])
            gas_used = int(r["gasUsed"])
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedReplyError(f"receipt of {tx_hash} is malformed") from exc
        if status != 1:
            raise self._explain_failure(tx_hash, req, block_number)
        contract = r.get("contractAddress")
        return Receipt(
            tx_hash=tx_hash,
            block_number=block_number,
            block_hash="0x" + block_hash.hex(),
            gas_used=gas_used,
            contract_address=str(contract) if contract else None,
            logs=tuple(_raw_log(log) for log in r.get("logs", [])),
        )

    def _explain_failure(self, tx_hash: str, req: TxRequest, block_number: int) -> ChainError:
        """Replay the failed transaction with ``eth_call`` at the block before to decode its revert."""
        call: dict[str, Any] = {"from": self.account.address, "data": "0x" + req.data.hex()}
        if req.to:
            call["to"] = req.to
        try:
            with web3_errors():
                self.w3.eth.call(cast(TxParams, call), block_number - 1)
        except TransactionRevertedError as revert:
            return TransactionRevertedError(revert.reason, revert.data, tx_hash)
        except ChainError:
            pass
        return TransactionRevertedError(
            "failed on chain (out of gas or state changed since estimate)", tx_hash=tx_hash
        )

    def send(self, req: TxRequest) -> Receipt:
        """Estimate (+pad), sign, send, wait for the receipt; raise a typed error on any failure."""
        return self.send_many([req])[0]

    def send_many(self, reqs: Sequence[TxRequest]) -> list[Receipt]:
        """Send all with consecutive local nonces (all in flight at once), then collect receipts in order.

        Every request is estimated first, so a predictable revert stops the whole lot before any is sent.
        """
        if not reqs:
            return []
        gases = [self.estimate(r) for r in reqs]
        fees = self._fees()
        sent: list[tuple[str, TxRequest]] = []
        for req, gas in zip(reqs, gases, strict=True):
            for conflict in (False, True):
                nonce = self._take_nonce()
                raw, tx_hash = self._sign(req, nonce, gas, fees)
                try:
                    self._broadcast(raw, tx_hash)
                    break
                except RpcError as exc:
                    self.resync_nonce()
                    # Another process used our nonce (or a reorg rewound the account): this signed tx was
                    # refused, so re-signing it with a fresh nonce cannot apply the change twice. Once only.
                    if conflict or "nonce too" not in exc.message.lower():
                        raise
                    logger.warning("nonce %d already used by someone else; re-signing", nonce)
                except ChainError:
                    self.resync_nonce()
                    raise
            logger.info("sent %s %s (nonce %d, gas %d)", req.label or "tx", tx_hash, nonce, gas)
            sent.append((tx_hash, req))
        return [self._receipt(h, r) for h, r in sent]

    def still_canonical(self, receipt: Receipt) -> bool:
        """True while the receipt's block is still on the chain.

        False after a reorg dropped it: the local nonce is resynchronised so the change can be sent again.
        """
        from web3.exceptions import BlockNotFound

        try:
            with web3_errors():
                block = self.w3.eth.get_block(receipt.block_number)
            ok = "0x" + bytes(block.get("hash") or b"").hex() == receipt.block_hash
        except BlockNotFound:
            ok = False
        if not ok:
            self.resync_nonce()
        return ok

    def deploy(self, name: str, label: str = "") -> Receipt:
        """Deploy the city contract ``name`` (its committed artifact)."""
        from cityid.chain.contracts import contract

        receipt = self.send(TxRequest(contract(self.w3, name).constructor(), label=label or f"deploy {name}"))
        if not receipt.contract_address:
            raise TransactionFailedError(f"{label}: receipt has no contract address")
        return receipt


def _raw_log(log: Any) -> dict[str, Any]:
    """A receipt log (web3-formatted) back as a JSON-RPC log object, as :func:`decode_log` reads them."""
    def hexed(v: Any) -> Any:
        if isinstance(v, bytes | bytearray):
            return "0x" + bytes(v).hex()
        if isinstance(v, int) and not isinstance(v, bool):
            return hex(v)
        return v

    out = {k: hexed(v) for k, v in dict(log).items() if k != "topics"}
    out["topics"] = [hexed(t) for t in log.get("topics", [])]
    return out
