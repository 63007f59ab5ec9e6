"""``cardtool readers|info|personalize|management-key|pin``: inspect and personalize cards through PC/SC.

A host tool: it uses the terminal's PC/SC layer and applet sessions (never the emulator). Secrets come from
the environment (``CARDTOOL_PIN``, ``CARDTOOL_NEW_PIN``, ``CARDTOOL_PUK``, ``CARDTOOL_NEW_PUK``,
``CARDTOOL_MANAGEMENT_KEY``, ``CARDTOOL_NEW_MANAGEMENT_KEY``, ``CARDTOOL_MANAGEMENT_MASTER_KEY``) or an
interactive prompt — never from the command line (``--management-key`` is the one exception, for test cards).
``--server URL`` (with ``--terminal NAME --terminal-key FILE --clerk ID``; key password in
``CITYID_TERMINAL_KEY_PASSWORD``) has the city server's HSM answer the card's management-key challenge and
supply its own key, as the counter does (docs/card-profile.md, "Per-card management key").
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

from cityid.apdu import SmartCardProtocol
from cityid.citizen import CITIZEN_AID
from cityid.cli_util import Subcommands, progress
from cityid.errors import ApduError, ApplicationNotFoundError, CityIdError
from cityid.iso7816 import SW
from cityid.keys import KeyFormatError, P256PublicKey
from cityid.piv import (
    CARD_MANAGEMENT_KEY_ALGORITHM,
    CITY_MASTER_KEY_BYTES,
    DEFAULT_MANAGEMENT_KEY,
    PIV_AID,
    Algorithm,
    Slot,
    derive_management_key,
)
from terminal.flows.personalize import card_identity, load_credential, personalize
from terminal.flows.pin import unblock_pin
from terminal.pcsc.connection import (
    PcscConnection,
    card_present,
    establish_context,
    list_readers,
    open_connection,
    release_context,
)
from terminal.server_client import ServerCardKeys
from terminal.sessions import mgmt
from terminal.sessions.citizen import CitizenSession
from terminal.sessions.piv import PivSession

FIDO_AID = bytes.fromhex("A0000006472F0001")


class SecretMissingError(CityIdError):
    """A PIN/PUK/key is neither in the environment nor typeable (no terminal)."""


def _secret(env: str, prompt: str, confirm: bool = False) -> str:
    value = os.environ.get(env)
    if value:
        return value
    if not sys.stdin.isatty():
        raise SecretMissingError(f"{prompt.rstrip(': ')}: set {env} or run on a terminal")
    value = getpass.getpass(prompt)
    if confirm and getpass.getpass("again: ") != value:
        raise SecretMissingError("the two entries differ")
    return value


def _management_key(args: argparse.Namespace) -> bytes:
    text = args.management_key or os.environ.get("CARDTOOL_MANAGEMENT_KEY")
    if not text:
        return DEFAULT_MANAGEMENT_KEY
    try:
        return bytes.fromhex(text)
    except ValueError as exc:
        raise ValueError("management key must be hex") from exc


#: ``--management-key-algorithm`` / ``--algorithm`` names (SP 800-78-4 identifiers).
MGMT_ALGORITHMS = {
    "3des": Algorithm.TDEA_3KEY,
    "aes128": Algorithm.AES_128,
    "aes192": Algorithm.AES_192,
    "aes256": Algorithm.AES_256,
}


def _current_management_key(args: argparse.Namespace) -> tuple[bytes, Algorithm]:
    """The card's current 9B key and algorithm (by name, else by length: 16 → AES-128, 32 → AES-256)."""
    key = _management_key(args)
    name = getattr(args, "management_key_algorithm", None)
    if name:
        return key, MGMT_ALGORITHMS[name]
    return key, {16: Algorithm.AES_128, 32: Algorithm.AES_256}.get(len(key), Algorithm.TDEA_3KEY)


