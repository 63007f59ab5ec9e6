"""Artifacts recompile byte for byte; network config validation; chain account loading; the chain CLI."""

from __future__ import annotations

import json
import secrets

import pytest

from cityid.chain.contracts import CONTRACT_NAMES, load_artifact
from cityid.chain.errors import ChainConfigError
from cityid.chain.network import NetworkConfig
from server.chain.accounts import create_keystore, load_account
from server.chain_cli import ARTIFACTS, compile_contracts
from server.cli import main as city_server

ADDR = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"


def test_recompile_matches_committed_artifacts(tmp_path):
    compile_contracts(tmp_path)
    for name in CONTRACT_NAMES:
        assert (tmp_path / f"{name}.json").read_bytes() == (ARTIFACTS / f"{name}.json").read_bytes(), name


def test_artifacts_pin_compiler_and_evm_target():
    for name in CONTRACT_NAMES:
        art = load_artifact(name)
        assert art.compiler["version"].startswith("0.8.24+commit")
        assert art.compiler["settings"]["evmVersion"] == "london"  # no PUSH0: geth forks such as Metadium
        assert art.compiler["settings"]["optimizer"] == {"enabled": True, "runs": 200}


def test_network_config_roundtrip_and_validation(tmp_path):
    cfg = NetworkConfig("busan", 11, "http://node:8545", {"did_registry": ADDR}, deploy_block=5)
    path = tmp_path / "n.json"
    cfg.save(path)
    assert NetworkConfig.load(path) == cfg
    assert cfg.address("did_registry") == ADDR
    with pytest.raises(ChainConfigError, match="no status_registry"):
        cfg.address("status_registry")
    with pytest.raises(ChainConfigError, match="lacks addresses"):
        cfg.require_complete()
    bad = [
        {"name": "Busan!", "chain_id": 1, "rpc_url": "x"},
        {"name": "busan", "chain_id": 0, "rpc_url": "x"},
        {"name": "busan", "chain_id": "1", "rpc_url": "x"},
        {"name": "busan", "chain_id": 1},
        {"name": "busan", "chain_id": 1, "rpc_url": "x", "addresses": {"did_registry": "0x1234"}},
        {
            "name": "busan",
            "chain_id": 1,
            "rpc_url": "x",
            "addresses": {"did_registry": ADDR.replace("a", "A", 1)},
        },
        {"name": "busan", "chain_id": 1, "rpc_url": "x", "addresses": {"nope": ADDR}},
        [],
    ]
    for data in bad:
        with pytest.raises(ChainConfigError):
            NetworkConfig.from_json(data)
    path.write_text("{not json")
    with pytest.raises(ChainConfigError, match="not valid JSON"):
        NetworkConfig.load(path)
    with pytest.raises(ChainConfigError, match="cannot read"):
        NetworkConfig.load(tmp_path / "missing.json")


def test_account_from_keystore_or_env(tmp_path):
    env = {"CITY_CHAIN_PASSWORD": "correct horse"}
    ks = tmp_path / "k.json"
    address = create_keystore(ks, env)
    assert oct(ks.stat().st_mode & 0o777) == "0o600"
    assert json.loads(ks.read_text())["address"].lower() == address[2:].lower()
    assert "correct horse" not in ks.read_text()
    assert load_account(ks, env).address == address
    with pytest.raises(ChainConfigError, match="wrong password"):
        load_account(ks, {"CITY_CHAIN_PASSWORD": "nope"})
    with pytest.raises(ChainConfigError, match="refusing to overwrite"):
        create_keystore(ks, env)
    key = "0x" + "11" * 32
    assert load_account(None, {"CITY_CHAIN_PRIVATE_KEY": key}).key.hex().endswith("11" * 32)
    with pytest.raises(ChainConfigError, match="not a valid private key"):
        load_account(None, {"CITY_CHAIN_PRIVATE_KEY": "0x12"})
    with pytest.raises(ChainConfigError, match="no chain account"):
        load_account(None, {})


def test_cli_errors_are_one_line(capsys, monkeypatch):
    monkeypatch.delenv("CITY_CHAIN_PRIVATE_KEY", raising=False)
    assert city_server(["chain", "deploy", "--rpc", "http://127.0.0.1:9", "--network", "busan"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no chain account" in err
    monkeypatch.setenv("CITY_CHAIN_PRIVATE_KEY", "0x" + "11" * 32)
    assert city_server(["chain", "deploy", "--rpc", "ftp://x", "--network", "busan"]) == 1
    assert "http(s) URL" in capsys.readouterr().err


def test_checksum_is_memoised_under_both_spellings(monkeypatch):  # type: ignore[no-untyped-def]
    """An identity's DID takes the EIP-55 form of an address already in EIP-55 form: no second keccak."""
    import cityid.chain.network as net

    calls = []
    real = net.to_checksum_address
    monkeypatch.setattr(net, "to_checksum_address", lambda a: calls.append(a) or real(a))
    monkeypatch.setattr(net, "_CHECKSUMS", {})
    lower = "0x" + secrets.token_hex(20)
    eip55 = net.checksum(lower)
    assert eip55 == real(lower) and eip55 != lower
    assert net.checksum(eip55) == eip55 and net.checksum(lower.upper().replace("0X", "0x")) == eip55
    assert calls == [lower, lower.upper().replace("0X", "0x")]  # the EIP-55 spelling was a hit
    monkeypatch.setattr(net, "_CHECKSUMS_MAX", 2)
    net.checksum("0x" + secrets.token_hex(20))  # full: cleared, still right
    assert net.checksum(eip55) == eip55 and len(net._CHECKSUMS) <= 3
