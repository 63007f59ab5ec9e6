"""``kiosk serve`` and ``kiosk clerk-password``: the kiosk / counter terminal app (docs/ui.md)."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from cityid.cli_util import Subcommands, port_number, stop_signals
from cityid.errors import CityIdError
from cityid.secrets import secret
from terminal.config import (
    Mode,
    TerminalConfig,
    check_bind,
    check_terminal_authentication,
    hash_password,
    load_config,
    parse_config,
    terminal_authentication_warning,
)

if TYPE_CHECKING:
    from cityid.chain.network import NetworkConfig
    from cityid.chain.view import ChainView
    from terminal.flows.authorization import TerminalAuthorization
    from terminal.web.backend import CounterBackend, KioskBackend
    from terminal.web.printing import CounterPrinting, CounterScanning, KioskPrinting


class _CounterPeripherals(TypedDict, total=False):
    """The counter's optional peripherals, as :func:`terminal.web.create_app` keyword arguments."""

    counter_printing: CounterPrinting
    scanning: CounterScanning


def register(sub: Subcommands) -> None:
    """Add ``serve`` and ``clerk-password`` (``demo`` comes from the ``citydemo`` package, an entry point)."""
    p = sub.add_parser("serve", help="serve the kiosk or counter screens", description=_serve.__doc__)
    p.add_argument("--mode", choices=[m.value for m in Mode], help="kiosk (unattended) or counter (clerk)")
    p.add_argument("--config", metavar="FILE", help="TOML configuration file (docs/ui.md)")
    p.add_argument("--host", help="bind address (default from the config: 127.0.0.1)")
    p.add_argument("--port", type=port_number, help="port (default from the config: 8080)")
    p.add_argument("--no-access-log", action="store_true", help="no per-request log lines")
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
    from cityid.serving import bind_listener
    from terminal.web import create_app
    from terminal.web.server import ServerThread

    config: TerminalConfig = load_config(args.config) if args.config else parse_config({})
    if args.mode:
        config = replace(config, mode=Mode(args.mode))
    if args.host:
        config = replace(config, host=args.host)
    if args.port is not None:
        config = replace(config, port=args.port)
    check_bind(config)  # beyond loopback only with TLS + client certificates (docs/ui.md §Security)
    if config.mode is Mode.KIOSK and not config.screen_url_file:
        runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
        if runtime:  # under systemd: the browser unit reads the one-use launch URL there
            config = replace(config, screen_url_file=str(Path(runtime) / "browser-url"))
    if config.mode is Mode.COUNTER and not config.server_url:
        raise CityIdError("a counter terminal needs [server] url in its configuration")
    if not args.no_access_log:
        logging.getLogger("cityid.access").setLevel(logging.INFO)  # route templates only, no personal data
    sock = bind_listener(config.host, config.port)  # "port in use" before the start-up, not after it
    kiosk, counter = _backends(config)
    printing = _printing(config, kiosk)
    app = create_app(
        config, kiosk=kiosk, counter=counter, printing=printing, **_counter_peripherals(config, counter)
    )
    with ServerThread(app, config.host, config.port, sock=sock) as server:
        print(f"{config.mode.value} screens on {server.url}/{'' if kiosk else 'counter/'}", flush=True)
        from terminal.web.app import announce

        for line in announce(app, server.url):
            print(line, flush=True)
        if counter is not None:
            write_browser_url(f"{server.url}/counter/")
        while not stop.wait(0.5):
            pass
    return 0