def _hex_secret(env: str, prompt: str, length: int) -> bytes:
    try:
        value = bytes.fromhex(_secret(env, prompt))
    except ValueError as exc:
        raise ValueError(f"{env} must be hex") from exc
    if len(value) != length:
        raise ValueError(f"{env} must be {length} bytes ({2 * length} hex digits)")
    return value


def _server_keys(args: argparse.Namespace) -> ServerCardKeys | None:
    """``--server``: every card's own key through the city HSM (signed requests as a counter terminal)."""
    url = getattr(args, "server", None)
    if not url:
        return None
    from cityid.secrets import secret
    from terminal.server_client import ServerClient, load_terminal_key

    if not (args.terminal and args.terminal_key and args.clerk):
        raise ValueError("--server needs --terminal, --terminal-key and --clerk (a counter terminal)")
    key = load_terminal_key(args.terminal_key, secret("CITYID_TERMINAL_KEY_PASSWORD"))
    return ServerCardKeys(ServerClient(url, args.terminal, key, clerk=args.clerk))


def _open(args: argparse.Namespace) -> PcscConnection:
    return open_connection(args.reader)


# --- readers / info --------------------------------------------------------------------------------


def cmd_readers(args: argparse.Namespace) -> int:
    context = establish_context()
    try:
        readers = list_readers(context)
        rows = []
        for r in readers:
            present, atr = card_present(context, r)
            rows.append({"reader": r, "card": present, "atr": atr.hex().upper() if present else None})
    finally:
        release_context(context)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no readers")
    for row in rows:
        print(f"{row['reader']}: {'card ' + row['atr'] if row['card'] else 'empty'}")
    return 0


def _has_applet(conn: PcscConnection, aid: bytes) -> bool:
    try:
        SmartCardProtocol(conn).select(aid)
    except ApplicationNotFoundError:
        return False
    return True


def gather_info(conn: PcscConnection) -> dict[str, Any]:
    """Everything ``cardtool info`` shows, as a dict (no secrets, no personal claims' values)."""
    out: dict[str, Any] = {"reader": conn.reader, "atr": conn.atr.hex().upper(), "applets": []}
    if _has_applet(conn, PIV_AID):
        out["applets"].append("PIV")
        piv = PivSession(conn)
        out["pin_tries"] = piv.pin_attempts()
        try:
            cert = piv.get_certificate(Slot.AUTHENTICATION)
            out["piv_9a_certificate"] = cert.subject.rfc4514_string()
            try:
                out["piv_9a_public_key"] = P256PublicKey.from_crypto(cert.public_key()).hex()
            except KeyFormatError:
                out["piv_9a_public_key"] = None  # not a P-256 key: not a card this project personalized
        except ApduError as exc:
            if exc.sw not in (SW.FILE_NOT_FOUND, SW.SECURITY_STATUS_NOT_SATISFIED):
                raise
            out["piv_9a_certificate"] = None
            if exc.sw == SW.SECURITY_STATUS_NOT_SATISFIED:  # contactless: after the PIN only (card profile)
                out["piv_9a_certificate_hidden"] = True
    if _has_applet(conn, CITIZEN_AID):
        out["applets"].append("citizen")
        info = CitizenSession(conn).info()
        out.update(
            citizen_version=f"{info.version[0]}.{info.version[1]}",
            credential_vct=info.vct,
            pin_tries=info.pin_tries,
        )
        if info.credential_state is not None:
            out["credential_state"] = int(info.credential_state)
        if info.reveals_identity:  # a private-profile card shows serial and DID only after the PIN
            out.update(serial=info.serial, did=info.did, claims=list(info.claims))
        else:
            out.update(serial=None, did=None, claims=[], identity_hidden=True)
    if _has_applet(conn, FIDO_AID):
        out["applets"].append("FIDO")
    return out


