"""``cardtool emulate citizen``: run the virtual Busan citizen card in pcscd's vpcd reader until Ctrl-C."""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
import threading
import time
from pathlib import Path

from cityid.cli_util import Subcommands, needs_command, progress, stop_signals
from cityid.errors import CityIdError
from firmware_tools.options import default_state_path, parse_hostport

BUSY_AFTER_S = 5.0  # pcscd polls a present card about every 400 ms; silence this long = another card is in


def register(sub: Subcommands) -> None:
    """Add ``emulate`` with its ``citizen`` sub-command."""
    emulate = sub.add_parser("emulate", help="run a virtual card in the vpcd reader of pcscd")
    kinds = emulate.add_subparsers(dest="card_kind", metavar="CARD")
    emulate.set_defaults(func=needs_command(emulate))
    p = kinds.add_parser(
        "citizen",
        help="the Busan citizen card (PIV + citizen applet)",
        description="Insert a virtual Busan citizen card into pcscd's vpcd reader; Ctrl-C removes it. "
        "The card's state (keys, PIN counters, credential) is kept in the state file.",
    )
    p.add_argument(
        "--vpcd",
        type=parse_hostport,
        default=("127.0.0.1", 35963),
        metavar="HOST:PORT",
        help="vpcd reader to connect to (default 127.0.0.1:35963 = 'Virtual PCD 00 00')",
    )
    p.add_argument(
        "--state", type=Path, default=None, help=f"card state file (default {default_state_path()})"
    )
    p.add_argument("--with-fido", action="store_true", help="add the FIDO2 applet (CTAP over PC/SC)")
    p.add_argument("--fido-state", type=Path, default=None, help="FIDO applet state file")
    p.add_argument(
        "--private-info",
        dest="private_info",
        action="store_true",
        default=True,
        help="GET INFO without serial, DID and claim names (they need the PIN: GET IDENTITY) — the default; "
        "docs/card-profile.md",
    )
    p.add_argument(
        "--legacy-info",
        dest="private_info",
        action="store_false",
        help="the profile 1.0 GET INFO answer with serial, DID and claim names (older terminals)",
    )
    p.add_argument(
        "--contactless",
        action="store_true",
        help="the card sits in an RF field, not in contact: SP 800-73-4's contactless PIV access rules "
        "(no 9A/9C/9D certificates before the PIN; docs/card-profile.md §PIV access rules)",
    )
    p.set_defaults(func=run_citizen)

    from firmware_tools.fido_cli import add_fido_emulate  # cardtool emulate fido (the FIDO helper's)

    add_fido_emulate(kinds)


def _lock_state(state: Path) -> int:
    """Refuse to run two emulators on one state file (each would overwrite the other's changes)."""
    state.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(state.with_name(f".{state.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise CityIdError(f"{state} is in use by another running emulator") from None
    return fd


def _join_attestation_batch(fido_state: Path) -> None:
    """The card's FIDO applet attests with the batch its state names, else ``cardtool emulate fido``'s
    default batch (docs/fido.md "Attestation") — recorded in its state, where the applet looks for it."""
    from emulators.card.store import CardStore
    from emulators.fido.attestation import AttestationBatch, bind, stored_batch_dir

    from firmware_tools.fido_cli import default_batch_dir

    store = CardStore(fido_state)
    bind(store, AttestationBatch.open(stored_batch_dir(store) or default_batch_dir()))


def run_citizen(args: argparse.Namespace) -> int:
    with stop_signals() as stop:  # installed first: a signal during start-up still stops cleanly
        return _run_citizen(args, stop)


def _run_citizen(args: argparse.Namespace, stop: threading.Event) -> int:
    from emulators.card.citizen_card import fido_state_for, make_citizen_card
    from emulators.card.os import Interface
    from emulators.card.transport import VpcdCard

    state: Path = args.state or default_state_path()
    fido_state: Path | None = args.fido_state
    if args.with_fido and fido_state is None:
        fido_state = fido_state_for(state)
    lock = _lock_state(state)  # held until the process exits
    if args.with_fido:
        assert fido_state is not None
        _join_attestation_batch(fido_state)
    card = make_citizen_card(
        state,
        with_fido=args.with_fido,
        fido_state=fido_state,
        private_info=args.private_info,
        interface=Interface.CONTACTLESS if args.contactless else Interface.CONTACT,
    )
    host, port = args.vpcd
    reader = f"Virtual PCD 00 {port - 35963:02d}" if 35963 <= port < 35963 + 100 else "(vpcd)"
    vpcd = VpcdCard(card, host, port)
    print(f"ATR:    {card.atr.hex(' ').upper()}")
    print(f"reader: {reader} (vpcd {host}:{port})")
    print(f"state:  {state}")
    if args.with_fido:
        print(f"fido:   {fido_state}")
    sys.stdout.flush()
    announced = False
    vpcd.start()
    try:
        if not vpcd.wait_connected(3.0) and not stop.is_set():
            progress(f"waiting for pcscd's vpcd on {host}:{port} (is pcscd running?)")
        connected_at: float | None = None
        while not stop.is_set():
            if vpcd.connected.is_set():
                connected_at = connected_at or time.monotonic()
                # vpcd accepts a second connection into its backlog but never talks to it while another
                # card is in the reader: "inserted" only once the reader has spoken to this card.
                if not announced and (vpcd.polls or vpcd.apdu_count):
                    progress("card inserted; Ctrl-C removes it")
                    announced = True
                elif not announced and time.monotonic() - connected_at > BUSY_AFTER_S:
                    raise CityIdError(
                        f"{reader} is busy: another card is in it (another `cardtool emulate`?); not inserted"
                    )
            else:
                connected_at = None
                if announced:
                    progress("pcscd went away; waiting for it to come back")
                    announced = False
            stop.wait(0.2)
    finally:
        vpcd.stop()
        os.close(lock)
        if announced:
            progress("card removed")
    return 0
