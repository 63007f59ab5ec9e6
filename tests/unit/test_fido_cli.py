"""``cardtool emulate fido`` and ``cardtool fido attestation-root`` without daemons (a closed vpcd port)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

from cryptography import x509
from firmware_tools.cli import main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_emulate_fido_creates_the_state_and_stops_on_sigterm(tmp_path, capsys, monkeypatch) -> None:
    """The key joins the default attestation batch under the data dir (created on first use)."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    state = tmp_path / "key.json"
    port = _free_port()  # nobody listens: the key keeps trying to reach vpcd
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "firmware_tools.cli",
            "emulate",
            "fido",
            "--state",
            str(state),
            "--vpcd",
            f"127.0.0.1:{port}",
            "--touch-delay",
            "0.2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not state.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "ATR:    3B 8A" in out and "AAGUID:" in out and str(state) in out
    assert "key removed" in err
    assert main(["fido", "attestation-root", "--state", str(state)]) == 0
    pem = capsys.readouterr().out
    root = x509.load_pem_x509_certificate(pem.encode())
    assert "Test FIDO Attestation Root" in root.subject.rfc4514_string()
    batch_root = tmp_path / "xdg" / "cityid" / "fido-attestation-batch" / "root.pem"
    assert batch_root.read_text() == pem and f"batch:  {batch_root.parent}" in out
    assert main(["fido", "attestation-root"]) == 0  # no option: the default batch
    assert capsys.readouterr().out == pem


def test_cli_errors_are_one_line(tmp_path, capsys) -> None:
    assert main(["fido", "attestation-root", "--state", str(tmp_path / "none.json")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no key state" in err
    (tmp_path / "other.json").write_text('{"format": 1, "sections": {}}')
    assert main(["fido", "attestation-root", "--state", str(tmp_path / "other.json")]) == 1
    assert "no FIDO attestation CA" in capsys.readouterr().err
    assert main(["emulate", "fido", "--touch-delay", "-1", "--state", str(tmp_path / "x.json")]) == 1
    assert "must not be negative" in capsys.readouterr().err
