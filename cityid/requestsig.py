"""Signed HTTP requests between counter terminals and the city server (docs/server.md §Authentication).

Each request carries four headers; the signature is ES256 (raw r||s, base64url) by the terminal's P-256 key
over the canonical string::

    METHOD "\\n" PATH[?QUERY] "\\n" TIMESTAMP "\\n" NONCE "\\n" hex(SHA-256(body))

The server accepts a timestamp within ±window seconds and each (terminal, nonce) once.
Both the terminal client and the server import this module: the canonical form is written once.
"""

from __future__ import annotations

import hashlib
import re

HEADER_TERMINAL = "X-CityID-Terminal"
HEADER_TIMESTAMP = "X-CityID-Timestamp"
HEADER_NONCE = "X-CityID-Nonce"
HEADER_SIGNATURE = "X-CityID-Signature"

NONCE_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


def canonical_request(method: str, path: str, timestamp: int, nonce: str, body: bytes) -> bytes:
    """The bytes the terminal signs and the server verifies."""
    digest = hashlib.sha256(body).hexdigest()
    return f"{method.upper()}\n{path}\n{timestamp}\n{nonce}\n{digest}".encode()
