"""``kiosk serve`` and ``kiosk clerk-password``: the kiosk / counter terminal app (docs/ui.md)."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
import threading
from dataclasses import replace

from cityid.cli_util import stop_signals
from cityid.errors import CityIdError
from terminal.config import Mode, TerminalConfig, check_bind, hash_password, load_config, parse_config


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
    with stop_signals() as stop:  # first: a signal during start-up still stops cleanly
        return _serve_until(args, stop)


def _serve_until(args: argparse.Namespace, stop: threading.Event) -> int:
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
    check_bind(config)  # beyond loopback only with TLS + client certificates (docs/ui.md §Security)
    if args.verbose < 2:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # request lines only with -vv
    if config.mode is Mode.COUNTER and not config.server_url:
        raise CityIdError("a counter terminal needs [server] url in its configuration")
    kiosk, counter = _backends(config)
    printing = _printing(config, kiosk)
    app = create_app(
        config, kiosk=kiosk, counter=counter, printing=printing, **_counter_peripherals(config, counter)
    )
    with ServerThread(app, config.host, config.port) as server:
        print(f"{config.mode.value} screens on {server.url}/{'' if kiosk else 'counter/'}", flush=True)
        from terminal.web.app import announce

        for line in announce(app, server.url):
            print(line, flush=True)
        while not stop.wait(0.5):
            pass
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


def _printing(config: TerminalConfig, kiosk: object | None) -> object | None:
    """A kiosk's certificate printer when ``[printer]`` is configured (docs/printer.md): the desk signs with
    the terminal key, queues on the city server and anchors in the chain's anchor registry."""
    if kiosk is None or config.printer is None:
        return None
    from cityid.certificate import anchor_uri
    from terminal.certificate_client import ServerAnchorQueue
    from terminal.flows.certificate import CertificateDesk
    from terminal.peripherals.printer import ReceiptPrinter
    from terminal.server_client import load_terminal_key
    from terminal.web.printing import KioskPrinting

    if not config.server_url or not config.terminal_key:
        raise CityIdError(f"{config.source}: [printer] needs [server] url and terminal_key (certificates)")
    key = load_terminal_key(config.terminal_key, os.environ.get("CITYID_TERMINAL_KEY_PASSWORD"))
    network = kiosk.verifier.chain_view.network  # type: ignore[attr-defined]
    anchor = anchor_uri(network.chain_id, network.address("anchor_registry"))
    queue = ServerAnchorQueue(config.server_url, config.terminal_id, key)
    desk = CertificateDesk(key, config.terminal_id, anchor, queue, ReceiptPrinter(config.printer))
    return KioskPrinting(desk)


def _counter_peripherals(config: TerminalConfig, counter: object | None) -> dict[str, object]:
    """A counter's receipt printer (``[printer]``: enrollment receipts) and scanner (``[scanner]``: scanned
    certificates verified against the chain and the city server's kiosk directory)."""
    if counter is None:
        return {}
    from terminal.web.printing import CounterPrinting, CounterScanning

    out: dict[str, object] = {}
    if config.printer is not None:
        from terminal.peripherals.printer import ReceiptPrinter

        out["counter_printing"] = CounterPrinting(ReceiptPrinter(config.printer), config.terminal_id)
    if config.scanner is not None:
        from cityid.certificate import CertificateVerifier, ChainAnchorChecker
        from terminal.certificate_client import HttpKioskDirectory, HttpProofSource
        from terminal.peripherals.scanner import SerialScanner

        view = counter.enrollment.verifier.chain_view  # type: ignore[attr-defined]
        verifier = CertificateVerifier(
            HttpKioskDirectory(config.server_url),
            ChainAnchorChecker(view.client, view.network),
            HttpProofSource(config.server_url),
        )
        scanner = SerialScanner(config.scanner.port, config.scanner.baudrate)
        out["scanning"] = CounterScanning(scanner, verifier)
    return out


def _chain_view(config: TerminalConfig) -> object:
    from cityid.chain.live import LiveChainView
    from cityid.chain.network import NetworkConfig
    from cityid.chain.rpc import HttpTransport, RpcClient

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
    return LiveChainView(RpcClient(HttpTransport(network.rpc_url)), network)


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
