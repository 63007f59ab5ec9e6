"""``city-server serve | terminal … | db init | audit | sweep-pending | issuer status|publish | status-list
ensure | issuer-key``. Only ``issuer publish`` (root key) and ``status-list ensure`` (hot key) send
transactions; ``serve`` never does on a network chain (docs/chain.md §Roles)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from cityid.cli_util import Subcommands, port_number, progress, stop_signals
from cityid.errors import CityIdError
from cityid.secrets import secret
from server.config import (
    DEFAULT_AUTHORIZATION_KEYSTORE,
    DEFAULT_DB_URL,
    IssuerKeyConfig,
    ServerConfig,
    load_config,
)
from server.models import TerminalRole

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from server.chain.registrar import Registrar

logger = logging.getLogger(__name__)


def _config(args: argparse.Namespace) -> ServerConfig:
    cfg = load_config(args.config)
    if getattr(args, "db", None):
        cfg = cfg.with_overrides(database_url=args.db)
    return cfg


def _require_sqlite_file(url: str) -> None:
    """A SQLite database must exist already (connecting would create an empty file)."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.exists():
            raise CityIdError(
                f"database {path} does not exist: run `city-server db init` with the same settings"
            )


def _db(args: argparse.Namespace, create: bool = False):  # type: ignore[no-untyped-def]
    """The configured database; only ``db init`` (``create``) may create a SQLite file."""
    from server.db import Database

    cfg = _config(args)
    if not create:
        _require_sqlite_file(cfg.database_url)
    db = Database.from_url(cfg.database_url)
    db.init(cfg.status_list_id, cfg.status_list_capacity)
    return db


def cmd_serve(args: argparse.Namespace) -> int:
    with stop_signals() as stop:  # first: a signal during the long start-up still stops cleanly
        return _serve(args, stop)


def _serve(args: argparse.Namespace, stop: threading.Event) -> int:
    from cityid.serving import ServingLimits, WsgiServer, bind_listener, flask_route_of
    from server.app import create_app
    from server.db import Database

    cfg = _config(args)
    sock = bind_listener(args.host, args.port)  # "port in use" before the start-up, not after it
    _require_sqlite_file(cfg.database_url)  # the schema is `db init`'s, checked by create_app
    if not args.no_access_log:
        logging.getLogger("cityid.access").setLevel(logging.INFO)  # route templates only, no personal data
    progress(f"opening database, issuer key ({cfg.issuer_key.source}) and chain ({cfg.chain})")
    # a kept connection per serving thread, plus the chain writer's work and lock connections
    app = create_app(cfg, db=Database.from_url(cfg.database_url, pool_size=args.threads + 3))
    did = app.extensions["cityid.service"].issuer_did
    limits = ServingLimits(threads=args.threads, max_body_bytes=cfg.max_body_bytes, idle_timeout_s=30)
    http = WsgiServer(
        app,
        sock,
        limits=limits,
        access_log=None if args.no_access_log else flask_route_of(app),
        name="city-server-http",
    )
    progress(f"issuer {did}; serving on {http.url} (waitress, {args.threads} threads)")
    if cfg.authorization_key is None:
        logger.warning(
            "no [authorization_key]: no terminal certificates — kiosks cannot authenticate to cards and "
            "counters refuse to personalize (city-server authorization-key generate; docs/server.md)"
        )
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        progress("listening beyond localhost: put a TLS-terminating proxy in front (docs/server.md §Ops)")
    with http:
        while not stop.wait(0.5):
            pass
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
    t = _db(args).add_terminal(args.name, pem, office=args.office, role=args.role)
    print(f"terminal {t.name} registered (office {t.office}, role {t.role})")
    return 0


def cmd_terminal_keygen(args: argparse.Namespace) -> int:
    """Create a counter terminal's P-256 key pair: secret key file 0600, public key PEM to register."""
    import hashlib
    import re

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

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
        out = [
            {"name": t.name, "active": t.active, "office": t.office, "role": t.role,
             "created_at": t.created_at.isoformat()}
            for t in rows
        ]  # fmt: skip
        print(json.dumps(out, indent=2))
    else:
        for t in rows:
            state = "active" if t.active else "disabled"
            print(f"{t.name}\t{t.office}\t{t.role}\t{state}\t{t.created_at:%Y-%m-%d %H:%M}")
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


