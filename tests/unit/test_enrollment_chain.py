"""Counter enrollment → kiosk verification on the embedded chain (in-process py-evm, real contracts), with
the emulated card in-process; then revocation, suspension and a lost card as the kiosk sees them."""

from __future__ import annotations

import pytest
from emulators.card.citizen_card import make_citizen_card
from emulators.card.transport import InProcessConnection

from cityid.chain.live import LiveChainView
from server.chain.registrar import start_embedded
from terminal.flows.counter import CitizenRequest, CounterEnrollment, SelfCheckError
from terminal.flows.kiosk import KioskVerification, service
from terminal.server_client import ServerCardKey, ServerError
from terminal.sessions.citizen import CitizenSession
from terminal.verifier import CheckName, NonceStore, Verifier
from tests.unit.server_support import make_rig, registrar_gateway

KIOSK = "https://kiosk.busan.go.kr/k1"


def p256_point() -> bytes:
    from cryptography.hazmat.primitives.asymmetric import ec

    from cityid.keys import P256PublicKey

    return P256PublicKey.from_crypto(ec.generate_private_key(ec.SECP256R1()).public_key()).point


def _request(n: int) -> CitizenRequest:
    return CitizenRequest(
        family_name="Choi", given_name=f"Seoyeon{n}", birthdate="1990-12-24", district="Dongnae-gu",
        busan_resident=True, new_pin="135790", new_puk="24680135",
    )  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    chain = start_embedded()
    gateway = registrar_gateway(chain.network, chain.client(), chain.accounts[0])
    rig = make_rig(f"sqlite:///{tmp_path_factory.mktemp('srv')}/server.db", chain=gateway)
    view = LiveChainView(chain.client(), chain.network)
    counter = CounterEnrollment(rig.client, Verifier(view, "https://counter.busan.go.kr/c1", NonceStore()))
    return rig, view, counter


def _kiosk(view, conn, service_id: str, pin: str = "135790"):
    flow = KioskVerification(Verifier(view, KIOSK, NonceStore()), service(service_id))
    verdict = flow.run_card(CitizenSession(conn), pin)
    claims = dict(verdict.claims)
    flow.end()
    return verdict, claims


def test_enroll_then_verify_on_embedded_chain(world):
    _rig, view, counter = world
    conn = InProcessConnection(make_citizen_card(None))
    out = counter.run(conn, _request(1))
    assert out.citizen_did.startswith("did:ethr:embedded:0x")
    verdict, claims = _kiosk(view, conn, "residence")
    assert verdict.ok, verdict
    assert claims == {"family_name": "Choi", "given_name": "Seoyeon1", "district": "Dongnae-gu",
                      "busan_resident": True}  # fmt: skip
    verdict, claims = _kiosk(view, conn, "benefit-check")
    assert verdict.ok and claims == {"busan_resident": True, "age_over_65": False}


def test_suspend_resume_and_lost_card_seen_by_kiosk(world):
    rig, view, counter = world
    conns = [InProcessConnection(make_citizen_card(None)) for _ in range(3)]
    outs = [counter.run(c, _request(i)) for i, c in enumerate(conns, start=10)]
    rig.client.suspend(outs[0].credential_id)
    verdict, _ = _kiosk(view, conns[0], "residence")
    assert not verdict.ok and verdict.failed is CheckName.STATUS
    rig.client.resume(outs[0].credential_id)
    assert _kiosk(view, conns[0], "residence")[0].ok
    # two cards lost: one batch revokes both status bits and both card keys
    rig.client.revoke([outs[1].credential_id, outs[2].credential_id], "lost")
    for c in conns[1:]:
        verdict, claims = _kiosk(view, c, "benefit-check")
        assert not verdict.ok and verdict.failed in (CheckName.STATUS, CheckName.HOLDER_KEY)
        assert claims == {}
    assert _kiosk(view, conns[0], "benefit-check")[0].ok