def cmd_info(args: argparse.Namespace) -> int:
    readers = list_readers()
    with _open(args) as conn:
        info = gather_info(conn)
    if args.json:
        print(json.dumps({"readers": readers, **info}, indent=2))
        return 0
    print(f"readers:     {', '.join(readers)}")
    print(f"reader:      {info['reader']}")
    print(f"ATR:         {info['atr']}")
    print(f"applets:     {', '.join(info['applets']) or 'none found'}")
    if "pin_tries" in info:
        tries = info["pin_tries"]
        print(f"PIN tries:   {tries}{' (BLOCKED — unblock with the PUK)' if tries == 0 else ''}")
    if info.get("identity_hidden"):
        print("serial, DID: (revealed only after the PIN: GET IDENTITY)")
        print(f"credential:  {info['credential_vct'] or '(none)'}")
    elif "serial" in info:
        print(f"serial:      {info['serial']}")
        print(f"DID:         {info['did'] or '(not personalized)'}")
        print(f"credential:  {info['credential_vct'] or '(none)'}")
        if info["claims"]:
            print(f"claims:      {', '.join(info['claims'])}")
    if "piv_9a_certificate" in info:
        print(f"PIV 9A cert: {info['piv_9a_certificate'] or '(none)'}")
    return 0


# --- personalize -----------------------------------------------------------------------------------


def cmd_personalize(args: argparse.Namespace) -> int:
    credential = None
    if args.credential:
        credential = load_credential(Path(args.credential).read_text(encoding="ascii"))
    key, algorithm = _current_management_key(args)
    card_keys = _server_keys(args)
    pin = _secret("CARDTOOL_PIN", "current PIN: ") if not (args.keep_key and args.keep_pin) else None
    new_pin = new_puk = puk = None
    if not args.keep_pin:
        new_pin = _secret("CARDTOOL_NEW_PIN", "new PIN: ", confirm=True)
        puk = _secret("CARDTOOL_PUK", "current PUK: ")
        new_puk = _secret("CARDTOOL_NEW_PUK", "new PUK: ", confirm=True)
    with _open(args) as conn:
        progress(f"personalizing the card in {conn.reader}")
        result = personalize(
            conn,
            pin=pin,
            management_key=key,
            generate_key=not args.keep_key,
            new_pin=new_pin,
            puk=puk,
            new_puk=new_puk,
            did=args.did,
            credential=credential,
            progress=progress,
            management_key_algorithm=algorithm,
            card_keys=card_keys,
            authorization_root=_authorization_root(args.authorization_root),
        )
    print(f"card {result.serial} personalized")
    print(f"holder key (9A, P-256): {result.key.hex()}")
    if result.binding_key is not None:  # the key a credential for this card must bind (cnf)
        print(f"presentation-binding key (P-256): {result.binding_key.hex()}")
    print(f"certificate: {result.certificate.subject.rfc4514_string()}")
    if result.did:
        print(f"DID: {result.did}")
    if result.credential_vct:
        print(f"credential: {result.credential_vct}")
    return 0


def _authorization_root(text: str | None) -> P256PublicKey | None:
    """``--authorization-root``: the city root as a hex SEC1 point (the server's ``authority_key``)."""
    if not text:
        return None
    try:
        return P256PublicKey.from_point(bytes.fromhex(text))
    except (ValueError, KeyFormatError) as exc:
        raise CityIdError(f"--authorization-root: not a hex P-256 point ({exc})") from None


# --- management key --------------------------------------------------------------------------------


