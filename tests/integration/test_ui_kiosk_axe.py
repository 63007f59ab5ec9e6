"""Issue 15: axe-core (npm, pinned in package.json) finds no serious or critical violation on any kiosk
screen, in both languages and in the high-contrast mode. Screenshots in tests/artifacts/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from emulators.card.citizen_card import make_citizen_card

from tests.integration.ui_support import Slot, World, axe_serious, citizen, tap, to_pin, type_pin

pytestmark = [
    pytest.mark.integration,
    pytest.mark.browser,
    pytest.mark.filterwarnings("ignore:Deprecated use of webauthn_json_mapping"),
]


def serious(page: Any, where: str, checked: list[str]) -> None:
    axe_serious(page, where, checked)


@pytest.mark.parametrize("lang", ["en", "ko"])
def test_no_serious_or_critical_violation_on_any_kiosk_screen(
    world: World, kiosk: str, page: Any, slot: Slot, tmp_path: Path, screenshot: Any, lang: str
) -> None:
    checked: list[str] = []
    page.click(f"#lang-{lang}")
    page.wait_for_selector(f"html[lang={lang}]")
    serious(page, "idle", checked)
    assert page.evaluate("() => axe.run().then(r => r.passes.length)") >= 10  # axe really checked the page
    blank = slot.insert(lambda: make_citizen_card(tmp_path / "blank.json"))
    page.wait_for_url("**/refused")
    serious(page, "refused", checked)
    blank.stop()
    page.wait_for_url(kiosk + "/")
    tap(world, slot, tmp_path, "lee")
    to_pin(page, "benefit-check")
    serious(page, "pin", checked)
    for _ in range(2):
        type_pin(page, "000000")
        page.click("#pin-ok")
        page.wait_for_load_state()
    page.wait_for_url("**/last-try")
    serious(page, "last-try", checked)
    page.click("#last-try-go")
    page.wait_for_url("**/pin")
    serious(page, "pin after wrong PINs", checked)
    page.evaluate("document.getElementById('countdown').hidden = false")  # as the countdown shows it
    serious(page, "countdown", checked)
    page.click("#mode-contrast")
    serious(page, "high contrast", checked)
    type_pin(page, citizen("lee").pin)
    page.click("#pin-ok")
    page.wait_for_url("**/verdict")
    serious(page, "verdict", checked)
    page.click("#another")
    page.wait_for_url("**/services")
    serious(page, "services", checked)
    page.click("#service-residence")
    page.wait_for_url("**/consent")
    serious(page, "consent", checked)
    screenshot(page, f"axe-consent-{lang}")
    assert len(checked) == 10
