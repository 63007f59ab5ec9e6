"""``kiosk doctor``'s terminal-authentication line (docs/operations.md §Diagnostics) against a city server
over HTTP: ok with a certificate; FAIL naming the fix when the server has no [authorization_key], when the
terminal is not authorized, when [server] is missing, and for an explicit opt-out (lab/test setups only)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from cityid.credential import AGE_OVER_65, BUSAN_RESIDENT
from cityid.doctor import Fail
from terminal.doctor_cli import _Host
from tests.unit.server_support import authorization_rig, make_rig, terminal_key_file

KIOSK_ID = "busan-kiosk-001"


def _serve(rig) -> Iterator[str]:  # type: ignore[no-untyped-def]
    server = make_server("127.0.0.1", 0, rig.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(5)


def _kiosk(tmp_path: Path, rig, url: str | None, **terminal: object) -> _Host:  # type: ignore[no-untyped-def]
    path = tmp_path / "kiosk-key.pem"
    terminal_key_file(path, rig.db if url is not None else None, KIOSK_ID)
    lines = ["[terminal]", f'id = "{KIOSK_ID}"'] + [f"{k} = {str(v).lower()}" for k, v in terminal.items()]
    lines += ["[chain]", 'network = "metadium"', 'rpc = "http://127.0.0.1:9"', "chain_id = 11"]
    lines += ["[chain.addresses]"] + [f'{k} = "0x{"7" * 40}"' for k in (
        "did_registry", "status_registry", "trusted_issuers", "anchor_registry", "multicall")]  # fmt: skip
    if url is not None:
        lines += ["[server]", f'url = "{url}"', f'terminal_key = "{path}"']
    cfg = tmp_path / "kiosk.toml"
    cfg.write_text("\n".join(lines) + "\n")
    host = _Host(str(cfg))
    host.config_check()
    return host


@pytest.fixture
def city(tmp_path: Path) -> Iterator[tuple[object, str]]:
    rig = authorization_rig(f"sqlite:///{tmp_path}/server.db")
    for url in _serve(rig):
        yield rig, url


def test_ok_with_a_certificate_fail_until_authorized(city, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rig, url = city
    host = _kiosk(tmp_path, rig, url)
    with pytest.raises(Fail) as exc:  # registered, not yet authorized
        host.terminal_auth_check()
    assert "not authorized" in exc.value.problem and "city-server terminal authorize" in exc.value.fix
    rig.app.extensions["cityid.terminals"].authorize(KIOSK_ID, (BUSAN_RESIDENT, AGE_OVER_65))
    line = host.terminal_auth_check()
    assert line.startswith("certificate for 2 claim(s) until ") and "authorization root" in line


def test_a_server_without_authorization_key_is_named(tmp_path: Path) -> None:
    rig = make_rig(f"sqlite:///{tmp_path}/server.db")  # no [authorization_key]
    for url in _serve(rig):
        with pytest.raises(Fail) as exc:
            _kiosk(tmp_path, rig, url).terminal_auth_check()
        assert "[authorization_key]" in exc.value.problem
        assert "city-server authorization-key generate" in exc.value.fix


def test_missing_server_and_explicit_opt_out_fail(city, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rig, _url = city
    with pytest.raises(Fail) as exc:
        _kiosk(tmp_path, rig, None).terminal_auth_check()
    assert "needs [server] url and terminal_key" in exc.value.problem
    host = _kiosk(tmp_path, rig, None, terminal_authentication=False)
    with pytest.raises(Fail) as exc:
        host.terminal_auth_check()
    assert "cannot read cards that carry an authorization root" in exc.value.problem
    assert "remove terminal_authentication = false" in exc.value.fix
    assert host.key_check().startswith("not needed")  # no server, no key: only for the lab opt-out
