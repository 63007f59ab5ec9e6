"""``city-server serve | terminal add|list|disable|enable | db init | audit | sweep-pending | issuer-key``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from cityid.cli_util import port_number, progress, wait_for_stop
from cityid.errors import CityIdError
from server.config import DEFAULT_DB_URL, ServerConfig, load_config

logger = logging.getLogger(__name__)


def _config(args: argparse.Namespace) -> ServerConfig:
    cfg = load_config(args.config)
    if getattr(args, "db", None):
        cfg = cfg.with_overrides(database_url=args.db)
    return cfg


def _db(args: argparse.Namespace, create: bool = False):  # type: ignore[no-untyped-def]
    """The configured database; only ``db init`` (``create``) may create a SQLite file."""
    from server.db import Database

    cfg = _config(args)
    if not create and cfg.database_url.startswith("sqlite:///"):
        path = Path(cfg.database_url.removeprefix("sqlite:///"))
        if not path.exists():
            raise CityIdError(
                f"database {path} does not exist: run `city-server db init` with the same settings"
            )
    db = Database.from_url(cfg.database_url)
    db.init(cfg.status_list_id, cfg.status_list_capacity)
    return db


def cmd_serve(args: argparse.Namespace) -> int:
    from cityid.serving import ServingLimits, WsgiServer, bind_listener, flask_route_of
    from server.app import create_app

    cfg = _config(args)
    sock = bind_listener(args.host, args.port)  # "port in use" before the start-up, not after it
    if not args.no_access_log:
        logging.getLogger("cityid.access").setLevel(logging.INFO)  # route templates only, no personal data
    progress(f"opening database, issuer key ({cfg.issuer_key.source}) and chain ({cfg.chain})")
    app = create_app(cfg)
    did = app.extensions["cityid.service"].issuer_did
    limits = ServingLimits(threads=args.threads, max_body_bytes=cfg.max_body_bytes, idle_timeout_s=30)
    http = WsgiServer(
        app,
        sock,
        limits=limits,
        access_log=None if args.no_access_log else flask_route_of(app),
        name="city-server-http",
    )
    progress(f"issuer {did} published; serving on {http.url} (waitress, {args.threads} threads)")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        progress("listening beyond localhost: put a TLS-terminating proxy in front (docs/server.md §Ops)")
    with http:
        wait_for_stop()  # SIGINT or SIGTERM, even when started with SIGINT ignored
        progress("stopping: finishing requests in flight")
    return 0


def cmd_db_init(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if cfg.database_url == DEFAULT_DB_URL and not (
        args.db or args.config or os.environ.get("CITY_SERVER_DB_URL")
    ):
        raise CityIdError(
            "no database configured: pass --db URL or --config FILE (or set CITY_SERVER_DB_URL)"
        )
    _db(args, create=True)
    print(f"database ready ({cfg.database_url.split('://', 1)[0]}), status list {cfg.status_list_id}")
    return 0


def cmd_terminal_add(args: argparse.Namespace) -> int:
    if args.public_key == "-":
        pem = sys.stdin.read()
    else:
        try:
            pem = Path(args.public_key).read_text()
        except FileNotFoundError:
            raise CityIdError(f"public key file {args.public_key} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CityIdError(f"cannot read public key file {args.public_key}: {exc}") from None
    t = _db(args).add_terminal(args.name, pem)
    print(f"terminal {t.name} registered")
    return 0


def cmd_terminal_keygen(args: argparse.Namespace) -> int:
    """Create a counter terminal's P-256 key pair: secret key file 0600, public key PEM to register."""
    import hashlib
    import re

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from cityid.secrets import secret

    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", args.name):
        raise CityIdError("terminal name: 1-64 letters, digits, '.', '_' or '-'")
    out = Path(args.out)
    if not out.is_dir():
        raise CityIdError(f"output folder {out} does not exist")
    key_path, pub_path = out / f"{args.name}.key.pem", out / f"{args.name}.pub.pem"
    password = secret("CITYID_TERMINAL_KEY_PASSWORD")
    key = ec.generate_private_key(ec.SECP256R1())
    encryption = (
        serialization.BestAvailableEncryption(password.encode()) if password else serialization.NoEncryption()
    )
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CityIdError(f"{key_path} exists; refusing to overwrite a terminal key") from None
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    pub_path.write_bytes(public_pem)
    print(f"secret key: {key_path} (mode 0600{', encrypted' if password else ''}) — keep it on the terminal")
    print(f"public key: {pub_path}")
    print(f"fingerprint: SHA256:{hashlib.sha256(spki).hexdigest()}")
    print(f"register it: city-server terminal add --name {args.name} --public-key {pub_path.name}")
    print(f'terminal config: [server] terminal_key = "{key_path.resolve()}"')
    return 0


def cmd_terminal_list(args: argparse.Namespace) -> int:
    rows = _db(args).list_terminals()
    if args.json:
        out = [{"name": t.name, "active": t.active, "created_at": t.created_at.isoformat()} for t in rows]
        print(json.dumps(out, indent=2))
    else:
        for t in rows:
            print(f"{t.name}\t{'active' if t.active else 'disabled'}\t{t.created_at:%Y-%m-%d %H:%M}")
        if not rows:
            print("no terminals registered", file=sys.stderr)
    return 0


def cmd_terminal_disable(args: argparse.Namespace) -> int:
    _db(args).set_terminal_active(args.name, False)
    print(f"terminal {args.name} disabled")
    return 0


