"""Simulated user presence (the "touch"): approve by default, optionally after a delay or refused.

CTAP 2.1 §5.1 (user presence test): while waiting the authenticator reports STATUS.UPNEEDED to the
transport (CTAPHID KEEPALIVE / NFC 9100); a cancel from the platform aborts with CTAP2_ERR_KEEPALIVE_CANCEL.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from enum import Enum

from fido2.ctap import STATUS

from emulators.fido.ctap import ERR, fail

logger = logging.getLogger(__name__)

Keepalive = Callable[[STATUS], None]

#: How often a waiting authenticator sends a keepalive (CTAPHID §11.2.9.2.6: every 100 ms).
KEEPALIVE_INTERVAL = 0.1


class PresenceMode(Enum):
    """What the simulated user does when asked to touch the key."""

    APPROVE = "approve"
    DENY = "deny"
    TIMEOUT = "timeout"


class UserPresence:
    """The simulated touch sensor; ``delay`` seconds pass before the user reacts."""

    def __init__(self, mode: PresenceMode | str = PresenceMode.APPROVE, delay: float = 0.0) -> None:
        self.mode = PresenceMode(mode)
        self.delay = delay
        self.requests = 0

    def request(self, cancel: threading.Event | None = None, keepalive: Keepalive | None = None) -> None:
        """Wait for the touch; raise CTAP2_ERR_OPERATION_DENIED / USER_ACTION_TIMEOUT / KEEPALIVE_CANCEL."""
        self.requests += 1
        deadline = time.monotonic() + self.delay
        while True:
            if cancel is not None and cancel.is_set():
                raise fail(ERR.KEEPALIVE_CANCEL)
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if keepalive is not None:
                keepalive(STATUS.UPNEEDED)
            if cancel is not None:
                cancel.wait(min(left, KEEPALIVE_INTERVAL))
            else:
                time.sleep(min(left, KEEPALIVE_INTERVAL))
        if self.mode is PresenceMode.DENY:
            logger.info("simulated user refused the touch")
            raise fail(ERR.OPERATION_DENIED)
        if self.mode is PresenceMode.TIMEOUT:
            raise fail(ERR.USER_ACTION_TIMEOUT)
