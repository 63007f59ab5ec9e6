"""The server's chain account: from an encrypted keystore file (Web3 Secret Storage) or the environment.

Never from code. Order: ``--keystore FILE`` (password from ``CITY_CHAIN_PASSWORD`` or an interactive prompt),
else ``CITY_CHAIN_PRIVATE_KEY`` (0x-hex). The key is never logged or printed.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

from cityid.chain.errors import ChainConfigError

PASSWORD_ENV = "CITY_CHAIN_PASSWORD"  # noqa: S105 - the variable NAME, not a password
KEY_ENV = "CITY_CHAIN_PRIVATE_KEY"


ROOT_PASSWORD_ENV = "CITY_ROOT_PASSWORD"  # noqa: S105 - the city root keystore's password variable NAME


def _password(env: Mapping[str, str], confirm: bool = False, password_env: str = PASSWORD_ENV) -> str:
    if env.get(password_env):
        return env[password_env]
    if not sys.stdin.isatty():
        raise ChainConfigError(f"keystore password needed: set {password_env} or run interactively")
    password = getpass.getpass("keystore password: ")
    if confirm and getpass.getpass("again: ") != password:
        raise ChainConfigError("passwords differ")
    return password


def load_account(
    keystore: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    *,
    password_env: str = PASSWORD_ENV,
    allow_env_key: bool = True,
) -> LocalAccount:
    """The configured chain account; a clear :class:`ChainConfigError` when none is configured.
    The city root passes ``allow_env_key=False``: its key only ever comes from an encrypted keystore."""
    env = os.environ if env is None else env
    if keystore:
        try:
            data = json.loads(Path(keystore).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ChainConfigError(f"cannot read keystore {keystore}: {exc.strerror}") from exc
        except ValueError as exc:
            raise ChainConfigError(f"keystore {keystore} is not JSON") from exc
        try:
            key = Account.decrypt(data, _password(env, password_env=password_env))
        except ValueError as exc:
            raise ChainConfigError(
                f"cannot decrypt keystore {keystore}: wrong password or damaged file"
            ) from exc
        return Account.from_key(key)
    if not allow_env_key:
        raise ChainConfigError("this key only comes from an encrypted keystore (--root-keystore FILE)")
    raw = env.get(KEY_ENV)
    if raw:
        try:
            return Account.from_key(raw)
        except (ValueError, TypeError) as exc:
            raise ChainConfigError(f"{KEY_ENV} is not a valid private key") from exc
    raise ChainConfigError(f"no chain account: pass --keystore FILE or set {KEY_ENV}")


def create_keystore(
    path: str | Path, env: Mapping[str, str] | None = None, *, password_env: str = PASSWORD_ENV
) -> str:
    """Create a new random account, store it encrypted at ``path`` (mode 0600); return its address."""
    env = os.environ if env is None else env
    target = Path(path)
    if target.exists():
        raise ChainConfigError(f"{target} exists; refusing to overwrite a keystore")
    account = Account.create()
    encrypted = Account.encrypt(account.key, _password(env, confirm=True, password_env=password_env))
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(encrypted, fh)
    return account.address
