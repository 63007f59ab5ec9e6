"""What the chain writer needs from a chain (docs/server.md §Chain outbox).

Two ports:

* :class:`TxPort` — a real chain (embedded py-evm node or a JSON-RPC node such as anvil) through the
  server's :class:`~server.chain.registrar.Registrar`: transactions are *built* by the registrar's public
  batch methods (``enroll_citizens``, ``revoke_keys``, ``set_status``) with a recording sender in place of
  its :class:`~server.chain.writer.TxSender`, then estimated, signed with an explicit nonce and stored by the
  writer before they are broadcast. Every node call the writer makes is in this one class.
* :class:`DirectPort` — a :class:`~server.chain.gateway.ChainGateway` without a transaction pipeline (the
  in-memory chain of the unit tests): a batch is applied by calling the gateway and is final at once.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cityid.chain.contracts import Events
from cityid.chain.errors import ChainError, RpcError
from cityid.chain.view import CredentialStatus
from server.models import OutboxKind

logger = logging.getLogger(__name__)

#: Rows per transaction (gas: ~30 k per enrolled key, ~10 k per revoked key, ~300 per status bit + words).
CHUNK = {OutboxKind.ENROLL: 200, OutboxKind.REVOKE_KEY: 200, OutboxKind.STATUS: 1000}
KEY_VALIDITY_SECONDS = 10 * 365 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Item:
    """An outbox row as a port sees it."""

    id: int
    kind: str
    identity: str | None = None
    point: bytes | None = None
    list_id: int | None = None
    index: int | None = None
    status: int | None = None


@dataclass(frozen=True, slots=True)
class SignedTx:
    nonce: int
    raw: str  # 0x-hex signed transaction
    tx_hash: str
    gas: int


@dataclass(frozen=True, slots=True)
class Mined:
    """A receipt: where the transaction is and whether it succeeded."""

    block_number: int
    block_hash: str
    gas_used: int
    ok: bool


class Reverted(ChainError):
    """The node refuses the batch before signing (gas estimation replays it and it reverts)."""


def group(items: Sequence[Item]) -> list[tuple[str, list[Item]]]:
    """Split rows into transaction-sized groups of one kind (status rows: one list and value per group)."""
    out: list[tuple[str, list[Item]]] = []
    by: dict[tuple[str, int | None, int | None], list[Item]] = {}
    for it in items:
        key = (it.kind, it.list_id, it.status) if it.kind == OutboxKind.STATUS else (it.kind, None, None)
        by.setdefault(key, []).append(it)
    for (kind, _l, _s), rows in by.items():
        n = CHUNK[OutboxKind(kind)]
        out.extend((kind, rows[i : i + n]) for i in range(0, len(rows), n))
    return out


class _Recorder:
    """Stands in for the registrar's TxSender: keeps the requests instead of sending them."""

    def __init__(self) -> None:
        self.requests: list[Any] = []

    def send_many(self, reqs: Sequence[Any]) -> list[Any]:
        self.requests.extend(reqs)
        return []

    def send(self, req: Any) -> None:
        self.requests.append(req)