def _terminal_authorizations(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The terminal-authorization service on the configured network chain (admin commands)."""
    from cityid.chain.view import StatusRef
    from cityid.credential import VCT
    from server.chain.gateway import RegistrarGateway
    from server.service.terminals import TerminalAuthorizations

    cfg = _config(args)
    gateway = RegistrarGateway(_network_registrar(cfg, _hot_account(cfg)), cfg.issuer_did or None)
    return TerminalAuthorizations(
        _db(args), gateway, None, None,
        status_ref=lambda lid, i: StatusRef(gateway.chain_id, gateway.status_registry, lid, i),
        issuer_did=lambda: gateway.issuer_did, vct=VCT, citizen_list_id=cfg.status_list_id,
    )  # fmt: skip


def cmd_terminal_authorize(args: argparse.Namespace) -> int:
    """Allow a terminal the claims it may ask cards for, recorded on chain (its status bit VALID)."""
    claims = [c.strip() for c in args.claims.split(",") if c.strip()]
    row = _terminal_authorizations(args).authorize(args.name, claims)
    print(f"terminal {args.name} authorized for {', '.join(claims)} "
          f"(terminal status list {row.status_list_id}, index {row.status_index})")  # fmt: skip
    return 0


def cmd_terminal_revoke(args: argparse.Namespace) -> int:
    """Take a terminal out of service on chain: no certificate renewal from now on."""
    row = _terminal_authorizations(args).revoke(args.name)
    print(f"terminal {args.name} revoked on chain (list {row.status_list_id}, index {row.status_index}); "
          "cards refuse it once its current certificate expires")  # fmt: skip
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


def _generate_p256(cfg: IssuerKeyConfig, password_env: str) -> None:
    """Create a P-256 signing key where ``cfg`` says (keystore file or PKCS#11 token); print its point."""
    from server.keys import KeystoreSigner, Pkcs11Signer

    if cfg.source == "pkcs11":
        if not cfg.pkcs11_pin:
            raise ValueError("PKCS#11 user PIN missing (env CITY_PKCS11_PIN)")
        Pkcs11Signer.generate(cfg.pkcs11_module, cfg.pkcs11_token, cfg.pkcs11_key_label, cfg.pkcs11_pin)
        signer = Pkcs11Signer(cfg.pkcs11_module, cfg.pkcs11_token, cfg.pkcs11_key_label, cfg.pkcs11_pin)
        print(f"generated P-256 key {cfg.pkcs11_key_label!r} on token {cfg.pkcs11_token!r}")
    else:
        if not cfg.keystore_password:
            raise ValueError(f"keystore password missing (env {password_env})")
        signer = KeystoreSigner.generate(cfg.keystore_path, cfg.keystore_password)  # type: ignore[assignment]
        print(f"generated encrypted keystore {cfg.keystore_path}")
    print(f"public point {signer.public_point.hex()}")


def cmd_key_generate(args: argparse.Namespace) -> int:
    _generate_p256(_config(args).issuer_key, "CITY_ISSUER_KEY_PASSWORD")
    return 0


def cmd_authorization_key_generate(args: argparse.Namespace) -> int:
    """Create the city authorization key (signs terminal certificates; its public key is the authorization
    root every counter writes to cards: docs/card-profile.md §Terminal authentication)."""
    cfg = _config(args).authorization_key
    configured = cfg is not None
    if cfg is None:  # not configured yet: the default keystore beside the config, as [authorization_key] has
        cfg = IssuerKeyConfig(
            keystore_path=DEFAULT_AUTHORIZATION_KEYSTORE,
            keystore_password=secret("CITY_AUTHORIZATION_KEY_PASSWORD"),
        )
    _generate_p256(cfg, "CITY_AUTHORIZATION_KEY_PASSWORD")
    if not configured:
        print(f'now add [authorization_key] (keystore_path = "{cfg.keystore_path}") to server.toml')
    print("restart city-server: counters write this key's public key to every card they personalize")
    return 0


def cmd_management_key_generate(args: argparse.Namespace) -> int:
    """Create the AES-256 management master key in the HSM (docs/operations.md §HSM); refuse a second one."""
    from server.management_keys import CardKeyError, Pkcs11CardKeys

    cfg = _config(args).management_key
    if cfg.source != "pkcs11":
        raise ValueError("management_key.source must be 'pkcs11' (CITY_MGMT_KEY_SOURCE) for an HSM key")
    if not cfg.pkcs11_pin:
        raise ValueError("PKCS#11 user PIN missing (env CITY_MGMT_PKCS11_PIN)")
    where = (cfg.pkcs11_module, cfg.pkcs11_token, cfg.pkcs11_key_label, cfg.pkcs11_pin)
    try:
        Pkcs11CardKeys(*where).close()
    except CardKeyError:
        pass
    else:
        raise ValueError(f"token {cfg.pkcs11_token!r} already holds {cfg.pkcs11_key_label!r}: every card key "
                         "depends on it — keep it (and its HSM backup)")  # fmt: skip
    Pkcs11CardKeys.generate(*where)
    Pkcs11CardKeys(*where).close()  # usable: found, CKA_DERIVE
    print(f"generated AES-256 management master key {cfg.pkcs11_key_label!r} on token {cfg.pkcs11_token!r} "
          "(sensitive, never extractable, derive only)")  # fmt: skip
    return 0


def _network_registrar(cfg: ServerConfig, account: LocalAccount) -> Registrar:
    from cityid.chain.errors import ChainConfigError
    from cityid.chain.network import NetworkConfig
    from cityid.chain.rpc import HttpTransport, RpcClient
    from server.chain.registrar import Registrar

    if cfg.chain == "embedded":
        raise ChainConfigError("the embedded chain lives inside `serve`; set CITY_SERVER_CHAIN to a file")
    network = NetworkConfig.load(cfg.chain)
    return Registrar(network, RpcClient(HttpTransport(network.rpc_url)), account)


def _issuer_point(args: argparse.Namespace, cfg: ServerConfig) -> bytes:
    from cityid.keys import P256PublicKey
    from server.keys import load_signer

    if args.public_point:
        return P256PublicKey.from_point(bytes.fromhex(args.public_point)).point
    return load_signer(cfg.issuer_key).public_point


def _hot_account(cfg: ServerConfig) -> LocalAccount:
    from server.chain.accounts import load_account

    env = {"CITY_CHAIN_PRIVATE_KEY": cfg.chain_private_key} if cfg.chain_private_key else {}
    return load_account(None, env)


def cmd_issuer_status(args: argparse.Namespace) -> int:
    """Read-only: is the issuer key published on the issuer DID, is the DID accredited?"""
    from eth_account import Account

    from cityid.credential import VCT
    from server.chain.issuer import default_issuer_did, read_issuer_state

    cfg = _config(args)
    reader = _network_registrar(cfg, _hot_account(cfg) if cfg.chain_private_key else Account.create())
    did = cfg.issuer_did or default_issuer_did(reader)
    state = read_issuer_state(reader, did, _issuer_point(args, cfg), VCT)
    print(
        json.dumps(
            {
                "issuer_did": state.did,
                "key_published": state.key_published,
                "accredited": state.accredited,
                "revoked": state.revoked,
                "valid_until": state.valid_until,
                "ready": state.ready,
            },
            indent=2,
        )
    )
    return 0 if state.ready else 1


def cmd_issuer_publish(args: argparse.Namespace) -> int:
    """The root's ceremony: publish the issuer key, accredit the issuer DID; sends only what is missing."""
    from cityid.credential import VCT
    from server.chain.accounts import ROOT_PASSWORD_ENV, load_account
    from server.chain.issuer import publish_issuer

    cfg = _config(args)
    root = _network_registrar(
        cfg, load_account(args.root_keystore, password_env=ROOT_PASSWORD_ENV, allow_env_key=False)
    )
    point = _issuer_point(args, cfg)
    outcome = publish_issuer(root, point, VCT, cfg.issuer_did or None)
    did = outcome.state_before.did
    if outcome.sent:
        print(f"{did}: sent {', '.join(outcome.sent)}")
    else:
        print(f"{did}: already published and accredited; nothing sent")
    return 0


def cmd_status_list_ensure(args: argparse.Namespace) -> int:
    """Create the server's status list with its hot key if the chain lacks it (idempotent)."""
    from server.chain.issuer import ensure_status_list

    cfg = _config(args)
    registrar = _network_registrar(cfg, _hot_account(cfg))
    created = ensure_status_list(registrar, cfg.status_list_id)
    verb = "created" if created else "already exists"
    print(f"status list {cfg.status_list_id} {verb}, owned by {registrar.address}")
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


def register(sub: Subcommands) -> None:
    """Add ``serve``, ``terminal``, ``db`` and ``issuer-key``."""

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", metavar="FILE", help="TOML config (secrets come from the environment)")
        p.add_argument("--db", metavar="URL", help="database URL (overrides the config)")

    p = sub.add_parser("serve", help="run the issuer/registrar API for counter terminals")
    common(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=port_number, default=8700, help="port (default 8700)")
    p.add_argument(
        "--threads",
        type=_positive,
        default=8,
        help="worker threads (default 8; a request waiting with ?wait= holds one). On a 2-core host "
        "enrollment throughput is best with 2 instances x 4 threads (docs/server.md, Serving capacity)",
    )
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
    q.add_argument("--office", default="main", help="the office the terminal stands in (default: main)")
    q.add_argument(
        "--role",
        choices=[r.value for r in TerminalRole],
        default=TerminalRole.COUNTER.value,
        help="counter: own credentials or citizens present; supervisor: also its office's (§Scopes)",
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

    q = tsub.add_parser("authorize", help="allow a terminal the claims it may request (on chain)")
    common(q)
    q.add_argument("--name", required=True, help="terminal id")
    q.add_argument("--claims", required=True, help="comma-separated claim names")
    q.set_defaults(func=cmd_terminal_authorize)
    q = tsub.add_parser("revoke", help="take a terminal out of service on chain (no certificate renewal)")
    common(q)
    q.add_argument("--name", required=True, help="terminal id")
    q.set_defaults(func=cmd_terminal_revoke)

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

    p = sub.add_parser("issuer", help="the issuer on chain: state, and the root's publish ceremony")
    isub = p.add_subparsers(dest="issuer_command", metavar="COMMAND", required=True)
    q = isub.add_parser("status", help="read the issuer's chain state (exit 1 when not ready); sends nothing")
    common(q)
    q.add_argument("--public-point", metavar="HEX", help="issuer public point (default: the configured key)")
    q.set_defaults(func=cmd_issuer_status)
    q = isub.add_parser(
        "publish",
        help="CEREMONY with the city root key: publish the issuer key and accredit (idempotent)",
    )
    common(q)
    q.add_argument(
        "--root-keystore",
        required=True,
        metavar="FILE",
        help="the city root's encrypted keystore (password from CITY_ROOT_PASSWORD or a prompt)",
    )
    q.add_argument("--public-point", metavar="HEX", help="issuer public point (default: the configured key)")
    q.set_defaults(func=cmd_issuer_publish)

    p = sub.add_parser("status-list", help="the server's status list on chain")
    ssub = p.add_subparsers(dest="status_list_command", metavar="COMMAND", required=True)
    q = ssub.add_parser("ensure", help="create the configured status list with the hot key if missing")
    common(q)
    q.set_defaults(func=cmd_status_list_ensure)

    p = sub.add_parser("issuer-key", help="issuer key management")
    ksub = p.add_subparsers(dest="key_command", metavar="COMMAND", required=True)
    q = ksub.add_parser("generate", help="create the issuer P-256 key (keystore file or PKCS#11 token)")
    common(q)
    q.set_defaults(func=cmd_key_generate)

    p = sub.add_parser("authorization-key", help="the city authorization key (signs terminal certificates)")
    asub = p.add_subparsers(dest="authorization_key_command", metavar="COMMAND", required=True)
    q = asub.add_parser(
        "generate", help="create the [authorization_key] P-256 key (keystore file or PKCS#11 token)"
    )
    common(q)
    q.set_defaults(func=cmd_authorization_key_generate)

    p = sub.add_parser("management-key", help="the management master key of per-card 9B keys (HSM)")
    msub = p.add_subparsers(dest="management_key_command", metavar="COMMAND", required=True)
    q = msub.add_parser("generate", help="create the AES-256 master key in the [management_key] token")
    common(q)
    q.set_defaults(func=cmd_management_key_generate)
