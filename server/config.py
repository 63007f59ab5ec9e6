"""Configuration of ``city-server``: a TOML file, overridden by environment variables.

Secrets (keystore password, PKCS#11 PIN, chain private key) come from the environment or systemd credentials
(:mod:`cityid.secrets`), never from the file, so a config file can be checked in: docs/server.md §Config.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cityid.errors import CityIdError
from cityid.secrets import with_secrets

DEFAULT_DB_URL = "sqlite:///city-server.db"
DEFAULT_KEYSTORE = "issuer-key.p8"
#: [authorization_key] defaults: its own keystore file / PKCS#11 label, never the issuer key's.
DEFAULT_AUTHORIZATION_KEYSTORE = "authorization-key.p8"
DEFAULT_AUTHORIZATION_LABEL = "authorization"


class ConfigError(CityIdError, ValueError):
    """The configuration file or environment is invalid."""


@dataclass(frozen=True, slots=True)
class IssuerKeyConfig:
    """Where the issuer's ES256 key lives: an encrypted PKCS#8 keystore file or a PKCS#11 token."""

    source: str = "keystore"  # "keystore" | "pkcs11"
    keystore_path: str = DEFAULT_KEYSTORE
    keystore_password: str | None = field(default=None, repr=False)  # env CITY_ISSUER_KEY_PASSWORD
    create_if_missing: bool = False
    pkcs11_module: str = "/usr/lib/softhsm/libsofthsm2.so"
    pkcs11_token: str = "city-issuer"  # noqa: S105 - a token label, not a secret
    pkcs11_key_label: str = "issuer"
    pkcs11_pin: str | None = field(default=None, repr=False)  # env CITY_PKCS11_PIN


@dataclass(frozen=True, slots=True)
class ManagementKeyConfig:
    """Where the city's AES-256 management master key lives (docs/card-profile.md, "Per-card management
    key"; docs/operations.md §HSM): a PKCS#11 token, or — demo and tests only — a key from the environment."""

    source: str = "none"  # "none" | "pkcs11" | "software"
    pkcs11_module: str = "/usr/lib/softhsm/libsofthsm2.so"
    pkcs11_token: str = "city-hsm"  # noqa: S105 - a token label, not a secret
    pkcs11_key_label: str = "city-9b-master"
    pkcs11_pin: str | None = field(default=None, repr=False)  # env CITY_MGMT_PKCS11_PIN
    software_master_key: str | None = field(default=None, repr=False)  # env CITY_MANAGEMENT_MASTER_KEY