class TxPort:
    """A real chain through the server's registrar (see the module docstring)."""

    direct = False

    def __init__(self, registrar: Any) -> None:
        self.registrar = registrar
        self.sender = registrar.sender
        self.client = registrar.client

    @property
    def address(self) -> str:
        return str(self.sender.address)

    # ---- building ----
    def _record(self, call: Callable[[Any], object]) -> Any:
        clone = copy.copy(self.registrar)
        recorder = _Recorder()
        clone.sender = recorder
        call(clone)
        if len(recorder.requests) != 1:
            raise ChainError(f"expected one transaction per group, got {len(recorder.requests)}")
        return recorder.requests[0]

    def request(self, kind: str, items: Sequence[Item]) -> Any:
        """The one transaction request for a group from :func:`group`."""
        if kind == OutboxKind.ENROLL:
            by_identity: dict[str, list[bytes]] = {}
            for it in items:
                assert it.identity and it.point
                by_identity.setdefault(it.identity, []).append(it.point)
            citizens = list(by_identity.items())
            return self._record(lambda r: r.enroll_citizens(citizens, KEY_VALIDITY_SECONDS, len(citizens)))
        if kind == OutboxKind.REVOKE_KEY:
            entries = [(it.identity, it.point) for it in items]
            return self._record(lambda r: r.revoke_keys(entries, chunk=len(entries)))
        list_id, status = items[0].list_id, items[0].status
        indexes = [it.index for it in items]
        return self._record(
            lambda r: r.set_status(list_id, indexes, CredentialStatus(status), chunk=len(indexes))
        )

    def estimate(self, req: Any) -> int:
        """Padded gas; a revert becomes :class:`Reverted`."""
        from cityid.chain.errors import TransactionRevertedError

        try:
            return int(self.sender.estimate(req))
        except TransactionRevertedError as exc:
            raise Reverted(str(exc)) from exc

    # ---- signing and sending ----
    def _fees(self) -> dict[str, int]:
        block, price = self.client.batch([("eth_getBlockByNumber", ["latest", False]), ("eth_gasPrice", [])])
        gas_price = int(price, 16)
        base = block.get("baseFeePerGas") if isinstance(block, dict) else None
        if base is None:
            return {"gasPrice": gas_price}
        base_fee = int(base, 16)
        priority = max(gas_price - base_fee, 10**6)
        return {"maxFeePerGas": 3 * base_fee + priority, "maxPriorityFeePerGas": priority}

    def _sign(self, to: str, data: bytes, gas: int, nonce: int, fees: dict[str, int]) -> SignedTx:
        tx: dict[str, Any] = {"chainId": int(self.sender.chain_id), "nonce": nonce, "gas": gas, "value": 0,
                              "data": data, "to": to, **fees}  # fmt: skip
        signed = self.sender.account.sign_transaction(tx)
        return SignedTx(nonce, "0x" + signed.raw_transaction.hex(), "0x" + signed.hash.hex(), gas)

    def sign(self, reqs_and_gas: Sequence[tuple[Any, int]], first_nonce: int) -> list[SignedTx]:
        """Sign consecutive nonces from ``first_nonce`` (fees read once)."""
        fees = self._fees()
        return [self._sign(req.to, req.data, gas, first_nonce + k, fees)
                for k, (req, gas) in enumerate(reqs_and_gas)]  # fmt: skip

    def sign_fillers(self, nonces: Sequence[int]) -> list[SignedTx]:
        """No-op self-transfers (21,000 gas) that fill nonce gaps."""
        fees = self._fees()
        return [self._sign(self.address, b"", 21000, n, fees) for n in nonces]

    def broadcast(self, raw: str) -> None:
        """Send signed bytes; 'already known' (an earlier attempt arrived) is success. Other refusals
        (nonce too low: the nonce went to something else; too high: a gap) raise :class:`RpcError`."""
        try:
            self.client.request("eth_sendRawTransaction", [raw])
        except RpcError as exc:
            text = exc.message.lower()
            if "already known" in text or "known transaction" in text or "already imported" in text:
                return
            raise

    def receipt(self, tx_hash: str) -> Mined | None:
        r = self.client.request("eth_getTransactionReceipt", [tx_hash])
        if not isinstance(r, dict) or r.get("blockNumber") is None:
            return None
        return Mined(int(r["blockNumber"], 16), str(r["blockHash"]).lower(), int(r["gasUsed"], 16),
                     int(r.get("status", "0x1"), 16) == 1)  # fmt: skip

    def block_hashes(self, numbers: Sequence[int]) -> dict[int, str | None]:
        """Hash of each block number on the node's canonical chain (None: no such block)."""
        if not numbers:
            return {}
        got = self.client.batch([("eth_getBlockByNumber", [hex(n), False]) for n in numbers])
        return {
            n: (str(b["hash"]).lower() if isinstance(b, dict) else None)
            for n, b in zip(numbers, got, strict=True)
        }

    def head(self) -> int:
        return int(self.client.request("eth_blockNumber"), 16)

    def nonce(self, tag: str = "latest") -> int:
        return int(self.client.request("eth_getTransactionCount", [self.address, tag]), 16)

    def forget_nonce(self) -> None:
        """The registrar's own sender (certificate anchoring, ceremonies) re-reads its nonce."""
        self.sender.resync_nonce()

    # ---- reading back (``city-server chain check``) ----
    def keys(self, identities: Sequence[str]) -> dict[str, set[bytes]]:
        """Current citizen keys per identity, replayed from the DID registry's DIDAttributeChanged events
        (one ``eth_getLogs`` per 100 identities; a key with validTo 0 is revoked)."""
        from server.chain.registrar import CITIZEN_KEY_ATTR

        dids = self.registrar.dids
        topic = "0x" + Events.of(dids.contract_name).topics["DIDAttributeChanged"].hex()
        out: dict[str, set[bytes]] = {i.lower(): set() for i in identities}
        ids = sorted(out)
        for k in range(0, len(ids), 100):
            chunk = ["0x" + "00" * 12 + i[2:] for i in ids[k : k + 100]]
            logs = self.client.request("eth_getLogs", [{"fromBlock": "0x0", "toBlock": "latest",
                                       "address": dids.address, "topics": [topic, chunk]}])  # fmt: skip
            for log in logs:
                ev = dids.decode_log(log)
                if ev is None or ev.name != "DIDAttributeChanged":
                    continue
                name = bytes(ev.args["name"]).rstrip(b"\0").decode(errors="replace")
                if name != CITIZEN_KEY_ATTR:
                    continue
                who = str(ev.args["identity"]).lower()
                keys = out.setdefault(who, set())
                value = bytes(ev.args["value"])
                if int(ev.args["validTo"]) == 0:
                    keys.discard(value)
                else:
                    keys.add(value)
        return out

    def statuses(self, list_id: int, indexes: Sequence[int]) -> list[int]:
        out: list[int] = []
        for i in range(0, len(indexes), 500):
            out.extend(int(x) for x in self.registrar.status.statuses_of(list_id, list(indexes[i : i + 500])))
        return out


class DirectPort:
    """A gateway without transactions (unit tests' in-memory chain): apply = call the gateway."""

    direct = True

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway

    def apply(self, kind: str, items: Sequence[Item]) -> None:
        if kind == OutboxKind.ENROLL:
            self.gateway.register_keys([(it.identity, it.point) for it in items])
        elif kind == OutboxKind.REVOKE_KEY:
            self.gateway.revoke_keys([(it.identity, it.point) for it in items])
        else:
            status = CredentialStatus(items[0].status)
            self.gateway.set_status(items[0].list_id, [it.index for it in items], status)

    def keys(self, identities: Sequence[str]) -> dict[str, set[bytes]]:
        table = getattr(self.gateway, "keys", {})
        return {i.lower(): set(table.get(i, ())) for i in identities}

    def statuses(self, list_id: int, indexes: Sequence[int]) -> list[int]:
        table = getattr(self.gateway, "status", {})
        return [int(table.get((list_id, i), CredentialStatus.VALID)) for i in indexes]


def port_for(gateway: Any) -> TxPort | DirectPort:
    registrar = getattr(gateway, "registrar", None)
    if registrar is not None and getattr(registrar, "sender", None) is not None:
        return TxPort(registrar)
    return DirectPort(gateway)