def cmd_management_key_set(args: argparse.Namespace) -> int:
    """Replace the card's 9B key by its per-card key (docs/card-profile.md, "Per-card management key").

    ``--derive``: AES-128 key derived from the city master key (``CARDTOOL_MANAGEMENT_MASTER_KEY``, 64 hex
    digits — test cards only; in production it stays in the HSM and the server answers the challenge) and
    the card serial. Otherwise the explicit ``CARDTOOL_NEW_MANAGEMENT_KEY`` (AES-128, 32 hex digits).
    """
    current = _current_management_key(args)
    algorithm = CARD_MANAGEMENT_KEY_ALGORITHM
    server_keys = _server_keys(args)
    if server_keys is not None:
        if args.derive:
            raise ValueError("--derive and --server exclude each other")
        return _set_through_server(args, current, server_keys)
    master = None
    if args.derive:
        master = _hex_secret(
            "CARDTOOL_MANAGEMENT_MASTER_KEY", "city master key (hex): ", CITY_MASTER_KEY_BYTES
        )
        new = b""
    else:
        new = _hex_secret("CARDTOOL_NEW_MANAGEMENT_KEY", "new management key (hex): ", 16)
        if new == DEFAULT_MANAGEMENT_KEY[:16]:
            raise ValueError("the published default key is not a card key")
    with _open(args) as conn:
        citizen = CitizenSession(conn)
        if not citizen.info().reveals_identity:
            citizen.authenticate(*current)  # GET IDENTITY: the serial is behind the PIN or this key
        serial = citizen.serial()
        if master is not None:
            new = derive_management_key(master, bytes.fromhex(serial))
        piv = PivSession(conn)
        piv.authenticate_management_key(*current)
        piv.set_management_key(new, algorithm)
        PivSession(conn).authenticate_management_key(new, algorithm)  # the card took it
    how = "derived from the city master key and the serial" if master is not None else "explicit key"
    print(f"card {serial}: management key set ({algorithm.name}, {how}); the old key is refused now")
    return 0


def _set_through_server(
    args: argparse.Namespace, current: tuple[bytes, Algorithm], keys: ServerCardKeys
) -> int:
    """The counter's way: the city HSM supplies the SET MANAGEMENT KEY data (relayed, never printed or
    kept) and then answers the card's challenge with the card's own key."""
    with _open(args) as conn:
        initial = mgmt.HostKey(*current)
        serial = bytes.fromhex(card_identity(conn, initial).serial)
        piv = PivSession(conn)
        piv.authenticate_management_key(initial)
        piv.send_management_key(keys.set_key_data(serial))
        PivSession(conn).authenticate_management_key(keys.responder(serial))  # the card took it
    print(f"card {serial.hex()}: management key set (AES_128, from the city HSM); the old key is refused now")
    return 0


# --- pin -------------------------------------------------------------------------------------------


def cmd_pin_change(args: argparse.Namespace) -> int:
    old = _secret("CARDTOOL_PIN", "current PIN: ")
    new = _secret("CARDTOOL_NEW_PIN", "new PIN: ", confirm=True)
    with _open(args) as conn:
        PivSession(conn).change_pin(old, new)
    print("PIN changed")
    return 0


def cmd_pin_unblock(args: argparse.Namespace) -> int:
    puk = _secret("CARDTOOL_PUK", "PUK: ")
    new = _secret("CARDTOOL_NEW_PIN", "new PIN: ", confirm=True)
    with _open(args) as conn:
        unblock_pin(conn, puk, new)
    print("PIN unblocked and set")
    return 0


def cmd_pin_change_puk(args: argparse.Namespace) -> int:
    old = _secret("CARDTOOL_PUK", "current PUK: ")
    new = _secret("CARDTOOL_NEW_PUK", "new PUK: ", confirm=True)
    with _open(args) as conn:
        PivSession(conn).change_puk(old, new)
    print("PUK changed")
    return 0


def cmd_pin_status(args: argparse.Namespace) -> int:
    with _open(args) as conn:
        tries = PivSession(conn).pin_attempts()
    print(f"PIN tries left: {tries}")
    return 0


