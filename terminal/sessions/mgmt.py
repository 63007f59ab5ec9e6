"""Management-key (9B) mutual authentication, SP 800-73-4 Part 2 §3.2.4 / Appendix A.1, as yubikit does it.

Step 1: ``GENERAL AUTHENTICATE 00 87 <alg> 9B 7C{80 00}`` → the card's witness ``7C{80 E(k, w)}``.
Step 2: ``7C{80 w, 81 c}`` → ``7C{82 E(k, c)}``: the card proved it knows the key, the host proved it by
decrypting the witness. Used by both the PIV and the citizen applet (they share the card's management key).
Step 2 is computed by a :class:`Responder`: the host's own key, or the city HSM behind the server so that
a counter relays the exchange without holding the card's key (docs/card-profile.md, "Per-card management
key").
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass, field
from typing import Protocol

from cityid.apdu import SmartCardProtocol
from cityid.errors import ApduError, DecodeError
from cityid.iso7816 import INS, SW
from cityid.piv import (
    DEFAULT_MANAGEMENT_KEY,
    MANAGEMENT_KEY_ALGORITHMS,
    Algorithm,
    Slot,
    Tag,
    management_key_cipher,
)
from cityid.tlv import Tlv, encode_tlv, parse_tlv_dict

_KEY_LEN = {alg: spec[0] for alg, spec in MANAGEMENT_KEY_ALGORITHMS.items()}
_BLOCK = {alg: spec[1] for alg, spec in MANAGEMENT_KEY_ALGORITHMS.items()}


class ManagementKeyError(ApduError):
    """The card did not prove knowledge of the management key (or refused ours)."""


class ManagementKeyAlgorithmError(ManagementKeyError):
    """The card's management key has another algorithm than the one tried (``6A86`` at step 1)."""


def check_key(key: bytes, algorithm: Algorithm) -> None:
    """Raise ValueError unless ``key`` has the length ``algorithm`` needs."""
    if algorithm not in _KEY_LEN:
        raise ValueError(f"unsupported management key algorithm {algorithm!r}")
    if len(key) != _KEY_LEN[algorithm]:
        want = _KEY_LEN[algorithm]
        raise ValueError(f"{algorithm.name} management key must be {want} bytes, got {len(key)}")


@dataclass(frozen=True, slots=True)
class Exchange:
    """Step 2 of the mutual authentication: the decrypted witness, the host's challenge and the answer the
    card must give, ``E(k, challenge)`` — everything the host needs, no key."""

    witness: bytes = field(repr=False)
    challenge: bytes
    expected: bytes = field(repr=False)


class Responder(Protocol):
    """Who answers the card's witness: a key the host holds (:class:`HostKey`) or the city HSM through the
    server (``terminal.server_client.ServerCardKey``), so that the host never holds the card's key."""

    @property
    def algorithm(self) -> Algorithm: ...

    def respond(self, encrypted_witness: bytes) -> Exchange: ...


@dataclass(frozen=True, slots=True)
class HostKey:
    """A management key held by the host: the published default on a fresh card, a test card's key."""

    key: bytes = field(repr=False)
    algorithm: Algorithm = Algorithm.TDEA_3KEY

    def __post_init__(self) -> None:
        check_key(self.key, Algorithm(self.algorithm))

    def respond(self, encrypted_witness: bytes) -> Exchange:
        cipher = management_key_cipher(self.algorithm, self.key)
        dec = cipher.decryptor()
        witness = dec.update(encrypted_witness) + dec.finalize()
        challenge = os.urandom(_BLOCK[self.algorithm])
        enc = cipher.encryptor()
        return Exchange(witness, challenge, enc.update(challenge) + enc.finalize())


DEFAULT_KEY = HostKey(DEFAULT_MANAGEMENT_KEY, Algorithm.TDEA_3KEY)


def authenticate(
    protocol: SmartCardProtocol,
    key: bytes | Responder = DEFAULT_MANAGEMENT_KEY,
    algorithm: Algorithm = Algorithm.TDEA_3KEY,
    cla: int = 0x00,
) -> None:
    """Mutually authenticate with the management key (``key`` bytes with ``algorithm``, or a
    :class:`Responder`); :class:`ManagementKeyError` on a mismatch, :class:`ManagementKeyAlgorithmError`
    when the card's key has another algorithm (``6A86`` at step 1: e.g. the default key on a card that has
    its own AES key)."""
    responder: Responder = HostKey(key, Algorithm(algorithm)) if isinstance(key, bytes) else key
    algorithm = Algorithm(responder.algorithm)
    block = _BLOCK[algorithm]
    try:
        resp = protocol.send_apdu(
            cla, INS.GENERAL_AUTHENTICATE, algorithm, Slot.CARD_MANAGEMENT,
            encode_tlv(Tag.DYN_AUTH, encode_tlv(Tag.WITNESS)), sensitive=True,
        )  # fmt: skip
    except ApduError as exc:
        if exc.sw == SW.INCORRECT_P1P2:
            msg = f"the card's management key is not {algorithm.name}"
            raise ManagementKeyAlgorithmError(exc.sw, msg) from exc
        raise
    try:
        witness_enc = parse_tlv_dict(Tlv.unpack(Tag.DYN_AUTH, resp))[Tag.WITNESS]
    except KeyError as exc:
        raise DecodeError("management key step 1: no witness in the answer") from exc
    if len(witness_enc) != block:
        raise DecodeError(f"management key step 1: witness of {len(witness_enc)} bytes, expected {block}")
    exchange = responder.respond(witness_enc)
    if len(exchange.witness) != block or len(exchange.challenge) != block:
        raise DecodeError("management key: the responder's answer has the wrong block size")
    body = encode_tlv(Tag.WITNESS, exchange.witness) + encode_tlv(Tag.CHALLENGE, exchange.challenge)
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
    if not hmac.compare_digest(answer, exchange.expected):
        raise ManagementKeyError(SW.SECURITY_STATUS_NOT_SATISFIED, "card failed the management key check")
