"""`kiosk demo` as a new user runs it (the README command): a subprocess from the installed entry point;
the demo panel taps a virtual citizen's card and the kiosk page completes a benefit check."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.ui_support import type_pin, visible_text

pytestmark = [pytest.mark.integration, pytest.mark.browser]

KIOSK_CMD = Path(sys.executable).with_name("kiosk")
START_TIMEOUT = 120.0


def test_kiosk_demo_serves_a_benefit_check(browser: Any, screenshot: Any) -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [str(KIOSK_CMD), "demo", "--port", "0", "--language", "en"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    output: list[str] = []
    try:
        deadline = time.monotonic() + START_TIMEOUT
        url = None
        assert proc.stdout is not None
        while url is None:
            line = proc.stdout.readline()
            if not line:
                pytest.fail("kiosk demo exited early:\n" + "".join(output))
            output.append(line)
            m = re.search(r"running on (http://127\.0\.0\.1:\d+)/", line)
            if m:
                url = m[1]
            if time.monotonic() > deadline:
                pytest.fail("kiosk demo did not start in time:\n" + "".join(output))
        while not output[-1].startswith("Ctrl-C"):
            output.append(proc.stdout.readline())
        text = "".join(output)
        assert "demo panel:" in text and "PIN 135790" in text  # instructions printed
        screen = re.search(r"kiosk screen: +(" + re.escape(url) + r"/screen/[A-Za-z0-9_-]+)", text)
        assert screen is not None, text
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        try:
            kiosk_page, panel = context.new_page(), context.new_page()
            kiosk_page.goto(screen[1])  # the printed screen URL binds this browser as the kiosk's screen
            kiosk_page.wait_for_url(url + "/")
            kiosk_page.wait_for_selector("#idle-title")
            screenshot(kiosk_page, "demo-idle")
            panel.goto(url + "/demo/")
            screenshot(panel, "demo-panel")
            panel.click("#tap-kim")
            kiosk_page.wait_for_url("**/services", timeout=15_000)
            kiosk_page.click("#service-benefit-check")
            kiosk_page.click("#agree")
            kiosk_page.wait_for_url("**/pin")
            type_pin(kiosk_page, "135790")
            kiosk_page.click("#pin-ok")
            kiosk_page.wait_for_url("**/verdict")
            screenshot(kiosk_page, "demo-verdict")
            assert "You are eligible" in visible_text(kiosk_page)
            panel.click("#remove-kim")
            kiosk_page.wait_for_url(url + "/")
        finally:
            context.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
