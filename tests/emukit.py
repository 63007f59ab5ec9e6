"""Test helpers for the card emulator: a fresh citizen card in process and the host side of PIV admin steps.

The host side is written here from the specs (SP 800-73-4 Part 2 §3.2.4) on purpose, independent of the
terminal's sessions, so emulator tests do not inherit terminal bugs.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from emulators.card.citizen_card import make_citizen_card
from emulators.card.os import VirtualCard
from emulators.card.transport import InProcessConnection

from cityid.apdu import SmartCardProtocol
from cityid.citizen import CITIZEN_AID
from cityid.piv import DEFAULT_MANAGEMENT_KEY, PIV_AID, Algorithm, Slot, pad_pin
from cityid.tlv import Tlv, encode_tlv, parse_tlv_dict

try:
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # pragma: no cover
    TripleDES = algorithms.TripleDES  # type: ignore[misc,assignment]


def ecb(alg: int, key: bytes, block: bytes, encrypt: bool = True) -> bytes:
    cipher = Cipher(TripleDES(key) if alg == Algorithm.TDEA_3KEY else algorithms.AES(key), modes.ECB())
    op = cipher.encryptor() if encrypt else cipher.decryptor()
    return op.update(block) + op.finalize()


class Card:
    """A citizen card in process with a protocol on it (``private_info=False``: the legacy GET INFO answer
    these emulator tests were written against; the private answer is tested in test_card_private_info)."""

    def __init__(self, state: Path | None = None, private_info: bool = False) -> None:
        self.state = state
        self.card: VirtualCard = make_citizen_card(state, private_info=private_info)
        self.conn = InProcessConnection(self.card)
        self.p = SmartCardProtocol(self.conn)

    def sw(
        self, cla: int, ins: int, p1: int, p2: int, data: bytes = b"", le: int | None = None
    ) -> tuple[bytes, int]:
        return self.p.send_apdu_sw(cla, ins, p1, p2, data, le)

    def select_piv(self) -> bytes:
        return self.p.select(PIV_AID)

    def select_citizen(self) -> bytes:
        return self.p.select(CITIZEN_AID)

    def verify(self, pin: bytes = b"123456") -> int:
        return self.sw(0, 0x20, 0, 0x80, pad_pin(pin))[1]

    def authenticate(self, key: bytes = DEFAULT_MANAGEMENT_KEY, alg: int = Algorithm.TDEA_3KEY) -> int:
        """Mutual management-key authentication as yubico-piv-tool does it; return the last SW."""
        block = 8 if alg == Algorithm.TDEA_3KEY else 16
        data, sw = self.sw(0, 0x87, alg, 0x9B, encode_tlv(0x7C, encode_tlv(0x80, b"")))
        if sw != 0x9000:
            return sw
        witness = Tlv.unpack(0x80, Tlv.unpack(0x7C, data))
        challenge = os.urandom(block)
        body = encode_tlv(0x80, ecb(alg, key, witness, encrypt=False)) + encode_tlv(0x81, challenge)
        data, sw = self.sw(0, 0x87, alg, 0x9B, encode_tlv(0x7C, body))
        if sw == 0x9000:
            assert parse_tlv_dict(Tlv.unpack(0x7C, data))[0x82] == ecb(alg, key, challenge)
        return sw

    def generate(self, slot: int = Slot.AUTHENTICATION, alg: int = Algorithm.ECC_P256) -> tuple[bytes, int]:
        return self.sw(0, 0x47, 0, slot, encode_tlv(0xAC, encode_tlv(0x80, bytes([alg]))))
