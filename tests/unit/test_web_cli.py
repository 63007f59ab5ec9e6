"""`kiosk serve|clerk-password` argument and configuration errors: one clear line, exit 1 (no daemons)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cityid.errors import CityIdError
from terminal.cli import main
from terminal.config import check_password, parse_config
from terminal.web_cli import _chain_view


def _terminal_key(path: Path) -> str:
    """A P-256 terminal key file (PKCS#8 PEM), as `city-server terminal keygen` writes it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    return str(path)


def test_serve_reports_config_errors_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "kiosk.toml"
    bad.write_text('[terminal]\nmode = "kiosk"\nidle_timeout = -1\n', "utf-8")
    assert main(["serve", "--config", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "terminal.idle_timeout" in err and "Traceback" not in err
    assert main(["serve", "--config", str(tmp_path / "none.toml")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_serve_refuses_the_embedded_chain_outside_the_demo(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--mode", "kiosk", "--port", "0"]) == 1
    assert "kiosk demo" in capsys.readouterr().err


def test_counter_needs_a_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--mode", "counter", "--port", "0"]) == 1
    assert "server" in capsys.readouterr().err


def test_clerk_password(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KIOSK_CLERK_PASSWORD", "a good long password")
    assert main(["clerk-password"]) == 0
    hashed = capsys.readouterr().out.strip()
    assert check_password("a good long password", hashed)
    parse_config({"counter": {"clerks": {"kim": hashed}}})  # accepted by the config validation
    monkeypatch.setenv("KIOSK_CLERK_PASSWORD", "short")
    assert main(["clerk-password"]) == 1


def test_chain_view_from_inline_network_settings() -> None:
    addresses = {
        k: "0x" + c * 40
        for k, c in (
            ("did_registry", "1"),
            ("status_registry", "2"),
            ("trusted_issuers", "3"),
            ("multicall", "4"),
            ("anchor_registry", "5"),
        )
    }
    config = parse_config(
        {
            "chain": {
                "network": "metadium",
                "rpc": "http://127.0.0.1:9",
                "chain_id": 11,
                "addresses": addresses,
            }
        }
    )
    view = _chain_view(config)
    assert view.network.chain_id == 11 and view.network.name == "metadium"  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", ["serve", "demo", "clerk-password"])
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0 and "usage: kiosk" in capsys.readouterr().out


def test_counter_backends_from_config(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from cityid.chain.network import CONTRACT_KEYS
    from terminal.web.stack import CardCounterBackend
    from terminal.web_cli import _backends

    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "counter-key.pem").write_bytes(pem)
    config = parse_config(
        {
            "terminal": {"mode": "counter", "id": "counter-7"},
            "server": {"url": "http://127.0.0.1:9", "terminal_key": str(tmp_path / "counter-key.pem")},
            "chain": {
                "network": "metadium",
                "rpc": "http://127.0.0.1:9",
                "chain_id": 11,
                "addresses": {k: "0x" + "7" * 40 for k in CONTRACT_KEYS},
            },
        }
    )
    kiosk, counter = _backends(config)
    assert kiosk is None and isinstance(counter, CardCounterBackend)
    assert counter.server.terminal == "counter-7" and counter.server.base_url == "http://127.0.0.1:9"
    # terminal authentication is the default: the counter writes the city's root to every card
    assert counter.enrollment.authorization is not None
    assert counter.enrollment.authorization.terminal_id == "counter-7"


def test_serve_says_what_is_missing_and_where_the_screen_url_is(tmp_path: Path) -> None:
    """`kiosk serve` as a subprocess on a node that does not answer: the start-up lines, the 0600 URL file."""
    import os
    import signal
    import stat
    import subprocess
    import sys
    import time

    from cityid.chain.network import CONTRACT_KEYS

    addresses = "".join(f'{k} = "0x{str(i + 1) * 40}"\n' for i, k in enumerate(CONTRACT_KEYS))
    config = tmp_path / "kiosk.toml"
    key = _terminal_key(tmp_path / "kiosk-key.pem")
    config.write_text(
        '[terminal]\nmode = "kiosk"\nport = 0\nscreen_url_file = "screen-url"\nrequire_clock_sync = false\n'
        '[chain]\nnetwork = "metadium"\nrpc = "http://127.0.0.1:9"\nchain_id = 11\n'
        f'[server]\nurl = "http://127.0.0.1:9"\nterminal_key = "{key}"\n'
        f"[chain.addresses]\n{addresses}",
        "utf-8",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "terminal.cli", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        while not any(line.startswith("missing: a valid terminal certificate") for line in lines):
            line = proc.stdout.readline()
            assert line and time.monotonic() < deadline, "".join(lines)
            lines.append(line)
        out = "".join(lines)
        assert "screen launch URL written to" in out and "unreachable" in out
        url_file = tmp_path / "screen-url"
        assert url_file.read_text().startswith("http://127.0.0.1:")
        assert "/screen/" in url_file.read_text()
        assert stat.S_IMODE(url_file.stat().st_mode) == 0o640
        assert "missing: the system clock" not in out  # require_clock_sync = false
        # on by default: no certificate from the (absent) city server yet, said at start-up
        assert "missing: a valid terminal certificate" in out, out
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _inline_chain(**extra: object) -> dict:
    from cityid.chain.network import CONTRACT_KEYS

    return {
        "chain": {
            "network": "metadium",
            "rpc": "http://127.0.0.1:9",
            "chain_id": 11,
            "addresses": {k: "0x" + "7" * 40 for k in CONTRACT_KEYS},
            **extra,
        }
    }


def test_chain_view_quorum_cache_and_transport_policy(tmp_path: Path) -> None:
    from cityid.chain.live import LiveChainView
    from cityid.chain.quorum import QuorumChainView
    from cityid.chain.sync import SyncCache
    from terminal.config import ConfigError

    live = _chain_view(parse_config(_inline_chain()))
    assert isinstance(live, LiveChainView) and live.proofs and live.max_chain_age == 300
    quorum = _chain_view(parse_config(_inline_chain(nodes=["http://127.0.0.1:10", "https://n3.example"])))
    assert isinstance(quorum, QuorumChainView) and quorum.quorum == 2 and len(quorum.clients) == 3
    with pytest.raises(CityIdError, match="https"):
        _chain_view(parse_config(_inline_chain(nodes=["http://10.1.2.3:8545"])))
    assert isinstance(
        _chain_view(parse_config(_inline_chain(nodes=["http://10.1.2.3:8545"], allow_plain_http=True))),
        QuorumChainView,
    )
    with pytest.raises(ConfigError, match="quorum"):
        parse_config(_inline_chain(quorum=3))
    cache = _chain_view(
        parse_config(_inline_chain(cache=str(tmp_path / "c.sqlite"), status_lists=[1], max_staleness=60))
    )
    try:
        assert isinstance(cache, SyncCache) and cache.max_staleness == 60 and cache.status_lists == {1}
        assert cache.proofs and cache.max_chain_age == 60
    finally:
        cache.close()


def test_kiosk_printer_from_config(tmp_path: Path) -> None:
    """``[printer]`` on a kiosk: a certificate desk signing with the terminal key, anchoring in the chain's
    anchor registry, queueing on the city server; without a server it says so in one line."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from cityid.chain.network import CONTRACT_KEYS
    from cityid.errors import CityIdError
    from terminal.web.printing import KioskPrinting
    from terminal.web_cli import _backends, _printing

    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "kiosk-key.pem").write_bytes(pem)
    data = {
        "terminal": {"mode": "kiosk", "id": "kiosk-9"},
        "chain": {"network": "metadium", "rpc": "http://127.0.0.1:9", "chain_id": 11,
                  "addresses": {k: "0x" + "7" * 40 for k in CONTRACT_KEYS}},
        "printer": {"port": str(tmp_path / "ttyPRN"), "baudrate": 9600},
    }  # fmt: skip
    server = {"url": "http://127.0.0.1:9", "terminal_key": str(tmp_path / "kiosk-key.pem")}
    kiosk, _ = _backends(parse_config({**data, "server": server}))
    with pytest.raises(CityIdError, match=r"\[printer\] needs \[server\]"):
        _printing(parse_config(data), kiosk)
    data["server"] = server
    printing = _printing(parse_config(data), kiosk)
    assert isinstance(printing, KioskPrinting)
    desk = printing.desk
    assert desk.kiosk_id == "kiosk-9" and desk.anchor == "eip155:11:0x" + "7" * 40
    assert desk.printer.settings.baudrate == 9600  # type: ignore[union-attr]
    assert _printing(parse_config({k: v for k, v in data.items() if k != "printer"}), kiosk) is None


def test_counter_printer_and_scanner_from_config(tmp_path: Path) -> None:
    """A counter's ``[printer]`` prints enrollment receipts; its ``[scanner]`` is opened and verified."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from cityid.chain.network import CONTRACT_KEYS
    from cityid.errors import CityIdError
    from terminal.config import ConfigError
    from terminal.web.printing import CounterPrinting, CounterScanning
    from terminal.web_cli import _backends, _counter_peripherals

    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "counter-key.pem").write_bytes(pem)
    data = {
        "terminal": {"mode": "counter", "id": "counter-7"},
        "server": {"url": "http://127.0.0.1:9", "terminal_key": str(tmp_path / "counter-key.pem")},
        "chain": {"network": "metadium", "rpc": "http://127.0.0.1:9", "chain_id": 11,
                  "addresses": {k: "0x" + "7" * 40 for k in CONTRACT_KEYS}},
        "printer": {"port": str(tmp_path / "ttyPRN")},
        "scanner": {"port": str(tmp_path / "no-such-tty")},
    }  # fmt: skip
    config = parse_config(data)
    assert config.scanner is not None and config.scanner.baudrate == 9600
    _, counter = _backends(config)
    with pytest.raises(CityIdError, match="scanner port"):  # not there: one clear error, no traceback
        _counter_peripherals(config, counter)
    with pytest.raises(ConfigError, match=r"scanner\.baudrate"):
        parse_config({**data, "scanner": {"port": "/dev/ttyACM0", "baudrate": 1234}})
    del data["scanner"]
    out = _counter_peripherals(parse_config(data), counter)
    assert isinstance(out["counter_printing"], CounterPrinting) and "scanning" not in out
    assert out["counter_printing"].counter_id == "counter-7"  # type: ignore[attr-defined]
    from emulators.ptys import PtyPair

    with PtyPair() as pair:  # a real serial port (socat)
        data["scanner"] = {"port": pair.host}
        scanning = _counter_peripherals(parse_config(data), counter)["scanning"]
        assert isinstance(scanning, CounterScanning)
        scanning.stop()


def test_terminal_authentication_from_config(tmp_path: Path) -> None:
    """Terminal authentication is the default: the kiosk authenticates to cards with its certificate
    (renewed in the background), its verifier's audience is its terminal id; without [server] it is a
    one-line error saying what to add (docs/ui.md)."""
    from terminal.config import ConfigError
    from terminal.web_cli import _backends

    chain = _inline_chain()["chain"]
    assert parse_config({"chain": chain}).terminal_authentication is True  # the default
    with pytest.raises(ConfigError) as exc:
        # a file in tmp_path: the cache and journal go beside the config, not into the working directory
        _backends(parse_config({"terminal": {"id": "kiosk-7"}, "chain": chain}, str(tmp_path / "kiosk.toml")))
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'kiosk.toml'}: terminal authentication (the default)")
    assert "[server] url and terminal_key" in message and "terminal_authentication = false" in message
    key = _terminal_key(tmp_path / "kiosk-key.pem")
    with pytest.raises(ConfigError, match=r"needs \[server\] terminal_key:"):  # names only what is missing
        _backends(parse_config({"server": {"url": "http://127.0.0.1:9"}, "chain": chain}))
    with pytest.raises(CityIdError, match="true or false"):
        parse_config({"terminal": {"terminal_authentication": "yes"}, "chain": chain})
    config = parse_config(
        {
            "terminal": {"id": "kiosk-7"},
            "server": {"url": "http://127.0.0.1:9", "terminal_key": key},
            "chain": chain,
        }
    )
    kiosk, _ = _backends(config)  # the first renewal fails (no server): no certificate yet, no crash
    assert kiosk is not None
    flow = kiosk.flow  # type: ignore[attr-defined]
    assert flow.authorization is not None and flow.authorization.terminal_id == "kiosk-7"
    assert flow.verifier.audience == "kiosk-7" and flow.authorization.certificate is None
    assert flow.authorization.renewal_error and "unreachable" in flow.authorization.renewal_error


def test_serve_without_a_server_says_what_to_add(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`kiosk serve` with a kiosk configuration that has no [server]: exit 1, one line naming the fix."""
    from cityid.chain.network import CONTRACT_KEYS

    addresses = "".join(f'{k} = "0x{str(i + 1) * 40}"\n' for i, k in enumerate(CONTRACT_KEYS))
    config = tmp_path / "kiosk.toml"
    config.write_text(
        '[terminal]\nmode = "kiosk"\nport = 0\n'
        '[chain]\nnetwork = "metadium"\nrpc = "http://127.0.0.1:9"\nchain_id = 11\n'
        f"[chain.addresses]\n{addresses}",
        "utf-8",
    )
    assert main(["serve", "--config", str(config)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert "terminal authentication (the default) needs [server] url and terminal_key" in err
    assert "terminal.terminal_authentication = false" in err


@pytest.mark.parametrize(
    ("mode", "says"),
    [("counter", "answer ANY terminal"), ("kiosk", "cannot read cards that carry an authorization root")],
)
def test_an_explicit_opt_out_is_logged_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: str, says: str
) -> None:
    """``terminal_authentication = false`` (lab/test setups): no certificate, the configured audience, and a
    warning at every start that says what it costs."""
    import logging

    from terminal.web_cli import _backends

    config = parse_config(
        {
            "terminal": {"mode": mode, "id": "lab-1", "terminal_authentication": False},
            "server": {"url": "http://127.0.0.1:9", "terminal_key": _terminal_key(tmp_path / "k.pem")},
            **_inline_chain(),
        },
        str(tmp_path / "lab.toml"),  # the cache and journal go beside it, not into the working directory
    )
    with caplog.at_level(logging.WARNING, logger="terminal.web_cli"):
        kiosk, counter = _backends(config)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    start = f"{tmp_path / 'lab.toml'}: terminal.terminal_authentication = false"
    assert any(m.startswith(start) and says in m for m in warnings), warnings
    if mode == "counter":
        assert counter is not None and counter.enrollment.authorization is None  # type: ignore[attr-defined]
    else:
        assert kiosk is not None and kiosk.flow.authorization is None  # type: ignore[attr-defined]
        assert kiosk.flow.verifier.audience == config.audience  # type: ignore[attr-defined]


def test_a_bad_terminal_key_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every terminal loads its key now (terminal authentication): a missing or non-PEM file is one line."""
    from cityid.chain.network import CONTRACT_KEYS

    addresses = "".join(f'{k} = "0x{str(i + 1) * 40}"\n' for i, k in enumerate(CONTRACT_KEYS))
    config = tmp_path / "kiosk.toml"
    for name, content in (("none.pem", None), ("bad.pem", "not a key")):
        if content is not None:
            (tmp_path / name).write_text(content)
        config.write_text(
            '[terminal]\nport = 0\n[chain]\nnetwork = "metadium"\nrpc = "http://127.0.0.1:9"\nchain_id = 11\n'
            f'[server]\nurl = "http://127.0.0.1:9"\nterminal_key = "{tmp_path / name}"\n'
            f"[chain.addresses]\n{addresses}",
            "utf-8",
        )
        assert main(["serve", "--config", str(config)]) == 1
        err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert len(err) == 1 and f"terminal key {tmp_path / name}" in err[0], err
        assert "OpenSSLError" not in err[0] and "Traceback" not in err[0]
