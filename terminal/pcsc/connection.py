"""A thin pyscard adapter: one PC/SC card handle as a :class:`cityid.apdu.SmartCardConnection`.

Uses the low-level ``smartcard.scard`` API (SCardConnect / SCardTransmit / SCardControl, PC/SC part 5) to keep
per-APDU overhead to a few microseconds on top of pcscd. PC/SC return codes become :mod:`cityid.errors`
types: a removed card is :class:`CardRemovedError`, a stopped service :class:`PcscUnavailableError`.

One card session = one connection holding one PC/SC transaction (``with open_connection() as conn``), so no
other application can interleave APDUs between the terminal's VERIFY and its PRESENT.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any

from smartcard import scard

from cityid.errors import (
    CardError,
    CardRemovedError,
    DecodeError,
    NoCardError,
    NoReaderError,
    PcscUnavailableError,
    ReaderError,
)
from terminal.pcsc.atr import parse_atr

logger = logging.getLogger(__name__)

#: The PC/SC service is gone or unusable for this process. "Access denied" (SCARD_W_SECURITY_VIOLATION)
#: is what pcsc-lite clients get from a daemon that is shutting down (seen here) or that refuses this user
#: (polkit): either way the terminal must rebuild its context later, not treat it as a card error.
SERVICE_GONE = frozenset({
    scard.SCARD_E_NO_SERVICE,
    scard.SCARD_E_SERVICE_STOPPED,
    scard.SCARD_E_INVALID_HANDLE,
    scard.SCARD_F_COMM_ERROR,
    scard.SCARD_W_SECURITY_VIOLATION,
})  # fmt: skip
_CARD_GONE = {
    scard.SCARD_W_REMOVED_CARD,
    scard.SCARD_E_NO_SMARTCARD,
    scard.SCARD_W_UNPOWERED_CARD,
    scard.SCARD_W_UNRESPONSIVE_CARD,
    scard.SCARD_E_READER_UNAVAILABLE,
    scard.SCARD_E_NOT_TRANSACTED,
    scard.SCARD_E_PROTO_MISMATCH,
}
_NO_READER = {scard.SCARD_E_NO_READERS_AVAILABLE, scard.SCARD_E_UNKNOWN_READER}
#: (reader, ATR) -> whether extended APDUs worked, learned by the sessions' first SELECT.
_EXTENDED_SEEN: dict[tuple[str, bytes], bool] = {}


class CardResetError(CardRemovedError):
    """Another application reset the card: the session's state (selection, verified PIN) is lost."""


def pcsc_message(hresult: int) -> str:
    """The PC/SC error text for a return code."""
    return f"{scard.SCardGetErrorMessage(hresult).strip()} (0x{hresult & 0xFFFFFFFF:08X})"


def pcsc_error(hresult: int, what: str) -> CardError:
    """Map a failing PC/SC return code to a typed error (PC/SC part 5 §3.4 return codes)."""
    msg = f"{what}: {pcsc_message(hresult)}"
    if hresult in SERVICE_GONE:
        return PcscUnavailableError(msg)
    if hresult in _NO_READER:
        return NoReaderError(msg)
    if hresult == scard.SCARD_W_RESET_CARD:
        return CardResetError(msg)
    if hresult in _CARD_GONE:
        return CardRemovedError(f"the card was removed ({msg})")
    return ReaderError(msg)


def establish_context() -> Any:
    """SCardEstablishContext (user scope); raise :class:`PcscUnavailableError` when pcscd is not there."""
    hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if hresult != scard.SCARD_S_SUCCESS:
        raise PcscUnavailableError(
            f"PC/SC service unavailable ({pcsc_message(hresult)}): is pcscd running? (systemctl start pcscd)"
        )
    return context


def release_context(context: Any) -> None:
    """SCardReleaseContext, ignoring errors (the service may already be gone)."""
    scard.SCardReleaseContext(context)


def _list(context: Any) -> list[str]:
    hresult, readers = scard.SCardListReaders(context, [])
    if hresult in (scard.SCARD_E_NO_READERS_AVAILABLE,) or (hresult == scard.SCARD_S_SUCCESS and not readers):
        return []
    if hresult != scard.SCARD_S_SUCCESS:
        raise pcsc_error(hresult, "listing readers")
    return list(readers)


def list_readers(context: Any | None = None) -> list[str]:
    """Names of the connected readers (SCardListReaders); [] when none."""
    own = context is None
    ctx = establish_context() if own else context
    try:
        return _list(ctx)
    finally:
        if own:
            release_context(ctx)


