"""Tearing: a card pulled (or an emulator killed) at any moment leaves its state file old or new, never mixed.

Two angles: (1) every state-changing command is torn at every stage of every write it makes (the store's
fault hook raises a BaseException, as a kill would stop the process there); (2) a real child process writing
in a loop is SIGKILLed at random moments.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from emulators.card.store import CardStore, CardStoreError

from cityid.citizen import Ins
from cityid.piv import Algorithm, Slot, pad_pin
from cityid.tlv import encode_tlv
from tests.emukit import Card
from tests.unit.test_card_emulator_citizen import DID, make_record


class Torn(BaseException):
    """Raised from the fault hook: the process "dies" at this point (not catchable as Exception)."""


def _setup_admin(card: Card) -> None:
    card.select_piv()
    assert card.authenticate() == 0x9000


CERT = encode_tlv(0x5C, bytes.fromhex("5FC105")) + encode_tlv(0x53, encode_tlv(0x70, bytes(600)))
POINT = bytes.fromhex(
    "046B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C2964FE342E2FE1A7F9B8EE7EB4A7C0F9E16"
    "2BCE33576B315ECECBB6406837BF51F5"
)

#: name -> (preparation, the command under test); both get the card, PIV selected and admin authenticated.
COMMANDS: dict[str, tuple[Callable[[Card], None], Callable[[Card], object]]] = {
    "verify-wrong": (lambda c: None, lambda c: c.verify(b"000000")),
    "verify-right": (lambda c: c.verify(b"000000"), lambda c: c.verify()),
    "change-pin": (
        lambda c: None,
        lambda c: c.sw(0, 0x24, 0, 0x80, pad_pin(b"123456") + pad_pin(b"7654321")),
    ),
    "unblock-pin": (
        lambda c: [c.verify(b"000000") for _ in range(3)],
        lambda c: c.sw(0, 0x2C, 0, 0x80, pad_pin(b"12345678") + pad_pin(b"112233")),
    ),
    "put-data": (lambda c: None, lambda c: c.sw(0, 0xDB, 0x3F, 0xFF, CERT)),
    "generate": (lambda c: None, lambda c: c.generate(Slot.AUTHENTICATION, Algorithm.ECC_P256)),
    "set-mgmt-key": (
        lambda c: None,
        lambda c: c.sw(0, 0xFF, 0xFF, 0xFF, bytes([0x08, 0x9B, 16]) + bytes(16)),
    ),
    "put-did": (
        lambda c: (c.select_citizen(), c.authenticate()),
        lambda c: c.sw(0x80, Ins.PUT_DID, 0, 0, DID.encode()),
    ),
    "put-credential": (
        lambda c: (c.select_citizen(), c.authenticate()),
        lambda c: c.sw(0x80, Ins.PUT_CREDENTIAL, 0, 0, make_record(POINT).encode()),
    ),
    "erase": (
        lambda c: (
            c.select_citizen(),
            c.authenticate(),
            c.sw(0x80, Ins.PUT_DID, 0, 0, DID.encode()),
        ),
        lambda c: c.sw(0x80, Ins.ERASE, 0, 0),
    ),
}


def _count_writes(tmp_path: Path, name: str) -> int:
    card = Card(tmp_path / f"count-{name}.json")
    _setup_admin(card)
    COMMANDS[name][0](card)
    writes = 0

    def hook(stage: str) -> None:
        nonlocal writes
        if stage == "replaced":
            writes += 1

    card.card.applets[0].store.fault_hook = hook  # type: ignore[attr-defined]
    COMMANDS[name][1](card)
    return writes


@pytest.mark.parametrize("name", list(COMMANDS))
def test_tear_at_every_write_stage_leaves_old_or_new(tmp_path: Path, name: str) -> None:
    writes = _count_writes(tmp_path, name)
    assert writes >= 1, f"{name} wrote nothing"
    for nth in range(1, writes + 1):
        for stage in ("written", "synced", "replaced"):
            path = tmp_path / f"{name}-{nth}-{stage}.json"
            card = Card(path)
            _setup_admin(card)
            COMMANDS[name][0](card)
            before = path.read_bytes()
            versions = [before]  # the file after each completed write
            count = 0

            def hook(
                s: str,
                nth: int = nth,
                stage: str = stage,
                path: Path = path,
                versions: list[bytes] = versions,
            ) -> None:
                nonlocal count
                if s == "written":
                    count += 1
                if s == "replaced":
                    versions.append(path.read_bytes())
                if count == nth and s == stage:
                    raise Torn

            store = card.card.applets[0].store  # type: ignore[attr-defined]
            store.fault_hook = hook
            with pytest.raises(Torn):
                COMMANDS[name][1](card)
            after = path.read_bytes()
            if stage == "replaced":  # the torn write had landed: the new file
                assert after == versions[nth] and after != versions[nth - 1]
            else:  # it had not: the file of the previous write (the old state for the first)
                assert after == versions[nth - 1]
            json.loads(after)  # always a complete file
            assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "temp file left behind"
            # The card comes back from the file and works.
            revived = Card(path)
            revived.select_piv()
            assert revived.sw(0, 0x20, 0, 0x80)[1] in {0x63C3, 0x63C2, 0x63C1, 0x63C0, 0x6983}


def test_verify_counts_the_try_before_comparing(tmp_path: Path) -> None:
    """Anti-tearing: pulling the card after the counter write but before the reset costs the try."""
    path = tmp_path / "c.json"
    card = Card(path)
    card.select_piv()
    store = card.card.applets[0].store  # type: ignore[attr-defined]

    def hook(stage: str) -> None:
        if stage == "replaced":
            raise Torn

    store.fault_hook = hook
    with pytest.raises(Torn):
        card.verify()  # even the right PIN
    revived = Card(path)
    revived.select_piv()
    assert revived.sw(0, 0x20, 0, 0x80)[1] == 0x63C2


def test_unreadable_state_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(CardStoreError, match="cannot read"):
        CardStore(path)
    path.write_text(json.dumps({"format": 99, "sections": {}}))
    with pytest.raises(CardStoreError, match="not a card state file"):
        CardStore(path)


def test_failed_write_answers_memory_failure_and_keeps_state(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    card = Card(path)
    card.select_piv()
    before = path.read_bytes()

    def hook(stage: str) -> None:
        raise OSError(28, "No space left on device")

    card.card.applets[0].store.fault_hook = hook  # type: ignore[attr-defined]
    assert card.verify() == 0x6581
    assert path.read_bytes() == before


WRITER = """
import sys
from emulators.card.store import CardStore
store = CardStore(sys.argv[1])
i = store.section("a").get("i", 0)
print("ready", flush=True)
while True:
    i += 1
    store.commit_many({"a": {"i": i, "pad": "x" * 5000}, "b": {"i": i}})
"""


def test_sigkill_during_writes_leaves_a_consistent_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    rnd = random.Random(1)
    last = 0
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(rnd.uniform(0.005, 0.05))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        state = json.loads(path.read_bytes())  # never a torn file
        a, b = state["sections"]["a"]["i"], state["sections"]["b"]["i"]
        assert a == b, "sections written together must change together"
        assert a >= last
        last = a
    assert last > 0
    CardStore(path)  # loading cleans temp files a killed writer left behind
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
