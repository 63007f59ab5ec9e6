"""Issue 15 item 3 in Chromium: the page asks for the right voice file on every screen change and keypad
press, in the page's language; PIN digits are never spoken; voice can be turned off."""

from __future__ import annotations

import re
import time
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


@pytest.fixture(scope="module", autouse=True)
def audio_built() -> None:
    voice.build()


def recorder(page: Any) -> list[str]:
    heard: list[str] = []
    page.on("request", lambda r: heard.append(r.url) if "/static/voice/" in r.url else None)
    return heard


def stems(urls: list[str], lang: str = "en") -> list[str]:
    out = []
    for u in urls:
        m = re.search(rf"/static/voice/{lang}/(.+)\.wav$", u)
        assert m, u
        out.append(m.group(1).replace("%40", "@"))
    return out


def wait_for(page: Any, heard: list[str], stem: str, lang: str = "en", timeout: float = 10) -> None:
    """Wait until the page has asked for ``stem``. Playwright's sync API delivers events (the ``request``
    listener) only while the test is inside a Playwright call: wait with ``page.wait_for_timeout``, never
    ``time.sleep`` (a request made just after ``page.click`` returned was never seen: the wait ran out)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if stem in stems(heard, lang):
            return
        page.wait_for_timeout(50)
    raise AssertionError(f"{stem} not requested; heard {stems(heard, lang)}")


def test_voice_on_every_screen_and_keypad_without_digits(
    world: World, kiosk: str, page: Any, slot: Slot, tmp_path: Path, screenshot: Any
) -> None:
    heard = recorder(page)
    page.reload()
    wait_for(page, heard, "idle.title")
    tap(world, slot, tmp_path, "kim")
    page.wait_for_url("**/services")
    wait_for(page, heard, "services.title")
    page.click("#service-benefit-check")
    page.wait_for_url("**/consent")
    wait_for(page, heard, "consent.title@benefit-check")
    page.click("#agree")
    page.wait_for_url("**/pin")
    wait_for(page, heard, "pin.title.card")
    before = len(heard)
    pin = citizen("kim").pin
    for i, digit in enumerate(pin, 1):
        page.click(f'.keypad .key[data-key="{digit}"]')
        wait_for(page, heard, f"voice.pin.count@{i}")
    keypad = stems(heard[before:])
    assert keypad and all(s.startswith("voice.pin.count@") for s in keypad)
    screenshot(page, "voice-pin")
    page.click("#pin-ok")
    page.wait_for_url("**/verdict")
    wait_for(page, heard, "verdict.eligible")
    for s in stems(heard):
        assert not s.isdigit() and s not in pin, s  # no file is a digit
        assert (voice.VOICE_DIR / "en" / f"{s}.wav").exists(), s  # every request finds its file


def test_korean_voice_and_voice_off(
    world: World, kiosk: str, page: Any, slot: Slot, tmp_path: Path, screenshot: Any
) -> None:
    heard = recorder(page)
    page.click("#lang-ko")
    page.wait_for_selector("html[lang=ko]")
    wait_for(page, heard, "idle.title", "ko")
    page.click("#voice-toggle")
    assert page.get_attribute("#voice-toggle", "aria-pressed") == "false"
    screenshot(page, "voice-off-ko")
    n = len(heard)
    tap(world, slot, tmp_path, "kim")
    page.wait_for_url("**/services")
    page.wait_for_timeout(1000)  # events are delivered meanwhile (a time.sleep would hear nothing)
    assert len(heard) == n  # off means silent
    page.fill("#voice-volume", "30")
    page.click("#voice-toggle")
    assert page.get_attribute("#voice-toggle", "aria-pressed") == "true", page.evaluate(
        "sessionStorage.getItem('cityid.voice')"
    )
    wait_for(page, heard, "voice.on", "ko")
