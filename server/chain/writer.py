"""Transaction sender: local nonces for many in-flight transactions, padded gas, receipt checks, safe retries.

A transaction is signed ONCE (fixed nonce, fixed bytes, so a fixed hash); a retry after a timeout or a dropped
connection re-sends those same bytes and then looks the hash up, so a retry can never apply a change twice.
Reverts are decoded (custom errors, ``Error(string)``) into :class:`TransactionRevertedError` before sending
(gas estimation replays the call) and after mining (the failed transaction is replayed with ``eth_call``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_account.signers.local import LocalAccount

from cityid.chain.abi import Abi
from cityid.chain.errors import (
    ChainError,
    NodeUnreachableError,
    RpcError,
    RpcTimeoutError,
    TransactionFailedError,
    TransactionRevertedError,
)
from cityid.chain.rpc import RpcClient, as_bytes, as_dict, as_int, as_list
from cityid.chain.tx import TxRequest, revert_from_rpc

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
        self._lock = threading.Lock()
        self._nonce: int | None = None

    @property
    def address(self) -> str:
        return self.account.address

    # ---- nonces ----
    def _take_nonce(self) -> int:
        with self._lock:
            if self._nonce is None:
                self._nonce = as_int(
                    self.client.request("eth_getTransactionCount", [self.address, "pending"]), "nonce"
                )
            nonce = self._nonce
            self._nonce += 1
            return nonce

    def resync_nonce(self) -> None:
        """Forget the local nonce; the next transaction asks the node (after a conflict or restart)."""
        with self._lock:
            self._nonce = None

    # ---- building ----
    def _fees(self) -> dict[str, int]:
        block, tip = self.client.batch([("eth_getBlockByNumber", ["latest", False]), ("eth_gasPrice", [])])
        block = as_dict(block, "latest block")
        gas_price = as_int(tip, "gasPrice")
        base = block.get("baseFeePerGas")
        if base is None:  # pre-London chain: legacy pricing
            return {"gasPrice": gas_price}
        base_fee = as_int(base, "baseFeePerGas")
        priority = max(gas_price - base_fee, 10**9 // 1000)
        return {"maxFeePerGas": 2 * base_fee + priority, "maxPriorityFeePerGas": priority}

    def estimate(self, req: TxRequest) -> int:
        """Padded gas for ``req``; a revert is raised now, decoded, before anything is signed."""
        if req.gas is not None:
            return req.gas
        call: dict[str, Any] = {"from": self.address, "data": "0x" + req.data.hex()}
        if req.to:
            call["to"] = req.to
        try:
            return pad_gas(as_int(self.client.request("eth_estimateGas", [call]), "gas estimate"))
        except RpcError as exc:
            revert = revert_from_rpc(exc, req.abi)
            if revert is not None:
                raise revert from exc
            raise

    def _sign(self, req: TxRequest, nonce: int, gas: int, fees: dict[str, int]) -> tuple[str, str]:
        tx: dict[str, Any] = {
            "chainId": self.chain_id,
            "nonce": nonce,
            "gas": gas,
            "value": 0,
            "data": req.data,
            **fees,
        }
        if req.to:
            tx["to"] = req.to
        signed = self.account.sign_transaction(tx)
        return "0x" + signed.raw_transaction.hex(), "0x" + signed.hash.hex()

    # ---- sending ----
    def _broadcast(self, raw: str, tx_hash: str) -> None:
        """Send signed bytes; retry the SAME bytes on transport failures (cannot double-apply)."""
        for attempt in range(self.send_retries + 1):
            try:
                got = self.client.request("eth_sendRawTransaction", [raw])
                if isinstance(got, str) and got.lower() != tx_hash.lower():
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
            raw = self.client.request("eth_getTransactionReceipt", [tx_hash])
            if raw is not None:
                break
            if time.monotonic() > deadline:
                raise TransactionFailedError(
                    f"{req.label or 'transaction'} {tx_hash} not mined within {self.receipt_timeout:g}s"
                )
            time.sleep(self.poll_interval)
        r = as_dict(raw, "receipt")
        status = as_int(r.get("status"), "receipt status")
        block_number = as_int(r.get("blockNumber"), "receipt blockNumber")
        if status != 1:
            raise self._explain_failure(tx_hash, req, block_number)
        contract = r.get("contractAddress")
        return Receipt(
            tx_hash=tx_hash,
            block_number=block_number,
            block_hash="0x" + as_bytes(r.get("blockHash"), "receipt blockHash", 32).hex(),
            gas_used=as_int(r.get("gasUsed"), "receipt gasUsed"),
            contract_address=contract if isinstance(contract, str) else None,
            logs=tuple(as_list(r.get("logs", []), "receipt logs")),
        )

    def _explain_failure(self, tx_hash: str, req: TxRequest, block_number: int) -> ChainError:
        call: dict[str, Any] = {"from": self.address, "data": "0x" + req.data.hex()}
        if req.to:
            call["to"] = req.to
        try:
            self.client.request("eth_call", [call, hex(block_number - 1)])
        except RpcError as exc:
            revert = revert_from_rpc(exc, req.abi)
            if revert is not None:
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
        block = self.client.request("eth_getBlockByNumber", [hex(receipt.block_number), False])
        ok = block is not None and (
            "0x" + as_bytes(as_dict(block, "block").get("hash"), "block hash", 32).hex() == receipt.block_hash
        )
        if not ok:
            self.resync_nonce()
        return ok

    def deploy(self, bytecode: bytes, abi: Abi | None = None, label: str = "deploy") -> Receipt:
        receipt = self.send(TxRequest(None, bytecode, abi, label=label))
        if not receipt.contract_address:
            raise TransactionFailedError(f"{label}: receipt has no contract address")
        return receipt
