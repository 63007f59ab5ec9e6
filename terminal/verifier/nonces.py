"""Single-use presentation nonces (RFC 9901 §7.3: the verifier supplies a fresh nonce per presentation).

A nonce is 128 random bits, base64url (22 ASCII characters — within the citizen applet's 8..64 limit), bound
to the service that asked for it, valid for ``ttl`` seconds and consumed at most once.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from cityid.jose import b64url_encode

NONCE_BYTES = 16


class NonceStore:
    """Issue and consume nonces; thread-safe; bounded (the oldest outstanding nonces are dropped first)."""

    def __init__(
        self, ttl: float = 120.0, clock: Callable[[], float] = time.monotonic, max_outstanding: int = 4096
    ) -> None:
        if ttl <= 0 or max_outstanding <= 0:
            raise ValueError("ttl and max_outstanding must be positive")
        self._ttl = ttl
        self._clock = clock
        self._max = max_outstanding
        self._lock = threading.Lock()
        self._outstanding: OrderedDict[str, tuple[str, float]] = OrderedDict()  # nonce -> (service, expiry)

    def issue(self, service: str) -> str:
        """A fresh nonce for ``service``."""
        nonce = b64url_encode(secrets.token_bytes(NONCE_BYTES))
        now = self._clock()
        with self._lock:
            self._expire(now)
            while len(self._outstanding) >= self._max:
                self._outstanding.popitem(last=False)
            self._outstanding[nonce] = (service, now + self._ttl)
        return nonce

    def consume(self, nonce: str, service: str | None = None) -> bool:
        """True exactly once for a nonce this store issued (for ``service``, if given) and not yet expired.

        A nonce presented for the wrong service is still consumed: it was exposed, it must not be reused.
        """
        now = self._clock()
        with self._lock:
            entry = self._outstanding.pop(nonce, None)
        if entry is None:
            return False
        issued_for, expiry = entry
        if now > expiry:
            return False
        return service is None or secrets.compare_digest(issued_for, service)

    def discard(self, nonce: str) -> None:
        """Forget a nonce without using it (session ended before the presentation)."""
        with self._lock:
            self._outstanding.pop(nonce, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._outstanding)

    def _expire(self, now: float) -> None:
        while self._outstanding:
            nonce, (_, expiry) = next(iter(self._outstanding.items()))
            if expiry >= now:
                break
            del self._outstanding[nonce]
