"""Counter enrollment → kiosk verification end to end: the virtual card in pcscd's vpcd reader, the city
server over real HTTP, and the chain — embedded py-evm AND a real anvil node (``chain_env``).

Also: the card pulled before every enrollment step (and in the middle of the key generation, the
credential write, the PIN change and the self-check PRESENT), then a successful retry leaving exactly one
live credential.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from emulators.card.transport import TearPoint
from sd_jwt.verifier import SDJWTVerifier
from sqlalchemy import select
from werkzeug.serving import make_server

from cityid.chain.live import LiveChainView
from cityid.chain.view import CredentialStatus
from cityid.iso7816 import INS as PIV_INS
from server.models import Credential
from server.service import serial_hash
from terminal.flows.counter import CitizenRequest, CounterEnrollment, EnrollmentInterrupted, Step
from terminal.flows.kiosk import KioskVerification, service
from terminal.pcsc.connection import PcscConnection
from terminal.server_client import ServerClient
from terminal.sessions.citizen import CitizenSession
from terminal.verifier import NonceStore, Verifier
from tests.unit.server_support import make_rig, registrar_gateway

pytestmark = pytest.mark.integration

KIOSK = "https://kiosk.busan.go.kr/haeundae-01"
REQUEST = CitizenRequest(
    family_name="Lee", given_name="Hana", birthdate="1955-05-05", district="Haeundae-gu",
    busan_resident=True, new_pin="864209", new_puk="31415926",
)  # fmt: skip


@dataclass
class Desk:
    rig: object
    view: LiveChainView
    counter: CounterEnrollment
    url: str


@pytest.fixture
def desk(chain_env, tmp_path) -> Iterator[Desk]:
    gateway = registrar_gateway(chain_env.network, chain_env.client(), chain_env.accounts[0])
    rig = make_rig(f"sqlite:///{tmp_path}/server.db", chain=gateway)
    server = make_server("127.0.0.1", 0, rig.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    client = ServerClient(url, "counter-1", rig.terminal_key, clerk="clerk-a")  # real HTTP, signed requests
    view = LiveChainView(chain_env.client(), chain_env.network)
    counter = CounterEnrollment(client, Verifier(view, "https://counter.busan.go.kr/c1", NonceStore()))
    try:
        yield Desk(rig, view, counter, url)
    finally:
        server.shutdown()
        thread.join(5)


def _enroll(desk: Desk, card) -> object:
    with PcscConnection(card.reader_name) as conn:
        return desk.counter.run(conn, REQUEST)


def _kiosk(desk: Desk, card, service_id: str):
    with PcscConnection(card.reader_name) as conn:
        flow = KioskVerification(Verifier(desk.view, KIOSK, NonceStore()), service(service_id))
        verdict = flow.run_card(CitizenSession(conn), REQUEST.new_pin)
        claims = dict(verdict.claims)
        flow.end()
    return verdict, claims


def _live(desk: Desk, serial_hex: str) -> list[Credential]:
    with desk.rig.db.sessions() as s:
        rows = s.scalars(select(Credential).where(
            Credential.card_serial_hash == serial_hash(bytes.fromhex(serial_hex)))).all()  # fmt: skip
    return [r for r in rows if r.state in ("pending", "issued", "suspended")]


def test_counter_enrollment_then_kiosk_discloses_only_requested(desk, virtual_card, chain_env):
    out = _enroll(desk, virtual_card)
    assert out.verdict.ok
    assert out.citizen_did.startswith(f"did:ethr:{chain_env.network.name}:0x")

    verdict, claims = _kiosk(desk, virtual_card, "benefit-check")
    assert verdict.ok, verdict
    assert claims == {"busan_resident": True, "age_over_65": True}  # nothing else left the card
    assert verdict.subject == out.citizen_did

    verdict, claims = _kiosk(desk, virtual_card, "residence")
    assert verdict.ok
    assert claims == {"family_name": "Lee", "given_name": "Hana", "district": "Haeundae-gu",
                      "busan_resident": True}  # fmt: skip

    # The reference SD-JWT implementation agrees, and sees only the requested disclosures.
    import json

    from jwcrypto.jwk import JWK

    from cityid import jose

    issuer_point = desk.rig.signer.public_point
    with PcscConnection(virtual_card.reader_name) as conn:
        session = CitizenSession(conn)
        session.verify_pin(REQUEST.new_pin)
        p = session.present(["age_over_19"], "reference-nonce-123", KIOSK, 1_800_000_000)
    ref = SDJWTVerifier(p, lambda iss, h: JWK.from_json(json.dumps(jose.jwk_from_point(issuer_point))),
                        KIOSK, "reference-nonce-123").get_verified_payload()  # fmt: skip
    assert ref["age_over_19"] is True and "given_name" not in ref and "birthdate" not in ref

    # Lost card: one revocation call → the kiosk refuses it.
    desk.rig.client.revoke([out.credential_id], "lost")
    verdict, claims = _kiosk(desk, virtual_card, "benefit-check")
    assert not verdict.ok and claims == {}


def _assert_one_live(desk: Desk, out) -> None:
    live = _live(desk, out.card_serial)
    assert [r.id for r in live] == [out.credential_id] and live[0].state == "issued"
    gateway = desk.rig.chain
    with desk.rig.db.sessions() as s:
        for r in s.scalars(select(Credential)).all():
            onchain = gateway.registrar.status.status_of(r.status_list_id, r.status_index)
            expect = CredentialStatus.VALID if r.id == out.credential_id else CredentialStatus.REVOKED
            assert onchain == expect, (r.state, onchain)


@pytest.mark.parametrize("step", [Step.KEY, Step.ENROLL, Step.WRITE, Step.PIN, Step.CHECK])
def test_card_pulled_before_each_step_then_retry(desk, virtual_card, step):
    pulled: list[Step] = []

    def hook(s: Step) -> None:
        if s is step and not pulled:
            pulled.append(s)
            virtual_card.stop()

    desk.counter.before_step = hook
    with pytest.raises(EnrollmentInterrupted):
        _enroll(desk, virtual_card)
    assert pulled == [step]
    virtual_card.insert()
    out = _enroll(desk, virtual_card)
    _assert_one_live(desk, out)
    assert _kiosk(desk, virtual_card, "benefit-check")[0].ok


# INS bytes to tear on: GENERATE (key), PUT CREDENTIAL (write), CHANGE REFERENCE DATA (PIN), PRESENT (check)
TEARS = {
    "generate": PIV_INS.GENERATE_ASYMMETRIC_KEY_PAIR,
    "put-credential": 0xD0,
    "change-pin": PIV_INS.CHANGE_REFERENCE_DATA,
    "present": 0x50,
}


@pytest.mark.parametrize("what", list(TEARS))
def test_card_pulled_mid_command_then_retry(desk, virtual_card, what):
    ins = TEARS[what]
    fired: list[bytes] = []

    def on_apdu(raw: bytes) -> TearPoint | None:
        if not fired and len(raw) > 1 and raw[1] == ins:
            fired.append(raw[:4])
            return TearPoint.AFTER_PROCESSING  # the card did it; the answer never came back
        return None

    virtual_card.on_apdu = on_apdu
    with pytest.raises(EnrollmentInterrupted):
        _enroll(desk, virtual_card)
    assert fired
    virtual_card.on_apdu = None
    virtual_card.wait_torn()
    virtual_card.insert()
    out = _enroll(desk, virtual_card)
    _assert_one_live(desk, out)
    verdict, claims = _kiosk(desk, virtual_card, "benefit-check")
    assert verdict.ok and claims == {"busan_resident": True, "age_over_65": True}
