"""FIDO constants both sides need: the CTAP-over-ISO-7816 application id (CTAP 2.1 §11.3.3)."""

from __future__ import annotations

#: AID of the FIDO applet (RID A000000647 = FIDO Alliance, PIX 2F0001).
FIDO_AID = bytes.fromhex("A0000006472F0001")
#: SELECT answers for a CTAP2-capable applet and a U2F-only one.
SELECT_FIDO_2_0 = b"FIDO_2_0"
SELECT_U2F_V2 = b"U2F_V2"
