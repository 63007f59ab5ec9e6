"""The server half of per-card management keys (issue 12 item 2; docs/server.md §Card management keys).

The city's management master key in SoftHSM2 (PKCS#11): ``C_DeriveKey(CKM_AES_ECB_ENCRYPT_DATA)`` gives the
same card keys as the software reference; the counter enrolls a card answering every 9B challenge through
the server and the HSM; the API refuses what it must (no clerk, wrong sizes, the key of an enrolled card, a
server without a master key).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from emulators.card.citizen_card import make_citizen_card
from emulators.card.transport import InProcessConnection

from cityid.errors import CityIdError
from cityid.jose import b64url_encode
from cityid.piv import Algorithm, derive_management_key, management_key_cipher
from server.config import ConfigError, ManagementKeyConfig, load_config
from server.management_keys import CardKeyError, Pkcs11CardKeys, SoftwareCardKeys, load_card_keys
from terminal.flows.counter import CounterEnrollment
from terminal.server_client import ServerCardKey, ServerError
from terminal.sessions.citizen import CitizenSession
from terminal.sessions.mgmt import ManagementKeyAlgorithmError
from terminal.sessions.piv import PivSession
from terminal.verifier import NonceStore, Verifier
from tests.softhsm import SOFTHSM_MODULE, USER_PIN, softhsm_tokens
from tests.unit.server_support import make_rig, memory_chain_view
from tests.unit.test_enrollment_counter import AUDIENCE, REQUEST

MASTER = bytes.fromhex("9f" * 16 + "3c" * 16)
TOKEN = "city-hsm"


@pytest.fixture(scope="module")
def hsm(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A token with a known master key imported (to compare with the software reference) and one the HSM
    generated itself (the production way: nobody ever saw it)."""
    import pkcs11
    from pkcs11 import Attribute, KeyType, ObjectClass

    with softhsm_tokens(tmp_path_factory.mktemp("softhsm"), (TOKEN,)):
        token = pkcs11.lib(SOFTHSM_MODULE).get_token(token_label=TOKEN)
        with token.open(user_pin=USER_PIN, rw=True) as session:
            session.create_object({
                Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES,
                Attribute.VALUE: MASTER, Attribute.TOKEN: True, Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False, Attribute.DERIVE: True, Attribute.ENCRYPT: False,
                Attribute.DECRYPT: False, Attribute.LABEL: "imported-master",
            })  # fmt: skip
        Pkcs11CardKeys.generate(SOFTHSM_MODULE, TOKEN, "city-9b-master", USER_PIN)
        yield TOKEN


def _config(label: str = "imported-master") -> ManagementKeyConfig:
    return ManagementKeyConfig("pkcs11", SOFTHSM_MODULE, TOKEN, label, pkcs11_pin=USER_PIN)


def test_hsm_errors_are_clear(hsm: str) -> None:
    """First in this module: PKCS#11 login is per process, so a wrong PIN shows only while no session of
    this process is logged in (the tests below close theirs)."""
    with pytest.raises(CardKeyError, match="no-such-key"):
        load_card_keys(_config("no-such-key"))
    with pytest.raises(CardKeyError):
        load_card_keys(ManagementKeyConfig("pkcs11", SOFTHSM_MODULE, TOKEN, pkcs11_pin="0000"))
    with pytest.raises(CardKeyError, match="PIN"):
        load_card_keys(ManagementKeyConfig("pkcs11", SOFTHSM_MODULE, TOKEN))
    with pytest.raises(CardKeyError, match="CITY_MANAGEMENT_MASTER_KEY"):
        load_card_keys(ManagementKeyConfig("software"))
    assert load_card_keys(ManagementKeyConfig()) is None


def test_hsm_card_keys_equal_the_software_reference(hsm: str) -> None:
    keys = load_card_keys(_config())
    assert isinstance(keys, Pkcs11CardKeys)
    soft = SoftwareCardKeys(MASTER)
    try:
        _compare(keys, soft)
    finally:
        keys.close()


