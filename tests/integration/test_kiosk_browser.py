"""The kiosk browser launcher (udev/systemd/cityid-kiosk-browser) run for real: the same Chromium command the
cage unit starts, plus ``--headless``, against a kiosk app served by waitress, shows the idle screen."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from terminal.config import parse_config
from terminal.web import create_app
from terminal.web.server import ServerThread
from tests.doubles.fake_backends import FakeKioskBackend
from tests.fixtures.browser import CHROMIUM

pytestmark = [pytest.mark.integration, pytest.mark.browser]

LAUNCHER = Path(__file__).resolve().parents[2] / "udev" / "systemd" / "cityid-kiosk-browser"
HEADLESS = "--headless --no-sandbox --disable-gpu --disable-quic --dump-dom"


def test_launcher_shows_the_idle_screen(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.fail("Chromium is not installed (apt-get install chromium)")
    app = create_app(
        parse_config({"terminal": {"mode": "kiosk", "language": "en", "require_clock_sync": False}}),
        kiosk=FakeKioskBackend(),
    )
    with ServerThread(app, "127.0.0.1", 0) as server:
        url_file = tmp_path / "browser-url"
        launch = server.url + app.extensions["cityid.screen"].launch_path()  # the one-use screen URL
        url_file.write_text(f"{launch}\n")  # what the kiosk app writes at start (the contract)
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(tmp_path),
            "CITYID_KIOSK_URL_FILE": str(url_file),
            "CITYID_KIOSK_URL_WAIT": "5",
            "CITYID_BROWSER_PROFILE": str(tmp_path / "profile"),
            "CITYID_BROWSER_ARGS": HEADLESS,
        }
        printed = subprocess.run(
            [str(LAUNCHER), "--print"], env=env, capture_output=True, text=True, check=True
        )
        argv = printed.stdout.splitlines()
        assert argv[0] == str(CHROMIUM) and "--kiosk" in argv and argv[-1] == launch
        run = subprocess.run([str(LAUNCHER)], env=env, capture_output=True, text=True, timeout=90)
    assert run.returncode == 0, run.stderr[-2000:]
    assert 'data-screen="idle"' in run.stdout
    assert 'id="idle-title"' in run.stdout


def test_launcher_refuses_a_remote_url(tmp_path: Path) -> None:
    url_file = tmp_path / "browser-url"
    url_file.write_text("https://phishing.example/\n")
    env = {"PATH": os.environ["PATH"], "CITYID_KIOSK_URL_FILE": str(url_file), "CITYID_KIOSK_URL_WAIT": "0"}
    r = subprocess.run([str(LAUNCHER), "--print"], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == "cityid-kiosk-browser: refusing non-local kiosk URL"
