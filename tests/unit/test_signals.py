"""Long-running commands stop on SIGINT and on SIGTERM, even when started with SIGINT ignored
(as a test runner's background job or a service manager may start them)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.processes import running, stop

BIN = Path(sys.executable).parent


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _wait_for(proc: subprocess.Popen[str], text: str, timeout: float = 60.0) -> str:
    """Read the child's merged output until ``text`` appears."""
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while text not in seen:
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"exited before {text!r}: {seen}")
        seen += line
        if time.monotonic() > deadline:
            pytest.fail(f"no {text!r} within {timeout} s: {seen}")
    return seen


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("kind", ["citizen", "fido"])
def test_cardtool_emulate_stops_with_sigint_ignored_at_start(kind: str, sig: int, tmp_path: Path) -> None:
    cmd = [
        str(BIN / "cardtool"),
        "emulate",
        kind,
        "--vpcd",
        "127.0.0.1:9",
        "--state",
        str(tmp_path / "s.json"),
    ]
    with running(
        cmd, preexec_fn=_ignore_sigint, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        _wait_for(proc, "state:")
        started = time.monotonic()
        out, _ = stop(proc, sig, timeout=10)
        assert proc.returncode == 0, out
        assert time.monotonic() - started < 5
        # exit status 0 (not -SIGTERM, not killed at the deadline): the handler ran and cleaned up
        assert "Traceback" not in out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_city_server_serve_stops_with_sigint_ignored_at_start(sig: int, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "CITY_SERVER_DB_URL": f"sqlite:///{tmp_path}/server.db",
        "CITY_ISSUER_KEYSTORE": str(tmp_path / "issuer.p8"),
        "CITY_ISSUER_KEY_PASSWORD": "s3cret-test-password",
        "CITY_SERVER_CHAIN": "embedded",
    }
    cli = [sys.executable, "-m", "server.cli"]
    subprocess.run([*cli, "issuer-key", "generate"], env=env, check=True, capture_output=True, timeout=60)
    subprocess.run([*cli, "db", "init"], env=env, check=True, capture_output=True, timeout=60)
    with running(
        [*cli, "serve", "--port", "0"],
        preexec_fn=_ignore_sigint,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        _wait_for(proc, "serving on", timeout=120)
        out, _ = stop(proc, sig, timeout=15)
        assert proc.returncode == 0, out
        assert "Traceback" not in out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_kiosk_demo_stops_with_sigint_ignored_at_start(sig: int) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with running(
        [str(BIN / "kiosk"), "demo", "--no-pcsc", "--port", "0"],
        preexec_fn=_ignore_sigint,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        _wait_for(proc, "Ctrl-C stops everything", timeout=180)
        out, _ = stop(proc, sig, timeout=30)
        assert proc.returncode == 0, out
        assert "stopping" in out and "Traceback" not in out


def test_a_child_that_ignores_its_stop_signal_is_killed_by_the_deadline() -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); print('up', flush=True); "
        "time.sleep(60)"
    )
    started = time.monotonic()
    with running([sys.executable, "-c", code], timeout=1.0, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None and proc.stdout.readline() == "up\n"
    assert proc.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 10
