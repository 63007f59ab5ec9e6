"""Counter flow: unblock a card PIN with the PUK (SP 800-73-4 Part 2 §3.2.3 RESET RETRY COUNTER).

Wrong PUK: ``InvalidPukError`` (a :class:`cityid.errors.WrongPinError`, PUK tries left); PUK blocked:
``PinBlockedError(what="PUK")``.
"""

from __future__ import annotations

import logging

from cityid.apdu import SmartCardConnection
from terminal.sessions.piv import PivSession

logger = logging.getLogger(__name__)


def unblock_pin(connection: SmartCardConnection, puk: str, new_pin: str) -> None:
    """Reset the PIN of the card in ``connection`` to ``new_pin`` with ``puk`` (neither is logged)."""
    PivSession(connection).unblock_pin(puk, new_pin)
    logger.info("card PIN unblocked")
