"""``city-server chain …``: compile the contracts, deploy them, manage the chain account (docs/chain.md)."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

from cityid.chain.errors import ChainConfigError
from cityid.chain.rpc import HttpTransport, RpcClient
from cityid.cli_util import needs_command, progress

CONTRACTS = Path(__file__).resolve().parent / "contracts"
ARTIFACTS = Path(__file__).resolve().parents[1] / "cityid" / "chain" / "artifacts"


def compile_contracts(out: Path) -> str:
    """Run the pinned solc-js over server/contracts/*.sol into ``out``; returns the compiler's report."""
    node = shutil.which("node")
    if node is None:
        raise ChainConfigError("node is not installed (./dev setup installs the node tools)")
    proc = subprocess.run(  # noqa: S603 - fixed script, no shell
        [node, str(CONTRACTS / "compile.js"), str(out)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise ChainConfigError(f"solc-js failed: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def _compile(args: argparse.Namespace) -> int:
    progress(f"compiling {CONTRACTS}/*.sol with solc-js (package.json pin) into {args.out}")
    print(compile_contracts(Path(args.out)), end="")
    return 0


def _client(url: str, timeout: float) -> RpcClient:

    if not url.startswith(("http://", "https://")):
        raise ChainConfigError(f"--rpc must be an http(s) URL, not {url!r}")
    return RpcClient(HttpTransport(url, timeout=timeout))


def _deploy(args: argparse.Namespace) -> int:
    from cityid.chain.rpc import as_int
    from server.chain.accounts import load_account
    from server.chain.registrar import deploy_all

    account = load_account(args.keystore)
    client = _client(args.rpc, args.timeout)
    chain_id = as_int(client.request("eth_chainId"), "chain id")
    if args.chain_id is not None and args.chain_id != chain_id:
        raise ChainConfigError(f"{args.rpc} is chain {chain_id}, not the expected {args.chain_id}")
    progress(f"deploying the city contracts to {args.network} (chain {chain_id}) from {account.address}")
    network = deploy_all(client, account, name=args.network, rpc_url=args.rpc, multicall=args.multicall)
    progress(f"deployed at block {network.deploy_block}; writing {args.out}")
    network.save(args.out)
    print(json.dumps(network.to_json(), indent=2))
    return 0


def _accounts(args: argparse.Namespace) -> int:
    from cityid.chain.rpc import as_int
    from server.chain.accounts import create_keystore, load_account

    if args.create:
        address = create_keystore(args.create)
        print(f"created {args.create} for {address}")
        return 0
    account = load_account(args.keystore)
    line = f"{account.address}"
    if args.rpc:
        client = _client(args.rpc, args.timeout)
        balance, nonce = client.batch(
            [
                ("eth_getBalance", [account.address, "latest"]),
                ("eth_getTransactionCount", [account.address, "latest"]),
            ]
        )
        line += f"  balance {as_int(balance, 'balance') / 1e18:.6f}  nonce {as_int(nonce, 'nonce')}"
    print(line)
    return 0


def _check(args: argparse.Namespace) -> int:
    from cityid.chain.network import NetworkConfig, check_network

    network = NetworkConfig.load(args.network_file)
    url = args.rpc or network.rpc_url
    block = check_network(_client(url, args.timeout), network.with_rpc(url))
    print(f"{network.name}: chain {network.chain_id} at block {block}; all contracts present")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``chain compile|deploy|check|accounts``."""
    chain = sub.add_parser("chain", help="chain contracts and account", description=__doc__)
    cmds = chain.add_subparsers(dest="chain_command", metavar="CHAIN_COMMAND")
    chain.set_defaults(func=needs_command(chain))

    p = cmds.add_parser("compile", help="compile server/contracts with the pinned solc-js into the artifacts")
    p.add_argument("--out", default=str(ARTIFACTS), help="artifact directory (default: %(default)s)")
    p.set_defaults(func=_compile)

    key_help = (
        "encrypted keystore file (password from CITY_CHAIN_PASSWORD or a prompt); else CITY_CHAIN_PRIVATE_KEY"
    )
    p = cmds.add_parser("deploy", help="deploy all contracts and write a network config")
    p.add_argument("--rpc", required=True, help="JSON-RPC URL of the node")
    p.add_argument("--network", required=True, help="did:ethr network name, e.g. busan")
    p.add_argument("--out", default="network.json", help="network config to write (default: %(default)s)")
    p.add_argument("--keystore", help=key_help)
    p.add_argument("--chain-id", type=int, help="refuse to deploy unless the node reports this chain id")
    p.add_argument("--multicall", help="use an existing Multicall3 at this address instead of deploying one")
    p.add_argument("--timeout", type=float, default=10.0, help="JSON-RPC timeout in seconds")
    p.set_defaults(func=_deploy)

    p = cmds.add_parser("check", help="confirm a node serves a network config (chain id, contract code)")
    p.add_argument("network_file", help="network config JSON written by deploy")
    p.add_argument("--rpc", help="node URL (default: the config's rpc_url)")
    p.add_argument("--timeout", type=float, default=10.0, help="JSON-RPC timeout in seconds")
    p.set_defaults(func=_check)

    p = cmds.add_parser("accounts", help="show the configured chain account (or create a keystore)")
    p.add_argument("--keystore", help=key_help)
    p.add_argument("--rpc", help="also show balance and nonce from this node")
    p.add_argument("--create", metavar="FILE", help="create a new encrypted keystore FILE")
    p.add_argument("--timeout", type=float, default=10.0, help="JSON-RPC timeout in seconds")
    p.set_defaults(func=_accounts)