MANAGEMENT_KEY_SOURCES = ("none", "pkcs11", "software")
_MANAGEMENT_SECRETS = ("pkcs11_pin", "software_master_key")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything ``create_app`` needs."""

    database_url: str = DEFAULT_DB_URL
    chain: str = "embedded"  # "embedded" or a path to a NetworkConfig JSON file
    chain_private_key: str | None = field(default=None, repr=False)  # env CITY_CHAIN_PRIVATE_KEY
    issuer_did: str = ""  # default: the trusted-issuer root's own DID (docs/chain.md §Roles)
    issuer_key: IssuerKeyConfig = field(default_factory=IssuerKeyConfig)
    management_key: ManagementKeyConfig = field(default_factory=ManagementKeyConfig)
    status_list_id: int = 1
    status_list_capacity: int = 1 << 20
    #: Status indexes an instance reserves at a time (docs/server.md §Status indexes): 0 = automatic (256 on
    #: PostgreSQL, where several instances share the allocator row; 1 on SQLite: one process, no gaps).
    status_index_block: int = 0
    credential_validity_days: int = 5 * 365
    auth_window_seconds: int = 60
    max_body_bytes: int = 64 * 1024
    #: HMAC key of the lost-card lookup (env CITY_REVOCATION_SECRET; docs/server.md §Lost-card report).
    revocation_secret: str | None = field(default=None, repr=False)
    #: Citizen-facing lost-card reports allowed per client address and minute.
    lost_card_rate_per_minute: int = 5
    #: Chain outbox (docs/server.md §Chain outbox): batch window of the chain writer, blocks on top of a
    #: write before it counts as confirmed (1 = mined), and how long a request waits for its chain writes
    #: by default (0: answer at once; a request's ``?wait=`` overrides).
    chain_window_ms: int = 500
    chain_confirmations: int = 1
    chain_wait_ms: int = 0
    #: The city authorization key that signs terminal certificates (docs/card-profile.md §Terminal
    #: authentication): every default deployment has one (``city-server authorization-key generate``).
    #: None: no terminal certificates — kiosks cannot authenticate to cards and counters refuse to
    #: personalize (``serve`` warns, ``doctor`` fails). Keystore (default authorization-key.p8, env
    #: CITY_AUTHORIZATION_KEYSTORE) password env CITY_AUTHORIZATION_KEY_PASSWORD, PKCS#11 PIN env
    #: CITY_PKCS11_PIN.
    authorization_key: IssuerKeyConfig | None = None
    terminal_certificate_seconds: int = 3600

    def with_overrides(self, **changes: object) -> ServerConfig:
        return replace(self, **changes)  # type: ignore[arg-type]


# Secret variables; each may also be a credential file $CREDENTIALS_DIRECTORY/<name> (LoadCredential=).
SECRET_ENV = (
    "CITY_ISSUER_KEY_PASSWORD", "CITY_PKCS11_PIN", "CITY_CHAIN_PRIVATE_KEY", "CITY_MGMT_PKCS11_PIN",
    "CITY_MANAGEMENT_MASTER_KEY", "CITY_AUTHORIZATION_KEY_PASSWORD",
)  # fmt: skip

# The [server] table's settings (docs/server.md §Configuration is tested against these and IssuerKeyConfig).
SERVER_KEYS = (
    "database_url", "chain", "issuer_did", "status_list_id", "status_list_capacity", "status_index_block",
    "credential_validity_days", "auth_window_seconds", "max_body_bytes",
    "chain_window_ms", "chain_confirmations", "chain_wait_ms", "terminal_certificate_seconds",
)  # fmt: skip

_ENV_STR = {
    "CITY_SERVER_DB_URL": "database_url",
    "CITY_SERVER_CHAIN": "chain",
    "CITY_ISSUER_DID": "issuer_did",
}
_ENV_INT = {
    "CITY_SERVER_STATUS_LIST": "status_list_id",
    "CITY_SERVER_AUTH_WINDOW": "auth_window_seconds",
    "CITY_CHAIN_WINDOW_MS": "chain_window_ms",
    "CITY_CHAIN_CONFIRMATIONS": "chain_confirmations",
    "CITY_CHAIN_WAIT_MS": "chain_wait_ms",
}


def _int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"{name} must be an integer")
    try:
        return int(value)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, not {value!r}") from exc


def _management_key(table: dict[str, Any], env: Mapping[str, str]) -> ManagementKeyConfig:
    values = {k: str(v) for k, v in table.items()}
    for var, k in (
        ("CITY_MGMT_KEY_SOURCE", "source"), ("CITY_MGMT_PKCS11_MODULE", "pkcs11_module"),
        ("CITY_MGMT_PKCS11_TOKEN", "pkcs11_token"), ("CITY_MGMT_PKCS11_KEY_LABEL", "pkcs11_key_label"),
        ("CITY_MGMT_PKCS11_PIN", "pkcs11_pin"), ("CITY_MANAGEMENT_MASTER_KEY", "software_master_key"),
    ):  # fmt: skip
        if env.get(var):
            values[k] = env[var]
    cfg = ManagementKeyConfig(**values)
    if cfg.source not in MANAGEMENT_KEY_SOURCES:
        raise ConfigError(f"management_key.source must be one of {', '.join(MANAGEMENT_KEY_SOURCES)}")
    return cfg


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> ServerConfig:
    """Read the TOML file (if any), then apply environment overrides; raise :class:`ConfigError`."""
    env = with_secrets(SECRET_ENV, os.environ if env is None else env)
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config {path} is not valid TOML: {exc}") from exc
    server = data.get("server", {})
    key = data.get("issuer_key", {})
    mgmt = data.get("management_key", {})
    auth_key = data.get("authorization_key")
    if (
        not isinstance(server, dict)
        or not isinstance(key, dict)
        or not isinstance(mgmt, dict)
        or not isinstance(auth_key, dict | None)
    ):
        raise ConfigError("[server], [issuer_key], [management_key] and [authorization_key] must be tables")
    for secret in _MANAGEMENT_SECRETS:
        if secret in mgmt:
            raise ConfigError(f"management_key.{secret} must come from the environment, not the config file")
    settable = {f for f in ManagementKeyConfig.__dataclass_fields__ if f not in _MANAGEMENT_SECRETS}
    unknown = set(mgmt) - settable
    if unknown:
        raise ConfigError(f"unknown [management_key] settings: {', '.join(sorted(unknown))}")
    for secret in ("keystore_password", "pkcs11_pin", "chain_private_key", "revocation_secret"):
        if secret in key or secret in server or secret in (auth_key or {}):
            raise ConfigError(f"{secret} must come from the environment, not the config file")
    unknown = set(server) - set(SERVER_KEYS)
    if unknown:
        raise ConfigError(f"unknown [server] settings: {', '.join(sorted(unknown))}")
    known_key = {
        f for f in IssuerKeyConfig.__dataclass_fields__ if f not in ("keystore_password", "pkcs11_pin")
    }
    unknown = set(key) - known_key
    if unknown:
        raise ConfigError(f"unknown [issuer_key] settings: {', '.join(sorted(unknown))}")
    unknown = set(auth_key or {}) - known_key
    if unknown:
        raise ConfigError(f"unknown [authorization_key] settings: {', '.join(sorted(unknown))}")

    values: dict[str, Any] = {}
    for k in ("database_url", "chain", "issuer_did"):
        if k in server:
            values[k] = str(server[k])
    for k in ("status_list_id", "status_list_capacity", "status_index_block", "credential_validity_days",
              "auth_window_seconds", "max_body_bytes", "chain_window_ms", "chain_confirmations",
              "chain_wait_ms", "terminal_certificate_seconds"):  # fmt: skip
        if k in server:
            values[k] = _int(server[k], k)
    for var, k in _ENV_STR.items():
        if env.get(var):
            values[k] = env[var]
    for var, k in _ENV_INT.items():
        if env.get(var):
            values[k] = _int(env[var], var)
    if env.get("CITY_CHAIN_PRIVATE_KEY"):
        values["chain_private_key"] = env["CITY_CHAIN_PRIVATE_KEY"]
    if env.get("CITY_REVOCATION_SECRET"):
        if len(env["CITY_REVOCATION_SECRET"]) < 32:
            raise ConfigError("CITY_REVOCATION_SECRET must be at least 32 characters")
        values["revocation_secret"] = env["CITY_REVOCATION_SECRET"]

    key_values = dict(key)
    if env.get("CITY_ISSUER_KEY_SOURCE"):
        key_values["source"] = env["CITY_ISSUER_KEY_SOURCE"]
    if env.get("CITY_ISSUER_KEYSTORE"):
        key_values["keystore_path"] = env["CITY_ISSUER_KEYSTORE"]
    if env.get("CITY_ISSUER_KEY_PASSWORD"):
        key_values["keystore_password"] = env["CITY_ISSUER_KEY_PASSWORD"]
    if env.get("CITY_PKCS11_MODULE"):
        key_values["pkcs11_module"] = env["CITY_PKCS11_MODULE"]
    if env.get("CITY_PKCS11_TOKEN"):
        key_values["pkcs11_token"] = env["CITY_PKCS11_TOKEN"]
    if env.get("CITY_PKCS11_PIN"):
        key_values["pkcs11_pin"] = env["CITY_PKCS11_PIN"]
    issuer = IssuerKeyConfig(**key_values)
    if issuer.source not in ("keystore", "pkcs11"):
        raise ConfigError(f"issuer_key.source must be 'keystore' or 'pkcs11', not {issuer.source!r}")
    values["issuer_key"] = issuer
    values["management_key"] = _management_key(mgmt, env)
    if auth_key is None and env.get("CITY_AUTHORIZATION_KEYSTORE"):
        auth_key = {}  # configured by the environment alone
    if auth_key is not None:
        auth_values = {
            "keystore_path": DEFAULT_AUTHORIZATION_KEYSTORE,
            "pkcs11_key_label": DEFAULT_AUTHORIZATION_LABEL,
            **auth_key,
        }
        if env.get("CITY_AUTHORIZATION_KEYSTORE"):
            auth_values["keystore_path"] = env["CITY_AUTHORIZATION_KEYSTORE"]
        if env.get("CITY_AUTHORIZATION_KEY_PASSWORD"):
            auth_values["keystore_password"] = env["CITY_AUTHORIZATION_KEY_PASSWORD"]
        if env.get("CITY_PKCS11_PIN"):
            auth_values["pkcs11_pin"] = env["CITY_PKCS11_PIN"]
        authorization = IssuerKeyConfig(**auth_values)
        if authorization.source not in ("keystore", "pkcs11"):
            raise ConfigError("authorization_key.source must be 'keystore' or 'pkcs11'")
        values["authorization_key"] = authorization
    cfg = ServerConfig(**values)
    if not 60 <= cfg.terminal_certificate_seconds <= 7 * 86400:
        raise ConfigError("terminal_certificate_seconds must be within 60..604800")
    if not 1 <= cfg.auth_window_seconds <= 600:
        raise ConfigError("auth_window_seconds must be within 1..600")
    if not 10 <= cfg.chain_window_ms <= 60_000 or not 1 <= cfg.chain_confirmations <= 64:
        raise ConfigError("chain_window_ms must be within 10..60000, chain_confirmations within 1..64")
    if not 0 <= cfg.chain_wait_ms <= 60_000:
        raise ConfigError("chain_wait_ms must be within 0..60000")
    if not 0 <= cfg.status_index_block <= 65_536:
        raise ConfigError("status_index_block must be within 0..65536 (0: automatic)")
    return cfg
