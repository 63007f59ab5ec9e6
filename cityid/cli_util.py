"""Small helpers shared by the three command-line tools (argparse wiring, clear errors, progress)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

from cityid.errors import CityIdError

logger = logging.getLogger(__name__)


def build_parser(prog: str, description: str, modules: Sequence[str]) -> argparse.ArgumentParser:
    """A parser whose sub-commands come from ``modules``; each module has ``register(subparsers)``.

    Each registered sub-command sets ``func`` (``args -> int``) as its default.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logs (-vvv: APDU trace)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in modules:
        importlib.import_module(name).register(sub)
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
