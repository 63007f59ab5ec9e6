"""Management-key (9B) mutual authentication, SP 800-73-4 Part 2 §3.2.4 / Appendix A.1, as yubikit does it.

Step 1: ``GENERAL AUTHENTICATE 00 87 <alg> 9B 7C{80 00}`` → the card's witness ``7C{80 E(k, w)}``.
Step 2: ``7C{80 w, 81 c}`` → ``7C{82 E(k, c)}``: the card proved it knows the key, the host proved it by
decrypting the witness. Used by both the PIV and the citizen applet (they share the card's management key).
"""

from __future__ import annotations

import hmac
import os

from cityid.apdu import SmartCardProtocol
from cityid.errors import ApduError, DecodeError
from cityid.iso7816 import INS, SW
from cityid.piv import MANAGEMENT_KEY_ALGORITHMS, Algorithm, Slot, Tag, management_key_cipher
from cityid.tlv import Tlv, encode_tlv, parse_tlv_dict

_KEY_LEN = {alg: spec[0] for alg, spec in MANAGEMENT_KEY_ALGORITHMS.items()}
_BLOCK = {alg: spec[1] for alg, spec in MANAGEMENT_KEY_ALGORITHMS.items()}


class ManagementKeyError(ApduError):
    """The card did not prove knowledge of the management key (or refused ours)."""


def check_key(key: bytes, algorithm: Algorithm) -> None:
    """Raise ValueError unless ``key`` has the length ``algorithm`` needs."""
    if algorithm not in _KEY_LEN:
        raise ValueError(f"unsupported management key algorithm {algorithm!r}")
    if len(key) != _KEY_LEN[algorithm]:
        want = _KEY_LEN[algorithm]
        raise ValueError(f"{algorithm.name} management key must be {want} bytes, got {len(key)}")


def authenticate(
    protocol: SmartCardProtocol, key: bytes, algorithm: Algorithm = Algorithm.TDEA_3KEY, cla: int = 0x00
) -> None:
    """Mutually authenticate with the management key; raise :class:`ManagementKeyError` on a mismatch."""
    algorithm = Algorithm(algorithm)
    check_key(key, algorithm)
    block = _BLOCK[algorithm]
    cipher = management_key_cipher(algorithm, key)
    resp = protocol.send_apdu(
        cla, INS.GENERAL_AUTHENTICATE, algorithm, Slot.CARD_MANAGEMENT,
        encode_tlv(Tag.DYN_AUTH, encode_tlv(Tag.WITNESS)), sensitive=True,
    )  # fmt: skip
    try:
        witness_enc = parse_tlv_dict(Tlv.unpack(Tag.DYN_AUTH, resp))[Tag.WITNESS]
    except KeyError as exc:
        raise DecodeError("management key step 1: no witness in the answer") from exc
    if len(witness_enc) != block:
        raise DecodeError(f"management key step 1: witness of {len(witness_enc)} bytes, expected {block}")
    dec = cipher.decryptor()
    witness = dec.update(witness_enc) + dec.finalize()
    challenge = os.urandom(block)
    body = encode_tlv(Tag.WITNESS, witness) + encode_tlv(Tag.CHALLENGE, challenge)
    try:
        resp = protocol.send_apdu(
            cla, INS.GENERAL_AUTHENTICATE, algorithm, Slot.CARD_MANAGEMENT,
            encode_tlv(Tag.DYN_AUTH, body), sensitive=True,
        )  # fmt: skip
    except ApduError as exc:
        if exc.sw in (SW.SECURITY_STATUS_NOT_SATISFIED, SW.INCORRECT_DATA, SW.AUTH_METHOD_BLOCKED):
            raise ManagementKeyError(exc.sw, "wrong management key") from exc
        raise
    try:
        answer = parse_tlv_dict(Tlv.unpack(Tag.DYN_AUTH, resp))[Tag.RESPONSE]
    except KeyError as exc:
        raise DecodeError("management key step 2: no response in the answer") from exc
    enc = cipher.encryptor()
    expected = enc.update(challenge) + enc.finalize()
    if not hmac.compare_digest(answer, expected):
        raise ManagementKeyError(SW.SECURITY_STATUS_NOT_SATISFIED, "card failed the management key check")
