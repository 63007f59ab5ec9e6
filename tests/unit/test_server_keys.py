"""Issuer keys: the encrypted keystore and the PKCS#11 signer on a SoftHSM2 token; server config."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cityid.jose import es256_verify, parse_compact
from server.config import ConfigError, IssuerKeyConfig, load_config
from server.keys import IssuerKeyError, KeystoreSigner, Pkcs11Signer, load_signer
from tests.unit.server_support import CLAIMS, make_rig

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


def test_keystore_roundtrip_and_wrong_password(tmp_path):
    path = tmp_path / "issuer.p8"
    made = KeystoreSigner.generate(path, "correct horse")
    assert path.stat().st_mode & 0o777 == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in path.read_bytes()
    loaded = KeystoreSigner.load(path, "correct horse")
    assert loaded.public_point == made.public_point
    sig = loaded.sign(b"header.payload")
    assert len(sig) == 64 and es256_verify(made.public_point, b"header.payload", sig)
    with pytest.raises(IssuerKeyError, match="wrong password"):
        KeystoreSigner.load(path, "wrong")
    with pytest.raises(IssuerKeyError, match="already exists"):
        KeystoreSigner.generate(path, "x")
    with pytest.raises(IssuerKeyError, match="cannot read"):
        KeystoreSigner.load(tmp_path / "missing.p8", "x")


def test_load_signer_needs_password(tmp_path):
    with pytest.raises(IssuerKeyError, match="CITY_ISSUER_KEY_PASSWORD"):
        load_signer(IssuerKeyConfig(keystore_path=str(tmp_path / "k.p8")))
    cfg = IssuerKeyConfig(
        keystore_path=str(tmp_path / "k.p8"), keystore_password="pw", create_if_missing=True
    )
    first = load_signer(cfg)
    assert load_signer(cfg).public_point == first.public_point


@pytest.fixture(scope="module")
def softhsm_token(tmp_path_factory):
    """Two SoftHSM2 tokens (the library reads SOFTHSM2_CONF once per process: one set-up per module)."""
    from tests.softhsm import softhsm_tokens

    with softhsm_tokens(tmp_path_factory.mktemp("softhsm"), ("city-issuer", "city-spare")):
        Pkcs11Signer.generate(SOFTHSM_MODULE, "city-issuer", "issuer", "1234")
        yield "city-issuer"


def test_pkcs11_signer_signs_credentials(tmp_path, softhsm_token):
    signer = load_signer(IssuerKeyConfig(source="pkcs11", pkcs11_token=softhsm_token, pkcs11_pin="1234"))
    sig = signer.sign(b"abc")
    assert es256_verify(signer.public_point, b"abc", sig)
    rig = make_rig(f"sqlite:///{tmp_path}/s.db", signer=signer)
    card = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    res = rig.client.enroll("hsm-enroll-1", CLAIMS, card, b"\x01" * 8)
    jws = parse_compact(res.record.issuer_jwt)
    assert es256_verify(signer.public_point, jws.signing_input, jws.signature)
    assert rig.chain.issuers[rig.service.issuer_did] == signer.public_point


def test_pkcs11_errors_are_clear(softhsm_token):
    with pytest.raises(IssuerKeyError, match="PKCS#11"):
        Pkcs11Signer(SOFTHSM_MODULE, "city-spare", "issuer", "0000")  # wrong PIN
    with pytest.raises(IssuerKeyError, match="PKCS#11"):
        Pkcs11Signer(SOFTHSM_MODULE, "city-spare", "no-such-key", "1234")
    with pytest.raises(IssuerKeyError, match="PKCS#11"):
        Pkcs11Signer(SOFTHSM_MODULE, "no-such-token", "issuer", "1234")
    with pytest.raises(IssuerKeyError, match="PIN missing"):
        load_signer(IssuerKeyConfig(source="pkcs11", pkcs11_token=softhsm_token))


def test_config_file_and_env(tmp_path):
    f = tmp_path / "server.toml"
    f.write_text('[server]\ndatabase_url = "sqlite:///x.db"\nauth_window_seconds = 30\n'
                 '[issuer_key]\nsource = "pkcs11"\npkcs11_token = "t"\n')  # fmt: skip
    cfg = load_config(f, env={"CITY_PKCS11_PIN": "9999", "CITY_SERVER_DB_URL": "sqlite:///y.db"})
    assert cfg.database_url == "sqlite:///y.db" and cfg.auth_window_seconds == 30
    assert cfg.issuer_key.source == "pkcs11" and cfg.issuer_key.pkcs11_pin == "9999"
    assert "9999" not in repr(cfg)
    f.write_text('[issuer_key]\nkeystore_password = "oops"\n')
    with pytest.raises(ConfigError, match="environment"):
        load_config(f, env={})
    f.write_text("[server]\nbogus = 1\n")
    with pytest.raises(ConfigError, match="unknown"):
        load_config(f, env={})
    f.write_text("not toml [")
    with pytest.raises(ConfigError, match="TOML"):
        load_config(f, env={})
    with pytest.raises(ConfigError, match="integer"):
        load_config(None, env={"CITY_SERVER_AUTH_WINDOW": "soon"})
