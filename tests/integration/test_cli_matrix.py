"""Every sub-command of ``kiosk``, ``city-server`` and ``cardtool`` × (no args, bad args, bad port) with no
terminal (stdin closed) and no daemons (a private network + mount namespace hiding pcscd): exit ≠ 0 with
exactly one line on stderr, never a traceback (docs/operations.md; issue 16 item 5).

Commands that are complete without arguments and run until stopped (servers, emulators) are only run with
bad arguments; a few are complete and quick without arguments and may succeed (listed in OK_WITHOUT_ARGS).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cityid.cli_util import build_parser

pytestmark = pytest.mark.integration

TOOLS = {
    "kiosk": ("terminal.cli", "terminal.cli"),
    "city-server": ("server.cli", "server.cli"),
    "cardtool": ("firmware_tools.cli", "firmware_tools.cli"),
}
# complete without arguments and long-running: only bad arguments are tried
LONG_RUNNING = {"city-server serve", "kiosk demo", "cardtool emulate citizen", "cardtool emulate fido"}
# complete without arguments, quick, and allowed to succeed (reports by design, or a compile step)
OK_WITHOUT_ARGS = {"city-server chain compile", "city-server doctor", "cardtool readers"}
# reports print one line per check by design (exit ≠ 0 on a broken host)
MULTI_LINE_REPORTS = {"city-server doctor"}


def _tool_parser(tool: str) -> argparse.ArgumentParser:
    import importlib

    module = importlib.import_module(TOOLS[tool][0])
    return build_parser(tool, "", module.COMMAND_MODULES)


def _commands(
    parser: argparse.ArgumentParser, prefix: list[str]
) -> list[tuple[list[str], argparse.ArgumentParser]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.append(([*prefix, name], sub))
                out.extend(_commands(sub, [*prefix, name]))
    return out


def _matrix() -> list[tuple[str, list[str], str]]:
    cases = []
    for tool in TOOLS:
        for path, sub in _commands(_tool_parser(tool), []):
            name = " ".join([tool, *path])
            cases.append((tool, [*path, "--no-such-option"], "bad args"))
            if name not in LONG_RUNNING:
                cases.append((tool, path, "no args"))
            if any("--port" in a.option_strings for a in sub._actions):
                cases.append((tool, [*path, "--port", "99999"], "bad port"))
    return cases


CASES = _matrix()


def _run(tool: str, argv: list[str], home: Path) -> subprocess.CompletedProcess:
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "XDG_STATE_HOME": str(home / "state"),
        "XDG_DATA_HOME": str(home / "data"),
        "CITYID_PCSC_LOCK_DIR": str(home / "locks"),
    }
    (home / "locks").mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", TOOLS[tool][1], *argv]
    # no daemons: no network (anvil, PostgreSQL, pcscd's vpcd ports) and pcscd's socket directory hidden
    wrap = ["unshare", "-mn", "sh", "-c", 'mount -t tmpfs tmpfs /run/pcscd 2>/dev/null; exec "$@"', "sh"]
    return subprocess.run(
        [*wrap, *cmd],
        env=env,
        cwd=home,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.timeout(900)  # ~150 Python start-ups, 4 at a time: minutes on 2 loaded cores
def test_every_subcommand_fails_with_one_line(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a daemon-free namespace")
    Path("/run/pcscd").mkdir(parents=True, exist_ok=True)

    def one(case: tuple[str, list[str], str]) -> str | None:
        tool, argv, kind = case
        home = tmp_path / f"{tool}-{'-'.join(argv).replace('/', '_')}"[:200]
        home.mkdir()
        r = _run(tool, argv, home)
        name = " ".join([tool, *[a for a in argv if not a.startswith("-") and a != "99999"]])
        label = f"{tool} {' '.join(argv)} ({kind})"
        if "Traceback" in r.stdout + r.stderr:
            return f"{label}: traceback\n{r.stderr[-1500:]}"
        if kind == "no args" and r.returncode == 0 and name in OK_WITHOUT_ARGS:
            return None
        if r.returncode == 0:
            return f"{label}: exit 0\n{r.stdout[-500:]}"
        if name in MULTI_LINE_REPORTS and kind == "no args":
            return None
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        if len(lines) != 1:
            return f"{label}: {len(lines)} lines on stderr:\n{r.stderr[-1500:]}"
        return None

    with ThreadPoolExecutor(max_workers=4) as pool:
        problems = [p for p in pool.map(one, CASES) if p]
    assert not problems, f"{len(problems)} of {len(CASES)} cases:\n" + "\n\n".join(problems)


@pytest.mark.parametrize(
    ("tool", "argv", "message"),
    [
        ("kiosk", ["demo", "--port", "99999"], "port must be within 0..65535, got 99999"),
        ("kiosk", ["demo", "--idle-timeout", "0"], "must be within 5..3600, got 0"),
        ("kiosk", ["serve", "--port", "-1"], "port must be within 0..65535, got -1"),
        (
            "cardtool",
            ["fido", "reset"],
            "reset erases the key: pass --yes (no terminal to ask for confirmation)",
        ),
        ("city-server", ["db", "init"], "no database configured"),
        ("city-server", ["terminal", "add", "--name", "c1", "--public-key", "missing.pem"], "does not exist"),
    ],
)
def test_reported_cli_errors(tool: str, argv: list[str], message: str, tmp_path: Path) -> None:
    """The cases of the issue's list, each one line naming the problem."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a daemon-free namespace")
    Path("/run/pcscd").mkdir(parents=True, exist_ok=True)
    r = _run(tool, argv, tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert not (tmp_path / "city-server.db").exists()


def test_second_emulator_on_a_busy_reader_is_refused(pcscd, vpcd_slot, tmp_path: Path) -> None:
    """vpcd queues a second card's connection and never talks to it: the second emulator must say so."""
    import time

    port, reader = vpcd_slot
    cli = [sys.executable, "-m", "firmware_tools.cli", "emulate", "citizen", "--vpcd", f"127.0.0.1:{port}"]
    first = subprocess.Popen(
        [*cli, "--state", str(tmp_path / "a.json")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        from tests.fixtures.pcsc import card_present

        while not card_present(reader):
            assert time.monotonic() < deadline and first.poll() is None, "first card not inserted"
            time.sleep(0.2)
        second = subprocess.run(
            [*cli, "--state", str(tmp_path / "b.json")],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert second.returncode == 1
        assert "card inserted" not in second.stderr
        busy = f"{reader} is busy: another card is in it (another `cardtool emulate`?); not inserted"
        assert second.stderr.strip().splitlines()[-1] == f"cardtool: error: {busy}"
        assert first.poll() is None and card_present(reader)  # the first card stays
    finally:
        first.terminate()
        first.wait(15)
