"""Issue 15 closing figures: how long a keyboard-only and an audio-only citizen take to finish "benefit check"
in the demo stack. Keyboard: real key presses, no pauses. Audio: the same presses, each made only after the
screen's (or the keypad's) guidance has been played to its end (the WAV durations of what the page asked for).
Figures in tests/artifacts/kiosk-timing.json."""

from __future__ import annotations

import json
import time
import wave
from pathlib import Path
from typing import Any

import pytest

from terminal.web import voice
from tests.integration.ui_support import Slot, World, citizen, tap

pytestmark = [
    pytest.mark.integration,
    pytest.mark.browser,
    pytest.mark.filterwarnings("ignore:Deprecated use of webauthn_json_mapping"),
]
OUT = Path(__file__).resolve().parents[1] / "artifacts" / "kiosk-timing.json"


def seconds(stem: str, lang: str = "en") -> float:
    with wave.open(str(voice.VOICE_DIR / lang / f"{stem}.wav")) as w:
        return w.getnframes() / w.getframerate()


def run(page: Any, world: World, slot: Slot, tmp_path: Path, listen: bool) -> float:
    """Tap → benefit check → agree → PIN → verdict, keyboard only; ``listen``: wait out the guidance."""
    voice.build()

    def hear() -> None:
        if listen:
            stems = (page.get_attribute("body", "data-voice") or "").split()
            time.sleep(sum(seconds(s) for s in stems))

    t0 = time.monotonic()
    tap(world, slot, tmp_path, "kim")
    page.wait_for_url("**/services")
    hear()
    page.keyboard.press("Tab")
    while page.evaluate("document.activeElement.id") != "service-benefit-check":
        page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    page.wait_for_url("**/consent")
    hear()
    while page.evaluate("document.activeElement.id") != "agree":
        page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    page.wait_for_url("**/pin")
    hear()
    for i, digit in enumerate(citizen("kim").pin, 1):
        page.keyboard.type(digit)
        if listen:
            time.sleep(seconds(f"voice.pin.count@{i}"))
    page.keyboard.press("Enter")
    page.wait_for_url("**/verdict")
    assert "You are eligible" in page.inner_text("main")
    hear()
    return time.monotonic() - t0


def test_benefit_check_keyboard_only_and_audio_only(
    world: World, kiosk: str, page: Any, slot: Slot, tmp_path: Path
) -> None:
    keyboard = run(page, world, slot, tmp_path, listen=False)
    slot.clear()  # the citizen takes the card: the page's event stream goes back to the idle screen
    # Wait for that navigation instead of starting one (a page.goto here raced the stream's redirect and
    # was aborted, net::ERR_ABORTED, when the redirect came second).
    page.wait_for_url(kiosk + "/")
    page.wait_for_selector("#idle-title")
    again = tmp_path / "again"
    again.mkdir()
    audio = run(page, world, slot, again, listen=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"keyboard_only_s": round(keyboard, 1), "audio_only_s": round(audio, 1)}))
    print(f"benefit check: keyboard-only {keyboard:.1f} s, audio-only {audio:.1f} s")
    assert keyboard < audio < 300
