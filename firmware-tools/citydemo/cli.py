"""``kiosk demo``: the whole system on this machine (docs/ui.md §Demo).

Registered into the ``kiosk`` command through the ``cityid.commands.kiosk`` entry point, so the terminal
package never imports the demo (the composition root)."""

from __future__ import annotations

import argparse
import logging
import threading

from cityid.cli_util import Subcommands, number_in, port_number, progress, stop_signals
from terminal.config import LANGUAGES


def register(sub: Subcommands) -> None:
    """Add ``demo``."""
    d = sub.add_parser(
        "demo", help="run the whole system locally with demo citizens", description=_demo.__doc__
    )
    d.add_argument(
        "--port", type=port_number, default=8080, help="port of the kiosk app (default 8080; 0 = any free)"
    )
    d.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    d.add_argument(
        "--no-pcsc", action="store_true", help="use the in-process card transport, not pcscd + vpcd"
    )
    d.add_argument("--language", choices=LANGUAGES, default="ko", help="initial screen language (default ko)")
    d.add_argument(
        "--idle-timeout",
        type=number_in(5, 3600),
        default=30.0,
        help="seconds before an idle session is wiped (5..3600)",
    )
    d.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    """Start everything on this machine with no set-up: an embedded chain with the contracts, the city
    server, demo citizens enrolled on virtual cards (through pcscd + vpcd when available) and the kiosk and
    counter screens on 127.0.0.1. Prints the URL and how to tap and remove the virtual cards."""
    with stop_signals() as stop:  # first: a signal during the long start-up still stops cleanly
        return _run_demo(args, stop)


def _run_demo(args: argparse.Namespace, stop: threading.Event) -> int:
    from dataclasses import replace

    from citydemo import demo
    from terminal.config import TerminalConfig, check_bind

    check_bind(replace(TerminalConfig(source="kiosk demo --host"), host=args.host))  # before anything starts
    use_pcsc = False if args.no_pcsc else None
    if args.verbose < 2:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # request lines only with -vv
    with demo.running(args.host, args.port, use_pcsc, args.language, args.idle_timeout) as (env, server):
        url = server.url
        from terminal.web.app import screen_launch_url

        screen = screen_launch_url(server.app, url)
        clerk = f"clerk {demo.DEMO_CLERK!r}, password {demo.DEMO_CLERK_PASSWORD!r}"
        transport = f"pcscd + vpcd (kiosk reader {demo.KIOSK_READER!r})" if env.pcsc else "in-process"
        lines = [
            "",
            f"Busan citizen-ID demo is running on {url}/",
            f"  kiosk screen:    {screen}   (binds this browser as the kiosk's screen)",
            f"  demo panel:      {url}/demo/   (any card or key on any reader: kiosk, counter, key reader)",
            f"  counter screen:  {url}/counter/   ({clerk})",
            f"  city server:     {env.server_url}",
            f"  card transport:  {transport}",
            "",
            "Demo citizens (fictional) and their PINs:",
        ]
        for c in demo.CITIZENS:
            lines.append(f"  {c.id:<5} {c.label:<52} PIN {c.pin}")
        lines.append(f"  (every demo card's PUK, for unblocking at the counter: {demo.DEMO_PUK})")
        lines += [
            "",
            "Open the kiosk screen URL, then press 'Tap card' for a citizen on the demo panel.",
            "Ctrl-C stops everything.",
        ]
        print("\n".join(lines), flush=True)
        while not stop.wait(0.5):
            pass
        progress("stopping")
    return 0
