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
    # no database yet: one line naming the fix, and no ./s.db appears as a side effect
    assert main(["terminal", "add", "--db", db, "--name", "c1", "--public-key", str(bad)]) == 1
    assert capsys.readouterr().err.strip().endswith("run `city-server db init` with the same settings")
    assert not (tmp_path / "s.db").exists()
    assert main(["db", "init", "--db", db]) == 0
    capsys.readouterr()
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


def test_terminal_add_missing_file_is_one_clear_line(tmp_path, capsys):
    db = f"sqlite:///{tmp_path}/s.db"
    assert main(["db", "init", "--db", db]) == 0
    capsys.readouterr()
    assert (
        main(["terminal", "add", "--db", db, "--name", "c1", "--public-key", str(tmp_path / "nope.pem")]) == 1
    )
    err = capsys.readouterr().err
    assert err == f"city-server: error: public key file {tmp_path / 'nope.pem'} does not exist\n"


def test_db_init_needs_an_explicit_database(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CITY_SERVER_DB_URL", raising=False)
    assert main(["db", "init"]) == 1
    assert "no database configured" in capsys.readouterr().err
    assert not (tmp_path / "city-server.db").exists()


def test_audit_on_an_empty_database_says_so(tmp_path, capsys):
    db = f"sqlite:///{tmp_path}/s.db"
    assert main(["db", "init", "--db", db]) == 0
    capsys.readouterr()
    assert main(["audit", "--db", db]) == 0
    assert capsys.readouterr().err == "no audit entries\n"


def test_terminal_keygen_then_add(tmp_path, monkeypatch, capsys):
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    monkeypatch.delenv("CITYID_TERMINAL_KEY_PASSWORD", raising=False)
    assert main(["terminal", "keygen", "--name", "counter-3", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    key, pub = tmp_path / "counter-3.key.pem", tmp_path / "counter-3.pub.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    assert "city-server terminal add --name counter-3 --public-key counter-3.pub.pem" in out
    assert "PRIVATE" not in out and "fingerprint: SHA256:" in out
    load_pem_private_key(key.read_bytes(), None)
    assert main(["terminal", "keygen", "--name", "counter-3", "--out", str(tmp_path)]) == 1  # no overwrite
    db = f"sqlite:///{tmp_path}/s.db"
    assert main(["db", "init", "--db", db]) == 0
    assert main(["terminal", "add", "--db", db, "--name", "counter-3", "--public-key", str(pub)]) == 0
    monkeypatch.setenv("CITYID_TERMINAL_KEY_PASSWORD", "pw-term")
    assert main(["terminal", "keygen", "--name", "counter-4", "--out", str(tmp_path)]) == 0
    load_pem_private_key((tmp_path / "counter-4.key.pem").read_bytes(), b"pw-term")


def test_authorization_key_generate_and_config(tmp_path, monkeypatch, capsys):
    """``city-server authorization-key generate``: the city authorization key (terminal certificates) in its
    own keystore — never the issuer's — which [authorization_key] (or CITY_AUTHORIZATION_KEYSTORE) loads."""
    from server.config import load_config
    from server.keys import KeystoreSigner

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CITY_AUTHORIZATION_KEY_PASSWORD", raising=False)
    monkeypatch.delenv("CITY_AUTHORIZATION_KEYSTORE", raising=False)
    assert main(["authorization-key", "generate"]) == 1
    assert "CITY_AUTHORIZATION_KEY_PASSWORD" in capsys.readouterr().err
    monkeypatch.setenv("CITY_AUTHORIZATION_KEY_PASSWORD", "auth-pw")
    assert main(["authorization-key", "generate"]) == 0
    out = capsys.readouterr().out
    assert "authorization-key.p8" in out and "[authorization_key]" in out
    assert main(["authorization-key", "generate"]) == 1  # refuses to overwrite
    config = tmp_path / "server.toml"
    config.write_text("[authorization_key]\n")
    cfg = load_config(config)
    assert cfg.authorization_key is not None and cfg.authorization_key.keystore_path == "authorization-key.p8"
    assert cfg.authorization_key.pkcs11_key_label == "authorization"  # not the issuer key's label
    assert cfg.issuer_key.keystore_path != cfg.authorization_key.keystore_path
    KeystoreSigner.load(cfg.authorization_key.keystore_path, "auth-pw")
    assert load_config(None, env={}).authorization_key is None
    env = {"CITY_AUTHORIZATION_KEYSTORE": "k.p8", "CITY_AUTHORIZATION_KEY_PASSWORD": "x"}
    assert load_config(None, env=env).authorization_key.keystore_path == "k.p8"  # type: ignore[union-attr]


def test_the_app_checks_the_schema_and_never_writes_it(tmp_path):
    """``create_app`` (what ``serve`` and ``server.wsgi`` run) issues no DDL: on an empty database it names
    ``db init``; on an old one missing a later column it names what is missing; after ``db init`` it starts
    with not one CREATE/ALTER of its own (instances started together cannot race on the schema)."""
    import pytest
    from sqlalchemy import event, text

    from cityid.credential import LocalSigner
    from cityid.keys import P256PublicKey
    from server.app import create_app
    from server.config import ServerConfig
    from server.db import Database, StorageError
    from tests.unit.server_support import MemoryChain, publish_for_tests

    url = f"sqlite:///{tmp_path}/s.db"
    db = Database.from_url(url)
    statements: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda *a: statements.append(a[2].lstrip().upper()))
    key = ec.generate_private_key(ec.SECP256R1())
    signer = LocalSigner(key)
    signer.public_point = P256PublicKey.from_crypto(key.public_key()).point  # type: ignore[attr-defined]
    chain = MemoryChain()
    publish_for_tests(chain, signer.public_point)

    def app():  # type: ignore[no-untyped-def]
        return create_app(
            ServerConfig(database_url=url), chain=chain, signer=signer, db=db, start_writer=False
        )

    with pytest.raises(StorageError, match=r"missing audit_log.*run `city-server db init`"):
        app()
    db.init()
    with db.engine.begin() as conn:  # a database from before a later column
        conn.execute(text("ALTER TABLE audit_log DROP COLUMN clerk"))
    with pytest.raises(StorageError, match=r"missing audit_log\.clerk"):
        app()
    db.init()  # adds it in place
    statements.clear()
    app()
    assert not [s for s in statements if s.startswith(("CREATE", "ALTER", "DROP"))], statements
