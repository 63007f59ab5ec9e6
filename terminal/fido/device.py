"""Reaching a security key: CTAP2 over ISO 7816 on any smart-card connection (CTAP 2.1 §11.3).

:class:`CtapSmartCardDevice` is a python-fido2 :class:`~fido2.ctap.CtapDevice` over a
:class:`cityid.apdu.SmartCardConnection` — the terminal's :class:`terminal.pcsc.connection.PcscConnection`
or an in-process emulator connection — using the shared APDU pipeline (command chaining of short APDUs or one
extended APDU, ``61xx`` + GET RESPONSE). It sends NFCCTAP_MSG with P1=0x80 (status updates accepted), polls
``9100`` answers with NFCCTAP_GETRESPONSE and cancels with ``80 11 11 00`` when the caller's event is set.

:func:`pcsc_device` opens python-fido2's own :class:`fido2.pcsc.CtapPcscDevice` on a reader (used by tests
and tools that want python-fido2's transport).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from fido2.ctap import STATUS, CtapDevice, CtapError
from fido2.hid import CAPABILITY, CTAPHID

from cityid.apdu import ApduFormat, SmartCardConnection, SmartCardProtocol
from cityid.errors import ApduError
from cityid.fido import (
    CLA_CTAP,
    FIDO_AID,
    P1_CANCEL,
    P1_GETRESPONSE_SUPPORTED,
    SELECT_FIDO_2_0,
    SELECT_U2F_V2,
    NfcCtapIns,
)
from cityid.iso7816 import SW

if TYPE_CHECKING:
    from fido2.pcsc import CtapPcscDevice

logger = logging.getLogger(__name__)

#: Give up polling a key that keeps answering 9100 (the user never touches it).
MAX_POLLS = 100_000


class NotFidoError(ApduError):
    """The card has no FIDO applet (SELECT of the FIDO AID failed)."""


def select_fido(protocol: SmartCardProtocol) -> bytes:
    """SELECT the FIDO applet; return its version string (``FIDO_2_0`` / ``U2F_V2``), CTAP 2.1 §11.3.3."""
    resp, sw = protocol.send_apdu_sw(0x00, 0xA4, 0x04, 0x00, FIDO_AID)
    if sw != SW.SUCCESS:
        raise NotFidoError(sw, "the card has no FIDO applet")
    return resp


@runtime_checkable
class ClosableConnection(Protocol):
    """A connection the device may close (``PcscConnection``; in-process ones have nothing to close)."""

    def close(self) -> None: ...


class CtapSmartCardDevice(CtapDevice):
    """A CTAP2 device over an APDU connection (python-fido2's ``Ctap2(device)`` works on it)."""

    def __init__(
        self,
        connection: SmartCardConnection,
        name: str = "smart card",
        apdu_format: ApduFormat = ApduFormat.SHORT,
    ) -> None:
        self.connection = connection
        self.name = name
        self.protocol = SmartCardProtocol(connection, apdu_format)
        self.version_string = select_fido(self.protocol)
        # CTAP2 is probed with GetInfo by Ctap2(); a U2F_V2 answer may still speak CTAP2 (§11.3.3).
        self._capabilities = CAPABILITY.CBOR
        if self.version_string not in (SELECT_FIDO_2_0, SELECT_U2F_V2):
            logger.debug("unexpected FIDO SELECT answer %r", self.version_string)

    def __repr__(self) -> str:
        return f"CtapSmartCardDevice({self.name!r})"

    @property
    def capabilities(self) -> int:
        return self._capabilities

    def call(
        self,
        cmd: int,
        data: bytes = b"",
        event: threading.Event | None = None,
        on_keepalive: Callable[[STATUS], None] | None = None,
    ) -> bytes:
        if cmd != CTAPHID.CBOR:
            raise CtapError(CtapError.ERR.INVALID_COMMAND)
        resp, sw = self.protocol.send_apdu_sw(CLA_CTAP, NfcCtapIns.MSG, P1_GETRESPONSE_SUPPORTED, 0x00, data)
        last: STATUS | None = None
        polls = 0
        while sw == SW.CTAP_STATUS_UPDATE:
            polls += 1
            if polls > MAX_POLLS:
                raise CtapError(CtapError.ERR.USER_ACTION_TIMEOUT)
            try:
                status = STATUS(resp[0]) if resp else STATUS.PROCESSING
            except ValueError:
                status = STATUS.PROCESSING
            if on_keepalive is not None and status != last:
                on_keepalive(status)
            last = status
            p1 = P1_CANCEL if event is not None and event.is_set() else 0x00
            resp, sw = self.protocol.send_apdu_sw(CLA_CTAP, NfcCtapIns.GET_RESPONSE, p1, 0x00)
        if sw != SW.SUCCESS:
            logger.debug("CTAP over ISO 7816 failed with SW %04X", sw)
            raise CtapError(CtapError.ERR.OTHER)
        if not resp:
            raise CtapError(CtapError.ERR.INVALID_LENGTH)
        return resp

    def close(self) -> None:
        if isinstance(self.connection, ClosableConnection):
            self.connection.close()

    @classmethod
    def list_devices(cls) -> Iterator[CtapDevice]:
        """Keys in PC/SC readers (see :func:`terminal.fido.discovery.discover_pcsc`)."""
        from terminal.fido.discovery import discover_pcsc

        for key in discover_pcsc():
            yield key.open()


# --- python-fido2's own PC/SC transport -------------------------------------------------------------


def pcsc_device(reader: str) -> CtapPcscDevice:
    """python-fido2's :class:`fido2.pcsc.CtapPcscDevice` on the reader whose name contains ``reader``."""
    from fido2.pcsc import CtapPcscDevice

    for device in CtapPcscDevice.list_devices(reader):
        return device
    from cityid.errors import NoCardError

    raise NoCardError(f"no FIDO security key in a reader matching {reader!r}")
