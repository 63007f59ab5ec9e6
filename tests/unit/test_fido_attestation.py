"""Batch attestation (FIDO Authenticator Security Requirements; docs/fido.md "Attestation"): every key of a
batch attests alike, relying parties trust the batch root, other batches do not chain to it (issue 12)."""

from __future__ import annotations

import datetime
import json
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from emulators.card.store import CardStore
from emulators.card.transport import InProcessConnection
from emulators.fido.attestation import (
    ROOT_FILE,
    AttestationBatch,
    AttestationBatchError,
    _issue,
    export_root,
)
from emulators.fido.card import make_fido_card
from emulators.fido.state import ATTESTATION, META, MODEL_AAGUID
from fido2.ctap2.pin import ClientPin
from firmware_tools.cli import main

from terminal.fido.device import CtapSmartCardDevice
from terminal.fido.errors import FidoVerificationError
from terminal.fido.session import FidoSession
from terminal.verifier.fido import FidoVerifier
from tests.unit.fido_support import ES256, RP, cdh, ctap_for, make_auth, user

RP_ID = "busan.go.kr"


def test_two_keys_of_one_batch_attest_and_answer_getinfo_byte_identically(tmp_path) -> None:
    batch = AttestationBatch.open(tmp_path / "batch")
    keys = [make_auth(CardStore(tmp_path / f"key{n}.json"), attestation=batch) for n in (1, 2)]
    atts = [ctap_for(k).make_credential(cdh(), RP, user(), ES256) for k in keys]
    assert atts[0].att_stmt["x5c"] == atts[1].att_stmt["x5c"]
    assert atts[0].att_stmt["x5c"] == [batch.cert_der]
    aaguids = {bytes(a.auth_data.credential_data.aaguid) for a in atts}
    assert aaguids == {MODEL_AAGUID}
    assert ctap_for(keys[0]).get_info() == ctap_for(keys[1]).get_info()
    for k in keys:  # both with a PIN: still the same getInfo
        ClientPin(ctap_for(k)).set_pin("246810")
    assert ctap_for(keys[0]).get_info() == ctap_for(keys[1]).get_info()
    assert keys[0].state.master_key != keys[1].state.master_key
    # the key states hold no attestation private key, only which batch they belong to
    for n in (1, 2):
        section = json.loads((tmp_path / f"key{n}.json").read_text())["sections"][ATTESTATION]
        assert "key" not in section and section["batch"] == batch.batch_id


def test_keys_without_a_batch_share_the_process_default() -> None:
    a, b = make_auth(), make_auth()
    att_a = ctap_for(a).make_credential(cdh(), RP, user(), ES256)
    att_b = ctap_for(b).make_credential(cdh(), RP, user(), ES256)
    assert att_a.att_stmt["x5c"] == att_b.att_stmt["x5c"]
    assert export_root(a.store) == export_root(b.store)


