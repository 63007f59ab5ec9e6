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
class ServerConfig:
    """Everything ``create_app`` needs."""

    database_url: str = DEFAULT_DB_URL
    chain: str = "embedded"  # "embedded" or a path to a NetworkConfig JSON file
    chain_private_key: str | None = field(default=None, repr=False)  # env CITY_CHAIN_PRIVATE_KEY
    issuer_did: str = ""  # default: the trusted-issuer root's own DID (docs/chain.md §Roles)
    issuer_key: IssuerKeyConfig = field(default_factory=IssuerKeyConfig)
    status_list_id: int = 1
    status_list_capacity: int = 1 << 20
    credential_validity_days: int = 5 * 365
    auth_window_seconds: int = 60
    max_body_bytes: int = 64 * 1024
    #: HMAC key of the lost-card lookup (env CITY_REVOCATION_SECRET; docs/server.md §Lost-card report).
    revocation_secret: str | None = field(default=None, repr=False)
    #: Citizen-facing lost-card reports allowed per client address and minute.
    lost_card_rate_per_minute: int = 5
    #: The city authorization key that signs terminal certificates (docs/card-profile.md §Terminal
    #: authentication); None: terminal certificates are not issued. Keystore password env
    #: CITY_AUTHORIZATION_KEY_PASSWORD, PKCS#11 PIN env CITY_PKCS11_PIN.
    authorization_key: IssuerKeyConfig | None = None
    terminal_certificate_seconds: int = 3600

    def with_overrides(self, **changes: object) -> ServerConfig:
        return replace(self, **changes)  # type: ignore[arg-type]


# Secret variables; each may also be a credential file $CREDENTIALS_DIRECTORY/<name> (LoadCredential=).
SECRET_ENV = (
    "CITY_ISSUER_KEY_PASSWORD", "CITY_PKCS11_PIN", "CITY_CHAIN_PRIVATE_KEY",
    "CITY_AUTHORIZATION_KEY_PASSWORD",
)  # fmt: skip

# The [server] table's settings (docs/server.md §Configuration is tested against these and IssuerKeyConfig).
SERVER_KEYS = (
    "database_url", "chain", "issuer_did", "status_list_id", "status_list_capacity",
    "credential_validity_days", "auth_window_seconds", "max_body_bytes", "terminal_certificate_seconds",
)  # fmt: skip

_ENV_STR = {
    "CITY_SERVER_DB_URL": "database_url",
    "CITY_SERVER_CHAIN": "chain",
    "CITY_ISSUER_DID": "issuer_did",
}
_ENV_INT = {
    "CITY_SERVER_STATUS_LIST": "status_list_id",
    "CITY_SERVER_AUTH_WINDOW": "auth_window_seconds",
}


def _int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"{name} must be an integer")
    try:
        return int(value)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, not {value!r}") from exc


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
    auth_key = data.get("authorization_key")
    if not isinstance(server, dict) or not isinstance(key, dict) or not isinstance(auth_key, dict | None):
        raise ConfigError("[server], [issuer_key] and [authorization_key] must be tables")
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
    for k in ("status_list_id", "status_list_capacity", "credential_validity_days",
              "auth_window_seconds", "max_body_bytes", "terminal_certificate_seconds"):  # fmt: skip
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
    if auth_key is not None:
        auth_values = dict(auth_key)
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
    return cfg
