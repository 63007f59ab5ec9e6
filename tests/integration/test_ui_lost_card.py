"""Lost-card report by name, birth date and revocation password at the counter, in headless Chromium on the
real stack (docs/server.md §Lost-card report; issue 11 item 3): enroll with a revocation password, print the
enrollment receipt on the counter's printer (the ESC/POS emulator on a real pty; issue 13), report the card
lost without its credential id with what the receipt says (a wrong password first: the same answer); the
kiosk refuses it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from citydemo import demo
from citydemo.printer import VirtualPrinter
from emulators.card.citizen_card import make_citizen_card

from terminal.web.printing import CounterPrinting
from tests.integration.ui_support import (
    Slot,
    World,
    fill_enrollment,
    serving,
    sign_in,
    type_pin,
    visible_text,
)

pytestmark = [pytest.mark.integration, pytest.mark.browser]

WORLD_CITIZENS = demo.CITIZENS[:1]  # the shared ``world`` fixture enrolls only Kim
NEW_PIN = "802468"
NEW_PUK = "13572468"
REVOCATION_PASSWORD = "heron-over-gwangan"


def _receipt_password(lines: list[str]) -> str:
    """The revocation password as the receipt prints it: the lines after its label, up to the reminder."""
    start = lines.index("Revocation password (for a lost card):") + 1
    end = lines.index("  Keep this receipt apart from the card.")
    return "".join(line.strip() for line in lines[start:end])


def _report(page: Any, family: str, given: str, born: str, password: str) -> str:
    page.click("#back-home")
    page.click("#menu-lost")
    page.wait_for_url("**/counter/lost")
    page.fill("#f-family_name", family)
    page.fill("#f-given_name", given)
    page.fill("#f-birthdate", born)
    page.fill("#f-revocation_password", password)
    page.check("#f-confirm")
    page.click("#submit")
    page.wait_for_selector("#result", timeout=60_000)
    return page.inner_text("#result")


def test_lost_card_reported_by_name_and_revocation_password(
    world: World, slot: Slot, page: Any, tmp_path: Path, screenshot: Any
) -> None:
    state = tmp_path / "new-card.json"
    card = slot.insert(lambda: make_citizen_card(state))
    printer = VirtualPrinter(tmp_path)  # the counter's receipt printer
    receipts = CounterPrinting(printer.printer, "demo-counter")
    counter = world.counter_app(slot.reader, counter_printing=receipts)
    with serving(counter, page) as url:
        sign_in(page, url)
        page.click("#menu-enroll")
        page.wait_for_url("**/counter/enroll")
        fill_enrollment(page, slot.reader, "Jung", "Haeun", NEW_PIN, NEW_PUK,
                        revocation_password=REVOCATION_PASSWORD)  # fmt: skip
        page.click("#submit")
        page.wait_for_selector("#result", timeout=60_000)
        assert "Card enrolled" in visible_text(page)
        assert REVOCATION_PASSWORD not in page.content()
        credential_id = page.inner_text('dd[data-field="counter.field.credential_id"]').strip()
        page.click("#print-receipt")
        page.wait_for_selector("#result")
        assert "receipt has been printed" in visible_text(page) and REVOCATION_PASSWORD not in page.content()
        (receipt,) = printer.emulator.wait_receipts(1)
        assert receipt.complete
        printed = _receipt_password(receipt.text)
        assert printed == REVOCATION_PASSWORD and f"  {credential_id}" in receipt.text
        # the instructions say what the lost-card form asks: name, date of birth, the password — no card
        help_text = " ".join(receipt.text)
        assert "name, date of birth and the" in help_text and "revocation password above" in help_text
        for personal in ("Jung", "Haeun", "1950", "Saha"):
            assert personal not in help_text, personal

        wrong = _report(page, "Jung", "Haeun", "1950-03-01", "not-the-password")
        unknown = _report(page, "Park", "Sora", "1961-07-07", REVOCATION_PASSWORD)
        assert wrong == unknown  # nothing tells whether the citizen exists
        page.click("#back-home")
        page.click("#menu-status")
        page.fill("#f-credential_id", credential_id)
        page.click("#submit")
        page.wait_for_selector("#result")
        assert "Valid" in visible_text(page)  # the wrong password revoked nothing

        right = _report(page, "JUNG ", "haeun", "1950-03-01", printed)  # as read off the receipt
        screenshot(page, "lost-card-reported")
        assert right == wrong and REVOCATION_PASSWORD not in page.content()
        page.click("#back-home")
        page.click("#menu-status")
        page.fill("#f-credential_id", credential_id)
        page.click("#submit")
        page.wait_for_selector("#result")
        assert "Revoked" in visible_text(page)
    card.stop()
    printer.close()

    # The card turns up again and is tried at a kiosk: refused.
    with serving(world.kiosk_app(slot.reader), page) as url:
        page.goto(url + "/")
        page.wait_for_selector("#idle-title")
        slot.insert(lambda: make_citizen_card(state))
        page.wait_for_url("**/services")
        page.click("#service-benefit-check")
        page.click("#agree")
        page.wait_for_url("**/pin")
        type_pin(page, NEW_PIN)
        page.click("#pin-ok")
        page.wait_for_url("**/verdict")
        screenshot(page, "kiosk-verdict-lost-card")
        text = visible_text(page)
        assert "cancelled" in text.lower() and "You are eligible" not in text  # revoked: plain words