def card_present(context: Any, reader: str) -> tuple[bool, bytes]:
    """(present, ATR) of one reader, without connecting (SCardGetStatusChange with a zero timeout)."""
    hresult, states = scard.SCardGetStatusChange(context, 0, [(reader, scard.SCARD_STATE_UNAWARE)])
    if hresult != scard.SCARD_S_SUCCESS:
        raise pcsc_error(hresult, f"reading the state of {reader!r}")
    _, state, atr = states[0]
    present = bool(state & scard.SCARD_STATE_PRESENT) and not state & scard.SCARD_STATE_MUTE
    return present, bytes(atr)


def match_reader(readers: list[str], wanted: str) -> str:
    """The reader named exactly ``wanted``, else the only one containing it (case-insensitive)."""
    if wanted in readers:
        return wanted
    hits = [r for r in readers if wanted.lower() in r.lower()]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise NoReaderError(f"no reader matches {wanted!r} (readers: {', '.join(readers) or 'none'})")
    raise NoReaderError(f"{wanted!r} matches several readers: {', '.join(hits)}")


class PcscConnection:
    """One card handle in one reader; ``send_and_receive`` for the APDU pipeline, ``control`` for the reader.

    ``exclusive`` opens the card with SCARD_SHARE_EXCLUSIVE; otherwise shared mode plus a transaction held
    for the whole ``with`` block. On leaving, the card is reset by default (``reset_on_close``) so a
    verified PIN never outlives the session.
    """

    def __init__(
        self,
        reader: str,
        *,
        exclusive: bool = False,
        reset_on_close: bool = True,
        extended: bool | None = None,
        context: Any | None = None,
    ) -> None:
        self.reader = reader
        self.exclusive = exclusive
        self.reset_on_close = reset_on_close
        self._extended_override = extended
        self._context = context
        self._own_context = context is None
        self._hcard: Any = None
        self._protocol = 0
        self._pci: Any = None
        self._in_transaction = False
        self.atr = b""
        self.reconnects = 0

    # --- life cycle --------------------------------------------------------------------------------

    def open(self) -> PcscConnection:
        """Connect to the card (SCardConnect, T=1 or T=0) and begin the session's transaction."""
        if self._context is None:
            self._context = establish_context()
        share = scard.SCARD_SHARE_EXCLUSIVE if self.exclusive else scard.SCARD_SHARE_SHARED
        hresult, hcard, protocol = scard.SCardConnect(
            self._context, self.reader, share, scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1
        )
        if hresult != scard.SCARD_S_SUCCESS:
            self._drop_context()
            if hresult in _CARD_GONE:
                raise NoCardError(f"no card in {self.reader!r}")
            if hresult == scard.SCARD_E_SHARING_VIOLATION:
                raise ReaderError(f"the card in {self.reader!r} is in use by another application")
            raise pcsc_error(hresult, f"connecting to {self.reader!r}")
        self._hcard = hcard
        self._set_protocol(protocol)
        try:
            self._read_atr()
            self._begin()
        except CardError:
            self.close()
            raise
        logger.debug("connected to %r, ATR %s, T=%d", self.reader, self.atr.hex(), self._t())
        return self

    def close(self) -> None:
        """End the transaction and disconnect (resetting the card when ``reset_on_close``)."""
        if self._hcard is not None:
            disposition = scard.SCARD_RESET_CARD if self.reset_on_close else scard.SCARD_LEAVE_CARD
            if self._in_transaction:
                scard.SCardEndTransaction(self._hcard, scard.SCARD_LEAVE_CARD)
                self._in_transaction = False
            scard.SCardDisconnect(self._hcard, disposition)
            self._hcard = None
        self._drop_context()

    def __enter__(self) -> PcscConnection:
        if self._hcard is None:
            self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- SmartCardConnection -------------------------------------------------------------------------

    @property
    def extended(self) -> bool | None:
        """Whether extended APDUs work: the explicit choice, else what an earlier session with this reader
        and ATR found, else the ATR's card capabilities; None when unknown (sessions then probe)."""
        if self._extended_override is not None:
            return self._extended_override
        known = _EXTENDED_SEEN.get((self.reader, self.atr))
        if known is not None:
            return known
        try:
            return parse_atr(self.atr).extended_length
        except DecodeError:
            return None

    @extended.setter
    def extended(self, value: bool) -> None:
        _EXTENDED_SEEN[(self.reader, self.atr)] = bool(value)

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        """SCardTransmit one APDU; on SCARD_W_RESET_CARD reconnect once and raise :class:`CardResetError`."""
        if self._hcard is None:
            raise CardRemovedError("connection is closed")
        hresult, response = scard.SCardTransmit(self._hcard, self._pci, list(apdu))
        if hresult != scard.SCARD_S_SUCCESS:
            raise self._transmit_failed(hresult)
        if len(response) < 2:
            # vpcd (and some readers) report a card that vanished mid-command as success with no bytes
            self._disconnect_quietly()
            raise CardRemovedError(f"the card in {self.reader!r} stopped answering (removed?)")
        return bytes(response[:-2]), (response[-2] << 8) | response[-1]

    def control(self, code: int, data: bytes = b"") -> bytes:
        """SCardControl (PC/SC part 10 reader features, e.g. PIN pad); returns the reader's answer."""
        if self._hcard is None:
            raise CardRemovedError("connection is closed")
        hresult, response = scard.SCardControl(self._hcard, code, list(data))
        if hresult != scard.SCARD_S_SUCCESS:
            raise self._transmit_failed(hresult)
        return bytes(response)

    # --- internals -----------------------------------------------------------------------------------

    def _transmit_failed(self, hresult: int) -> CardError:
        if hresult == scard.SCARD_W_RESET_CARD and self.reconnects == 0:
            # Someone reset the card: reconnect once so the handle is usable, but the applet selection and
            # the PIN state are gone, so the caller must start over.
            self.reconnects += 1
            self._in_transaction = False
            share = scard.SCARD_SHARE_EXCLUSIVE if self.exclusive else scard.SCARD_SHARE_SHARED
            rc, protocol = scard.SCardReconnect(
                self._hcard, share, scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1, scard.SCARD_LEAVE_CARD
            )
            if rc == scard.SCARD_S_SUCCESS:
                self._set_protocol(protocol)
                self._read_atr()
                self._begin()
                return CardResetError(f"the card in {self.reader!r} was reset; start the session again")
            hresult = rc
        err = pcsc_error(hresult, f"card in {self.reader!r}")
        if isinstance(err, CardRemovedError) and not isinstance(err, CardResetError):
            self._disconnect_quietly()
        return err

    def _set_protocol(self, protocol: int) -> None:
        self._protocol = protocol
        self._pci = scard.SCARD_PCI_T1 if protocol == scard.SCARD_PROTOCOL_T1 else scard.SCARD_PCI_T0

    def _t(self) -> int:
        return 1 if self._protocol == scard.SCARD_PROTOCOL_T1 else 0

    def _read_atr(self) -> None:
        hresult, _reader, _state, _protocol, atr = scard.SCardStatus(self._hcard)
        if hresult != scard.SCARD_S_SUCCESS:
            raise pcsc_error(hresult, f"reading the ATR in {self.reader!r}")
        self.atr = bytes(atr)

    def _begin(self) -> None:
        hresult = scard.SCardBeginTransaction(self._hcard)
        if hresult != scard.SCARD_S_SUCCESS:
            raise pcsc_error(hresult, f"starting a transaction with the card in {self.reader!r}")
        self._in_transaction = True

    def _disconnect_quietly(self) -> None:
        if self._hcard is not None:
            scard.SCardDisconnect(self._hcard, scard.SCARD_LEAVE_CARD)
            self._hcard = None
            self._in_transaction = False

    def _drop_context(self) -> None:
        if self._own_context and self._context is not None:
            release_context(self._context)
            self._context = None


def open_connection(reader: str | None = None, **kwargs: Any) -> PcscConnection:
    """Open a :class:`PcscConnection` to ``reader`` (exact or unique substring) or the first with a card.

    Raises :class:`NoReaderError`, :class:`NoCardError` or :class:`PcscUnavailableError`. Use it as a
    context manager: ``with open_connection() as conn: ...``.
    """
    context = establish_context()
    try:
        readers = _list(context)
        if not readers:
            raise NoReaderError("no smart-card reader connected")
        if reader is not None:
            name = match_reader(readers, reader)
        else:
            with_card = [r for r in readers if card_present(context, r)[0]]
            if not with_card:
                raise NoCardError(f"no card in any reader ({', '.join(readers)})")
            name = with_card[0]
    finally:
        release_context(context)
    return PcscConnection(name, **kwargs).open()
