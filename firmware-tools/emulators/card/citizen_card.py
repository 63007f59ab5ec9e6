"""The Busan citizen card: PIV + citizen applet (+ optionally FIDO) on one :class:`VirtualCard`.

ATR (ISO/IEC 7816-3 §8.2): ``3B 8F 01`` — direct convention, T=1 only, 15 historical bytes in compact-TLV
format (ISO/IEC 7816-4 §12.1.1): category indicator ``80``; ``59`` card issuer's data (tag 5, 9 bytes) =
ASCII ``BUSANCID`` + profile version ``01``; ``73`` card capabilities (tag 7, 3 bytes) ``C0 00 C0``: selection
by full and partial DF name, command chaining and extended Lc/Le supported; then the TCK check byte.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from cityid.errors import CityIdError
from emulators.card.citizen import CitizenApplet
from emulators.card.os import Applet, Interface, VirtualCard
from emulators.card.piv import PivApplet
from emulators.card.security import CardSecurity
from emulators.card.store import CardStore

CARD_ISSUER_DATA = b"BUSANCID" + bytes([1])
#: Card capabilities (7816-4 §12.1.1.9): DF selection by full/partial name; chaining + extended Lc/Le.
CARD_CAPABILITIES = bytes([0xC0, 0x00, 0xC0])
HISTORICAL_BYTES = (
    bytes([0x80, 0x50 | len(CARD_ISSUER_DATA)])
    + CARD_ISSUER_DATA
    + bytes([0x70 | len(CARD_CAPABILITIES)])
    + CARD_CAPABILITIES
)


def build_atr(historical: bytes = HISTORICAL_BYTES) -> bytes:
    """``3B 8K 01 <historical> TCK``: TD1 = ``01`` offers T=1 only, so TCK is present."""
    if len(historical) > 15:
        raise ValueError("at most 15 historical bytes")
    body = bytes([0x80 | len(historical), 0x01]) + historical
    tck = 0
    for b in body:
        tck ^= b
    return b"\x3b" + body + bytes([tck])


CITIZEN_ATR = build_atr()


def make_citizen_card(
    state: str | os.PathLike[str] | None = None,
    with_fido: bool = False,
    fido_state: str | os.PathLike[str] | None = None,
    private_info: bool = True,
    activation_required: bool = True,
    terminal_auth_required: bool = False,
    interface: Interface = Interface.CONTACT,
) -> VirtualCard:
    """A citizen card whose state lives in ``state`` (None = in memory); FIDO applet optional.

    ``private_info``: GET INFO without serial, DID and claim names (docs/card-profile.md, GET INFO); they
    come from GET IDENTITY after the PIN (the default; off = the legacy answer of profile 1.0 cards).
    ``activation_required`` (default): PUT CREDENTIAL stores the credential inactive until ACTIVATE
    (docs/card-profile.md, ACTIVATE) — a card abandoned mid-personalization cannot PRESENT. ``False`` is
    the legacy card that reads every stored credential as activated.
    ``terminal_auth_required``: PRESENT needs terminal authentication even before an authorization root is
    written (a card holding a root always needs it; docs/card-profile.md §Terminal authentication).
    ``interface``: the card is in a contact reader (default) or in an RF field (``CONTACTLESS``: SP 800-73-4's
    contactless PIV access rules, docs/card-profile.md §PIV access rules).
    """
    store = CardStore(state)
    security = CardSecurity(store)
    piv = PivApplet(store, security, interface=interface)
    applets: list[Applet] = [
        piv,
        CitizenApplet(store, security, piv, private_info, activation_required, terminal_auth_required),
    ]
    if with_fido:
        applets.append(load_fido_applet(fido_state if fido_state is not None else fido_state_for(state)))
    return VirtualCard(applets, CITIZEN_ATR)


def fido_state_for(state: str | os.PathLike[str] | None) -> Path | None:
    """Default FIDO state file next to the card's: ``card.json`` → ``card-fido.json`` (None in memory)."""
    if state is None:
        return None
    path = Path(state)
    return path.with_name(f"{path.stem}-fido{path.suffix or '.json'}")


def load_fido_applet(state: str | os.PathLike[str] | None) -> Applet:
    """Import the FIDO helper's applet lazily (``emulators.fido.applet.FidoApplet(store)``)."""
    try:
        module = importlib.import_module("emulators.fido.applet")
    except ModuleNotFoundError as exc:
        if exc.name not in ("emulators.fido", "emulators.fido.applet"):
            raise
        raise CityIdError("the FIDO applet is not available (emulators.fido.applet is missing)") from exc
    applet: Applet = module.FidoApplet(CardStore(state))
    return applet
