"""``kiosk sync`` (the cityid-kiosk-sync.service command) against contracts on anvil."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.anvil]


def test_sync_once_into_the_state_directory(anvil_chain, tmp_path: Path) -> None:
    anvil_chain.network.save(tmp_path / "network.json")
    cfg = tmp_path / "kiosk.toml"
    cfg.write_text(
        f'[terminal]\nmode = "kiosk"\n[chain]\nnetwork_file = {json.dumps(str(tmp_path / "network.json"))}\n'
    )
    cli = [sys.executable, "-m", "terminal.cli", "sync", "--config", str(cfg), "--once"]
    env = {k: v for k, v in os.environ.items() if k != "STATE_DIRECTORY"}
    r = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip() == (
        "kiosk: error: no --cache FILE and no $STATE_DIRECTORY (set by systemd's StateDirectory=)"
    )
    state = tmp_path / "state"
    state.mkdir()
    r = subprocess.run(
        cli, env={**env, "STATE_DIRECTORY": str(state)}, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-2000:]
    m = re.fullmatch(r"synced to block (\d+)\n", r.stdout)
    assert m and int(m.group(1)) >= anvil_chain.network.deploy_block
    assert (state / "chain-cache.sqlite").stat().st_size > 0
