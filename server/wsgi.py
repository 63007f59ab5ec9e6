"""WSGI entry point for an external WSGI server (``waitress-serve server.wsgi:app``).

``city-server serve`` (waitress: limits, access log, graceful stop) is the usual way (docs/operations.md).

Configuration from ``CITY_SERVER_CONFIG`` (a TOML file) plus the environment, as ``city-server serve``.
Run ONE process per registrar account (threads are fine): chain transactions are nonce-managed per process.
"""

from __future__ import annotations

import os

from server.app import create_app
from server.config import load_config

app = create_app(load_config(os.environ.get("CITY_SERVER_CONFIG")))
