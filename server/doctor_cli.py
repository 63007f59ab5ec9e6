"""``city-server doctor``: check a city-server host end to end, one line per check with the fix.

Configuration, database (reachable, schema present — never created here), issuer key (keystore permissions
and password, or the PKCS#11 module and PIN), chain (network file, node reachable, chain id, contract code,
head age, registrar key and its balance), clock synchronisation, the listening port. ``--diagnose``: a JSON
dump for support. docs/operations.md §Diagnostics.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cityid.cli_util import Subcommands, port_number
from cityid.doctor import (
    Check,
    Fail,
    Unknown,
    check_chain,
    check_clock,
    check_port,
    check_secret_file,
    exit_code,
    run_checks,
)
from cityid.doctor import diagnose as dump
from cityid.errors import CityIdError


def register(sub: Subcommands) -> None:
    """Add ``doctor``."""
    p = sub.add_parser("doctor", help="check this city-server host end to end", description=__doc__)
    p.add_argument("--config", metavar="FILE", help="TOML config (secrets from the environment/credentials)")
    p.add_argument("--host", default="127.0.0.1", help="the address `serve` binds (default 127.0.0.1)")
    p.add_argument("--port", type=port_number, default=8700, help="the port `serve` binds (default 8700)")
    p.add_argument("--diagnose", action="store_true", help="also print a JSON dump for support")
    p.set_defaults(func=_doctor)


class _Host:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cfg: Any = None
        self.network: Any = None

    def _config(self) -> Any:
        if self.cfg is None:
            raise Unknown("skipped: no valid configuration")
        return self.cfg

    def config_check(self) -> str:
        from server.config import load_config

        try:
            self.cfg = load_config(self.args.config)
        except CityIdError as exc:
            raise Fail(
                str(exc), "fix the config file or environment (docs/server.md §Configuration)"
            ) from None
        return self.args.config or "no file: defaults and environment"

    def database_check(self) -> str:
        from sqlalchemy import inspect
        from sqlalchemy.exc import SQLAlchemyError

        from server.db import db_error_reason, make_engine
        from server.models import Base

        url = self._config().database_url
        scheme = url.split("://", 1)[0]
        if scheme.startswith("sqlite"):
            path = url.split(":///", 1)[-1]
            if not Path(path).exists():
                raise Fail(
                    f"SQLite database {path} does not exist", "city-server db init (with the same config)"
                )
        try:
            engine = make_engine(url)
            try:
                tables = set(inspect(engine).get_table_names())
            finally:
                engine.dispose()
        except SQLAlchemyError as exc:
            reason = db_error_reason(exc, 160)
            raise Fail(
                f"database unreachable: {reason}", "check database_url, the server and its grants"
            ) from None
        missing = sorted(set(Base.metadata.tables) - tables)
        if missing:
            raise Fail(f"schema incomplete (missing {', '.join(missing)})", "city-server db init")
        return f"{scheme}, schema present"

    def issuer_key_check(self) -> str:
        return _key_check(self._config().issuer_key, "issuer", "CITY_ISSUER_KEY_PASSWORD")

    def authorization_key_check(self) -> str:
        """The city authorization key (terminal certificates; docs/card-profile.md §Terminal authentication):
        without it no kiosk authenticates to a card and no counter personalizes one."""
        key = self._config().authorization_key
        if key is None:
            raise Fail(
                "no [authorization_key]: no terminal certificates — kiosks cannot authenticate to cards and "
                "counters refuse to personalize",
                "city-server authorization-key generate, then [authorization_key] in server.toml and "
                "LoadCredential=CITY_AUTHORIZATION_KEY_PASSWORD:… (docs/server.md)",
            )
        return _key_check(key, "authorization", "CITY_AUTHORIZATION_KEY_PASSWORD")

    def chain_check(self) -> str:
        from cityid.chain.network import NetworkConfig

        cfg = self._config()
        if cfg.chain == "embedded":
            raise Fail(
                "chain = embedded: an in-memory chain for demos and tests", "set chain = <network file>"
            )
        try:
            self.network = NetworkConfig.load(cfg.chain)
        except CityIdError as exc:
            raise Fail(str(exc), "city-server chain deploy writes the network file") from None
        return check_chain(self.network)

    def registrar_check(self) -> str:
        from eth_account import Account

        from cityid.chain.rpc import HttpTransport, RpcClient, as_int

        cfg = self._config()
        if self.network is None:
            raise Unknown("skipped: no usable chain")
        if not cfg.chain_private_key:
            raise Fail("registrar key not set", "LoadCredential=CITY_CHAIN_PRIVATE_KEY:… (or the env var)")
        try:
            address = Account.from_key(cfg.chain_private_key).address
        except (ValueError, TypeError):
            raise Fail(
                "CITY_CHAIN_PRIVATE_KEY is not a private key", "put the registrar's hex key there"
            ) from None
        client = RpcClient(HttpTransport(self.network.rpc_url, timeout=5.0))
        try:
            balance = as_int(client.request("eth_getBalance", [address, "latest"]), "balance")
        except CityIdError as exc:
            raise Unknown(f"balance of {address} unknown: {exc}") from None
        if balance == 0:
            raise Fail(f"registrar {address} has no funds for gas", "fund it from the chain's treasury")
        return f"registrar {address}, balance {balance / 1e18:.4f}"

    def port_check(self) -> str:
        return check_port(self.args.host, self.args.port, ours=_is_city_server)

    def checks(self) -> list[Check]:
        return [
            Check("config", self.config_check),
            Check("database", self.database_check),
            Check("issuer key", self.issuer_key_check),
            Check("authorization key", self.authorization_key_check),
            Check("chain", self.chain_check),
            Check("registrar", self.registrar_check),
            Check("clock", check_clock),
            Check("port", self.port_check),
        ]


def _key_check(key: Any, what: str, password_env: str) -> str:
    """One P-256 signing key of the server (``IssuerKeyConfig``): the PKCS#11 module and PIN, or the
    keystore file's permissions, its password and that it opens."""
    from server.keys import KeystoreSigner

    if key.source == "pkcs11":
        if not Path(key.pkcs11_module).exists():
            raise Fail(f"PKCS#11 module {key.pkcs11_module} missing", "install the HSM's PKCS#11 library")
        if not key.pkcs11_pin:
            raise Fail("PKCS#11 PIN not set", "LoadCredential=CITY_PKCS11_PIN:… in cityid-server.service")
        return f"PKCS#11 token {key.pkcs11_token!r}, key {key.pkcs11_key_label!r}"
    detail = check_secret_file(key.keystore_path, f"{what} keystore")
    if not key.keystore_password:
        raise Fail("keystore password not set", f"LoadCredential={password_env}:… (or the env var)")
    try:
        KeystoreSigner.load(key.keystore_path, key.keystore_password)
    except CityIdError as exc:
        raise Fail(str(exc), f"check {password_env}; restore the keystore from backup") from None
    return detail


