"""cityid.secrets: environment first, then systemd credentials ($CREDENTIALS_DIRECTORY/<name>)."""

from __future__ import annotations

import pytest

from cityid.errors import CityIdError
from cityid.secrets import secret, with_secrets
from server.config import load_config


def test_env_wins_then_credential_file(tmp_path) -> None:
    (tmp_path / "CITY_ISSUER_KEY_PASSWORD").write_text("from-credential\n")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert secret("CITY_ISSUER_KEY_PASSWORD", env) == "from-credential"
    assert secret("CITY_ISSUER_KEY_PASSWORD", {**env, "CITY_ISSUER_KEY_PASSWORD": "env"}) == "env"
    assert secret("CITY_PKCS11_PIN", env) is None
    assert secret("CITY_ISSUER_KEY_PASSWORD", {}) is None
    assert (
        with_secrets(["CITY_ISSUER_KEY_PASSWORD", "X"], env)["CITY_ISSUER_KEY_PASSWORD"] == "from-credential"
    )


def test_unreadable_credential_is_a_clear_error(tmp_path) -> None:
    (tmp_path / "CITY_PKCS11_PIN").mkdir()  # a directory where a file should be
    with pytest.raises(CityIdError, match="cannot read credential CITY_PKCS11_PIN"):
        secret("CITY_PKCS11_PIN", {"CREDENTIALS_DIRECTORY": str(tmp_path)})


def test_server_config_reads_credentials(tmp_path) -> None:
    (tmp_path / "CITY_ISSUER_KEY_PASSWORD").write_text("pw-cred")
    (tmp_path / "CITY_CHAIN_PRIVATE_KEY").write_text("0x" + "11" * 32 + "\n")
    cfg = load_config(None, env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert cfg.issuer_key.keystore_password == "pw-cred"
    assert cfg.chain_private_key == "0x" + "11" * 32


def test_terminal_config_reads_kiosk_secret_credential(tmp_path, monkeypatch) -> None:
    from terminal.config import parse_config

    (tmp_path / "CITYID_KIOSK_SECRET").write_text("ab" * 32)
    monkeypatch.delenv("CITYID_KIOSK_SECRET", raising=False)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert parse_config({}).secret_key == bytes.fromhex("ab" * 32)
