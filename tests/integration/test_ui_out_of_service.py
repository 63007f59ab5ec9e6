"""Out of service, visibly, in headless Chromium (issue 10 item 4): the kiosk's own pcscd stops → the screen
shows the out-of-service page (Korean and English, what staff should check) and ``/health`` says why; pcscd
comes back → the kiosk returns to the idle screen by itself and serves the next card.

Stopping pcscd must touch nobody else: the test runs only in a private mount+network namespace where no
pcscd runs yet, and starts, stops and restarts its own ``pcscd --foreground`` (a child process, ended by its
id). In a normal run the second test re-runs the first under ``unshare -mn`` (root), so it needs no setup.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from emulators.card.citizen_card import make_citizen_card
from emulators.card.transport import DEFAULT_VPCD_PORT, InProcessConnection, VpcdCard
from firmware_tools.vpcd_env import VPCD_SLOTS, reader_has_card, vpcd_readers, wait_for

from terminal.config import parse_config
from terminal.flows.kiosk import SERVICES
from terminal.verifier import NonceStore, Verifier
from terminal.web import create_app
from terminal.web.stack import PcscKioskBackend
from tests.credkit import AUDIENCE, chain_for, personalize
from tests.integration.ui_support import serving, visible_text

pytestmark = [pytest.mark.integration, pytest.mark.browser]

READER = VPCD_SLOTS[DEFAULT_VPCD_PORT]
SOCKET = Path("/run/pcscd/pcscd.comm")


def _private_namespace() -> bool:
    """A network namespace of our own (only ``lo``) with /run/pcscd mounted privately (the unshare recipe)."""
    import socket

    return [name for _, name in socket.if_nameindex()] == ["lo"] and os.path.ismount("/run/pcscd")


class OwnPcscd:
    """``pcscd --foreground`` as this test's child: start, stop (by its pid), start again."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = shutil.which("pcscd") or "/usr/sbin/pcscd"
        self.proc = subprocess.Popen(
            [exe, "--foreground"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(lambda: READER in vpcd_readers(), 15, "pcscd with the vpcd readers")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        wait_for(lambda: not SOCKET.exists(), 10, "pcscd's socket to go")


@pytest.fixture
def own_pcscd() -> Iterator[OwnPcscd]:
    if not _private_namespace():
        pytest.skip("stops pcscd: run in a private namespace (unshare -mn, /run/pcscd on a tmpfs)")
    if SOCKET.exists():
        pytest.skip("a pcscd already runs in this namespace: start the test without one (it starts its own)")
    own = OwnPcscd()
    own.start()
    try:
        yield own
    finally:
        own.stop()


def _health(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_out_of_service_when_pcscd_stops_and_back_when_it_returns(
    own_pcscd: OwnPcscd, page: Any, tmp_path: Path, screenshot: Any
) -> None:
    card_path = tmp_path / "card.json"
    cred = personalize(InProcessConnection(make_citizen_card(card_path)), now=int(time.time()))
    verifier = Verifier(chain_for(cred), AUDIENCE, NonceStore())
    backend = PcscKioskBackend(verifier, list(SERVICES.values()), READER)
    config = parse_config(
        {"terminal": {"language": "en", "reader": READER, "audience": AUDIENCE, "require_clock_sync": False}}
    )
    app = create_app(config, kiosk=backend)
    with serving(app, page) as url:
        page.wait_for_selector("#idle-title")
        page.wait_for_function("() => document.readyState === 'complete'")
        status, body = _health(url)
        assert status == 200 and body["pcscd"] is True and READER in body["readers"], body
        screenshot(page, "in-service")

        t0 = time.monotonic()
        own_pcscd.stop()
        page.wait_for_url(url + "/out-of-service?problems=pcscd", timeout=15_000)  # pushed over SSE
        took = time.monotonic() - t0
        screenshot(page, "out-of-service")
        text = visible_text(page)
        assert "This kiosk is out of service" in text and "이 키오스크는 현재 사용할 수 없습니다" in text
        assert "pcscd" in text and "systemctl restart pcscd" in text  # what staff should check
        assert page.get_attribute("#out-of-service", "data-problems") == "pcscd"
        status, body = _health(url)
        assert status == 503 and body["problems"] == ["pcscd"] and body["pcscd"] is False
        assert took < 10, took

        own_pcscd.start()
        page.wait_for_url(url + "/", timeout=15_000)  # back in service by itself
        page.wait_for_selector("#idle-title")
        page.wait_for_function("() => document.readyState === 'complete'")
        screenshot(page, "back-in-service")
        assert "Tap your card or security key" in visible_text(page)
        status, body = _health(url)
        assert status == 200 and body["pcscd"] is True and READER in body["readers"], body

        vpcd = VpcdCard(make_citizen_card(card_path), port=DEFAULT_VPCD_PORT)
        time.sleep(0.3)  # the page's event stream reconnects
        vpcd.start()
        try:
            wait_for(lambda: reader_has_card(READER), 10, "the card")
            page.wait_for_url("**/services")  # the restarted pcscd's reader serves the next citizen
            screenshot(page, "next-citizen")
        finally:
            with contextlib.suppress(Exception):
                vpcd.stop()


def test_out_of_service_runs_in_a_namespace_of_its_own() -> None:
    """In a normal run (pcscd shared with others) the test above re-runs itself under ``unshare -mn`` with
    its own pcscd, so stopping pcscd affects nobody else."""
    if _private_namespace():
        pytest.skip("already in a private namespace: the test above runs directly")
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) for a private mount+network namespace")
    lock_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"cityid-oos-{os.getpid()}"
    lock_dir.mkdir(exist_ok=True)
    script = (
        "ip link set lo up && mkdir -p /run/pcscd && mount -t tmpfs tmpfs /run/pcscd && "
        f"exec {shlex.quote(sys.executable)} -m pytest -q -p no:cacheprovider "
        f"{shlex.quote(__file__)}::test_out_of_service_when_pcscd_stops_and_back_when_it_returns"
    )
    env = dict(os.environ, CITYID_PCSC_LOCK_DIR=str(lock_dir))
    try:
        done = subprocess.run(
            [unshare, "-mn", "bash", "-c", script],
            capture_output=True, text=True, timeout=300, env=env, cwd=Path(__file__).resolve().parents[2],
        )  # fmt: skip
    finally:
        shutil.rmtree(lock_dir, ignore_errors=True)
    if done.returncode != 0 and "Operation not permitted" in done.stderr:
        pytest.skip("namespaces are not permitted here: " + done.stderr.strip()[:200])
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout[-3000:] + done.stderr[-2000:]
