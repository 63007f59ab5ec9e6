"""Small helpers shared by the three command-line tools (argparse wiring, clear errors, progress)."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from importlib.metadata import entry_points
from typing import TypeAlias

from cityid.errors import CityIdError

logger = logging.getLogger(__name__)

#: What ``add_subparsers()`` returns: each command module's ``register(sub)`` receives one.
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def build_parser(prog: str, description: str, modules: Sequence[str]) -> argparse.ArgumentParser:
    """A parser whose sub-commands come from ``modules``; each module has ``register(subparsers)``.

    Each registered sub-command sets ``func`` (``args -> int``) as its default.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logs (-vvv: APDU trace)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in modules:
        importlib.import_module(name).register(sub)
    # Packages that stand above this one (the demo) add commands without being imported by it.
    for ep in sorted(entry_points(group=f"cityid.commands.{prog}"), key=lambda e: e.name):
        ep.load()(sub)
    return parser


def configure_logging(verbosity: int) -> None:
    """Configure logging for a CLI process (library code never does this)."""
    level = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}.get(verbosity, 5)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse, dispatch and turn expected errors into one clear line and a non-zero exit."""
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (CityIdError, OSError, ValueError) as exc:
        if os.environ.get("CITYID_TRACEBACK"):
            raise
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1


def progress(message: str) -> None:
    """Progress output for long work, on stderr so stdout stays machine-readable."""
    print(f"… {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def stop_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT or SIGTERM while the block runs (previous handlers restored after).

    Both handlers are installed explicitly, so a process started with SIGINT ignored (a test runner's or a
    service manager's background job inherits ``SIG_IGN``) still stops on Ctrl-C as on ``kill``.
    Use from the main thread.
    """
    stop = threading.Event()

    def handler(_signum: int, _frame: object) -> None:
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def wait_for_stop(poll_s: float = 0.5) -> None:
    """Block until SIGINT or SIGTERM (see :func:`stop_signals`)."""
    with stop_signals() as stop:
        while not stop.wait(poll_s):
            pass
