"""Per-card management keys (docs/card-profile.md, "Per-card management key"; issue 12 item 2).

The derivation ``AES-256-ECB(city master, serial ‖ "CITYID9B")`` is checked against SoftHSM2 doing it the
production way (PKCS#11 ``C_DeriveKey`` with ``CKM_AES_ECB_ENCRYPT_DATA``, non-extractable result, the 9B
challenge answered inside the HSM). On the emulated card: once SET MANAGEMENT KEY put the card's key in, the
published default key is refused by both applets and every admin command without the right key fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from emulators.card.citizen_card import make_citizen_card
from emulators.card.transport import InProcessConnection

from cityid.citizen import Ins
from cityid.errors import ApduError, SecurityStatusError
from cityid.piv import (
    DEFAULT_MANAGEMENT_KEY,
    Algorithm,
    Slot,
    derive_management_key,
    management_key_cipher,
    management_key_diversifier,
)
from terminal.sessions.citizen import CitizenSession
from terminal.sessions.mgmt import ManagementKeyError
from terminal.sessions.piv import PivSession

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
MASTER = bytes(range(32))

HSM_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import pkcs11
    from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

    module, master, serials = sys.argv[1], bytes.fromhex(sys.argv[2]), sys.argv[3].split(",")
    token = pkcs11.lib(module).get_token(token_label="city-hsm")
    out = {}
    with token.open(user_pin="1234", rw=True) as session:
        key = session.create_object({
            Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES,
            Attribute.VALUE: master, Attribute.TOKEN: False, Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False, Attribute.DERIVE: True, Attribute.LABEL: "city-9b-master",
        })
        for serial in serials:
            data = bytes.fromhex(serial) + b"CITYID9B"
            card_key = key.derive_key(
                KeyType.AES, 128, mechanism=Mechanism.AES_ECB_ENCRYPT_DATA, mechanism_param=data,
                template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.ENCRYPT: True,
                          Attribute.DECRYPT: True, Attribute.TOKEN: False},
            )
            challenge = bytes.fromhex("00112233445566778899aabbccddeeff")
            out[serial] = {
                "extractable": bool(card_key[Attribute.EXTRACTABLE]),
                "response": card_key.encrypt(challenge, mechanism=Mechanism.AES_ECB).hex(),
            }
    print(json.dumps(out))
    """
)


def test_derivation_matches_the_hsm_way(tmp_path: Path) -> None:
    """The software reference equals SoftHSM2's C_DeriveKey(CKM_AES_ECB_ENCRYPT_DATA), whose result never
    leaves the HSM: compared by the answer each gives to the same 9B challenge."""
    if not shutil.which("softhsm2-util") or not Path(SOFTHSM_MODULE).exists():
        pytest.fail("softhsm2 is not installed (apt-get install softhsm2)")
    (tmp_path / "tokens").mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tmp_path}/tokens\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    env = dict(os.environ, SOFTHSM2_CONF=str(conf))
    init = [
        "softhsm2-util",
        "--init-token",
        "--free",
        "--label",
        "city-hsm",
        "--pin",
        "1234",
        "--so-pin",
        "5678",
    ]
    subprocess.run(init, check=True, capture_output=True, env=env)
    serials = [bytes(8), bytes.fromhex("0123456789abcdef"), os.urandom(8)]
    proc = subprocess.run(  # own process: SoftHSM2 reads SOFTHSM2_CONF once per process
        [sys.executable, "-c", HSM_SCRIPT, SOFTHSM_MODULE, MASTER.hex(), ",".join(s.hex() for s in serials)],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    hsm = json.loads(proc.stdout)
    challenge = bytes.fromhex("00112233445566778899aabbccddeeff")
    answers = set()
    for serial in serials:
        key = derive_management_key(MASTER, serial)
        enc = management_key_cipher(Algorithm.AES_128, key).encryptor()
        ours = enc.update(challenge) + enc.finalize()
        assert hsm[serial.hex()] == {"extractable": False, "response": ours.hex()}
        answers.add(ours)
    assert len(answers) == len(serials)  # one key per card


def test_derivation_inputs() -> None:
    assert management_key_diversifier(bytes(8)) == bytes(8) + b"CITYID9B"
    a, b = derive_management_key(MASTER, bytes(8)), derive_management_key(MASTER, b"\x00" * 7 + b"\x01")
    assert len(a) == 16 and a != b and a != derive_management_key(bytes(32), bytes(8))
    for bad_master, bad_serial in ((bytes(16), bytes(8)), (MASTER, bytes(7)), (MASTER, bytes(9))):
        with pytest.raises(ValueError):
            derive_management_key(bad_master, bad_serial)


@pytest.mark.parametrize("private", [False, True], ids=["legacy-info", "private-info"])
def test_after_the_card_key_is_set_the_default_key_opens_nothing(tmp_path: Path, private: bool) -> None:
    conn = InProcessConnection(make_citizen_card(tmp_path / "card.json", private_info=private))
    piv = PivSession(conn)
    piv.authenticate_management_key()
    piv.generate_key(Slot.AUTHENTICATION)
    citizen = CitizenSession(conn)
    citizen.authenticate()
    citizen.put_did("did:ethr:0x7a69:0x3333333333333333333333333333333333333333")
    serial = bytes.fromhex(citizen.identity().serial)
    card_key = derive_management_key(MASTER, serial)

    piv = PivSession(conn)
    with pytest.raises(SecurityStatusError):
        piv.set_management_key(card_key)  # SET MANAGEMENT KEY is itself behind the current key
    piv.authenticate_management_key()
    piv.set_management_key(card_key)

    conn.reset()  # a stranger holding the card, any later session
    for session in (PivSession(conn), CitizenSession(conn)):
        auth = (
            session.authenticate_management_key if isinstance(session, PivSession) else session.authenticate
        )
        with pytest.raises(ApduError) as info:
            auth(DEFAULT_MANAGEMENT_KEY, Algorithm.TDEA_3KEY)
        assert info.value.sw == 0x6A86  # the card's key is AES now: the default is refused outright
        with pytest.raises(ManagementKeyError):
            auth(bytes(16), Algorithm.AES_128)  # right algorithm, wrong key
    citizen = CitizenSession(conn)
    for ins in (Ins.ERASE, Ins.PUT_DID):  # nothing the default-key holder could do
        data = b"" if ins == Ins.ERASE else b"did:ethr:0x7a69:0x4444444444444444444444444444444444444444"
        assert citizen.protocol.send_apdu_sw(0x80, ins, 0, 0, data)[1] == 0x6982
    piv = PivSession(conn)
    with pytest.raises(SecurityStatusError):
        piv.generate_key(Slot.AUTHENTICATION)
    # the card's own key works in both applets
    citizen = CitizenSession(conn)
    citizen.authenticate(card_key, Algorithm.AES_128)
    assert citizen.identity().did is not None
    citizen.erase()
    piv = PivSession(conn)
    piv.authenticate_management_key(card_key, Algorithm.AES_128)
    piv.generate_key(Slot.AUTHENTICATION)
