"""The configuration references in docs/ui.md and docs/server.md against the code's schema, both ways:
every setting the code accepts is documented, every documented setting is accepted, the documented example
loads, and every environment variable the code reads is named in the docs (issue 16 item 5)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from terminal.config import ConfigError as TerminalConfigError
from terminal.config import hash_password, parse_config

DOCS = Path(__file__).resolve().parents[2] / "docs"
ROOT = DOCS.parent


def _toml_block(doc: str, heading: str) -> str:
    text = (DOCS / doc).read_text()
    section = text[text.index(heading) :]
    m = re.search(r"```toml\n(.*?)```", section, flags=re.S)
    assert m, f"no toml block under {heading} in {doc}"
    return m.group(1)


def _flatten(table: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for k, v in table.items():
        keys.add(prefix + k)
        if isinstance(v, dict) and prefix + k != "counter.clerks":
            keys |= _flatten(v, f"{prefix}{k}.")
    return keys


def _mentioned(block: str, dotted: str) -> bool:
    """``key =`` on a line of the block (a setting or a comment naming it) inside its table."""
    key = dotted.rsplit(".", 1)[-1]
    return re.search(rf"(^|[\s#\[.]){re.escape(key)}\s*(=|\])", block, flags=re.M) is not None


def _real_values(block: str) -> str:
    """The documented example with its placeholders made concrete."""
    out = re.sub(r'"0x…"', lambda _m: '"0x' + "11" * 20 + '"', block)
    return re.sub(r'"scrypt\$[^"]*"', lambda _m: f'"{hash_password("documented-pw")}"', out)


# ---- terminal (docs/ui.md) ----------------------------------------------------------------------


def _known(data: dict[str, Any]) -> list[str]:
    with pytest.raises(TerminalConfigError) as exc:
        parse_config(data)
    m = re.search(r"unknown setting \(known: ([^)]*)\)", str(exc.value))
    assert m, str(exc.value)
    return [k.strip() for k in m.group(1).split(",")]


def _terminal_schema(example: dict[str, Any]) -> set[str]:
    """The settings the validator accepts, asked from the validator itself (its unknown-setting error)."""
    keys: set[str] = set()
    for table in _known({"zz_probe": 1}):
        keys.add(table)
        inner = _known({table: {"zz_probe": 1}})
        keys |= {f"{table}.{k}" for k in inner}
    chain = {k: v for k, v in example["chain"].items() if k != "addresses"}
    keys |= {
        f"chain.addresses.{k}"
        for k in _known({"chain": {**chain, "addresses": {"zz_probe": "0x" + "11" * 20}}})
    }
    return keys


def test_terminal_reference_matches_the_schema(tmp_path: Path) -> None:
    block = _toml_block("ui.md", "## Configuration file")
    example = tomllib.loads(_real_values(block))
    documented = _flatten(example)
    schema = _terminal_schema(example)
    assert documented - schema == set(), "documented but not accepted"
    undocumented = {k for k in schema if k not in documented and not _mentioned(block, k)}
    assert undocumented == set(), "accepted but not documented in docs/ui.md"
    parse_config(example)  # the documented example is a valid configuration


def test_terminal_environment_is_documented() -> None:
    text = (DOCS / "ui.md").read_text() + (DOCS / "operations.md").read_text()
    code = "".join((ROOT / p).read_text() for p in ("terminal/config.py", "terminal/web_cli.py"))
    for var in sorted(set(re.findall(r'"((?:CITYID|KIOSK)_[A-Z_]+)"', code))):
        assert var in text, f"{var} is read by the terminal but not documented"


# ---- city server (docs/server.md) ---------------------------------------------------------------


def test_server_reference_matches_the_schema(tmp_path: Path) -> None:
    from server.config import SERVER_KEYS, IssuerKeyConfig, ManagementKeyConfig, load_config

    block = _toml_block("server.md", "## Configuration")
    example = tomllib.loads(block)
    documented = _flatten(example)
    secret_fields = {"keystore_password", "pkcs11_pin"}
    schema = {"server", "issuer_key", "authorization_key"} | {f"server.{k}" for k in SERVER_KEYS}
    schema |= {f"issuer_key.{f}" for f in IssuerKeyConfig.__dataclass_fields__ if f not in secret_fields}
    schema |= {"management_key"} | {
        f"management_key.{f}"
        for f in ManagementKeyConfig.__dataclass_fields__
        if f not in secret_fields | {"software_master_key"}
    }
    # [authorization_key] (terminal certificates) takes the same settings as [issuer_key]
    key_fields = [f for f in IssuerKeyConfig.__dataclass_fields__ if f not in secret_fields]
    schema |= {f"authorization_key.{f}" for f in key_fields}
    assert documented - schema == set(), "documented but not accepted"
    assert {k for k in schema if k not in documented and not _mentioned(block, k)} == set()
    (tmp_path / "server.toml").write_text(block)
    load_config(tmp_path / "server.toml", env={})  # the documented example loads


def test_server_environment_is_documented() -> None:
    text = (DOCS / "server.md").read_text() + (DOCS / "operations.md").read_text()
    code = (ROOT / "server/config.py").read_text()
    for var in sorted(set(re.findall(r'"(CITY_[A-Z_]+)"', code))):
        assert var in text, f"{var} is read by the city server but not documented"
