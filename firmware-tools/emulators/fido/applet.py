"""The FIDO applet for the emulator card OS: CTAP2 over ISO 7816-4 APDUs (CTAP 2.1 §11.3 "NFC").

* SELECT ``A0 00 00 06 47 2F 00 01`` answers ``FIDO_2_0`` (§11.3.3);
* NFCCTAP_MSG ``80 10 P1 00 <cmd byte + CBOR>`` (§11.3.4): the CTAP response (status byte + CBOR) with
  ``9000``; long commands arrive as chained short APDUs (CLA 0x90) or one extended APDU and long answers go
  out with ``61xx`` + GET RESPONSE — both done by the card OS (:mod:`emulators.card.os`);
* with P1 bit 0x80 the platform accepts ``9100`` status updates: while the simulated user has not touched
  the key yet, the applet answers ``9100`` + one status byte (PROCESSING / UPNEEDED) and the platform polls
  with NFCCTAP_GETRESPONSE ``80 11 00 00`` (§11.3.5); ``80 11 11 00`` (P1 = CTAPHID_CANCEL) cancels and
  NFCCTAP_CONTROL ``80 12 01 00`` (CTAP_CONTROL_END) ends the operation;
* U2F (CTAP1) APDUs are not supported (``6D00``).
"""

from __future__ import annotations

import logging
import threading

from fido2.ctap import STATUS

from cityid.apdu import CommandApdu, ResponseApdu
from cityid.errors import ApduError
from cityid.fido import (
    CONTROL_END,
    FIDO_AID,
    P1_CANCEL,
    P1_GETRESPONSE_SUPPORTED,
    SELECT_FIDO_2_0,
    NfcCtapIns,
)
from cityid.iso7816 import CLA, SW
from emulators.card.os import Applet
from emulators.card.store import CardStore
from emulators.fido.attestation import AttestationBatch
from emulators.fido.authenticator import Authenticator
from emulators.fido.presence import UserPresence

logger = logging.getLogger(__name__)

#: How long one APDU waits for the authenticator before answering 9100 (status update).
POLL_WINDOW = 0.1


class _Job:
    """A CTAP request running in the background while the platform polls."""

    def __init__(self, authenticator: Authenticator, request: bytes) -> None:
        self.cancel = threading.Event()
        self.status = STATUS.PROCESSING
        self.response: bytes | None = None
        self.done = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(authenticator, request), name="nfcctap", daemon=True
        )
        self._thread.start()

    def _keepalive(self, status: STATUS) -> None:
        self.status = status

    def _run(self, authenticator: Authenticator, request: bytes) -> None:
        try:
            self.response = authenticator.process(request, self.cancel, self._keepalive)
        finally:
            self.done.set()


class FidoApplet(Applet):
    """A FIDO2 security key as a card applet, on its own card or next to the citizen applet."""

    aid = FIDO_AID
    name = "fido"

    def __init__(
        self,
        store: CardStore,
        up: UserPresence | None = None,
        authenticator: Authenticator | None = None,
        attestation: AttestationBatch | None = None,
    ) -> None:
        self.authenticator = authenticator or Authenticator(
            store, up, transports=("nfc",), attestation=attestation
        )
        self._job: _Job | None = None
        self._inserted = True  # the next power-up follows an insertion (a CTAP "power cycle")

    @property
    def up(self) -> UserPresence:
        return self.authenticator.up

    # --- card-OS lifecycle -----------------------------------------------------------------------

    def power_on(self) -> None:
        """Power-up or warm reset. Only the first after an insertion is a CTAP power cycle (§6.5.5.4)."""
        self._abort()
        self.authenticator.power_on(cold=self._inserted)
        self._inserted = False

    def card_removed(self) -> None:
        self._abort()
        self._inserted = True

    def select(self) -> bytes:
        return SELECT_FIDO_2_0

    def deselect(self) -> None:
        self._abort()

    def _abort(self) -> None:
        job, self._job = self._job, None
        if job is not None:
            job.cancel.set()
            job.done.wait(5.0)

    # --- commands ------------------------------------------------------------------------------

    def process(self, cmd: CommandApdu) -> ResponseApdu:
        if cmd.cla != CLA.PROPRIETARY:
            raise ApduError(SW.INS_NOT_SUPPORTED if cmd.cla == CLA.ISO else SW.CLA_NOT_SUPPORTED)
        if cmd.ins == NfcCtapIns.MSG:
            return self._msg(cmd)
        if cmd.ins == NfcCtapIns.GET_RESPONSE:
            if cmd.p1 == P1_CANCEL and self._job is not None:
                self._job.cancel.set()
            elif cmd.p1 not in (0x00, P1_CANCEL) or cmd.p2 != 0:
                raise ApduError(SW.INCORRECT_P1P2)
            return self._poll()
        if cmd.ins == NfcCtapIns.CONTROL:
            if cmd.p1 != CONTROL_END or cmd.p2 != 0:
                raise ApduError(SW.INCORRECT_P1P2)
            self._abort()
            return ResponseApdu(b"", SW.SUCCESS)
        raise ApduError(SW.INS_NOT_SUPPORTED)

    def _msg(self, cmd: CommandApdu) -> ResponseApdu:
        if cmd.p1 not in (0x00, P1_GETRESPONSE_SUPPORTED) or cmd.p2 != 0:
            raise ApduError(SW.INCORRECT_P1P2)
        if not cmd.data:
            raise ApduError(SW.WRONG_LENGTH)
        if self._job is not None and not self._job.done.is_set():
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)  # one operation at a time
        self._job = None
        if not cmd.p1 & P1_GETRESPONSE_SUPPORTED or self.up.delay <= 0:
            # Nothing to wait for (or the platform cannot poll): answer in this APDU.
            return ResponseApdu(self.authenticator.process(cmd.data), SW.SUCCESS)
        self._job = _Job(self.authenticator, cmd.data)
        return self._poll()

    def _poll(self) -> ResponseApdu:
        job = self._job
        if job is None:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        if not job.done.wait(POLL_WINDOW):
            return ResponseApdu(bytes((job.status,)), SW.CTAP_STATUS_UPDATE)
        self._job = None
        return ResponseApdu(job.response or b"\x7f", SW.SUCCESS)
