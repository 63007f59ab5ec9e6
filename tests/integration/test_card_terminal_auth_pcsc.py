"""Terminal authentication end to end (issue 12 item 1): the emulated card in pcscd's vpcd reader, the city
server over real HTTP, the chain (embedded py-evm and anvil, ``chain_env``) holding each terminal's
authorization bit in a terminal status list, read by the server through LiveChainView.

A counter authorized for every claim personalizes the card (the city root + a binding key, enrolled on
chain); an authorized kiosk gets exactly its claims; fake terminals — no certificate, an expired one, one not
allowed a claim, a replayed signature — get nothing; a kiosk revoked on chain cannot renew and is refused
after its certificate expires; GET INFO before the PIN is the same on two cards of one issuance.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from werkzeug.serving import make_server

from cityid import jose
from cityid.chain.live import LiveChainView
from cityid.citizen import InfoTag, Ins
from cityid.credential import AGE_OVER_65, BUSAN_RESIDENT, CLAIM_NAMES, FAMILY_NAME, LocalSigner
from cityid.keys import P256PublicKey
from cityid.terminal_cert import issue_certificate
from cityid.tlv import parse_tlv_dict
from terminal.flows.authorization import (
    CertificateRenewer,
    TerminalAuthorization,
    TerminalCertificateMissingError,
)
from terminal.flows.counter import CitizenRequest, CounterEnrollment
from terminal.flows.kiosk import KioskVerification, service
from terminal.pcsc.connection import PcscConnection
from terminal.server_client import ServerClient, ServerError
from terminal.sessions.citizen import CitizenSession, TerminalNotAuthorizedError
from terminal.verifier import NonceStore, Verifier
from tests.unit.server_support import make_rig, registrar_gateway

pytestmark = pytest.mark.integration

KIOSK_ID = "haeundae-kiosk-01"
REQUEST = CitizenRequest(
    family_name="Lee", given_name="Hana", birthdate="1955-05-05", district="Haeundae-gu",
    busan_resident=True, new_pin="864209", new_puk="31415926",
)  # fmt: skip


@dataclass
class City:
    rig: object
    terminals: object
    view: LiveChainView
    counter: CounterEnrollment
    kiosk: ServerClient
    kiosk_key: ec.EllipticCurvePrivateKey
    root_key: ec.EllipticCurvePrivateKey


@pytest.fixture
def city(chain_env, tmp_path) -> Iterator[City]:
    gateway = registrar_gateway(chain_env.network, chain_env.client(), chain_env.accounts[0])
    root_key = ec.generate_private_key(ec.SECP256R1())
    auth_signer = LocalSigner(root_key)
    auth_signer.public_point = P256PublicKey.from_crypto(root_key.public_key()).point  # type: ignore[attr-defined]
    rig = make_rig(f"sqlite:///{tmp_path}/server.db", chain=gateway,
                   app_kwargs={"authorization_signer": auth_signer})  # fmt: skip
    kiosk_key = ec.generate_private_key(ec.SECP256R1())
    pem = kiosk_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    rig.db.add_terminal(KIOSK_ID, pem.decode())
    terminals = rig.app.extensions["cityid.terminals"]  # type: ignore[attr-defined]
    terminals.authorize("counter-1", CLAIM_NAMES)  # on chain: a bit in the terminal status list
    terminals.authorize(KIOSK_ID, (BUSAN_RESIDENT, AGE_OVER_65))
    server = make_server("127.0.0.1", 0, rig.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    counter_client = ServerClient(url, "counter-1", rig.terminal_key, clerk="clerk-a")
    counter_auth = TerminalAuthorization("counter-1", rig.terminal_key)  # type: ignore[arg-type]
    assert CertificateRenewer(counter_auth, counter_client.terminal_certificate).renew_once()
    view = LiveChainView(chain_env.client(), chain_env.network)
    counter = CounterEnrollment(
        counter_client, Verifier(view, "counter-1", NonceStore()), authorization=counter_auth
    )
    try:
        yield City(rig, terminals, view, counter, ServerClient(url, KIOSK_ID, kiosk_key), kiosk_key, root_key)
    finally:
        server.shutdown()
        thread.join(5)


def _tap(city: City, reader: str, auth: TerminalAuthorization | None, service_id: str = "benefit-check",
         clock=time.time):  # type: ignore[no-untyped-def]  # fmt: skip
    with PcscConnection(reader) as conn:
        verifier = Verifier(city.view, KIOSK_ID, NonceStore(), clock=clock)
        flow = KioskVerification(verifier, service(service_id), clock=clock)
        try:
            verdict = flow.run_card(CitizenSession(conn), REQUEST.new_pin, auth)
            return verdict, dict(verdict.claims)
        finally:
            flow.end()


def test_terminal_authentication_through_pcscd_and_chain(city: City, virtual_card) -> None:
    reader = virtual_card.reader_name
    with PcscConnection(reader) as conn:
        out = city.counter.run(conn, REQUEST)
    assert out.verdict.ok, out.verdict  # the counter's self-check went through terminal authentication

    # an authorized kiosk, its certificate renewed from the server: exactly its claims, aud = its id
    now = [time.time()]
    kiosk = TerminalAuthorization(KIOSK_ID, city.kiosk_key, clock=lambda: now[0])
    renewer = CertificateRenewer(kiosk, city.kiosk.terminal_certificate, clock=lambda: now[0])
    assert renewer.renew_once(), renewer.last_error
    verdict, claims = _tap(city, reader, kiosk, clock=lambda: now[0])
    assert verdict.ok, verdict
    assert claims == {BUSAN_RESIDENT: True, AGE_OVER_65: True} and verdict.subject == out.citizen_did

    # a claim outside its certificate (the residence service asks for names)
    with pytest.raises(TerminalNotAuthorizedError):
        _tap(city, reader, kiosk, "residence")
    # a fake terminal without a certificate
    with pytest.raises(TerminalNotAuthorizedError):
        _tap(city, reader, None)
    # a fake terminal with a certificate from another authority, and with an expired city certificate
    fake_key = ec.generate_private_key(ec.SECP256R1())
    fake_point = P256PublicKey.from_crypto(fake_key.public_key())
    t = int(time.time())
    for cert in (
        issue_certificate(fake_key, KIOSK_ID, fake_point, CLAIM_NAMES, t - 60, t + 3600),
        issue_certificate(city.root_key, "fake-kiosk", fake_point, CLAIM_NAMES, t - 7 * 86400, t - 6 * 86400),
    ):
        with PcscConnection(reader) as conn, pytest.raises(TerminalNotAuthorizedError):
            CitizenSession(conn).authenticate_terminal(cert, lambda m: jose.es256_sign(fake_key, m), t)
    # replaying the real kiosk's signature from an earlier session
    seen: list[bytes] = []

    def recording(message: bytes) -> bytes:
        seen.append(kiosk.sign(message))
        return seen[-1]

    cert = kiosk.current()
    with PcscConnection(reader) as conn:
        CitizenSession(conn).authenticate_terminal(cert, recording, int(now[0]))
    with PcscConnection(reader) as conn:
        session = CitizenSession(conn)
        with pytest.raises(TerminalNotAuthorizedError):
            session.authenticate_terminal(cert, lambda _m: seen[0], int(now[0]))
        session.verify_pin(REQUEST.new_pin)
        with pytest.raises(TerminalNotAuthorizedError):
            session.present((BUSAN_RESIDENT,), "replay-nonce-0001", KIOSK_ID, int(now[0]))
    with PcscConnection(reader) as conn:  # nor any claim for a fake terminal with its own certificate
        session = CitizenSession(conn)
        with pytest.raises(TerminalNotAuthorizedError):
            session.authenticate_terminal(cert, lambda _m: seen[0], int(now[0]))
        session.verify_pin(REQUEST.new_pin)
        with pytest.raises(TerminalNotAuthorizedError):
            session.present((FAMILY_NAME,), "replay-nonce-0002", KIOSK_ID, int(now[0]))

    # the kiosk is taken out of service on chain: renewal refused, refused once its certificate expired
    city.terminals.revoke(KIOSK_ID)  # type: ignore[attr-defined]
    assert not renewer.renew_once()
    assert isinstance(renewer.last_error, ServerError) and renewer.last_error.status == 403
    verdict, _ = _tap(city, reader, kiosk, clock=lambda: now[0])  # still inside its validity
    assert verdict.ok
    now[0] = cert.body.not_after + 1
    with pytest.raises(TerminalCertificateMissingError):
        _tap(city, reader, kiosk, clock=lambda: now[0])
    with PcscConnection(reader) as conn, pytest.raises(TerminalNotAuthorizedError):
        CitizenSession(conn).authenticate_terminal(cert, kiosk.sign, int(now[0]))


def test_get_info_before_pin_is_the_same_on_two_cards(city: City, vpcd_card_factory, tmp_path) -> None:
    from emulators.card.citizen_card import make_citizen_card

    answers = []
    for i in range(2):
        state = tmp_path / f"card{i}.json"
        handle = vpcd_card_factory(lambda s=state: make_citizen_card(s), state)
        try:
            with PcscConnection(handle.reader_name) as conn:
                assert city.counter.run(conn, REQUEST).verdict.ok
            with PcscConnection(handle.reader_name) as conn:
                raw = CitizenSession(conn).protocol.send_apdu(0x80, Ins.GET_INFO, 0, 0)
        finally:
            handle.stop()
        fields = parse_tlv_dict(raw)
        assert not {InfoTag.SERIAL, InfoTag.DID, InfoTag.CLAIMS, InfoTag.BINDING_KEY} & set(fields)
        assert InfoTag.AUTHORITY in fields
        answers.append(raw)
    assert answers[0] == answers[1]


@pytest.mark.anvil
def test_city_server_terminal_authorize_and_revoke_on_anvil(
    anvil_chain, tmp_path, monkeypatch, capsys
) -> None:
    """``city-server terminal authorize|revoke`` on a network chain: the terminal's bit in the terminal
    status list is VALID, then REVOKED, as the chain itself says (LiveChainView)."""
    from cityid.chain.view import CredentialStatus, StatusRef
    from cityid.credential import VCT
    from server.chain.registrar import Registrar, deploy_all
    from server.cli import main

    root_account, hot_account = anvil_chain.accounts[0], anvil_chain.accounts[1]
    rpc_url = anvil_chain.network.rpc_url
    network = deploy_all(
        anvil_chain.client(), root_account, name="anvil", rpc_url=rpc_url, registrar=hot_account.address
    )
    network.save(tmp_path / "network.json")
    monkeypatch.setenv("CITY_SERVER_DB_URL", f"sqlite:///{tmp_path}/s.db")
    monkeypatch.setenv("CITY_SERVER_CHAIN", str(tmp_path / "network.json"))
    monkeypatch.setenv("CITY_CHAIN_PRIVATE_KEY", "0x" + bytes(hot_account.key).hex())
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "k.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert main(["db", "init"]) == 0
    assert main(["terminal", "add", "--name", KIOSK_ID, "--public-key", str(tmp_path / "k.pem")]) == 0
    authorize = ["terminal", "authorize", "--name", KIOSK_ID, "--claims", "busan_resident,age_over_65"]
    assert main(authorize) == 1  # the citizens' list must exist first: the terminal list never takes its id
    assert "status-list ensure" in capsys.readouterr().err
    assert main(["status-list", "ensure"]) == 0
    assert main(authorize) == 0
    out = capsys.readouterr().out
    list_id = int(out.split("terminal status list ")[1].split(",")[0])
    index = int(out.split("index ")[1].split(")")[0])
    view = LiveChainView(anvil_chain.client(), network)
    did = Registrar(network, anvil_chain.client(), hot_account).did
    ref = StatusRef(network.chain_id, network.address("status_registry"), list_id, index)

    def bit() -> CredentialStatus:
        return view.verification_facts(did, did, VCT, ref).status

    assert list_id != 1 and bit() is CredentialStatus.VALID
    assert main(["terminal", "revoke", "--name", KIOSK_ID]) == 0
    assert "revoked on chain" in capsys.readouterr().out
    assert bit() is CredentialStatus.REVOKED
    assert main(["terminal", "authorize", "--name", KIOSK_ID, "--claims", "not_a_claim"]) == 1
