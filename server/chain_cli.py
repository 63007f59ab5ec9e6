"""``city-server chain …``: compile the contracts, deploy them, manage the chain account (docs/chain.md)."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

from cityid.chain.errors import ChainConfigError
from cityid.chain.rpc import HttpTransport, RpcClient
from cityid.cli_util import Subcommands, needs_command, progress
from cityid.errors import CityIdError

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
    if not args.registrar:
        progress("warning: no --registrar: the deploying root key is also the registrar (single-key set-up)")
    network = deploy_all(
        client,
        account,
        name=args.network,
        rpc_url=args.rpc,
        multicall=args.multicall,
        registrar=args.registrar,
    )
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
    if args.db is None:
        return 0
    # The server database against the chain (docs/server.md §Chain outbox): every disagreement, one a line.
    from eth_account import Account

    from server.chain.registrar import Registrar
    from server.outbox.check import Checked, check
    from server.outbox.ports import TxPort

    reader = Registrar(network.with_rpc(url), _client(url, args.timeout), Account.create())  # reads only
    shown = [0]

    def report(done: Checked) -> None:  # every ~50,000 entries / identities compared
        if (n := done.status_entries + done.identities) >= shown[0] + 50_000:
            shown[0] = n
            progress(f"checked {done.status_entries} status entries / {done.identities} identities")

    wrong = unconfirmed = 0
    for problem in check(_outbox_db(args), TxPort(reader), on_chunk=report):
        print(problem, flush=True)
        unconfirmed += problem.kind == "open"
        wrong += problem.kind != "open"
    print(f"{wrong} disagreement(s), {unconfirmed} chain write(s) not yet confirmed")
    return 1 if wrong else 0


def _outbox_db(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The server database: ``--db URL``, or with a bare ``--db`` the configured one (``--config`` /
    ``CITY_SERVER_DB_URL``, so a password never has to be on the command line)."""
    from server.config import load_config
    from server.db import Database

    url = args.db or load_config(args.config).database_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        raise CityIdError(f"database {url.removeprefix('sqlite:///')} does not exist")
    return Database.from_url(url)


def _outbox(args: argparse.Namespace) -> int:
    """Failed outbox rows (the chain refused them), and putting them back in the queue (docs/server.md §Chain
    outbox)."""
    from server.outbox.check import failed_rows, retry
    from server.outbox.store import stats

    db = _outbox_db(args)
    if args.retry:
        done = retry(db, args.retry)
        print(f"{len(done)} row(s) back in the queue: {', '.join(map(str, done))}; the writer's next window "
              "sends them")  # fmt: skip
        return 0
    rows = failed_rows(db)
    for r in rows:
        subject = f"{r.list_id}/{r.status_index}" if r.kind == "status" else r.identity
        print(f"{r.id}\t{r.kind}\t{subject}\tattempts {r.attempts}\t{r.error or '-'}")
    st = stats(db)
    print(f"outbox: {st['depth']} open (oldest {st['oldest_pending_age_s']} s), {st['failed']} failed, "
          f"last confirmed block {st['last_confirmed_block']}")  # fmt: skip
    return 1 if rows else 0


