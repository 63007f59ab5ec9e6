"""``cardtool fido …`` (security-key administration) and ``cardtool emulate fido`` (the virtual key).

* ``emulate fido``: a stand-alone virtual FIDO2 key in pcscd's vpcd reader (the emulator, no terminal code);
* ``fido info|pin set|pin change|credentials list|credentials delete|reset``: clerk and admin tools using the
  terminal FIDO flows over PC/SC (``--reader``) or USB HID (``--hid``), imported lazily;
* ``fido batch create DIR``: a test attestation batch (one attestation key + certificate + root shared by
  every virtual key started with ``--attestation-batch DIR``; docs/fido.md "Attestation");
* ``fido attestation-root``: the test attestation root certificate of a batch (or of the batch a virtual key's
  state file belongs to), for relying parties to trust.

PINs are read from the terminal without echo (or one per line from stdin with ``--pin-stdin``), never from the
command line.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import threading
from pathlib import Path
from typing import Any

from cityid.cli_util import Subcommands, needs_command, progress, stop_signals
from cityid.errors import CityIdError
from firmware_tools.options import default_state_path, parse_hostport


def _default_state() -> Path:
    return default_state_path("fido-key.json")


def default_batch_dir() -> Path:
    """Where ``cardtool emulate fido`` keeps its attestation batch unless told otherwise."""
    return default_state_path("fido-attestation-batch")


# --- cardtool emulate fido ---------------------------------------------------------------------------


def add_fido_emulate(kinds: Subcommands) -> None:
    """Add ``fido`` to the ``cardtool emulate`` sub-commands (called by emulate_cli.register)."""
    p = kinds.add_parser(
        "fido",
        help="a stand-alone FIDO2 security key (CTAP 2.1 over PC/SC)",
        description="Insert a virtual FIDO2 security key into pcscd's vpcd reader; Ctrl-C removes it. "
        "Credentials and PIN are kept in the state file; the key attests with a test attestation batch "
        "shared by every key started with the same --attestation-batch.",
    )
    p.add_argument(
        "--vpcd",
        type=parse_hostport,
        default=("127.0.0.1", 35963),
        metavar="HOST:PORT",
        help="vpcd reader to connect to (default 127.0.0.1:35963 = 'Virtual PCD 00 00')",
    )
    p.add_argument("--state", type=Path, default=None, help=f"key state file (default {_default_state()})")
    p.add_argument(
        "--attestation-batch",
        type=Path,
        default=None,
        metavar="DIR",
        help="attestation batch directory, created if missing (default: the batch the state file names, "
        f"else {default_batch_dir()})",
    )
    p.add_argument(
        "--touch",
        choices=("approve", "deny", "timeout"),
        default="approve",
        help="what the simulated user does when asked to touch the key (default approve)",
    )
    p.add_argument("--touch-delay", type=float, default=0.0, metavar="SECONDS", help="delay before the touch")
    p.set_defaults(func=run_emulate_fido)


def run_emulate_fido(args: argparse.Namespace) -> int:
    with stop_signals() as stop:  # installed first: a signal during start-up still stops cleanly
        return _run_emulate_fido(args, stop)


def _run_emulate_fido(args: argparse.Namespace, stop: threading.Event) -> int:
    from emulators.card.store import CardStore
    from emulators.card.transport import VpcdCard
    from emulators.fido.attestation import AttestationBatch, stored_batch_dir
    from emulators.fido.card import make_fido_card
    from emulators.fido.presence import UserPresence

    if args.touch_delay < 0:
        raise ValueError("--touch-delay must not be negative")
    state: Path = args.state or _default_state()
    batch_dir: Path = args.attestation_batch or stored_batch_dir(CardStore(state)) or default_batch_dir()
    batch = AttestationBatch.open(batch_dir)
    card, applet = make_fido_card(state, UserPresence(args.touch, args.touch_delay), batch)
    host, port = args.vpcd
    vpcd = VpcdCard(card, host, port)
    print(f"ATR:    {card.atr.hex(' ').upper()}")
    print(f"AAGUID: {applet.authenticator.state.aaguid.hex()}")
    print(f"vpcd:   {host}:{port}")
    print(f"state:  {state}")
    print(f"batch:  {batch_dir} ({batch.label})")
    sys.stdout.flush()
    vpcd.start()
    try:
        if not vpcd.wait_connected(3.0) and not stop.is_set():
            progress(f"waiting for pcscd's vpcd on {host}:{port} (is pcscd running?)")
        announced = False
        while not stop.wait(0.2):
            if vpcd.connected.is_set() != announced:
                announced = vpcd.connected.is_set()
                progress("key inserted; Ctrl-C removes it" if announced else "pcscd went away; waiting")
    finally:
        vpcd.stop()
        progress("key removed")
    return 0


# --- cardtool fido … ---------------------------------------------------------------------------------


def register(sub: Subcommands) -> None:
    """Add ``fido`` with its sub-commands."""
    fido = sub.add_parser("fido", help="FIDO2 security keys: info, PIN, credentials, reset")
    cmds = fido.add_subparsers(dest="fido_command", metavar="COMMAND")
    fido.set_defaults(func=needs_command(fido))

    def device_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--reader", default=None, help="PC/SC reader (name or part of it); default: first key")
        p.add_argument("--hid", action="store_true", help="use a USB HID key instead of PC/SC")
        p.add_argument("--pin-stdin", action="store_true", help="read PINs from stdin, one per line")

    p = cmds.add_parser("info", help="show the key's versions, options, PIN state and free slots")
    device_args(p)
    p.set_defaults(func=cmd_info)

    pin = cmds.add_parser("pin", help="set or change the key's PIN")
    pins = pin.add_subparsers(dest="pin_command", metavar="ACTION")
    pin.set_defaults(func=needs_command(pin))
    p = pins.add_parser("set", help="give a new key its first PIN")
    device_args(p)
    p.set_defaults(func=cmd_pin_set)
    p = pins.add_parser("change", help="change the PIN (a wrong old PIN costs a try)")
    device_args(p)
    p.set_defaults(func=cmd_pin_change)

    creds = cmds.add_parser("credentials", help="list or delete discoverable credentials (needs the PIN)")
    cs = creds.add_subparsers(dest="cred_command", metavar="ACTION")
    creds.set_defaults(func=needs_command(creds))
    p = cs.add_parser("list", help="list discoverable credentials")
    device_args(p)
    p.set_defaults(func=cmd_creds_list)
    p = cs.add_parser("delete", help="delete one credential")
    device_args(p)
    p.add_argument("credential_id", help="credential id (hex, as listed)")
    p.set_defaults(func=cmd_creds_delete)

    p = cmds.add_parser("reset", help="erase every credential and the PIN (within 10 s of inserting)")
    device_args(p)
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_reset)

    batch = cmds.add_parser("batch", help="test attestation batches for virtual keys")
    bs = batch.add_subparsers(dest="batch_command", metavar="ACTION")
    batch.set_defaults(func=needs_command(batch))
    p = bs.add_parser("create", help="create a test attestation batch (key, certificate, root) in DIR")
    p.add_argument("directory", type=Path, metavar="DIR", help="batch directory (must not hold a batch yet)")
    p.set_defaults(func=cmd_batch_create)

    p = cmds.add_parser(
        "attestation-root", help="print the test attestation root certificate (PEM) relying parties trust"
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--batch", type=Path, default=None, metavar="DIR", help="attestation batch directory")
    where.add_argument("--state", type=Path, default=None, help="the batch this key state file belongs to")
    p.add_argument("-o", "--output", type=Path, default=None, help="write to this file instead of stdout")
    p.set_defaults(func=cmd_attestation_root)


class _Pins:
    def __init__(self, from_stdin: bool) -> None:
        self.from_stdin = from_stdin

    def ask(self, prompt: str) -> str:
        if self.from_stdin:
            line = sys.stdin.readline()
            if not line:
                raise CityIdError(f"no PIN on stdin for: {prompt}")
            return line.rstrip("\r\n")
        return getpass.getpass(f"{prompt}: ")

    def new(self, prompt: str = "New PIN") -> str:
        first = self.ask(prompt)
        if not self.from_stdin and self.ask(f"{prompt} again") != first:
            raise CityIdError("the two PINs differ")
        return first


def _open_session(args: argparse.Namespace) -> Any:
    from terminal.fido.discovery import discover_hid, discover_pcsc
    from terminal.fido.session import FidoSession

    keys = discover_hid() if args.hid else discover_pcsc()
    if args.reader:
        keys = [k for k in keys if args.reader.lower() in k.name.lower()]
    if not keys:
        where = "USB HID" if args.hid else "a PC/SC reader"
        raise CityIdError(f"no FIDO security key found on {where}")
    key = keys[0]
    progress(f"using {key.transport} key {key.name}")
    return FidoSession(key.open())


def cmd_info(args: argparse.Namespace) -> int:
    with _open_session(args) as session:
        info = session.info()
    print(f"AAGUID:       {info.aaguid}")
    print(f"versions:     {', '.join(info.versions)}")
    print(f"extensions:   {', '.join(info.extensions)}")
    print(f"transports:   {', '.join(info.transports)}")
    print(f"PIN:          {info.pin.describe()}")
    # a key with a PIN does not tell its free slots to anyone before the PIN (docs/fido.md "Before the PIN")
    slots = info.remaining_credentials
    print(f"free slots:   {slots if slots is not None else '? (told only with the PIN)'}")
    print(f"large blobs:  {'yes' if info.large_blobs else 'no'}")
    print(f"cred. mgmt:   {'yes' if info.credential_management else 'no'}")
    return 0


def cmd_pin_set(args: argparse.Namespace) -> int:
    pins = _Pins(args.pin_stdin)
    with _open_session(args) as session:
        session.set_pin(pins.new())
        print(session.pin_status().describe())
    return 0


def cmd_pin_change(args: argparse.Namespace) -> int:
    pins = _Pins(args.pin_stdin)
    with _open_session(args) as session:
        session.change_pin(pins.ask("Current PIN"), pins.new())
        print(session.pin_status().describe())
    return 0


def cmd_creds_list(args: argparse.Namespace) -> int:
    pins = _Pins(args.pin_stdin)
    with _open_session(args) as session:
        creds = session.credentials(pins.ask("PIN"))
    if not creds:
        print("no discoverable credentials")
    for c in creds:
        name = c.user_name or "-"
        print(f"{c.rp_id}\t{c.credential_id.hex()}\t{name}\tcredProtect={c.cred_protect}")
    return 0


def cmd_creds_delete(args: argparse.Namespace) -> int:
    try:
        cred_id = bytes.fromhex(args.credential_id)
    except ValueError:
        raise CityIdError("the credential id must be hex") from None
    pins = _Pins(args.pin_stdin)
    with _open_session(args) as session:
        session.delete_credential(pins.ask("PIN"), cred_id)
    print("credential deleted")
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            raise CityIdError("reset erases the key: pass --yes (no terminal to ask for confirmation)")
        answer = input("Erase every credential and the PIN of the key? Type 'reset': ")
        if answer.strip() != "reset":
            print("not reset")
            return 1
    with _open_session(args) as session:
        session.reset()
    print("key reset: no credentials, no PIN")
    return 0


def cmd_batch_create(args: argparse.Namespace) -> int:
    from emulators.fido.attestation import BATCH_FILE, ROOT_FILE, AttestationBatch

    if (args.directory / BATCH_FILE).exists():
        raise CityIdError(f"{args.directory} already holds an attestation batch")
    batch = AttestationBatch.open(args.directory)
    print(f"batch {batch.label} in {args.directory}; relying parties trust {args.directory / ROOT_FILE}")
    return 0


def _root_pem(args: argparse.Namespace) -> str:
    """The root of ``--batch``, of the batch ``--state`` belongs to, or of the default batch (or state)."""
    from emulators.card.store import CardStore
    from emulators.fido.attestation import export_batch_root, export_root

    if args.batch is not None:
        return export_batch_root(args.batch)
    if args.state is None and (default_batch_dir() / "batch.json").exists():
        return export_batch_root(default_batch_dir())
    state: Path = args.state or _default_state()
    if not state.exists():
        raise CityIdError(f"no key state at {state} (run 'cardtool emulate fido' first)")
    pem = export_root(CardStore(state))
    if pem is None:
        raise CityIdError(f"{state} has no FIDO attestation CA yet")
    return pem


def cmd_attestation_root(args: argparse.Namespace) -> int:
    pem = _root_pem(args)
    if args.output:
        args.output.write_text(pem)
        progress(f"written to {args.output}")
    else:
        print(pem, end="")
    return 0