def test_a_batch_is_created_once_even_by_racing_processes(tmp_path) -> None:
    target = tmp_path / "batch"
    got: list[AttestationBatch] = []
    threads = [threading.Thread(target=lambda: got.append(AttestationBatch.open(target))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({b.cert_der for b in got}) == 1
    assert (target / ROOT_FILE).read_text() == got[0].root_pem
    assert AttestationBatch.open(target).batch_id == got[0].batch_id
    assert (target / "batch.json").stat().st_mode & 0o077 == 0  # the attestation key is not world-readable
    assert [p.name for p in target.iterdir() if p.name.startswith(".")] == []


def test_a_batch_directory_is_checked(tmp_path) -> None:
    with pytest.raises(AttestationBatchError, match="no FIDO attestation batch"):
        AttestationBatch.open(tmp_path / "none", create=False)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "batch.json").write_text('{"format": 1}')
    with pytest.raises(AttestationBatchError, match="not a FIDO attestation batch"):
        AttestationBatch.open(tmp_path / "bad")
    AttestationBatch.open(tmp_path / "other", aaguid=bytes(16))
    with pytest.raises(AttestationBatchError, match="AAGUID"):
        AttestationBatch.open(tmp_path / "other")
    assert AttestationBatch.generate().label != AttestationBatch.generate().label


def test_a_key_stays_in_the_batch_its_state_names(tmp_path) -> None:
    batch = AttestationBatch.open(tmp_path / "batch")
    state = tmp_path / "key.json"
    make_auth(CardStore(state), attestation=batch)
    again = make_auth(CardStore(state))  # no batch given: the one the state names
    assert again.attestation.cert_der == batch.cert_der


def _same_subject_root(subject: x509.Name) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _session(card) -> FidoSession:
    return FidoSession(CtapSmartCardDevice(InProcessConnection(card)))


def test_relying_party_trusts_the_batch_root_and_not_another_batch(tmp_path) -> None:
    """A root trusts exactly the keys of its batch, also when the RP trusts several batches."""
    ours, theirs = AttestationBatch.open(tmp_path / "a"), AttestationBatch.open(tmp_path / "b")
    card, _ = make_fido_card(None, attestation=ours)
    other_card, _ = make_fido_card(None, attestation=theirs)
    rp = FidoVerifier(RP_ID, trusted_roots=[ours.root_pem.encode()])
    assert rp.register(_session(card), b"citizen-1", "kim").attestation_trusted
    with pytest.raises(FidoVerificationError, match="registration rejected"):
        rp.register(_session(other_card), b"citizen-2", "lee")
    # a forged root with the same subject as ours, trusted first, does not hide the real one
    forged = _same_subject_root(x509.load_pem_x509_certificate(ours.root_pem.encode()).subject)
    both = FidoVerifier(RP_ID, trusted_roots=[forged, ours.root_pem.encode()])
    assert both.register(_session(card), b"citizen-3", "park").attestation_trusted


def test_a_state_with_a_per_key_attestation_is_migrated(tmp_path) -> None:
    """States written before batch attestation carried their own attestation key and a random AAGUID:
    both are replaced on first use, the key's credentials keep working."""
    store = CardStore(tmp_path / "old.json")
    legacy_aaguid = bytes(range(16))
    old = _issue(legacy_aaguid, "legacy")
    store.commit_many({
        META: {"aaguid": legacy_aaguid.hex(), "master_key": "11" * 32, "pin_salt": "22" * 16,
               "pin_retries": 8, "counter": 0},
        ATTESTATION: {"root": old["root"], "cert": old["cert"], "key": old["key"], "aaguid": old["aaguid"]},
    })
    batch = AttestationBatch.open(tmp_path / "batch")
    auth = make_auth(CardStore(tmp_path / "old.json"), attestation=batch)
    assert auth.state.aaguid == MODEL_AAGUID and ctap_for(auth).get_info().aaguid == MODEL_AAGUID
    section = CardStore(tmp_path / "old.json").section(ATTESTATION)
    assert "key" not in section and section["root"] == batch.root_pem
    att = ctap_for(auth).make_credential(cdh(), RP, user(), ES256)
    assert att.att_stmt["x5c"] == [batch.cert_der]
    assert auth.state.master_key == bytes.fromhex("11" * 32)  # credentials made before still verify


def test_cardtool_batch_create_and_attestation_root(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    directory = tmp_path / "batch"
    assert main(["fido", "batch", "create", str(directory)]) == 0
    assert main(["fido", "batch", "create", str(directory)]) == 1  # not twice
    capsys.readouterr()
    assert main(["fido", "attestation-root", "--batch", str(directory)]) == 0
    pem = capsys.readouterr().out
    assert pem == (directory / ROOT_FILE).read_text()
    subject = x509.load_pem_x509_certificate(pem.encode()).subject.rfc4514_string()
    assert "Test FIDO Attestation Root" in subject
    state = tmp_path / "key.json"
    make_fido_card(state, attestation=AttestationBatch.open(directory))
    assert main(["fido", "attestation-root", "--state", str(state)]) == 0
    assert capsys.readouterr().out == pem
    assert main(["fido", "attestation-root", "--batch", str(tmp_path / "nothing")]) == 1
    assert "no FIDO attestation batch" in capsys.readouterr().err


def test_emulate_citizen_with_fido_joins_the_default_batch(tmp_path, monkeypatch) -> None:
    """``cardtool emulate citizen --with-fido``: the card's FIDO applet attests like ``emulate fido``."""
    from emulators.card.citizen_card import make_citizen_card
    from firmware_tools.emulate_cli import _join_attestation_batch
    from firmware_tools.fido_cli import default_batch_dir

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    fido_state = tmp_path / "card-fido.json"
    _join_attestation_batch(fido_state)
    make_citizen_card(tmp_path / "card.json", with_fido=True, fido_state=fido_state)
    batch = AttestationBatch.open(default_batch_dir(), create=False)
    assert CardStore(fido_state).section(ATTESTATION)["batch"] == batch.batch_id
    assert make_auth(CardStore(fido_state)).attestation.cert_der == batch.cert_der
