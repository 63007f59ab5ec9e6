"""``kiosk serve`` and ``kiosk clerk-password``: the kiosk / counter terminal app (docs/ui.md)."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
from dataclasses import replace

from cityid.cli_util import wait_for_stop
from cityid.errors import CityIdError
from terminal.config import Mode, TerminalConfig, hash_password, load_config, parse_config


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``serve`` and ``clerk-password`` (``demo`` comes from the ``citydemo`` package, an entry point)."""
    p = sub.add_parser("serve", help="serve the kiosk or counter screens", description=_serve.__doc__)
    p.add_argument("--mode", choices=[m.value for m in Mode], help="kiosk (unattended) or counter (clerk)")
    p.add_argument("--config", metavar="FILE", help="TOML configuration file (docs/ui.md)")
    p.add_argument("--host", help="bind address (default from the config: 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default from the config: 8080)")
    p.set_defaults(func=_serve)

    c = sub.add_parser(
        "clerk-password",
        help="print a password hash for the [counter.clerks] table",
        description="Reads the password from env KIOSK_CLERK_PASSWORD or a prompt; prints the scrypt hash.",
    )
    c.set_defaults(func=_clerk_password)


def _serve(args: argparse.Namespace) -> int:
    """Serve the kiosk (citizen, unattended) or counter (clerk) screens with the configured chain, server
    and card readers. Binds to 127.0.0.1 unless the configuration or --host says otherwise."""
    from terminal.web import create_app
    from terminal.web.server import ServerThread

    config: TerminalConfig = load_config(args.config) if args.config else parse_config({})
    overrides: dict[str, object] = {}
    if args.mode:
        overrides["mode"] = Mode(args.mode)
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    config = replace(config, **overrides)  # type: ignore[arg-type]
    if args.verbose < 2:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # request lines only with -vv
    if config.mode is Mode.COUNTER and not config.server_url:
        raise CityIdError("a counter terminal needs [server] url in its configuration")
    kiosk, counter = _backends(config)
    app = create_app(config, kiosk=kiosk, counter=counter)
    with ServerThread(app, config.host, config.port) as server:
        print(f"{config.mode.value} screens on {server.url}/{'' if kiosk else 'counter/'}", flush=True)
        wait_for_stop()
    return 0


def _backends(config: TerminalConfig) -> tuple[object | None, object | None]:
    """The real backends for ``config`` (chain view, verifier, readers, server client)."""
    from terminal.flows.kiosk import SERVICES
    from terminal.verifier import NonceStore, Verifier
    from terminal.web.stack import CardCounterBackend, PcscKioskBackend

    view = _chain_view(config)
    verifier = Verifier(view, config.audience, NonceStore())
    if config.mode is Mode.KIOSK:
        unknown = [s for s in config.services if s not in SERVICES]
        if unknown:
            raise CityIdError(f"{config.source}: terminal.services: unknown service {unknown[0]!r}")
        services = [SERVICES[s] for s in config.services]
        from terminal.fido.discovery import system_hid_devices

        return PcscKioskBackend(verifier, services, config.reader, hid_lister=system_hid_devices), None
    from terminal.server_client import ServerClient, load_terminal_key

    if not config.terminal_key:
        raise CityIdError(f"{config.source}: server.terminal_key: a counter terminal needs its signing key")
    key = load_terminal_key(config.terminal_key, os.environ.get("CITYID_TERMINAL_KEY_PASSWORD"))
    client = ServerClient(config.server_url, config.terminal_id, key)
    return None, CardCounterBackend(client, verifier, reader_filter=config.reader)


def _chain_view(config: TerminalConfig) -> object:
    """The kiosk's chain view (docs/chain.md, "Kiosk wiring"): the sync cache when ``[chain] cache`` is set
    (verifies offline within ``max_staleness``), else proven live reads — one node, or a quorum of nodes."""
    from cityid.chain.live import LiveChainView
    from cityid.chain.network import NetworkConfig
    from cityid.chain.quorum import QuorumChainView
    from cityid.chain.resolver import address_of
    from cityid.chain.rpc import HttpTransport, RpcClient
    from cityid.chain.sync import SyncCache

    chain = config.chain
    if chain.embedded:
        raise CityIdError(
            "an embedded chain only exists inside `kiosk demo`; configure [chain] rpc/chain_id/addresses "
            "or network_file for `kiosk serve`"
        )
    if chain.network_file:
        network = NetworkConfig.load(chain.network_file)
    else:
        network = NetworkConfig.from_json(
            {
                "name": chain.network,
                "chain_id": chain.chain_id,
                "rpc_url": chain.rpc,
                "addresses": chain.addresses,
            }
        )
    clients = [
        RpcClient(HttpTransport(url, allow_plain=chain.allow_plain_http))
        for url in (network.rpc_url, *chain.nodes)
    ]
    bound = chain.max_staleness
    if len(clients) == 1:
        logging.getLogger(__name__).warning(
            "chain: one node only — its event logs cannot be cross-checked (docs/chain.md, 'Proven reads'); "
            "configure [chain] nodes for a quorum"
        )
    if chain.cache:
        cache = SyncCache(
            clients[0],
            network,
            chain.cache,
            confirmations=chain.confirmations,
            max_staleness=bound,
            max_chain_age=bound,
            status_lists=chain.status_lists or None,
            issuers=[address_of(network, did) for did in chain.issuers] or None,
            proofs=True,
            peers=clients[1:],
            quorum=chain.quorum or len(clients) // 2 + 1,
        )
        cache.start()
        logging.getLogger(__name__).info("chain: sync cache %s following %s", chain.cache, clients[0].url)
        return cache
    if len(clients) == 1:
        return LiveChainView(clients[0], network, max_chain_age=bound)
    return QuorumChainView(clients, network, chain.quorum or len(clients) // 2 + 1, max_chain_age=bound)


def _clerk_password(args: argparse.Namespace) -> int:
    """Print the scrypt hash of a clerk password."""
    password = os.environ.get("KIOSK_CLERK_PASSWORD")
    if password is None:
        if not sys.stdin.isatty():
            raise CityIdError("set KIOSK_CLERK_PASSWORD or run in a terminal to be prompted")
        password = getpass.getpass("clerk password: ")
        if password != getpass.getpass("again: "):
            raise CityIdError("the two passwords differ")
    if len(password) < 8:
        raise CityIdError("use at least 8 characters")
    print(hash_password(password))
    return 0