def cmd_terminal_enable(args: argparse.Namespace) -> int:
    _db(args).set_terminal_active(args.name, True)
    print(f"terminal {args.name} enabled")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from server.models import AuditEntry

    db = _db(args)
    with db.sessions() as s:
        q = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(args.limit)
        if args.credential:
            q = q.where(AuditEntry.credential_id == args.credential)
        rows = list(reversed(s.scalars(q).all()))
    fields = ("at", "actor", "action", "outcome", "credential_id", "citizen_did", "detail")
    if args.json:
        out = [{f: (getattr(r, f).isoformat() if f == "at" else getattr(r, f)) for f in fields} for r in rows]
        print(json.dumps(out, indent=2))
    else:
        for r in rows:
            print("\t".join(str(getattr(r, f) or "-") for f in fields))
        if not rows:
            print(
                "no audit entries" + (f" for credential {args.credential}" if args.credential else ""),
                file=sys.stderr,
            )
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    import datetime as dt

    from server.service import sweep_pending

    closed = sweep_pending(_db(args), dt.timedelta(minutes=args.older_than))
    print(f"closed {len(closed)} enrollment(s) left pending for more than {args.older_than} min")
    for cid in closed:
        print(cid)
    return 0


def cmd_key_generate(args: argparse.Namespace) -> int:
    from server.keys import KeystoreSigner, Pkcs11Signer

    cfg = _config(args).issuer_key
    if cfg.source == "pkcs11":
        if not cfg.pkcs11_pin:
            raise ValueError("PKCS#11 user PIN missing (env CITY_PKCS11_PIN)")
        Pkcs11Signer.generate(cfg.pkcs11_module, cfg.pkcs11_token, cfg.pkcs11_key_label, cfg.pkcs11_pin)
        signer = Pkcs11Signer(cfg.pkcs11_module, cfg.pkcs11_token, cfg.pkcs11_key_label, cfg.pkcs11_pin)
        print(f"generated P-256 key {cfg.pkcs11_key_label!r} on token {cfg.pkcs11_token!r}")
    else:
        if not cfg.keystore_password:
            raise ValueError("keystore password missing (env CITY_ISSUER_KEY_PASSWORD)")
        signer = KeystoreSigner.generate(cfg.keystore_path, cfg.keystore_password)  # type: ignore[assignment]
        print(f"generated encrypted keystore {cfg.keystore_path}")
    print(f"public point {signer.public_point.hex()}")
    return 0


def _positive(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``serve``, ``terminal``, ``db`` and ``issuer-key``."""

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", metavar="FILE", help="TOML config (secrets come from the environment)")
        p.add_argument("--db", metavar="URL", help="database URL (overrides the config)")

    p = sub.add_parser("serve", help="run the issuer/registrar API for counter terminals")
    common(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=port_number, default=8700, help="port (default 8700)")
    p.add_argument("--threads", type=_positive, default=8, help="worker threads (default 8)")
    p.add_argument("--no-access-log", action="store_true", help="no per-request log lines")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("db", help="database administration")
    dsub = p.add_subparsers(dest="db_command", metavar="COMMAND", required=True)
    q = dsub.add_parser("init", help="create the schema and the status-list allocator (idempotent)")
    common(q)
    q.set_defaults(func=cmd_db_init)

    p = sub.add_parser("terminal", help="register, list and disable counter terminals")
    tsub = p.add_subparsers(dest="terminal_command", metavar="COMMAND", required=True)
    q = tsub.add_parser("add", help="register a terminal's P-256 public key")
    common(q)
    q.add_argument("--name", required=True, help="terminal id (letters, digits, . _ -)")
    q.add_argument(
        "--public-key", required=True, metavar="PEM_FILE", help="public key PEM file, or - for stdin"
    )
    q.set_defaults(func=cmd_terminal_add)
    q = tsub.add_parser("keygen", help="create a counter terminal's key pair and print what to register")
    q.add_argument("--name", required=True, help="terminal id (letters, digits, . _ -)")
    q.add_argument("--out", default=".", metavar="DIR", help="folder for NAME.key.pem and NAME.pub.pem (.)")
    q.set_defaults(func=cmd_terminal_keygen)
    q = tsub.add_parser("list", help="list terminals")
    common(q)
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_terminal_list)
    for verb, fn in (("disable", cmd_terminal_disable), ("enable", cmd_terminal_enable)):
        q = tsub.add_parser(
            verb,
            help=f"{verb} a terminal (its requests are {'refused' if verb == 'disable' else 'accepted'})",
        )
        common(q)
        q.add_argument("--name", required=True, help="terminal id")
        q.set_defaults(func=fn)

    p = sub.add_parser("audit", help="show the audit log (actions, never claims)")
    common(p)
    p.add_argument("--limit", type=int, default=50, help="most recent N entries (default 50)")
    p.add_argument("--credential", metavar="ID", help="only entries of this credential")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("sweep-pending", help="close enrollments whose terminal never came back")
    common(p)
    p.add_argument("--older-than", type=int, default=60, metavar="MINUTES", help="age (default 60)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("issuer-key", help="issuer key management")
    ksub = p.add_subparsers(dest="key_command", metavar="COMMAND", required=True)
    q = ksub.add_parser("generate", help="create the issuer P-256 key (keystore file or PKCS#11 token)")
    common(q)
    q.set_defaults(func=cmd_key_generate)