def test_reissue_on_chain_old_credential_refused(world):
    rig, view, counter = world
    conn = InProcessConnection(make_citizen_card(None))
    out = counter.run(conn, _request(20))
    old_record = CitizenSession(conn)  # keep the old credential to present it after the re-issue
    new = rig.client.reissue(
        out.credential_id,
        "reissue-chain-1",
        {**_request(20).claims(bytes.fromhex(out.card_serial)), "district": "Suyeong-gu"},
    )
    assert _kiosk(view, conn, "residence")[0].failed is CheckName.STATUS  # old one still on the card
    # re-personalization: the card's own key, answered by the city HSM through the server
    old_record = CitizenSession(conn)
    old_record.authenticate(ServerCardKey(rig.client, bytes.fromhex(out.card_serial)))
    old_record.put_credential(new.record)
    old_record.activate()
    verdict, claims = _kiosk(view, conn, "residence")
    assert verdict.ok and claims["district"] == "Suyeong-gu"


def test_credential_signed_by_a_key_the_root_never_published_is_refused(world, tmp_path):
    """A server (or thief) holding only the hot registrar key signs with a key of its own: the root never
    published it on the issuer DID, the hot key cannot (docs/chain.md §Roles) — every kiosk refuses."""
    rig, view, _counter = world
    rogue = make_rig(f"sqlite:///{tmp_path}/rogue.db", chain=rig.chain, publish=False)
    assert rogue.service.issuer_did == rig.service.issuer_did
    assert rogue.app.test_client().get("/health").get_json()["issuer_ready"] is False
    counter = CounterEnrollment(rogue.client, Verifier(view, "https://counter.busan.go.kr/c9", NonceStore()))
    # our server refuses to issue for an issuer the chain does not vouch for (typed, retryable 503)
    with pytest.raises(ServerError) as not_ready:
        rogue.client.enroll("rogue-enroll-0001", _request(31).claims(b"\x01" * 8), p256_point(), b"\x01" * 8)
    assert not_ready.value.status == 503 and not_ready.value.code == "issuer_not_ready"
    # a thief running modified server code signs anyway: the counter's self-check and every kiosk refuse
    rogue.service.enrollments.require_issuer_ready = lambda: None
    conn = InProcessConnection(make_citizen_card(None))
    with pytest.raises(SelfCheckError) as refused:  # the counter's own kiosk-grade check already refuses
        counter.run(conn, _request(30))
    assert refused.value.verdict.failed is CheckName.ISSUER_SIGNATURE
    verdict, claims = _kiosk(view, conn, "residence")  # the credential is on the card: a kiosk refuses it
    assert not verdict.ok and verdict.failed is CheckName.ISSUER_SIGNATURE
    assert claims == {}


def test_counter_waits_for_the_chain_when_the_server_answers_at_once(tmp_path):
    """The server answers "issued — on chain in ~N s" (no wait); the counter writes the card meanwhile and
    waits on /v1/outbox before its self-check reads the chain (docs/server.md §Chain outbox)."""
    chain = start_embedded()
    gateway = registrar_gateway(chain.network, chain.client(), chain.accounts[0])
    rig = make_rig(f"sqlite:///{tmp_path}/server.db", chain=gateway, chain_wait_ms=0)
    answers = []
    enroll = rig.client.enroll

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        answers.append(enroll(*args, **kwargs))
        return answers[-1]

    rig.client.enroll = spy  # type: ignore[method-assign]
    view = LiveChainView(chain.client(), chain.network)
    counter = CounterEnrollment(rig.client, Verifier(view, "https://counter.busan.go.kr/c1", NonceStore()))
    out = counter.run(InProcessConnection(make_citizen_card(None)), _request(40))
    assert answers[0].chain["state"] == "pending"  # the answer did not wait for the chain
    assert out.verdict.ok  # the self-check ran after the key was confirmed
    assert rig.client.status(out.credential_id)["chain"]["state"] == "confirmed"
