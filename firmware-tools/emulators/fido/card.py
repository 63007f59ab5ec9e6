"""A stand-alone virtual security key: a card with only the FIDO applet (``cardtool emulate fido``)."""

from __future__ import annotations

import os

from emulators.card.os import VirtualCard
from emulators.card.store import CardStore
from emulators.fido.applet import FidoApplet
from emulators.fido.attestation import AttestationBatch
from emulators.fido.presence import UserPresence

HISTORICAL_BYTES = b"\x80BusanFIDO"  # category indicator 0x80 (ISO 7816-4 §8.1.1) + name


def _atr() -> bytes:
    """Direct convention, T0 with TD1 present; TD1 announces T=1; TCK over T0..Tk (ISO 7816-3 §8.2)."""
    body = bytes((0x80 | len(HISTORICAL_BYTES), 0x01)) + HISTORICAL_BYTES
    tck = 0
    for b in body:
        tck ^= b
    return b"\x3b" + body + bytes((tck,))


FIDO_ATR = _atr()


def make_fido_card(
    state: str | os.PathLike[str] | None = None,
    up: UserPresence | None = None,
    attestation: AttestationBatch | None = None,
) -> tuple[VirtualCard, FidoApplet]:
    """A FIDO-only virtual card on state file ``state`` (None = memory) and its applet, attesting with
    ``attestation`` (None: the batch its state names, else the process default, see :mod:`.attestation`)."""
    applet = FidoApplet(CardStore(state), up, attestation=attestation)
    return VirtualCard([applet], FIDO_ATR), applet
