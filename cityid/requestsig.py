"""Signed HTTP requests between counter terminals and the city server (docs/server.md §Authentication).

Each request carries four headers; the signature is ES256 (raw r||s, base64url) by the terminal's P-256 key
over the canonical string::

    METHOD "\\n" PATH[?QUERY] "\\n" TIMESTAMP "\\n" NONCE "\\n" hex(SHA-256(body))

A request made on behalf of a signed-in clerk also carries ``X-CityID-Clerk``; the clerk id is then signed
too, as a line ``clerk:ID`` before the body digest (docs/server.md §Scopes) — so a clerk id cannot
be added, removed or changed in transit. The server accepts a timestamp within ±window seconds and each
(terminal, nonce) once.
Both the terminal client and the server import this module: the canonical form is written once.
"""

from __future__ import annotations

import hashlib
import re

HEADER_TERMINAL = "X-CityID-Terminal"
HEADER_TIMESTAMP = "X-CityID-Timestamp"
HEADER_NONCE = "X-CityID-Nonce"
HEADER_SIGNATURE = "X-CityID-Signature"
HEADER_CLERK = "X-CityID-Clerk"

NONCE_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
CLERK_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


def canonical_request(
    method: str, path: str, timestamp: int, nonce: str, body: bytes, clerk: str | None = None
) -> bytes:
    """The bytes the terminal signs and the server verifies (``clerk``: the signed-in clerk, if any)."""
    digest = hashlib.sha256(body).hexdigest()
    clerk_line = f"clerk:{clerk}\n" if clerk else ""
    return f"{method.upper()}\n{path}\n{timestamp}\n{nonce}\n{clerk_line}{digest}".encode()


def canonical_presence(terminal: str, citizen_did: str, action: str, timestamp: int, nonce: str) -> bytes:
    """What the citizen's current card or FIDO key signs (ES256) to prove presence at ``terminal`` for one
    ``action`` (``revoke``, ``suspend``, ``resume``, ``reissue``, ``enroll``, ``fido.register``) on
    ``citizen_did`` (docs/server.md §Scopes)."""
    return f"cityid-presence-v1\n{terminal}\n{citizen_did}\n{action}\n{timestamp}\n{nonce}".encode()
