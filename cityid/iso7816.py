"""ISO/IEC 7816-4 wire constants: status words, instruction bytes and class-byte bits.

Status words follow ISO/IEC 7816-4:2020 §5.6 (table 6); PIN-pad words are from PC/SC part 10.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag


class SW(IntEnum):
    """Status words (SW1 SW2) as 16-bit integers."""

    SUCCESS = 0x9000
    # 61xx: more data available (xx bytes, 00 = 256 or more) — ISO 7816-4 §5.6
    BYTES_REMAINING = 0x6100
    # 62xx/63xx: warnings
    WARNING_NO_INFO = 0x6200
    END_OF_DATA = 0x6282
    VERIFY_FAILED = 0x63C0  # 63Cx: x tries remaining
    # 64xx: execution errors (PC/SC part 10 uses them for PIN pads)
    PINPAD_TIMEOUT = 0x6400
    PINPAD_CANCELLED = 0x6401
    PINPAD_MISMATCH = 0x6402
    PINPAD_BAD_LENGTH = 0x6403
    MEMORY_FAILURE = 0x6581
    WRONG_LENGTH = 0x6700
    # 68xx: functions in CLA not supported
    LOGICAL_CHANNEL_NOT_SUPPORTED = 0x6881
    SECURE_MESSAGING_NOT_SUPPORTED = 0x6882
    LAST_COMMAND_EXPECTED = 0x6883
    CHAINING_NOT_SUPPORTED = 0x6884
    # 69xx: command not allowed
    COMMAND_INCOMPATIBLE = 0x6981
    SECURITY_STATUS_NOT_SATISFIED = 0x6982
    AUTH_METHOD_BLOCKED = 0x6983
    REFERENCE_DATA_NOT_USABLE = 0x6984
    CONDITIONS_NOT_SATISFIED = 0x6985
    COMMAND_NOT_ALLOWED = 0x6986
    # 6Axx: wrong parameters
    INCORRECT_DATA = 0x6A80
    FUNCTION_NOT_SUPPORTED = 0x6A81
    FILE_NOT_FOUND = 0x6A82
    RECORD_NOT_FOUND = 0x6A83
    NOT_ENOUGH_MEMORY = 0x6A84
    INCORRECT_P1P2 = 0x6A86
    LC_INCONSISTENT = 0x6A87
    REFERENCE_DATA_NOT_FOUND = 0x6A88
    WRONG_P1P2 = 0x6B00
    WRONG_LE = 0x6C00  # 6Cxx: wrong Le, xx = exact length
    INS_NOT_SUPPORTED = 0x6D00
    CLA_NOT_SUPPORTED = 0x6E00
    NO_PRECISE_DIAGNOSIS = 0x6F00
    # CTAP over NFC (CTAP 2.1 §11.3.2): the authenticator is still working
    CTAP_STATUS_UPDATE = 0x9100

    @classmethod
    def describe(cls, sw: int) -> str:
        """Human-readable name of a status word, including the xx-parametrised families."""
        try:
            return cls(sw).name
        except ValueError:
            pass
        if sw & 0xFF00 == 0x6100:
            return f"BYTES_REMAINING({sw & 0xFF})"
        if sw & 0xFFF0 == 0x63C0:
            return f"VERIFY_FAILED(tries={sw & 0x0F})"
        if sw & 0xFF00 == 0x6C00:
            return f"WRONG_LE(exact={sw & 0xFF})"
        return f"SW_{sw:04X}"


class INS(IntEnum):
    """Interindustry instruction bytes used by this project (ISO 7816-4 §11, SP 800-73-4 §3)."""

    SELECT = 0xA4
    VERIFY = 0x20
    CHANGE_REFERENCE_DATA = 0x24
    RESET_RETRY_COUNTER = 0x2C
    GENERAL_AUTHENTICATE = 0x87
    GENERATE_ASYMMETRIC_KEY_PAIR = 0x47
    GET_DATA = 0xCB
    PUT_DATA = 0xDB
    GET_RESPONSE = 0xC0


class CLA(IntEnum):
    """Class byte values (ISO 7816-4 §5.4.1); the bits inside them are :class:`ClaBit`."""

    ISO = 0x00
    PROPRIETARY = 0x80


class ClaBit(IntFlag):
    """Bits of a first-interindustry (or proprietary-coded) class byte (ISO 7816-4 §5.4.1, table 2).

    ``~`` on an ``IntFlag`` complements within these bits only (``~CHAINING == 0x0F``): clear a bit of a wire
    byte with ``cla & ~int(ClaBit.CHAINING)``.
    """

    LOGICAL_CHANNEL = 0x03  # b2-b1: logical channel number 0-3
    SECURE_MESSAGING = 0x0C  # b4-b3: secure messaging indication
    CHAINING = 0x10  # b5: command chaining, "not the last command of a chain"
