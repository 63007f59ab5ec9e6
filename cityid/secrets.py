"""Secrets from the environment or systemd credentials (``LoadCredential=``): docs/operations.md §Secrets.

A secret named ``NAME`` is the environment variable ``NAME`` if set, else the file
``$CREDENTIALS_DIRECTORY/NAME`` (systemd.exec(5) "Credentials": the service manager copies it into a private,
non-swappable directory only the service can read). One trailing newline is dropped from the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from cityid.errors import CityIdError


def secret(name: str, env: Mapping[str, str] | None = None) -> str | None:
    """The secret ``name`` from ``env`` (default: the process environment) or its credentials directory."""
    env = os.environ if env is None else env
    value = env.get(name)
    if value:
        return value
    folder = env.get("CREDENTIALS_DIRECTORY")
    if not folder:
        return None
    path = Path(folder) / name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise CityIdError(f"cannot read credential {name} in {folder}: {exc}") from exc
    return text[:-1] if text.endswith("\n") else text


def with_secrets(names: Iterable[str], env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``env`` with each of ``names`` filled in from the credentials directory when unset."""
    env = os.environ if env is None else env
    out = dict(env)
    for name in names:
        value = secret(name, env)
        if value is not None:
            out[name] = value
    return out
