"""The kiosk in headless Chromium on the real stack: virtual cards through pcscd + vpcd, the embedded chain
with the contracts, the city server's credentials. Screenshots of every screen in tests/artifacts/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from citydemo import demo

from tests.integration.ui_support import Slot, World, citizen, serving, tap, to_pin, type_pin, visible_text

pytestmark = [
    pytest.mark.integration,
    pytest.mark.browser,
    pytest.mark.filterwarnings("ignore:Deprecated use of webauthn_json_mapping"),
]


def test_full_kiosk_flow_tap_service_consent_pin_verdict_removal_idle(
    world: World, kiosk: str, page: Any, slot: Slot, tmp_path: Path, screenshot: Any
) -> None:
    screenshot(page, "idle")
    assert "Tap your card or security key" in visible_text(page)
    card = tap(world, slot, tmp_path, "kim")
    page.wait_for_url("**/services")  # pushed by the event stream, no reload
    screenshot(page, "services")
    page.click("#service-benefit-check")
    page.wait_for_url("**/consent")
    screenshot(page, "consent")
    claims = page.eval_on_selector_all("#claims li", "els => els.map(e => e.dataset.claim)")
    assert claims == ["busan_resident", "age_over_65"]  # exactly what the service receives
    page.click("#agree")
    page.wait_for_url("**/pin")
    assert "Tries left: 3" in visible_text(page)
    type_pin(page, citizen("kim").pin)
    assert page.input_value("#pin") == citizen("kim").pin and page.get_attribute("#pin", "type") == "password"
    screenshot(page, "pin")
    page.click("#pin-ok")
    page.wait_for_url("**/verdict")
    screenshot(page, "verdict")
    text = visible_text(page)
    assert "You are eligible" in text and "Kim" not in text and "Minsu" not in text
    assert page.get_attribute("#verdict", "data-ok") == "true"
    card.stop()  # the citizen takes the card
    page.wait_for_url(kiosk + "/")
    page.wait_for_selector("#idle-title")
    assert page.query_selector("#notice") is None
    screenshot(page, "idle-after-removal")


def test_residence_confirmation_shows_name_and_district(
    world: World, kiosk: str, page: Any, slot: Slot, tmp_path: Path, screenshot: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(1)  # everything, APDU traces included
    tap(world, slot, tmp_path, "kim")
    to_pin(page, "residence")
    type_pin(page, citizen("kim").pin)
    page.click("#pin-ok")
    page.wait_for_url("**/verdict")
    screenshot(page, "verdict-residence")
    text = visible_text(page)
    assert "Residence confirmed" in text and "Kim" in text and "Minsu" in text and "Haeundae-gu" in text
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "session started" in logged and any(r.name == "cityid.apdu" for r in caplog.records)
    for secret in ("Minsu", "Haeundae", citizen("kim").pin, citizen("kim").pin.encode().hex()):
        assert secret.lower() not in logged.lower(), secret


def test_wrong_pin_shows_tries_left_then_blocked(
    world: World, kiosk: str, page: Any, slot: Slot, tmp_path: Path, screenshot: Any
) -> None:
    tap(world, slot, tmp_path, "lee")
    to_pin(page, "benefit-check")
    type_pin(page, "000000")
    page.click("#pin-ok")
    page.wait_for_selector("#pin-error")
    assert "Wrong PIN. Tries left: 2" in visible_text(page)
    screenshot(page, "wrong-pin-2-left")
    type_pin(page, "000000")
    page.click("#pin-ok")
    page.wait_for_url("**/last-try")  # before the final attempt: what blocking means, where to unblock
    screenshot(page, "last-try")
    assert "last try" in visible_text(page) and "PUK" in visible_text(page)
    page.click("#last-try-go")
    page.wait_for_url("**/pin")
    assert "Wrong PIN. Tries left: 1" in visible_text(page)
    type_pin(page, "000000")
    page.click("#pin-ok")
    page.wait_for_url("**/blocked")
    screenshot(page, "blocked")
    assert "PIN is blocked" in visible_text(page) and "PUK" in visible_text(page)


def test_wrong_pin_then_right_pin_gives_a_verdict(
    world: World, kiosk: str, page: Any, slot: Slot, tmp_path: Path, screenshot: Any
) -> None:
    tap(world, slot, tmp_path, "lee")
    to_pin(page, "benefit-check")
    type_pin(page, "999999")
    page.click("#pin-ok")
    page.wait_for_selector("#pin-error")
    type_pin(page, citizen("lee").pin)
    page.click("#pin-ok")
    page.wait_for_url("**/verdict")
    screenshot(page, "verdict-not-eligible")
    assert "You are not eligible" in visible_text(page) and "not over 65" in visible_text(page)


def test_card_pulled_mid_flow_returns_to_idle_with_message(
    world: World, kiosk: str, page: Any, slot: Slot, tmp_path: Path, screenshot: Any
) -> None:
    card = tap(world, slot, tmp_path, "kim")
    page.wait_for_url("**/services")
    page.click("#service-benefit-check")
    page.wait_for_url("**/consent")
    card.stop()
    page.wait_for_url("**/?notice=removed")
    page.wait_for_selector("#notice")
    screenshot(page, "idle-card-removed")
    assert "Your card was removed" in visible_text(page)
    assert page.goto(kiosk + "/consent").url == kiosk + "/?notice=removed" or page.url.endswith("/")


def test_revoked_card_is_refused_in_plain_words(
    world: World, kiosk: str, page: Any, slot: Slot, tmp_path: Path, screenshot: Any
) -> None:
    tap(world, slot, tmp_path, "choi")
    to_pin(page, "benefit-check")
    type_pin(page, citizen("choi").pin)
    page.click("#pin-ok")
    page.wait_for_url("**/verdict")
    screenshot(page, "verdict-revoked")
    text = visible_text(page)
    assert "This card has been cancelled" in text and "post-office counter" in text and "ID card" in text
    assert page.query_selector("#another") is None  # no "another service" after such an outcome


def test_language_switch(
    world: World, kiosk: str, page: Any, slot: Slot, tmp_path: Path, screenshot: Any
) -> None:
    page.click("#lang-ko")
    page.wait_for_selector("html[lang=ko]")
    assert "카드 또는 보안키를 대 주세요" in visible_text(page)
    assert page.get_attribute("#lang-ko", "aria-pressed") == "true"
    screenshot(page, "idle-ko")
    tap(world, slot, tmp_path, "kim")
    page.wait_for_url("**/services")
    assert "시민 혜택 자격 확인" in visible_text(page)
    screenshot(page, "services-ko")
    page.click("#lang-en")
    page.wait_for_url("**/services")
    page.wait_for_selector("html[lang=en]")
    assert "Citizen benefit check" in visible_text(page)
    screenshot(page, "services-en")


def test_keyboard_only_flow(world: World, kiosk: str, page: Any, slot: Slot, tmp_path: Path) -> None:
    tap(world, slot, tmp_path, "kim")
    page.wait_for_url("**/services")
    page.focus("#service-residence")
    page.keyboard.press("Enter")
    page.wait_for_url("**/consent")
    page.focus("#agree")
    page.keyboard.press("Enter")
    page.wait_for_url("**/pin")
    assert page.evaluate("document.activeElement.id") == "pin"  # the PIN field takes the focus
    page.keyboard.type(citizen("kim").pin)
    page.keyboard.press("Enter")
    page.wait_for_url("**/verdict")
    assert "Residence confirmed" in visible_text(page)


def test_security_key_follows_the_same_path_with_its_own_pin(
    world: World, kiosk: str, page: Any, slot: Slot, tmp_path: Path, screenshot: Any
) -> None:
    tap(world, slot, tmp_path, demo.KEY_ID)
    page.wait_for_url("**/services")
    assert "Your security key is ready." in visible_text(page)
    page.click("#service-benefit-check")
    page.click("#agree")
    page.wait_for_url("**/pin")
    assert "Enter your security key PIN" in visible_text(page) and "Tries left: 8" in visible_text(page)
    type_pin(page, "1111")
    page.click("#pin-ok")
    page.wait_for_selector("#pin-error")
    assert "Tries left: 7" in visible_text(page)
    screenshot(page, "key-wrong-pin")
    type_pin(page, demo.KEY_PIN)
    page.click("#pin-ok")
    page.wait_for_url("**/verdict")
    screenshot(page, "key-verdict")
    assert "You are eligible" in visible_text(page)


def test_idle_timeout_wipes_and_returns_to_idle(
    world: World, slot: Slot, page: Any, tmp_path: Path, screenshot: Any
) -> None:
    with serving(world.kiosk_app(slot.reader, language="en", idle_timeout=5), page) as url:
        page.goto(url + "/")
        page.wait_for_selector("#idle-title")
        tap(world, slot, tmp_path, "kim")
        to_pin(page, "residence")
        type_pin(page, citizen("kim").pin)
        page.click("#pin-ok")
        page.wait_for_url("**/verdict")
        assert "Minsu" in visible_text(page)
        page.wait_for_selector("#countdown:not([hidden])", timeout=15_000)  # warned first (WCAG 2.2.1)
        screenshot(page, "countdown-on-verdict")
        page.wait_for_url("**/?notice=timeout", timeout=40_000)  # the card stays; nobody touches the screen
        screenshot(page, "idle-after-timeout")
        assert "No activity for a while" in visible_text(page) and "Minsu" not in page.content()
        page.goto(url + "/verdict")
        assert page.url.startswith(url + "/") and "Minsu" not in page.content()


TARGETS = """() => [...document.querySelectorAll('button, a.button, input:not([type=hidden]), select')]
    .filter(e => e.offsetParent !== null)
    .map(e => { const r = (e.type === 'checkbox' ? e.closest('label') || e : e).getBoundingClientRect();
                return {id: e.id || e.textContent.trim(), w: r.width, h: r.height}; })"""
UNLABELLED = """() => [...document.querySelectorAll('input:not([type=hidden]), select')]
    .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map(e => e.id)"""


def test_touch_targets_and_labels_on_every_kiosk_screen(
    world: World, kiosk: str, page: Any, slot: Slot, tmp_path: Path
) -> None:
    def check() -> None:
        small = [t for t in page.evaluate(TARGETS) if t["w"] < 64 or t["h"] < 64]
        assert small == [], f"targets under 64 px on {page.url}: {small}"  # docs/ui.md: 64 on the kiosk
        assert page.evaluate(UNLABELLED) == [], page.url
        assert page.evaluate("document.querySelectorAll('main h1').length") == 1, page.url

    check()
    tap(world, slot, tmp_path, "kim")
    page.wait_for_url("**/services")
    check()
    page.click("#service-benefit-check")
    page.wait_for_url("**/consent")
    check()
    page.click("#agree")
    page.wait_for_url("**/pin")
    check()
    type_pin(page, citizen("kim").pin)
    page.click("#pin-ok")
    page.wait_for_url("**/verdict")
    check()