def _compare(keys: Pkcs11CardKeys, soft: SoftwareCardKeys) -> None:
    for serial in (bytes(8), bytes.fromhex("0123456789abcdef"), os.urandom(8)):
        card_key = derive_management_key(MASTER, serial)
        assert keys.card_key(serial) == soft.card_key(serial) == card_key
        enc = management_key_cipher(Algorithm.AES_128, card_key).encryptor()
        witness = os.urandom(16)
        answer = keys.answer(serial, enc.update(witness) + enc.finalize())
        assert answer.witness == witness  # C_Decrypt with the derived key
        enc = management_key_cipher(Algorithm.AES_128, card_key).encryptor()
        assert answer.expected == enc.update(answer.challenge) + enc.finalize()  # C_Encrypt
        assert keys.answer(serial, bytes(16)).challenge != answer.challenge  # fresh challenges


def test_generated_master_key_never_leaves_the_hsm(hsm: str) -> None:
    import pkcs11
    from pkcs11 import Attribute, KeyType, ObjectClass

    keys = load_card_keys(_config("city-9b-master"))
    assert isinstance(keys, Pkcs11CardKeys) and len(keys.card_key(bytes(8))) == 16
    keys.close()
    token = pkcs11.lib(SOFTHSM_MODULE).get_token(token_label=TOKEN)
    with token.open(user_pin=USER_PIN) as session:
        master = session.get_key(
            key_type=KeyType.AES, object_class=ObjectClass.SECRET_KEY, label="city-9b-master"
        )
        assert master[Attribute.SENSITIVE] and not master[Attribute.EXTRACTABLE]
        assert not master[Attribute.ENCRYPT] and not master[Attribute.DECRYPT]  # no oracle on K_city
        with pytest.raises(pkcs11.exceptions.PKCS11Error):
            master[Attribute.VALUE]


def test_counter_enrollment_through_the_hsm(tmp_path: Path, hsm: str) -> None:
    """The whole counter flow with every 9B challenge answered by SoftHSM2: the card ends with the key the
    HSM derives for its serial, and the published default opens nothing."""
    rig = make_rig(f"sqlite:///{tmp_path}/s.db", management_key=_config())
    conn = InProcessConnection(make_citizen_card(None))
    counter = CounterEnrollment(rig.client, Verifier(memory_chain_view(rig.chain), AUDIENCE, NonceStore()))  # type: ignore[arg-type]
    out = counter.run(conn, REQUEST)
    serial = bytes.fromhex(out.card_serial)
    conn.reset()
    with pytest.raises(ManagementKeyAlgorithmError):
        PivSession(conn).authenticate_management_key()
    PivSession(conn).authenticate_management_key(derive_management_key(MASTER, serial), Algorithm.AES_128)
    citizen = CitizenSession(conn)
    citizen.authenticate(ServerCardKey(rig.client, serial))  # type: ignore[arg-type]  # re-personalization
    assert citizen.identity().did == out.citizen_did
    rig.app.extensions["cityid.card_keys"].keys.close()  # type: ignore[attr-defined]


def _post(rig, route: str, body: dict, clerk: str | None = "clerk-a"):  # type: ignore[no-untyped-def]
    """A signed request straight to the app (to send what the client would never send)."""
    import json

    from terminal.server_client import sign_request

    data = json.dumps(body).encode()
    headers = sign_request(rig.terminal_key, "counter-1", "POST", route, data, clerk=clerk)
    headers["Content-Type"] = "application/json"
    return rig.transport.client.post(route, data=data, headers=headers)


