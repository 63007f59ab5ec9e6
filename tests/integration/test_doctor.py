"""``kiosk doctor`` / ``city-server doctor`` as processes: all pass on a healthy host (pcscd + vpcd readers,
contracts on anvil, keys 0600, free port) and each broken part is named on its line: pcscd stopped (a mount
namespace hiding its socket), wrong chain id, unreadable/too-open key, port in use."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

pytestmark = [pytest.mark.integration, pytest.mark.anvil]

KIOSK = [sys.executable, "-m", "terminal.cli", "doctor"]
SERVER = [sys.executable, "-m", "server.cli", "doctor"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lines(r: subprocess.CompletedProcess) -> dict[str, str]:
    """check name -> its line; asserts one line per check and no traceback."""
    assert "Traceback" not in r.stdout + r.stderr, r.stderr[-2000:]
    out = {}
    for line in r.stdout.splitlines():
        if line[:4].strip() in ("ok", "FAIL", "??"):
            out[line[5:].split(":", 1)[0]] = line
    return out


def _kiosk_config(tmp_path: Path, network_file: Path, port: int, **extra: str) -> Path:
    cfg = tmp_path / "kiosk.toml"
    terminal = {"mode": "kiosk", "port": port, **{k: v for k, v in extra.items() if k == "mode"}}
    lines = ["[terminal]"] + [f"{k} = {json.dumps(v)}" for k, v in terminal.items()]
    lines += ["[chain]", f"network_file = {json.dumps(str(network_file))}"]
    if "terminal_key" in extra:
        lines += [
            "[server]",
            f"url = {json.dumps(extra.get('server_url', 'http://127.0.0.1:9'))}",
            f"terminal_key = {json.dumps(extra['terminal_key'])}",
        ]
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "CITYID_KIOSK_SECRET": "ab" * 32, **extra}


def _healthy(lines: dict[str, str], names: list[str]) -> None:
    assert sorted(lines) == sorted(names)
    for name, line in lines.items():
        # the clock is undecidable in a container without systemd; never reported as ok then
        assert line.startswith("ok ") or (name == "clock" and line.startswith("?? ")), line


@pytest.fixture
def city_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A city server with an authorization key (a default deployment) over HTTP; the kiosk's key registered
    and authorized. Yields the server URL and the kiosk's key file (0600)."""
    import threading

    from werkzeug.serving import make_server

    from cityid.credential import AGE_OVER_65, BUSAN_RESIDENT
    from tests.unit.server_support import authorization_rig, terminal_key_file

    rig = authorization_rig(f"sqlite:///{tmp_path}/server.db")
    key_file = tmp_path / "kiosk-key.pem"
    terminal_key_file(key_file, rig.db, "busan-kiosk-dev", rig.app, (BUSAN_RESIDENT, AGE_OVER_65))
    server = make_server("127.0.0.1", 0, rig.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", key_file
    finally:
        server.shutdown()
        thread.join(5)


def test_kiosk_doctor_healthy_and_broken(pcscd, anvil_chain, city_server, tmp_path: Path) -> None:
    net = tmp_path / "network.json"
    anvil_chain.network.save(net)
    port = _free_port()
    url, key_file = city_server
    cfg = _kiosk_config(tmp_path, net, port, server_url=url, terminal_key=str(key_file))
    r = subprocess.run([*KIOSK, "--config", str(cfg)], env=_env(), capture_output=True, text=True, timeout=60)
    names = [
        "config",
        "session secret",
        "terminal key",
        "pcscd",
        "readers",
        "chain",
        "city server",
        "terminal authentication",
        "clock",
        "port",
        "printer",
    ]
    _healthy(_lines(r), names)
    assert r.returncode in (0, 3)

    # wrong chain id + port in use
    bad = dataclasses.replace(anvil_chain.network, chain_id=anvil_chain.network.chain_id + 1)
    bad.save(tmp_path / "wrong.json")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen(1)
        r = subprocess.run(
            [*KIOSK, "--config", str(_kiosk_config(tmp_path, tmp_path / "wrong.json", port))],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    lines = _lines(r)
    assert r.returncode == 1
    assert lines["chain"].startswith("FAIL chain:") and f"{bad.chain_id}" in lines["chain"]
    assert lines["port"].startswith("FAIL port:") and "in use" in lines["port"] and "fix:" in lines["port"]
    assert lines["pcscd"].startswith("ok ") and lines["config"].startswith("ok ")

    # pcscd stopped: a private mount namespace hides its socket directory
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare for the pcscd-stopped case")
    script = 'mount -t tmpfs tmpfs /run/pcscd && exec "$@"'
    cfg = _kiosk_config(tmp_path, net, port, server_url=url, terminal_key=str(key_file))  # healthy again
    r = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", *KIOSK, "--config", str(cfg)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = _lines(r)
    assert r.returncode == 1
    assert lines["pcscd"].startswith("FAIL pcscd:") and "pcscd.socket" in lines["pcscd"]
    assert lines["readers"].startswith("??   readers: skipped")
    assert lines["chain"].startswith("ok ")


def test_kiosk_doctor_names_a_readable_counter_key(pcscd, anvil_chain, tmp_path: Path) -> None:
    net = tmp_path / "network.json"
    anvil_chain.network.save(net)
    key = tmp_path / "counter-key.pem"
    key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key.chmod(0o644)
    cfg = _kiosk_config(tmp_path, net, _free_port(), mode="counter", terminal_key=str(key))
    r = subprocess.run([*KIOSK, "--config", str(cfg)], env=_env(), capture_output=True, text=True, timeout=60)
    lines = _lines(r)
    assert lines["terminal key"] == (
        f"FAIL terminal key: terminal key {key} has mode 0644 (others can read it) — fix: chmod 600 {key}"
    )
    assert lines["city server"].startswith("FAIL city server:")
    key.chmod(0o600)
    r = subprocess.run([*KIOSK, "--config", str(cfg)], env=_env(), capture_output=True, text=True, timeout=60)
    assert _lines(r)["terminal key"].startswith("ok ")


def test_city_server_doctor_healthy_and_broken(anvil_chain, tmp_path: Path) -> None:
    from server.keys import KeystoreSigner

    net = tmp_path / "network.json"
    anvil_chain.network.save(net)
    KeystoreSigner.generate(tmp_path / "issuer.p8", "pw")
    KeystoreSigner.generate(tmp_path / "authorization.p8", "apw")  # [authorization_key]: a default setup
    env = {
        **os.environ,
        "CITY_SERVER_DB_URL": f"sqlite:///{tmp_path}/s.db",
        "CITY_SERVER_CHAIN": str(net),
        "CITY_ISSUER_KEYSTORE": str(tmp_path / "issuer.p8"),
        "CITY_ISSUER_KEY_PASSWORD": "pw",
        "CITY_AUTHORIZATION_KEYSTORE": str(tmp_path / "authorization.p8"),
        "CITY_AUTHORIZATION_KEY_PASSWORD": "apw",
        "CITY_CHAIN_PRIVATE_KEY": "0x" + bytes(anvil_chain.accounts[0].key).hex(),
    }
    port = str(_free_port())
    r = subprocess.run([*SERVER, "--port", port], env=env, capture_output=True, text=True, timeout=60)
    lines = _lines(r)
    assert lines["database"].startswith("FAIL database:") and "city-server db init" in lines["database"]
    assert not (tmp_path / "s.db").exists()  # the doctor never creates a database
    subprocess.run(
        [sys.executable, "-m", "server.cli", "db", "init"], env=env, check=True, capture_output=True
    )
    r = subprocess.run(
        [*SERVER, "--port", port, "--diagnose"], env=env, capture_output=True, text=True, timeout=60
    )
    names = ["config", "database", "issuer key", "authorization key", "chain", "registrar", "clock", "port"]
    _healthy(_lines(r), names)
    dump = json.loads(r.stdout[r.stdout.index("{") :])
    assert (
        dump["tool"] == "city-server doctor" and dump["config"]["secrets_set"]["issuer_key_password"] is True
    )
    assert "pw" not in json.dumps(dump["config"]) and env["CITY_CHAIN_PRIVATE_KEY"] not in r.stdout
    assert dump["config"]["secrets_set"]["authorization_key_password"] is True

    (tmp_path / "issuer.p8").chmod(0o000 if os.geteuid() != 0 else 0o640)
    r = subprocess.run(
        [*SERVER, "--port", port],
        env={**env, "CITY_SERVER_CHAIN": str(tmp_path / "none.json")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = _lines(r)
    assert r.returncode == 1
    assert lines["issuer key"].startswith("FAIL issuer key:") and "chmod 600" in lines["issuer key"]
    assert lines["chain"].startswith("FAIL chain:")
    # no [authorization_key]: named, with the command that creates it
    no_auth = {k: v for k, v in env.items() if not k.startswith("CITY_AUTHORIZATION_")}
    r = subprocess.run([*SERVER, "--port", port], env=no_auth, capture_output=True, text=True, timeout=60)
    line = _lines(r)["authorization key"]
    assert r.returncode == 1 and line.startswith("FAIL authorization key: no [authorization_key]")
    assert "city-server authorization-key generate" in line
