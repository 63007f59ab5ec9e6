"""Network configuration: name, chain id, JSON-RPC URL and contract addresses (JSON file, validated)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eth_utils.address import is_checksum_address, to_checksum_address

from cityid.chain.errors import ChainConfigError

if TYPE_CHECKING:
    from cityid.chain.rpc import RpcClient

_CHECKSUMS: dict[str, str] = {}
_CHECKSUMS_MAX = 65536


def checksum(address: str) -> str:
    """EIP-55 form of an address, memoised under both the given and the EIP-55 spelling (the kiosk's hot
    path checks the same few addresses; the server derives an identity and then its DID from the result,
    one keccak instead of two). Bounded: cleared when full (dict operations are atomic under the GIL)."""
    hit = _CHECKSUMS.get(address)
    if hit is None:
        hit = to_checksum_address(address)
        if len(_CHECKSUMS) >= _CHECKSUMS_MAX:
            _CHECKSUMS.clear()
        _CHECKSUMS[address] = _CHECKSUMS[hit] = hit
    return hit


CONTRACT_KEYS = ("did_registry", "status_registry", "trusted_issuers", "anchor_registry", "multicall")
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """One EVM network the city uses.

    ``name`` is the did:ethr network name (``did:ethr:<name>:0x…``); ``deploy_block`` is where event scans
    start; ``addresses`` maps each of :data:`CONTRACT_KEYS` to a checksummed address.
    """

    name: str
    chain_id: int
    rpc_url: str
    addresses: dict[str, str] = field(default_factory=dict)
    deploy_block: int = 0

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ChainConfigError(f"network name {self.name!r} must be 1-32 of a-z, 0-9, '-'")
        if not isinstance(self.chain_id, int) or isinstance(self.chain_id, bool) or self.chain_id <= 0:
            raise ChainConfigError(f"chain_id must be a positive integer, not {self.chain_id!r}")
        if not isinstance(self.rpc_url, str) or not self.rpc_url:
            raise ChainConfigError("rpc_url must be a non-empty string")
        if not isinstance(self.deploy_block, int) or self.deploy_block < 0:
            raise ChainConfigError("deploy_block must be a non-negative integer")
        for key, value in self.addresses.items():
            if key not in CONTRACT_KEYS:
                raise ChainConfigError(f"unknown contract key {key!r} (expected {', '.join(CONTRACT_KEYS)})")
            if not isinstance(value, str) or not _ADDRESS.match(value):
                raise ChainConfigError(f"{key}: {value!r} is not a 0x-prefixed 20-byte address")
            body = value[2:]
            if body != body.lower() and body != body.upper() and not is_checksum_address(value):
                raise ChainConfigError(f"{key}: {value} has a bad EIP-55 checksum")

    def address(self, key: str) -> str:
        """Checksummed address of a contract; a clear error when the config lacks it."""
        try:
            return checksum(self.addresses[key])
        except KeyError:
            raise ChainConfigError(f"network {self.name!r} has no {key} address (deploy first)") from None

    @property
    def did_prefix(self) -> str:
        """``did:ethr:<name>:`` (use :func:`cityid.chain.resolver.did_for` for full DIDs)."""
        return f"did:ethr:{self.name}:"

    def with_rpc(self, rpc_url: str) -> NetworkConfig:
        return replace(self, rpc_url=rpc_url)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "chain_id": self.chain_id,
            "rpc_url": self.rpc_url,
            "deploy_block": self.deploy_block,
            "addresses": {k: self.addresses[k] for k in CONTRACT_KEYS if k in self.addresses},
        }

    @classmethod
    def from_json(cls, data: Any) -> NetworkConfig:
        if not isinstance(data, dict):
            raise ChainConfigError("network config must be a JSON object")
        missing = [k for k in ("name", "chain_id", "rpc_url") if k not in data]
        if missing:
            raise ChainConfigError(f"network config lacks {', '.join(missing)}")
        addresses = data.get("addresses", {})
        if not isinstance(addresses, dict):
            raise ChainConfigError("addresses must be an object")
        return cls(
            name=data["name"],
            chain_id=data["chain_id"],
            rpc_url=data["rpc_url"],
            addresses=dict(addresses),
            deploy_block=data.get("deploy_block", 0),
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> NetworkConfig:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ChainConfigError(f"cannot read network config {path}: {exc.strerror}") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ChainConfigError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}") from exc
        return cls.from_json(data)

    def require_complete(self) -> NetworkConfig:
        missing = [k for k in CONTRACT_KEYS if k not in self.addresses]
        if missing:
            raise ChainConfigError(f"network {self.name!r} lacks addresses for {', '.join(missing)}")
        return self


def check_network(client: RpcClient, network: NetworkConfig) -> int:
    """Confirm the node serves ``network``: same chain id and code at every configured address.

    One round trip; returns the node's latest block number. Raises :class:`ChainConfigError` on a mismatch
    (a kiosk pointed at the wrong node must not read "no revocation" from an empty address).
    """
    from cityid.chain.rpc import as_int

    keys = [k for k in CONTRACT_KEYS if k in network.addresses]
    replies = client.batch(
        [("eth_chainId", []), ("eth_blockNumber", [])]
        + [("eth_getCode", [network.address(k), "latest"]) for k in keys]
    )
    chain_id = as_int(replies[0], "chain id")
    if chain_id != network.chain_id:
        raise ChainConfigError(
            f"{client.url} serves chain {chain_id}, but network {network.name} is {network.chain_id}"
        )
    for key, code in zip(keys, replies[2:], strict=True):
        if not isinstance(code, str) or code in ("0x", "0x0", ""):
            raise ChainConfigError(f"no contract code at {key} {network.address(key)} on {network.name}")
    return as_int(replies[1], "block number")
