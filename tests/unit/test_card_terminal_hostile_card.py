"""A hostile or broken card: random answers to every session verb give only typed errors (cityid.errors),
never a KeyError/IndexError/UnicodeDecodeError — a kiosk must survive whatever a card sends."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from cityid.apdu import CommandApdu
from cityid.errors import CityIdError
from cityid.piv import Slot
from terminal.sessions.citizen import CitizenSession
from terminal.sessions.piv import PivSession

SETTINGS = settings(max_examples=200, deadline=None)
SW = st.sampled_from([0x9000, 0x9000, 0x9000, 0x6100, 0x6105, 0x6C02, 0x63C1, 0x6983, 0x6A82, 0x6F00, 0x1234])


class RandomCard:
    """Answers SELECT with 9000, everything else with drawn (data, SW) pairs."""

    def __init__(self, answers: list[tuple[bytes, int]]) -> None:
        self.answers = answers

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        if CommandApdu.decode(apdu).ins == 0xA4:
            return b"", 0x9000
        return self.answers.pop(0) if self.answers else (b"", 0x6F00)


answers = st.lists(st.tuples(st.binary(max_size=120), SW), min_size=1, max_size=6)


def _only_typed(fn: Callable[[], object]) -> None:
    with contextlib.suppress(CityIdError):  # anything else propagates and fails the test
        fn()


@SETTINGS
@given(answers)
def test_citizen_verbs(ans: list[tuple[bytes, int]]) -> None:
    card = RandomCard(list(ans))
    s = CitizenSession(card, extended=True)
    _only_typed(s.info)
    card.answers = list(ans)
    _only_typed(lambda: s.present(["age_over_19"], "nonce-12345678", "aud", 1))
    card.answers = list(ans)
    _only_typed(s.authenticate)
    card.answers = list(ans)
    _only_typed(lambda: s.verify_pin("123456"))
    card.answers = list(ans)
    _only_typed(s.pin_attempts)


@SETTINGS
@given(answers)
def test_piv_verbs(ans: list[tuple[bytes, int]]) -> None:
    card = RandomCard(list(ans))
    s = PivSession(card, extended=False)
    for verb in (
        lambda: s.generate_key(Slot.AUTHENTICATION),
        lambda: s.sign(Slot.AUTHENTICATION, b"m"),
        lambda: s.get_certificate(Slot.AUTHENTICATION),
        lambda: s.get_object(0x5FC102),
        s.authenticate_management_key,
        lambda: s.unblock_pin("12345678", "123456"),
    ):
        card.answers = list(ans)
        _only_typed(verb)


@SETTINGS
@given(st.binary(max_size=200))
def test_structured_garbage_in_templates(inner: bytes) -> None:
    from cityid.tlv import encode_tlv

    for wrapped in (
        encode_tlv(0x7F49, inner),
        encode_tlv(0x7C, inner),
        encode_tlv(0x53, inner),
        encode_tlv(0x7F49, encode_tlv(0x86, inner)),
        encode_tlv(0x7C, encode_tlv(0x82, inner)),
        encode_tlv(0x53, encode_tlv(0x70, inner)),
        encode_tlv(0x7C, encode_tlv(0x80, inner[:8].ljust(8, b"\0"))),
    ):
        card = RandomCard([(wrapped, 0x9000)] * 3)
        piv = PivSession(card, extended=True)
        for verb in (
            lambda p=piv: p.generate_key(Slot.AUTHENTICATION),
            lambda p=piv: p.sign(Slot.AUTHENTICATION, b"m"),
            lambda p=piv: p.get_certificate(Slot.AUTHENTICATION),
            piv.authenticate_management_key,
        ):
            card.answers = [(wrapped, 0x9000)] * 3
            _only_typed(verb)
        citizen = CitizenSession(card, extended=True)
        card.answers = [(wrapped, 0x9000)]
        _only_typed(lambda c=citizen: c.present(["a"], "nonce-12345678", "aud", 1))
