"""cityid.doctor: one line per check; a failing or crashing check never hides the others; undecided ≠ ok."""

from __future__ import annotations

import io
import os
import socket

import pytest

from cityid.doctor import Check, Fail, Unknown, check_port, check_secret_file, exit_code, run_checks


def test_lines_and_exit_codes() -> None:
    def boom() -> str:
        raise RuntimeError("unexpected")

    def bad() -> str:
        raise Fail("the thing is broken", "repair it")

    def unsure() -> str:
        raise Unknown("cannot tell")

    out = io.StringIO()
    results = run_checks(
        [Check("a", lambda: "fine"), Check("b", bad), Check("c", boom), Check("d", unsure)], out
    )
    assert out.getvalue().splitlines() == [
        "ok   a: fine",
        "FAIL b: the thing is broken — fix: repair it",
        "FAIL c: RuntimeError: unexpected — fix: report this with --diagnose",
        "??   d: cannot tell",
    ]
    assert exit_code(results) == 1
    assert exit_code(results[3:]) == 3
    assert exit_code(results[:1]) == 0


def test_secret_file_permissions(tmp_path) -> None:
    key = tmp_path / "k.pem"
    with pytest.raises(Fail, match="does not exist"):
        check_secret_file(key, "key")
    key.write_text("x")
    key.chmod(0o640)
    with pytest.raises(Fail, match="mode 0640") as exc:
        check_secret_file(key, "key")
    assert exc.value.fix == f"chmod 600 {key}"
    key.chmod(0o600)
    assert check_secret_file(key, "key") == f"{key} (mode 0600)"
    if os.geteuid() != 0:  # root reads anything
        key.chmod(0o000)
        with pytest.raises(Fail, match="not readable"):
            check_secret_file(key, "key")


def test_port_in_use_unless_ours() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(Fail, match="in use by another program"):
            check_port("127.0.0.1", port)
        assert "served by the running service" in check_port("127.0.0.1", port, ours=lambda url: True)
    assert check_port("127.0.0.1", port).endswith("free")
