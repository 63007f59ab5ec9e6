"""A small card operating system: applet routing, command and response chaining (ISO/IEC 7816-4).

:class:`VirtualCard` turns raw command APDUs into raw responses and never raises. It does what a Java Card
runtime does for its applets:

* decodes the APDU (``6700`` when the length fields do not match, §5.1);
* checks the class byte (``6E00`` unknown class, ``6881`` logical channels, ``6882`` secure
  messaging, §5.4.1);
* routes ``SELECT`` by DF name (``00 A4 04 xx``, §11.2.2) to the applet whose AID starts with the given
  bytes (``6A82`` when none does; the current selection stays);
* reassembles command chains (CLA bit ``0x10``, §5.3.3; also CLA ``0x90`` for CTAP) before the applet sees
  the command — a chain interrupted by a different command is dropped and answered ``6883`` (a SELECT
  simply abandons it);
* chains long responses (§5.3.4): a short APDU whose answer is longer than Le gets the first Le bytes and
  ``61xx``; the rest is served by ``GET RESPONSE`` (``00 C0 00 00 xx``; also with CLA ``80``, which
  libfido2 ≥ 1.16 sends in CTAP2 mode, so no applet may use INS ``C0`` under CLA ``80``); extended APDUs get
  up to 65536 bytes at once.

Applets signal errors by raising :class:`cityid.errors.ApduError`; any other exception becomes ``6F00``
(logged), a failed state write becomes ``6581``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from enum import StrEnum

from cityid.apdu import SHORT_MAX_LE, TRACE, CommandApdu, ResponseApdu
from cityid.errors import ApduError, MalformedApduError
from cityid.iso7816 import CLA, INS, SW, ClaBit
from emulators.card.store import CardStoreError

logger = logging.getLogger(__name__)

#: Largest command a chain may reassemble to (bigger than any applet accepts; guards memory).
MAX_CHAINED_COMMAND = 65535
#: Minimum length of an AID (prefix) in SELECT: RID is 5 bytes (ISO/IEC 7816-5).
MIN_SELECT_AID = 5
#: Class bytes whose INS ``C0`` is GET RESPONSE, served by the OS (ISO 7816-4 §11.7.1 uses ``00``;
#: libfido2 ≥ 1.16 — Yubico/libfido2 PR #817 — sends ``80 C0 00 00 00`` to CTAP2 applets).
GET_RESPONSE_CLASSES = frozenset({CLA.ISO, CLA.PROPRIETARY})


class Applet:
    """Base class of the emulator's applets (the Java Card ``Applet`` lifecycle, simplified)."""

    aid: bytes = b""
    name: str = "applet"

    def power_on(self) -> None:
        """Card power-up or reset: clear volatile state (PIN verified flags, challenges, sessions)."""

    def card_removed(self) -> None:
        """The card left the reader (physically; not a host power-down or reset, which keep it inserted).

        For state only a real removal may clear — CTAP 2.1 §6.5.5.4's "power cycle" after three wrong PINs
        in a row must be a user's act, not a reset any PC/SC client causes by disconnecting.
        """

    def select(self) -> bytes:
        """The applet was selected: return the data of the SELECT response (FCI, property template…)."""
        return b""

    def deselect(self) -> None:
        """Another applet was selected (or a SELECT for this one arrives again)."""

    def process(self, cmd: CommandApdu) -> ResponseApdu:
        """Handle one complete command (chains reassembled, CLA without the chaining bit)."""
        raise ApduError(SW.INS_NOT_SUPPORTED)


def _sw(sw: int) -> bytes:
    return sw.to_bytes(2, "big")


def _is_extended(raw: bytes) -> bool:
    """True when ``raw`` uses extended length fields (§5.1: a zero byte after the header, 7+ bytes)."""
    return len(raw) >= 7 and raw[4] == 0


def _check_cla(cla: int) -> int | None:
    """Return an error SW for an unsupported class byte, or None (§5.4.1)."""
    if cla == 0xFF:
        return SW.CLA_NOT_SUPPORTED  # invalid class value
    base = cla & ~int(ClaBit.CHAINING)
    if base in (CLA.ISO, CLA.PROPRIETARY):
        return None
    if cla & 0xE0 == 0x00 or cla & 0xE0 == 0x80:  # first interindustry / proprietary coding
        if cla & ClaBit.LOGICAL_CHANNEL:
            return SW.LOGICAL_CHANNEL_NOT_SUPPORTED
        if cla & ClaBit.SECURE_MESSAGING:
            return SW.SECURE_MESSAGING_NOT_SUPPORTED
    if cla & 0xC0 == 0x40:  # further interindustry class: logical channels 4-19
        return SW.LOGICAL_CHANNEL_NOT_SUPPORTED
    return SW.CLA_NOT_SUPPORTED