def write_browser_url(url: str) -> Path | None:
    """Hand the kiosk browser its start URL: ``$RUNTIME_DIRECTORY/browser-url`` (mode 0640), one line.

    The contract with udev/systemd/cityid-kiosk-browser (docs/operations.md §Kiosk browser); no file when
    not run by systemd with ``RuntimeDirectory=``.
    """
    folder = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if not folder:
        return None
    path = Path(folder) / "browser-url"
    tmp = path.with_name(".browser-url.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(url + "\n")
    os.replace(tmp, path)  # the launcher never reads a half-written line
    return path


#: The counter's enrollment journal (terminal/flows/counter_journal.py), beside the kiosk configuration.
JOURNAL_FILE = "counter-journal.sqlite"


def _backends(config: TerminalConfig) -> tuple[KioskBackend | None, CounterBackend | None]:
    """The real backends for ``config`` (chain view, verifier, readers, server client)."""
    from terminal.flows.kiosk import SERVICES
    from terminal.verifier import NonceStore, Verifier
    from terminal.web.stack import CardCounterBackend, PcscKioskBackend

    view = _chain_view(config)
    authorization = _terminal_authorization(config)
    # with terminal authentication the card signs aud = the certificate's terminal id (card-profile.md)
    audience = config.terminal_id if authorization is not None else config.audience
    verifier = Verifier(view, audience, NonceStore())
    if config.mode is Mode.KIOSK:
        unknown = [s for s in config.services if s not in SERVICES]
        if unknown:
            raise CityIdError(f"{config.source}: terminal.services: unknown service {unknown[0]!r}")
        services = [SERVICES[s] for s in config.services]
        from terminal.fido.discovery import system_hid_devices

        kiosk = PcscKioskBackend(
            verifier, services, config.reader, hid_lister=system_hid_devices, authorization=authorization
        )
        return kiosk, None
    from terminal.server_client import COUNTER_TIMEOUT, ServerClient, load_terminal_key

    if not config.terminal_key:
        raise CityIdError(f"{config.source}: server.terminal_key: a counter terminal needs its signing key")
    key = load_terminal_key(config.terminal_key, secret("CITYID_TERMINAL_KEY_PASSWORD"))
    client = ServerClient(config.server_url, config.terminal_id, key, timeout=COUNTER_TIMEOUT)
    from terminal.flows.counter_journal import JournalStore

    # The enrollment journal survives a counter restart: a SQLite file beside counter-sessions.sqlite.
    source = Path(config.source)
    on_disk = not config.source.startswith("<") and source.parent.is_dir()
    journal = JournalStore(source.with_name(JOURNAL_FILE) if on_disk else ":memory:")
    return None, CardCounterBackend(
        client, verifier, reader_filter=config.reader, journal=journal, authorization=authorization
    )


def _terminal_authorization(config: TerminalConfig) -> TerminalAuthorization | None:
    """This terminal's certificate towards citizen cards, renewed from the city server in the background
    (docs/card-profile.md §Terminal authentication). On by default; None only when the configuration opts
    out (``terminal_authentication = false``, lab/test setups: logged loudly at every start)."""
    warning = terminal_authentication_warning(config)
    if warning is not None:
        logging.getLogger(__name__).warning("%s: %s", config.source, warning)
        return None
    check_terminal_authentication(config)
    from terminal.flows.authorization import CertificateRenewer, TerminalAuthorization
    from terminal.server_client import ServerClient, load_terminal_key

    key = load_terminal_key(config.terminal_key, secret("CITYID_TERMINAL_KEY_PASSWORD"))
    client = ServerClient(config.server_url, config.terminal_id, key)
    authorization = TerminalAuthorization(config.terminal_id, key)
    CertificateRenewer(authorization, client.terminal_certificate).start()  # daemon thread
    return authorization


def _printing(config: TerminalConfig, kiosk: KioskBackend | None) -> KioskPrinting | None:
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
    key = load_terminal_key(config.terminal_key, secret("CITYID_TERMINAL_KEY_PASSWORD"))
    network = chain_network(config)
    anchor = anchor_uri(network.chain_id, network.address("anchor_registry"))
    queue = ServerAnchorQueue(config.server_url, config.terminal_id, key)
    desk = CertificateDesk(key, config.terminal_id, anchor, queue, ReceiptPrinter(config.printer))
    return KioskPrinting(desk)


def _counter_peripherals(config: TerminalConfig, counter: CounterBackend | None) -> _CounterPeripherals:
    """A counter's receipt printer (``[printer]``: enrollment receipts) and scanner (``[scanner]``: scanned
    certificates verified against the chain and the city server's kiosk directory)."""
    if counter is None:
        return {}
    from terminal.web.printing import CounterPrinting, CounterScanning

    out: _CounterPeripherals = {}
    if config.printer is not None:
        from terminal.peripherals.printer import ReceiptPrinter

        out["counter_printing"] = CounterPrinting(ReceiptPrinter(config.printer), config.terminal_id)
    if config.scanner is not None:
        from cityid.certificate import CertificateVerifier, ChainAnchorChecker
        from cityid.chain.rpc import HttpTransport, RpcClient
        from terminal.certificate_client import HttpKioskDirectory, HttpProofSource
        from terminal.peripherals.scanner import SerialScanner

        network = chain_network(config)
        client = RpcClient(HttpTransport(network.rpc_url, allow_plain=config.chain.allow_plain_http))
        verifier = CertificateVerifier(
            HttpKioskDirectory(config.server_url),
            ChainAnchorChecker(client, network),
            HttpProofSource(config.server_url),
        )
        scanner = SerialScanner(config.scanner.port, config.scanner.baudrate)
        out["scanning"] = CounterScanning(scanner, verifier)
    return out


def _chain_view(config: TerminalConfig) -> ChainView:
    """The kiosk's chain view (docs/chain.md, "Kiosk wiring"): the sync cache when ``[chain] cache`` is set
    (verifies offline within ``max_staleness``), else proven live reads — one node, or a quorum of nodes."""
    from cityid.chain.live import LiveChainView
    from cityid.chain.quorum import QuorumChainView
    from cityid.chain.resolver import address_of
    from cityid.chain.rpc import HttpTransport, RpcClient
    from cityid.chain.sync import SyncCache

    chain = config.chain
    network = chain_network(config)
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


def chain_network(config: TerminalConfig) -> NetworkConfig:
    """The configured chain as a :class:`cityid.chain.network.NetworkConfig` (not the embedded one)."""
    from cityid.chain.network import NetworkConfig

    chain = config.chain
    if chain.embedded:
        raise CityIdError(
            "an embedded chain only exists inside `kiosk demo`; configure [chain] rpc/chain_id/addresses "
            "or network_file for `kiosk serve`"
        )
    if chain.network_file:
        return NetworkConfig.load(chain.network_file)
    return NetworkConfig.from_json(
        {
            "name": chain.network,
            "chain_id": chain.chain_id,
            "rpc_url": chain.rpc,
            "addresses": chain.addresses,
        }
    )


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
