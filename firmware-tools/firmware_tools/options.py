"""Option parsing and defaults shared by the ``cardtool`` sub-commands."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def default_state_path(name: str = "citizen-card.json") -> Path:
    """``$XDG_STATE_HOME/cityid/<name>`` (``~/.local/state/cityid/<name>`` when unset)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "cityid" / name


def parse_hostport(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``PORT``) → (host, port), with a clear error."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad port in {text!r} (expected HOST:PORT)") from None
    if not 0 < number < 65536:
        raise argparse.ArgumentTypeError(f"port {number} out of range")
    if host.startswith("[") and host.endswith("]"):  # [IPv6]:port
        host = host[1:-1]
    return host or "127.0.0.1", number
