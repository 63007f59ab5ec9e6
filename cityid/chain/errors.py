"""Typed chain errors (all subclasses of :class:`cityid.chain.view.ChainError`)."""

from __future__ import annotations

from cityid.chain.view import ChainError, StaleChainDataError

__all__ = [
    "ChainConfigError",
    "ChainError",
    "MalformedReplyError",
    "NodeUnreachableError",
    "RpcError",
    "RpcTimeoutError",
    "StaleChainDataError",
    "TransactionFailedError",
    "TransactionRevertedError",
]


class NodeUnreachableError(ChainError):
    """The JSON-RPC endpoint refused or dropped the connection."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"chain node {url} unreachable: {reason}")


class RpcTimeoutError(ChainError):
    """The JSON-RPC endpoint did not answer within the timeout."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        super().__init__(f"chain node {url} did not answer within {timeout:g}s")


class RpcError(ChainError):
    """The node answered with a JSON-RPC error object (JSON-RPC 2.0 §5.1)."""

    def __init__(self, code: int, message: str, data: object = None) -> None:
        self.code = code
        self.message = message
        self.data = data
        super().__init__(f"JSON-RPC error {code}: {message}")


class MalformedReplyError(ChainError):
    """The node's reply is not valid JSON-RPC or not the shape the method promises."""


class TransactionRevertedError(ChainError):
    """A call or transaction reverted; ``reason`` is the decoded custom error or Error(string)."""

    def __init__(self, reason: str, data: bytes = b"", tx_hash: str | None = None) -> None:
        self.reason = reason
        self.data = data
        self.tx_hash = tx_hash
        where = f" (tx {tx_hash})" if tx_hash else ""
        super().__init__(f"reverted: {reason}{where}")


class TransactionFailedError(ChainError):
    """A transaction could not be brought on chain (dropped, not mined in time, nonce conflict)."""


class ChainConfigError(ChainError):
    """A network configuration file or value is missing or invalid."""
