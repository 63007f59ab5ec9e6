"""``kiosk sync``: keep the kiosk's local chain cache (cityid.chain.sync, docs/chain.md) current.

Run as its own service (udev/systemd/cityid-kiosk-sync.service) so chain reads never wait on the network.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from cityid.cli_util import Subcommands, stop_signals
from cityid.errors import CityIdError
from terminal.config import load_config

logger = logging.getLogger(__name__)


def register(sub: Subcommands) -> None:
    """Add ``sync``."""
    p = sub.add_parser("sync", help="follow the chain registries into the local cache", description=__doc__)
    p.add_argument("--config", required=True, metavar="FILE", help="the terminal's TOML configuration")
    p.add_argument(
        "--cache", metavar="FILE", help="SQLite cache (default: $STATE_DIRECTORY/chain-cache.sqlite)"
    )
    p.add_argument("--interval", type=_interval, default=15.0, metavar="S", help="seconds between syncs (15)")
    p.add_argument("--once", action="store_true", help="one sync, then exit")
    p.set_defaults(func=_sync)


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be within 1..3600 seconds, got {text}")
    return value


def cache_path(explicit: str | None) -> Path:
    """``--cache``, else the service's state directory, else refuse (no silent file in the cwd)."""
    if explicit:
        return Path(explicit)
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if not state:
        raise CityIdError("no --cache FILE and no $STATE_DIRECTORY (set by systemd's StateDirectory=)")
    return Path(state) / "chain-cache.sqlite"


def _sync(args: argparse.Namespace) -> int:
    from cityid.chain.rpc import HttpTransport, RpcClient
    from cityid.chain.sync import SyncCache
    from terminal.web_cli import chain_network

    config = load_config(args.config)
    network = chain_network(config)
    cache = SyncCache(
        RpcClient(HttpTransport(network.rpc_url)),
        network,
        cache_path(args.cache),
        max_staleness=config.chain.max_staleness,
    )
    try:
        if args.once:
            print(f"synced to block {cache.sync()}")
            return 0
        with stop_signals() as stop:
            while True:
                try:
                    block = cache.sync()
                    logger.info("synced to block %d", block)
                except CityIdError as exc:  # a node hiccup: keep the service up, the cache goes stale
                    logger.warning("sync failed: %s", exc)
                if stop.wait(args.interval):
                    return 0
    finally:
        cache.close()
