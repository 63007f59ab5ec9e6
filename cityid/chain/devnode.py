"""Start a local anvil node (npm ``@foundry-rs/anvil``, installed by ``./dev setup``) for tests and bench."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

from cityid.chain.errors import ChainConfigError

ANVIL = Path(__file__).resolve().parents[2] / "node_modules" / ".bin" / "anvil"
ANVIL_CHAIN_ID = 31337
# anvil's well-known public development mnemonic: funded throw-away accounts, never a real key
ANVIL_MNEMONIC = "test test test test test test test test test test test junk"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str) -> bool:
    """True when ``url`` answers ``eth_chainId``."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}).encode()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})  # noqa: S310 - local node
    try:
        with urllib.request.urlopen(req, timeout=1) as reply:  # noqa: S310 - local node
            return "result" in json.loads(reply.read())
    except (OSError, ValueError):
        return False


def anvil_accounts(count: int = 10) -> list[LocalAccount]:
    """The funded development accounts of anvil's default mnemonic."""
    Account.enable_unaudited_hdwallet_features()
    return [Account.from_mnemonic(ANVIL_MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}") for i in range(count)]


class AnvilNode:
    """An anvil process on 127.0.0.1 (``with AnvilNode() as node: node.url``)."""

    def __init__(
        self, chain_id: int = ANVIL_CHAIN_ID, port: int | None = None, timeout: float = 30.0
    ) -> None:
        if not ANVIL.exists():
            raise ChainConfigError(f"anvil is not installed at {ANVIL}: run ./dev setup (npm install)")
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(  # noqa: S603 - fixed binary and arguments
            [
                str(ANVIL),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--chain-id",
                str(chain_id),
                "--silent",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while not answers(self.url):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace")[-500:] if self.proc.stderr else ""
                raise ChainConfigError(f"anvil exited: {err}")
            if time.monotonic() > deadline:
                self.stop()
                raise ChainConfigError(f"anvil did not answer within {timeout:g}s")
            time.sleep(0.05)

    def accounts(self, count: int = 10) -> list[LocalAccount]:
        return anvil_accounts(count)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()

    def __enter__(self) -> AnvilNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