def register(sub: Subcommands) -> None:
    """Add ``readers``, ``info``, ``personalize`` and ``pin``."""

    def reader_opt(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--reader", metavar="NAME", help="reader name or a unique part of it (default: first card)"
        )

    def server_opts(p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group("city server (the card's own key from the HSM, as at the counter)")
        g.add_argument("--server", metavar="URL", help="city server base URL")
        g.add_argument("--terminal", metavar="NAME", help="this counter terminal's registered name")
        g.add_argument("--terminal-key", metavar="FILE", help="its P-256 signing key (PEM)")
        g.add_argument("--clerk", metavar="ID", help="the signed-in clerk named in every request")

    p = sub.add_parser("readers", help="list PC/SC readers and their cards")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_readers)

    p = sub.add_parser("info", help="show the card: ATR, applets, PIN tries, DID, credential")
    reader_opt(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "personalize",
        help="generate the holder key, write its card-signed certificate, set PIN/PUK, DID, credential",
        description="Secrets come from CARDTOOL_PIN / CARDTOOL_NEW_PIN / CARDTOOL_PUK / CARDTOOL_NEW_PUK / "
        "CARDTOOL_MANAGEMENT_KEY or a prompt.",
    )
    reader_opt(p)
    p.add_argument(
        "--management-key", metavar="HEX", help="management key (default: env or the PIV default key)"
    )
    p.add_argument(
        "--management-key-algorithm",
        choices=sorted(MGMT_ALGORITHMS),
        help="of the current key (default: by length)",
    )
    p.add_argument("--keep-pin", action="store_true", help="do not change the PIN and PUK")
    p.add_argument(
        "--keep-key", action="store_true", help="keep the existing 9A key and certificate (second pass)"
    )
    p.add_argument("--did", help="citizen DID to store on the card")
    p.add_argument("--credential", metavar="FILE", help="SD-JWT credential file (<jwt>~<disclosure>~…~)")
    server_opts(p)
    p.add_argument(
        "--authorization-root",
        metavar="HEX",
        help="the city terminal-authorization key (hex SEC1 point): the card then requires terminal "
        "authentication and binds presentations with its own binding key (docs/card-profile.md)",
    )
    p.set_defaults(func=cmd_personalize)

    mk = sub.add_parser("management-key", help="the card's 9B management key")
    mk_sub = mk.add_subparsers(dest="mk_command", metavar="ACTION", required=True)
    q = mk_sub.add_parser(
        "set",
        help="replace the 9B key by a per-card AES-128 key",
        description="Authenticates with the current key (--management-key / CARDTOOL_MANAGEMENT_KEY, "
        "default: the PIV default key) and sets the card's own key: CARDTOOL_NEW_MANAGEMENT_KEY (hex), or "
        "with --derive the key derived from CARDTOOL_MANAGEMENT_MASTER_KEY and the card serial "
        "(docs/card-profile.md). For test cards; the counter's keys come from the city HSM.",
    )
    reader_opt(q)
    q.add_argument("--management-key", metavar="HEX", help="current management key (default: env or default)")
    q.add_argument("--management-key-algorithm", choices=sorted(MGMT_ALGORITHMS), help="of the current key")
    q.add_argument("--derive", action="store_true", help="derive from the city master key and the serial")
    server_opts(q)
    q.set_defaults(func=cmd_management_key_set)

    pin = sub.add_parser("pin", help="PIN management (change, unblock, change-puk, status)")
    pin_sub = pin.add_subparsers(dest="pin_command", metavar="ACTION", required=True)
    for name, func, help_ in (
        ("change", cmd_pin_change, "change the PIN (CARDTOOL_PIN, CARDTOOL_NEW_PIN)"),
        ("unblock", cmd_pin_unblock, "reset the PIN with the PUK (CARDTOOL_PUK, CARDTOOL_NEW_PIN)"),
        ("change-puk", cmd_pin_change_puk, "change the PUK (CARDTOOL_PUK, CARDTOOL_NEW_PUK)"),
        ("status", cmd_pin_status, "PIN tries left"),
    ):
        q = pin_sub.add_parser(name, help=help_)
        reader_opt(q)
        q.set_defaults(func=func)
