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
from typing import NoReturn, TypeAlias

from cityid.errors import CityIdError

logger = logging.getLogger(__name__)

#: What ``add_subparsers()`` returns: each command module's ``register(sub)`` receives one.
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (``prog cmd: error: … (see --help)``), exit 2.

    Sub-command parsers inherit the class, so every sub-command of a tool behaves the same.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def needs_command(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """``func`` for a command group run without its sub-command: one usage line naming the choices, exit 2."""

    def missing(_args: argparse.Namespace) -> int:
        choices = [
            name
            for action in parser._actions
            if isinstance(action, argparse._SubParsersAction)
            for name in action.choices
        ]
        print(
            f"{parser.prog}: error: choose a command: {', '.join(choices)} (see {parser.prog} --help)",
            file=sys.stderr,
        )
        return 2

    return missing


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0..65535 (0: any free port)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be within 0..65535, got {value}")
    return value


def number_in(low: float, high: float, kind: type = float) -> Callable[[str], float]:
    """argparse type: a number (``kind``) within ``low..high``."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be within {low:g}..{high:g}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def build_parser(prog: str, description: str, modules: Sequence[str]) -> argparse.ArgumentParser:
    """A parser whose sub-commands come from ``modules``; each module has ``register(subparsers)``.

    Each registered sub-command sets ``func`` (``args -> int``) as its default.
    """
    parser = OneLineParser(prog=prog, description=description)
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
    except EOFError:  # a prompt with no terminal behind stdin
        print(f"{parser.prog}: error: input needed but stdin is closed (no terminal)", file=sys.stderr)
        return 1
    except (CityIdError, OSError, ValueError) as exc:
        if os.environ.get("CITYID_TRACEBACK"):
            raise
        print(f"{parser.prog}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: still one line for the operator; the traceback on request
        if os.environ.get("CITYID_TRACEBACK"):
            raise
        logger.debug("unexpected error", exc_info=True)
        print(
            f"{parser.prog}: internal error: {type(exc).__name__}: {_one_line(exc)} "
            "(CITYID_TRACEBACK=1 shows the traceback)",
            file=sys.stderr,
        )
        return 70  # EX_SOFTWARE


def _one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line; ``[Errno N] text: 'path'`` as ``path: text``."""
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


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