def _root_registrar(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from cityid.chain.network import NetworkConfig
    from server.chain.accounts import ROOT_PASSWORD_ENV, load_account
    from server.chain.registrar import Registrar

    network = NetworkConfig.load(args.network_file)
    if args.root_keystore:
        account = load_account(args.root_keystore, password_env=ROOT_PASSWORD_ENV, allow_env_key=False)
    else:  # `show` only reads: any account will do
        from eth_account import Account

        account = Account.create()
    return Registrar(network, _client(args.rpc or network.rpc_url, args.timeout), account)


def _root(args: argparse.Namespace) -> int:
    """City-root ceremonies: registrar grant/demote, root rotation (docs/chain.md §Roles and keys)."""
    root = _root_registrar(args)
    if args.root_command == "show":
        for role, (holder, pending) in root.root_roles().items():
            print(f"{role}\t{holder}\tpending {pending}")
        for address in args.address or ():
            print(f"registrar {address}\t{root.dids.is_registrar(address)}")
        return 0
    if args.root_command == "grant-registrar":
        root.add_registrar(args.address, True)
        print(f"{args.address} is a registrar")
    elif args.root_command == "demote-registrar":
        root.add_registrar(args.address, False)
        print(f"{args.address} demoted: it controls no identity any more (reassign them with reassignOwner)")
    elif args.root_command == "propose":
        root.propose_root(args.address)
        print(f"proposed {args.address} as city root; it must run `city-server chain root accept`")
    elif args.root_command == "accept":
        root.accept_root()
        print(f"{root.address} is now the city root")
    return 0


def register(sub: Subcommands) -> None:
    """Add ``chain compile|deploy|check|root|accounts``."""
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
    p.add_argument(
        "--registrar",
        metavar="ADDRESS",
        help="the server's hot key (citizen DIDs, keys, status); the deploying key stays the city root",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="JSON-RPC timeout in seconds")
    p.set_defaults(func=_deploy)

    p = cmds.add_parser("check", help="confirm a node serves a network config (chain id, contract code)")
    p.add_argument("network_file", help="network config JSON written by deploy")
    p.add_argument("--rpc", help="node URL (default: the config's rpc_url)")
    p.add_argument("--timeout", type=float, default=10.0, help="JSON-RPC timeout in seconds")
    p.add_argument("--db", nargs="?", const="", metavar="URL",
                   help="also compare the server database with the chain, list disagreements (bare --db: the "
                        "configured database)")  # fmt: skip
    p.add_argument("--config", help="server config TOML (for a bare --db; default: env / built-in)")
    p.set_defaults(func=_check)

    p = cmds.add_parser("outbox", help="list chain writes the chain refused; --retry ID… queues them again")
    p.add_argument("--config", help="server config TOML (default: env / built-in)")
    p.add_argument("--db", metavar="URL", help="database URL (default: the configured one)")
    p.add_argument("--retry", type=int, nargs="+", metavar="ID", help="queue these failed rows again")
    p.set_defaults(func=_outbox)

    root = cmds.add_parser("root", help="CEREMONIES with the city root key (registrars, root rotation)")
    rsub = root.add_subparsers(dest="root_command", metavar="ROOT_COMMAND", required=True)
    for verb, text in (
        ("show", "show the root roles (and whether ADDRESS… are registrars)"),
        ("grant-registrar", "grant the registrar role to ADDRESS (the server's hot key)"),
        ("demote-registrar", "demote registrar ADDRESS (it then controls nothing)"),
        ("propose", "step 1 of a root rotation: propose ADDRESS for every root role"),
        ("accept", "step 2, with the NEW root's keystore: take the proposed roles"),
    ):
        q = rsub.add_parser(verb, help=text)
        q.add_argument("network_file", help="network config JSON written by deploy")
        if verb == "show":
            q.add_argument("address", nargs="*", help="addresses to check for the registrar role")
        elif verb != "accept":
            q.add_argument("address", help="0x address")
        q.add_argument(
            "--root-keystore",
            required=verb != "show",
            metavar="FILE",
            help="the city root's encrypted keystore (password from CITY_ROOT_PASSWORD or a prompt)",
        )
        q.add_argument("--rpc", help="node URL (default: the config's rpc_url)")
        q.add_argument("--timeout", type=float, default=10.0, help="JSON-RPC timeout in seconds")
        q.set_defaults(func=_root)

    p = cmds.add_parser("accounts", help="show the configured chain account (or create a keystore)")
    p.add_argument("--keystore", help=key_help)
    p.add_argument("--rpc", help="also show balance and nonce from this node")
    p.add_argument("--create", metavar="FILE", help="create a new encrypted keystore FILE")
    p.add_argument("--timeout", type=float, default=10.0, help="JSON-RPC timeout in seconds")
    p.set_defaults(func=_accounts)