def test_api_refusals(tmp_path: Path) -> None:
    rig = make_rig(f"sqlite:///{tmp_path}/s.db")
    serial = os.urandom(8).hex()
    ok = {"card_serial": serial, "algorithm": 8, "witness": b64url_encode(bytes(16))}
    assert _post(rig, "/v1/card-keys/authenticate", ok).status_code == 200
    assert _post(rig, "/v1/card-keys/authenticate", ok, clerk=None).status_code == 401  # no clerk
    for bad in ({**ok, "algorithm": 3}, {**ok, "witness": b64url_encode(bytes(8))},
                {**ok, "card_serial": "00"}, {**ok, "extra": 1}, {"card_serial": serial}):  # fmt: skip
        assert _post(rig, "/v1/card-keys/authenticate", bad).status_code == 400, bad
    resp = _post(rig, "/v1/card-keys/set", {"card_serial": serial})
    assert resp.status_code == 200
    assert resp.get_json()["set_management_key"].startswith(b64url_encode(bytes([8, 0x9B, 16]))[:4])
    none = make_rig(f"sqlite:///{tmp_path}/n.db", management_key=ManagementKeyConfig())
    resp = _post(none, "/v1/card-keys/set", {"card_serial": serial})
    assert resp.status_code == 503 and resp.get_json()["error"] == "card_keys_unavailable"


def test_the_key_of_an_enrolled_card_goes_to_a_supervisor_only(tmp_path: Path) -> None:
    for role, expect in (("counter", 409), ("supervisor", 200)):
        rig = make_rig(f"sqlite:///{tmp_path}/{role}.db", role=role)
        conn = InProcessConnection(make_citizen_card(None))
        counter = CounterEnrollment(
            rig.client, Verifier(memory_chain_view(rig.chain), AUDIENCE, NonceStore())
        )  # type: ignore[arg-type]
        serial = bytes.fromhex(counter.run(conn, REQUEST).card_serial)
        try:
            rig.client.card_key_set_data(serial)  # type: ignore[attr-defined]
            status = 200
        except ServerError as exc:
            status = exc.status
        assert status == expect, role


def test_config(tmp_path: Path) -> None:
    f = tmp_path / "server.toml"
    f.write_text('[management_key]\nsource = "pkcs11"\npkcs11_token = "t"\n')
    cfg = load_config(f, env={"CITY_MGMT_PKCS11_PIN": "4321"})
    assert cfg.management_key.source == "pkcs11" and cfg.management_key.pkcs11_token == "t"
    assert cfg.management_key.pkcs11_pin == "4321" and "4321" not in repr(cfg)
    env = {"CITY_MGMT_KEY_SOURCE": "software", "CITY_MANAGEMENT_MASTER_KEY": "ab" * 32}
    cfg = load_config(None, env=env)
    assert cfg.management_key.software_master_key == "ab" * 32 and "ab" * 32 not in repr(cfg)
    for text in ('[management_key]\npkcs11_pin = "1"\n', '[management_key]\nsoftware_master_key = "1"\n',
                 '[management_key]\nsource = "usb-stick"\n', '[management_key]\nunknown = 1\n'):  # fmt: skip
        f.write_text(text)
        with pytest.raises(ConfigError):
            load_config(f, env={})
    with pytest.raises(CityIdError):
        load_card_keys(ManagementKeyConfig("software", software_master_key="zz"))


def test_city_server_management_key_generate(
    hsm: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The admin's one-time ceremony: the key is made in the token, a second run is refused."""
    from server.cli import main

    monkeypatch.setenv("CITY_MGMT_KEY_SOURCE", "pkcs11")
    monkeypatch.setenv("CITY_MGMT_PKCS11_TOKEN", TOKEN)
    monkeypatch.setenv("CITY_MGMT_PKCS11_KEY_LABEL", "ceremony-master")
    assert main(["management-key", "generate"]) == 1  # no PIN
    assert "CITY_MGMT_PKCS11_PIN" in capsys.readouterr().err
    monkeypatch.setenv("CITY_MGMT_PKCS11_PIN", USER_PIN)
    assert main(["management-key", "generate"]) == 0
    assert "never extractable" in capsys.readouterr().out
    assert main(["management-key", "generate"]) == 1
    assert "already holds" in capsys.readouterr().err
    keys = load_card_keys(_config("ceremony-master"))
    assert keys is not None and len(keys.card_key(bytes(8))) == 16
    keys.close()  # type: ignore[attr-defined]
