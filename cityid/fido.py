"""FIDO constants both sides need: CTAP over ISO 7816 (CTAP 2.1 §11.3) — AID, instructions, P1 values."""

from __future__ import annotations

from enum import IntEnum

#: AID of the FIDO applet (RID A000000647 = FIDO Alliance, PIX 2F0001).
FIDO_AID = bytes.fromhex("A0000006472F0001")
#: SELECT answers for a CTAP2-capable applet and a U2F-only one.
SELECT_FIDO_2_0 = b"FIDO_2_0"
SELECT_U2F_V2 = b"U2F_V2"

#: CLA of the NFCCTAP instructions (proprietary class; 0x90 while command chaining).
CLA_CTAP = 0x80


class NfcCtapIns(IntEnum):
    """Instruction bytes of CTAP over ISO 7816 (CTAP 2.1 §11.3.4–11.3.6)."""

    MSG = 0x10
    GET_RESPONSE = 0x11
    CONTROL = 0x12


#: NFCCTAP_MSG P1: the client accepts ``9100`` status updates and will poll with NFCCTAP_GETRESPONSE.
P1_GETRESPONSE_SUPPORTED = 0x80
#: NFCCTAP_GETRESPONSE P1 = CTAPHID_CANCEL: cancel the pending operation.
P1_CANCEL = 0x11
#: NFCCTAP_CONTROL P1: CTAP_CONTROL_END.
CONTROL_END = 0x01
