"""``city-server`` administration commands: db init, terminal add/list/disable, issuer-key generate."""

from __future__ import annotations

import json

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from server.cli import main


def _pem(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    p = tmp_path / "t.pem"
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    p.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, spki))
    return p


def test_terminal_admin(tmp_path, capsys):
    db = f"sqlite:///{tmp_path}/s.db"
    assert main(["db", "init", "--db", db]) == 0
    assert (
        main(["terminal", "add", "--db", db, "--name", "counter-7", "--public-key", str(_pem(tmp_path))]) == 0
    )
    assert main(["terminal", "list", "--db", db, "--json"]) == 0
    out = capsys.readouterr().out
    listed = json.loads(out[out.index("[") :])
    assert listed[0]["name"] == "counter-7" and listed[0]["active"] is True
    assert main(["terminal", "disable", "--db", db, "--name", "counter-7"]) == 0
    assert main(["terminal", "list", "--db", db]) == 0
    assert "disabled" in capsys.readouterr().out
    assert main(["audit", "--db", db, "--json"]) == 0
    out = capsys.readouterr().out
    actions = [e["action"] for e in json.loads(out[out.index("[") :])]
    assert actions == ["terminal.add", "terminal.disable"]


def test_terminal_admin_errors_are_one_line(tmp_path, capsys):
    db = f"sqlite:///{tmp_path}/s.db"
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    assert main(["terminal", "add", "--db", db, "--name", "c1", "--public-key", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "PEM" in err and "Traceback" not in err
    assert (
        main(["terminal", "add", "--db", db, "--name", "bad name!", "--public-key", str(_pem(tmp_path))]) == 1
    )
    assert main(["terminal", "disable", "--db", db, "--name", "ghost"]) == 1
    assert "no terminal" in capsys.readouterr().err


def test_issuer_key_generate(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CITY_ISSUER_KEYSTORE", str(tmp_path / "k.p8"))
    monkeypatch.delenv("CITY_ISSUER_KEY_PASSWORD", raising=False)
    assert main(["issuer-key", "generate"]) == 1
    assert "CITY_ISSUER_KEY_PASSWORD" in capsys.readouterr().err
    monkeypatch.setenv("CITY_ISSUER_KEY_PASSWORD", "pw")
    assert main(["issuer-key", "generate"]) == 0
    assert (tmp_path / "k.p8").exists()
    assert main(["issuer-key", "generate"]) == 1  # refuses to overwrite