def _is_city_server(url: str) -> bool:
    import requests

    try:
        return "issuer_did" in requests.get(url + "/health", timeout=3).json()
    except (requests.RequestException, ValueError, TypeError):
        return False


def _doctor(args: argparse.Namespace) -> int:
    host = _Host(args)
    results = run_checks(host.checks())
    if args.diagnose:
        cfg = host.cfg
        config = None
        if cfg is not None:
            db = cfg.database_url
            config = {
                "database": db.split("@")[-1] if "@" in db else db,  # no credentials in the URL part
                "chain": cfg.chain,
                "issuer_key_source": cfg.issuer_key.source,
                "authorization_key_source": getattr(cfg.authorization_key, "source", None),
                "status_list_id": cfg.status_list_id,
                "max_body_bytes": cfg.max_body_bytes,
                "secrets_set": {
                    "issuer_key_password": bool(cfg.issuer_key.keystore_password),
                    "pkcs11_pin": bool(cfg.issuer_key.pkcs11_pin),
                    "authorization_key_password": bool(
                        cfg.authorization_key is not None and cfg.authorization_key.keystore_password
                    ),
                    "chain_private_key": bool(cfg.chain_private_key),
                },
            }
        dump("city-server doctor", results, {"config_file": args.config, "config": config})
    return exit_code(results)
