"""Citizen-card flows through real pcscd + vpcd with pyscard: personalization, PRESENT, PIN handling,
``cardtool`` as a subprocess, and cards pulled during every command of personalization and of PRESENT."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from emulators.card.citizen_card import make_citizen_card
from emulators.card.transport import InProcessConnection, TearPoint

from cityid.errors import CardRemovedError, InvalidPinError, PinBlockedError
from cityid.iso7816 import INS
from cityid.piv import KeyRef, Slot
from terminal.flows.personalize import personalize
from terminal.pcsc.connection import open_connection
from terminal.sessions.citizen import CitizenSession
from terminal.sessions.piv import PivSession
from tests.card_terminal_support import (
    DID,
    NEW_PIN,
    NEW_PUK,
    PIN,
    PUK,
    VCT,
    check_presentation,
    make_record,
    make_sd_jwt,
)
from tests.fixtures.pcsc import card_present, wait_for
from tests.processes import stop

pytestmark = pytest.mark.integration

NONCE = "kiosk-nonce-000000001"
AUD = "https://kiosk.busan.example/k1"
CLAIMS = ["age_over_65", "district"]
CARDTOOL = Path(sys.executable).with_name("cardtool")


def _identity(conn):  # type: ignore[no-untyped-def]
    """GET IDENTITY behind the (default) management key: the private GET INFO has no serial or DID."""
    from cityid.piv import DEFAULT_MANAGEMENT_KEY, Algorithm
    from terminal.flows.personalize import card_identity

    return card_identity(conn, DEFAULT_MANAGEMENT_KEY, Algorithm.TDEA_3KEY)


def _point(key: object) -> bytes:
    return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)  # type: ignore[attr-defined]


def _prepare_personalized(state: Path) -> bytes:
    """Personalize a card state file in process (fast), so PC/SC tests start from a ready card."""
    conn = InProcessConnection(make_citizen_card(state))
    result = personalize(conn, pin=PIN, new_pin=NEW_PIN, puk=PUK, new_puk=NEW_PUK)
    point = result.key.point
    personalize(conn, pin=None, generate_key=False, did=DID, credential=make_record(point))
    return point


def _present(reader: str, pin: str = NEW_PIN, iat: int = 1_780_000_000) -> str:
    with open_connection(reader) as conn:
        citizen = CitizenSession(conn)
        citizen.verify_pin(pin)
        return citizen.present(CLAIMS, NONCE, AUD, iat)


def test_personalize_and_present_through_pcscd(virtual_card) -> None:
    reader = virtual_card.reader_name
    with open_connection(reader) as conn:
        assert conn.extended is None or conn.extended is True
        result = personalize(conn, pin=PIN, new_pin=NEW_PIN, puk=PUK, new_puk=NEW_PUK, did=DID)
        assert conn.extended is True  # the SELECT probe found extended APDUs work through vpcd
    point = result.key.point
    with open_connection(reader) as conn:
        personalize(conn, pin=None, generate_key=False, credential=make_record(point))
        info = CitizenSession(conn).info()
        assert info.vct == VCT and info.pin_tries == 3 and not info.reveals_identity  # private GET INFO
        assert _identity(conn).did == DID
        cert = PivSession(conn).get_certificate(Slot.AUTHENTICATION)
        cert.verify_directly_issued_by(cert)
    text = _present(reader)
    assert check_presentation(text, point, CLAIMS, NONCE, AUD, 1_780_000_000) == {
        "age_over_65": True,
        "district": "Haeundae-gu",
    }


def test_pin_tries_block_and_unblock_through_pcscd(virtual_card) -> None:
    reader = virtual_card.reader_name
    with open_connection(reader) as conn:
        piv = PivSession(conn)
        assert piv.pin_attempts() == 3
        for left in (2, 1):
            with pytest.raises(InvalidPinError) as exc:
                piv.verify_pin("999999")
            assert exc.value.attempts_remaining == left
    with open_connection(reader) as conn:  # the counter is on the card, not in the session
        assert CitizenSession(conn).info().pin_tries == 1
        with pytest.raises(PinBlockedError):
            PivSession(conn).verify_pin("999999")
        with pytest.raises(PinBlockedError):
            PivSession(conn).verify_pin(PIN)
    with open_connection(reader) as conn:
        piv = PivSession(conn)
        piv.unblock_pin(PUK, NEW_PIN)
        assert piv.pin_attempts() == 3
        piv.verify_pin(NEW_PIN)


def _cardtool(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CARDTOOL), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_cardtool_emulate_and_info_personalize_pin(vpcd_slot, tmp_path: Path) -> None:
    """``cardtool emulate citizen`` in one process, ``cardtool info|personalize|pin`` in others."""
    port, reader = vpcd_slot
    state = tmp_path / "card.json"
    emu = subprocess.Popen(
        [str(CARDTOOL), "emulate", "citizen", "--vpcd", f"127.0.0.1:{port}", "--state", str(state)],
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: card_present(reader), 15, f"the emulated card in {reader}")
        out = _cardtool("info", "--reader", reader)
        assert out.returncode == 0, out.stderr
        assert reader in out.stdout and "PIN tries:   3" in out.stdout
        assert "PIV" in out.stdout and "citizen" in out.stdout
        # the private GET INFO: no serial or DID before the PIN, and no credential yet
        assert "revealed only after the PIN" in out.stdout and "credential:  (none)" in out.stdout

        secrets = {
            "CARDTOOL_PIN": PIN,
            "CARDTOOL_NEW_PIN": NEW_PIN,
            "CARDTOOL_PUK": PUK,
            "CARDTOOL_NEW_PUK": NEW_PUK,
        }
        out = _cardtool("personalize", "--reader", reader, "--did", DID, env=secrets)
        assert out.returncode == 0, out.stderr
        assert "personalized" in out.stdout and "…" in out.stderr  # progress on stderr
        for secret in secrets.values():
            assert secret not in out.stdout + out.stderr
        point = bytes.fromhex(out.stdout.split("holder key (9A, P-256): ")[1].split()[0])

        cred = tmp_path / "credential.sd-jwt"
        cred.write_text(make_sd_jwt(point))
        out = _cardtool(
            "personalize", "--reader", reader, "--keep-key", "--keep-pin", "--credential", str(cred)
        )
        assert out.returncode == 0, out.stderr

        out = _cardtool("info", "--reader", reader, "--json")
        info = json.loads(out.stdout)
        # the private GET INFO: vct and tries, no DID or claim names before the PIN / management key
        assert info["identity_hidden"] and info["did"] is None and info["claims"] == []
        assert info["credential_vct"] == VCT and info["pin_tries"] == 3
        assert info["piv_9a_public_key"] == point.hex() and "Kim" not in out.stdout
        with open_connection(reader) as conn:
            ident = _identity(conn)
        assert ident.did == DID and "given_name" in ident.claims  # names only, no values

        out = _cardtool(
            "pin", "change", "--reader", reader, env={"CARDTOOL_PIN": "000000", "CARDTOOL_NEW_PIN": PIN}
        )
        assert out.returncode == 1 and "wrong PIN, 2 tries left" in out.stderr
        assert "Traceback" not in out.stderr
        out = _cardtool("pin", "status", "--reader", reader)
        assert "PIN tries left: 2" in out.stdout
        out = _cardtool(
            "pin", "change", "--reader", reader, env={"CARDTOOL_PIN": NEW_PIN, "CARDTOOL_NEW_PIN": PIN}
        )
        assert out.returncode == 0, out.stderr
        out = _cardtool(
            "pin", "unblock", "--reader", reader, env={"CARDTOOL_PUK": NEW_PUK, "CARDTOOL_NEW_PIN": NEW_PIN}
        )
        assert out.returncode == 0, out.stderr
        pins = {"CARDTOOL_PIN": "", "CARDTOOL_NEW_PIN": ""}
        out = _cardtool("pin", "change", "--reader", reader, env=pins)
        assert out.returncode == 1 and "set CARDTOOL_PIN" in out.stderr  # no secret, no terminal: clear error
        text = _present(reader, NEW_PIN)
        check_presentation(text, point, CLAIMS, NONCE, AUD, 1_780_000_000)
    finally:
        stop(emu, signal.SIGTERM, timeout=10)  # killed with its group if it does not exit in time
    wait_for(lambda: not card_present(reader), 10, f"{reader} to be empty")
    out = _cardtool("info", "--reader", reader)
    assert out.returncode == 1 and "no card" in out.stderr.lower()


# --- tears: the card leaves during each command ---------------------------------------------------------


class TearAt:
    """on_apdu hook: at the n-th APDU from now, snapshot the state file and pull the card at ``point``."""

    def __init__(self, n: int, state: Path, point: TearPoint) -> None:
        self.n = n
        self.state = state
        self.point = point
        self.count = 0
        self.before: bytes | None = None
        self.apdu = b""

    def __call__(self, raw: bytes) -> TearPoint | None:
        self.count += 1
        if self.count != self.n:
            return None
        self.before = self.state.read_bytes()
        self.apdu = raw
        return self.point


def _record_apdus(handle, run: Callable[[], object]) -> list[bytes]:
    seen: list[bytes] = []
    handle.on_apdu = lambda raw: seen.append(raw)
    try:
        run()
    finally:
        handle.on_apdu = None
    return seen


def _index_of(apdus: list[bytes], ins: int, p2: int) -> int:
    """1-based position of the first APDU with ``ins`` / ``p2``."""
    return next(i for i, a in enumerate(apdus, 1) if a[1] == ins and a[3] == p2)


def _check_old_or_new(tear: TearAt) -> None:
    after = tear.state.read_bytes()
    json.loads(after)  # never a torn file
    if tear.point is TearPoint.BEFORE_PROCESSING:
        assert after == tear.before, f"card changed state for a command it never saw ({tear.apdu[:4].hex()})"


def _personalize_run(reader: str, pin: str, puk: str) -> None:
    with open_connection(reader) as conn:
        personalize(conn, pin=pin, new_pin=NEW_PIN, puk=puk, new_puk=NEW_PUK, did=DID)


def test_card_pulled_during_each_personalization_command(vpcd_card_factory, tmp_path: Path) -> None:
    state = tmp_path / "card.json"
    handle = vpcd_card_factory(lambda: make_citizen_card(state), state)
    reader = handle.reader_name
    pristine = state.read_bytes()
    apdus = _record_apdus(handle, lambda: _personalize_run(reader, PIN, PUK))
    n_apdus = len(apdus)
    assert n_apdus >= 15
    puk_at = _index_of(apdus, INS.CHANGE_REFERENCE_DATA, KeyRef.PUK)
    pin_at = _index_of(apdus, INS.CHANGE_REFERENCE_DATA, KeyRef.PIN)
    for n in range(1, n_apdus + 1):
        state.write_bytes(pristine)
        handle.restart()
        tear = TearAt(n, state, TearPoint.AFTER_PROCESSING if n % 2 else TearPoint.BEFORE_PROCESSING)
        handle.on_apdu = tear
        with pytest.raises(CardRemovedError):
            _personalize_run(reader, PIN, PUK)
        handle.on_apdu = None
        handle.wait_torn()
        _check_old_or_new(tear)
        # every command before the torn one completed; the torn one did iff the card processed it
        done = n if tear.point is TearPoint.AFTER_PROCESSING else n - 1
        assert tear.apdu[:2] == apdus[n - 1][:2]  # the flow is deterministic: same command at n
        # the next attempt, with the card back (rebuilt from its state file), succeeds
        handle.restart()
        if done < pin_at:  # once the PIN changed (the last write) the card is personalized
            _personalize_run(reader, PIN, NEW_PUK if done >= puk_at else PUK)
        with open_connection(reader) as conn:
            assert _identity(conn).did == DID
            piv = PivSession(conn)
            piv.verify_pin(NEW_PIN)
            cert = piv.get_certificate(Slot.AUTHENTICATION)
            cert.verify_directly_issued_by(cert)


def test_card_pulled_during_each_present_command(vpcd_card_factory, tmp_path: Path) -> None:
    state = tmp_path / "card.json"
    point = _prepare_personalized(state)
    handle = vpcd_card_factory(lambda: make_citizen_card(state), state)
    reader = handle.reader_name
    n_apdus = len(_record_apdus(handle, lambda: _present(reader)))
    assert n_apdus == 3  # SELECT + VERIFY + PRESENT, one extended APDU each
    for n in range(1, n_apdus + 1):
        for point_ in (TearPoint.BEFORE_PROCESSING, TearPoint.AFTER_PROCESSING):
            tear = TearAt(n, state, point_)
            handle.on_apdu = tear
            with pytest.raises(CardRemovedError):
                _present(reader)
            handle.on_apdu = None
            handle.wait_torn()
            _check_old_or_new(tear)
            handle.restart()
            text = _present(reader)
            check_presentation(text, point, CLAIMS, NONCE, AUD, 1_780_000_000)