class Interface(StrEnum):
    """How the card is powered and talked to: the contact pads (ISO/IEC 7816-3) or the RF field (ISO/IEC
    14443-4). A dual-interface card knows which one woke it; SP 800-73-4 Part 1 Table 2 grants access to some
    PIV objects per interface (docs/card-profile.md §PIV access rules)."""

    CONTACT = "contact"
    CONTACTLESS = "contactless"


class VirtualCard:
    """A card with a set of applets: raw APDU in, raw response out. Thread-safe; never raises."""

    def __init__(self, applets: Sequence[Applet], atr: bytes) -> None:
        if not 2 <= len(atr) <= 33:
            raise ValueError("an ATR has 2 to 33 bytes")
        self.applets = list(applets)
        self.atr = bytes(atr)
        self._lock = threading.RLock()
        self._powered = False
        self._selected: Applet | None = None
        self._chain: tuple[bytes, bytearray] | None = None  # (header without chaining bit, data so far)
        self._pending = b""  # response bytes still to be fetched with GET RESPONSE
        self._pending_sw = SW.SUCCESS

    # --- power --------------------------------------------------------------------------------------

    @property
    def powered(self) -> bool:
        return self._powered

    @property
    def selected(self) -> Applet | None:
        return self._selected

    def power_on(self) -> bytes:
        """Cold reset: clear volatile state of the OS and every applet; return the ATR (ISO 7816-3)."""
        with self._lock:
            self._selected = None
            self._chain = None
            self._pending = b""
            for applet in self.applets:
                try:
                    applet.power_on()
                except Exception:
                    logger.exception("applet %s failed on power-on", applet.name)
            self._powered = True
            return self.atr

    def power_off(self) -> None:
        with self._lock:
            if self._selected is not None:
                self._deselect()
            self._powered = False
            self._chain = None
            self._pending = b""

    def remove(self) -> None:
        """The card was pulled out of the reader: power off, then tell every applet (:meth:`card_removed`)."""
        with self._lock:
            self.power_off()
            for applet in self.applets:
                try:
                    applet.card_removed()
                except Exception:
                    logger.exception("applet %s failed on removal", applet.name)

    def reset(self) -> bytes:
        """Warm reset: same effect on volatile state as a power-up (the card stays inserted)."""
        with self._lock:
            self.power_off()
            return self.power_on()

    # --- APDUs --------------------------------------------------------------------------------------

    def transmit(self, raw: bytes) -> bytes:
        """Process one raw command APDU and return the raw response (data + SW1 SW2). Never raises."""
        with self._lock:
            try:
                out = self._transmit(bytes(raw))
            except Exception:
                logger.exception("card OS failure")
                self._chain = None
                self._pending = b""
                out = _sw(SW.NO_PRECISE_DIAGNOSIS)
            if logger.isEnabledFor(TRACE):  # headers and lengths only: payloads may hold PINs or keys
                logger.log(
                    TRACE,
                    "card: %s +%d bytes -> %d bytes %s",
                    raw[:4].hex(),
                    len(raw) - 4,
                    len(out) - 2,
                    out[-2:].hex(),
                )
            return out

    def _transmit(self, raw: bytes) -> bytes:
        if not self._powered:
            self.power_on()
        try:
            cmd = CommandApdu.decode(raw)
        except MalformedApduError:
            self._chain = None
            return _sw(SW.WRONG_LENGTH)
        extended = _is_extended(raw)
        bad_cla = _check_cla(cmd.cla)
        if bad_cla is not None:
            self._chain = None
            return _sw(bad_cla)
        chained = bool(cmd.cla & ClaBit.CHAINING)
        cla = cmd.cla & ~int(ClaBit.CHAINING) & 0xFF
        header = bytes((cla, cmd.ins, cmd.p1, cmd.p2))

        if cmd.ins == INS.GET_RESPONSE and cla in GET_RESPONSE_CLASSES:
            return self._get_response(cmd, chained)
        self._pending = b""

        # --- command chaining (§5.3.3) ---
        if not chained and cmd.ins == INS.SELECT and cla == CLA.ISO:
            self._chain = None  # SELECT abandons an unfinished chain instead of failing with it
        if self._chain is not None and self._chain[0] != header:
            self._chain = None
            return _sw(SW.LAST_COMMAND_EXPECTED)
        if chained:
            if self._chain is None:
                self._chain = (header, bytearray())
            buf = self._chain[1]
            if len(buf) + len(cmd.data) > MAX_CHAINED_COMMAND:
                self._chain = None
                return _sw(SW.WRONG_LENGTH)
            buf += cmd.data
            return _sw(SW.SUCCESS)
        if self._chain is not None:
            data = bytes(self._chain[1]) + cmd.data
            self._chain = None
            if len(data) > MAX_CHAINED_COMMAND:
                return _sw(SW.WRONG_LENGTH)
        else:
            data = cmd.data
        full = CommandApdu(cla, cmd.ins, cmd.p1, cmd.p2, data, cmd.le)

        resp = self._dispatch(full)
        return self._send_response(resp, full.le, extended)

    def _dispatch(self, cmd: CommandApdu) -> ResponseApdu:
        try:
            if cmd.ins == INS.SELECT and cmd.cla == CLA.ISO and cmd.p1 == 0x04:
                return self._select(cmd)
            if self._selected is None:
                raise ApduError(SW.INS_NOT_SUPPORTED, "no application selected")
            return self._selected.process(cmd)
        except ApduError as exc:
            sw = exc.sw if 0x6200 <= exc.sw <= 0x6FFF and exc.sw & 0xFF00 not in (0x6100, 0x6C00) else None
            if sw is None:
                logger.error("applet raised ApduError with unusable SW %04X", exc.sw)
                sw = SW.NO_PRECISE_DIAGNOSIS
            return ResponseApdu(exc.data if sw & 0xFF00 in (0x6200, 0x6300) else b"", sw)
        except CardStoreError:
            logger.exception("card state write failed")
            return ResponseApdu(b"", SW.MEMORY_FAILURE)
        except Exception:
            name = self._selected.name if self._selected else "card OS"
            logger.exception("%s failed on %s", name, cmd.header.hex())
            return ResponseApdu(b"", SW.NO_PRECISE_DIAGNOSIS)

    def _select(self, cmd: CommandApdu) -> ResponseApdu:
        """SELECT by DF name, first or only occurrence, FCI or no response data (§11.2.2)."""
        if cmd.p2 not in (0x00, 0x0C):
            raise ApduError(SW.INCORRECT_P1P2)
        if len(cmd.data) < MIN_SELECT_AID or len(cmd.data) > 16:
            raise ApduError(SW.FILE_NOT_FOUND if cmd.data else SW.WRONG_LENGTH)
        for applet in self.applets:
            if applet.aid.startswith(cmd.data):
                break
        else:
            raise ApduError(SW.FILE_NOT_FOUND)
        if self._selected is not None and self._selected is not applet:
            self._deselect()  # re-selecting the current applet keeps its security status
        self._selected = applet
        fci = applet.select()
        logger.debug("selected %s", applet.name)
        return ResponseApdu(b"" if cmd.p2 == 0x0C else fci, SW.SUCCESS)

    def _deselect(self) -> None:
        applet, self._selected = self._selected, None
        if applet is None:
            return
        try:
            applet.deselect()
        except Exception:
            logger.exception("applet %s failed on deselect", applet.name)

    # --- response chaining (§5.3.4) ------------------------------------------------------------------

    def _send_response(self, resp: ResponseApdu, le: int | None, extended: bool) -> bytes:
        data, sw = resp.data, resp.sw
        limit = le if le is not None else (65536 if extended else SHORT_MAX_LE)
        if len(data) <= limit:
            return data + _sw(sw)
        if sw != SW.SUCCESS:  # only successful answers are chained; others are cut to Le
            return data[:limit] + _sw(sw)
        self._pending, self._pending_sw = data[limit:], sw
        return data[:limit] + _sw(self._more_sw())

    def _more_sw(self) -> int:
        return SW.BYTES_REMAINING | (min(len(self._pending), 256) & 0xFF)

    def _get_response(self, cmd: CommandApdu, chained: bool) -> bytes:
        if self._chain is not None:
            self._chain = None
            return _sw(SW.LAST_COMMAND_EXPECTED)
        if chained:
            return _sw(SW.CHAINING_NOT_SUPPORTED)
        if cmd.p1 != 0 or cmd.p2 != 0:
            self._pending = b""
            return _sw(SW.INCORRECT_P1P2)
        if not self._pending:
            return _sw(SW.CONDITIONS_NOT_SATISFIED)
        if cmd.data:
            self._pending = b""
            return _sw(SW.WRONG_LENGTH)
        n = cmd.le if cmd.le is not None else SHORT_MAX_LE
        part, self._pending = self._pending[:n], self._pending[n:]
        if self._pending:
            return part + _sw(self._more_sw())
        return part + _sw(self._pending_sw)
