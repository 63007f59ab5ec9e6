"""Terminal certificates from the city server (issue 12 item 1): issued over the signed terminal channel only
while the terminal's on-chain authorization bit reads VALID; a kiosk taken out of service cannot renew and
is refused by the card once its certificate expires."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from emulators.card.citizen_card import make_citizen_card
from emulators.card.transport import InProcessConnection

from cityid.chain.view import ChainError, CredentialStatus
from cityid.credential import AGE_OVER_65, BUSAN_RESIDENT, CLAIM_NAMES, LocalSigner
from cityid.keys import P256PublicKey
from server.service.errors import ValidationError
from terminal.flows.authorization import (
    CertificateRenewer,
    TerminalAuthorization,
    TerminalCertificateMissingError,
)
from terminal.flows.counter import CitizenRequest, CounterEnrollment
from terminal.flows.kiosk import KioskVerification, service
from terminal.server_client import ServerClient, ServerError
from terminal.sessions.citizen import CitizenSession, TerminalNotAuthorizedError
from terminal.verifier import NonceStore, Verifier
from tests.unit.server_support import make_rig, memory_chain_view

KIOSK_ID = "busan-kiosk-001"
BENEFIT = (BUSAN_RESIDENT, AGE_OVER_65)
REQUEST = CitizenRequest(
    family_name="Park", given_name="Jiwoo", birthdate="1958-07-01", district="Saha-gu",
    busan_resident=True, new_pin="246810", new_puk="97531864",
)  # fmt: skip


class _FlakyView:
    """A chain view that can be made unreadable."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner = inner
        self.down = False

    def verification_facts(self, *args):  # type: ignore[no-untyped-def]
        if self.down:
            raise ChainError("rpc down")
        return self.inner.verification_facts(*args)


@pytest.fixture
def city(tmp_path):
    auth_key = ec.generate_private_key(ec.SECP256R1())
    signer = LocalSigner(auth_key)
    signer.public_point = P256PublicKey.from_crypto(auth_key.public_key()).point  # type: ignore[attr-defined]
    from tests.unit.server_support import MemoryChain

    chain = MemoryChain()
    view = _FlakyView(memory_chain_view(chain))
    rig = make_rig(
        f"sqlite:///{tmp_path}/server.db", chain=chain,
        app_kwargs={"authorization_signer": signer, "status_view": view},
    )  # fmt: skip
    kiosk_key = ec.generate_private_key(ec.SECP256R1())
    pem = kiosk_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    rig.db.add_terminal(KIOSK_ID, pem.decode(), role="counter")
    kiosk = ServerClient("http://city.test", KIOSK_ID, kiosk_key, session=rig.transport)
    terminals = rig.app.extensions["cityid.terminals"]  # type: ignore[attr-defined]
    return rig, view, terminals, kiosk, kiosk_key


def test_certificate_only_for_an_authorized_terminal(city) -> None:
    rig, _view, terminals, kiosk, kiosk_key = city
    with pytest.raises(ServerError) as exc:
        kiosk.terminal_certificate()
    assert exc.value.status == 403 and exc.value.code == "terminal_not_authorized"
    row = terminals.authorize(KIOSK_ID, BENEFIT)
    assert rig.chain.status[(row.status_list_id, row.status_index)] is CredentialStatus.VALID
    assert row.status_list_id != 1  # a terminal status list of its own, not the citizens' list
    answer = kiosk.terminal_certificate()
    cert = answer.certificate
    assert cert.verify(terminals.root) and answer.authority_key == terminals.root
    assert cert.terminal_id == KIOSK_ID and cert.body.claims == BENEFIT
    assert cert.body.public_key == P256PublicKey.from_crypto(kiosk_key.public_key())
    assert (cert.body.status_list, cert.body.status_index) == (row.status_list_id, row.status_index)
    assert cert.body.not_after - time.time() <= 3600 + 5 and cert.valid_at(int(time.time()))
    with pytest.raises(ValidationError):
        terminals.authorize(KIOSK_ID, ("not_a_claim",))


def test_revoked_on_chain_or_unreadable_chain_means_no_certificate(city) -> None:
    rig, view, terminals, kiosk, _ = city
    row = terminals.authorize(KIOSK_ID, BENEFIT)
    kiosk.terminal_certificate()
    view.down = True  # a fact the server cannot read is never "valid"
    with pytest.raises(ServerError) as exc:
        kiosk.terminal_certificate()
    assert exc.value.status == 502
    view.down = False
    # the on-chain bit decides, even when the database still says authorized
    rig.chain.status[(row.status_list_id, row.status_index)] = CredentialStatus.REVOKED
    with pytest.raises(ServerError) as exc:
        kiosk.terminal_certificate()
    assert exc.value.status == 403
    terminals.authorize(KIOSK_ID, BENEFIT)  # re-authorized: the bit is VALID again
    kiosk.terminal_certificate()
    terminals.revoke(KIOSK_ID)
    assert rig.chain.status[(row.status_list_id, row.status_index)] is CredentialStatus.REVOKED
    with pytest.raises(ServerError) as exc:
        kiosk.terminal_certificate()
    assert exc.value.code == "terminal_not_authorized"


def test_revoked_kiosk_cannot_renew_and_is_refused_after_expiry(city) -> None:
    rig, _view, terminals, kiosk, kiosk_key = city
    terminals.authorize("counter-1", CLAIM_NAMES)
    terminals.authorize(KIOSK_ID, BENEFIT)
    view = memory_chain_view(rig.chain)
    # the counter: its own certificate, the root from the server, the card personalized with it
    counter_answer = rig.client.terminal_certificate()  # type: ignore[attr-defined]
    counter_auth = TerminalAuthorization("counter-1", rig.terminal_key, counter_answer.certificate)  # type: ignore[arg-type]
    counter = CounterEnrollment(
        rig.client, Verifier(view, "counter-1", NonceStore()),  # type: ignore[arg-type]
        authorization_root=counter_answer.authority_key, authorization=counter_auth,
    )  # fmt: skip
    conn = InProcessConnection(make_citizen_card(None))
    assert counter.run(conn, REQUEST).verdict.ok

    now = [time.time()]
    auth = TerminalAuthorization(KIOSK_ID, kiosk_key, clock=lambda: now[0])
    renewer = CertificateRenewer(auth, lambda: kiosk.terminal_certificate().certificate, clock=lambda: now[0])
    assert renewer.due_in() == 0 and renewer.renew_once()
    verifier = Verifier(view, KIOSK_ID, NonceStore(), clock=lambda: now[0])
    flow = KioskVerification(verifier, service("benefit-check"), clock=lambda: now[0])
    conn.reset()
    verdict = flow.run_card(CitizenSession(conn), REQUEST.new_pin, auth)
    assert verdict.ok and verdict.claims == {BUSAN_RESIDENT: True, AGE_OVER_65: True}
    flow.end()

    terminals.revoke(KIOSK_ID)  # taken out of service
    assert not renewer.renew_once()
    assert isinstance(renewer.last_error, ServerError) and renewer.last_error.status == 403
    cert = auth.certificate
    assert cert is not None
    now[0] = cert.body.not_after + 1  # its last certificate has expired
    conn.reset()
    with pytest.raises(TerminalCertificateMissingError):
        flow.run_card(CitizenSession(conn), REQUEST.new_pin, auth)
    conn.reset()
    with pytest.raises(TerminalNotAuthorizedError):  # and the card refuses it with a truthful clock
        CitizenSession(conn).authenticate_terminal(cert, auth.sign, int(now[0]))


def test_no_authorization_key_means_no_certificates(tmp_path) -> None:
    rig = make_rig(f"sqlite:///{tmp_path}/server.db")
    with pytest.raises(ServerError) as exc:
        rig.client.terminal_certificate()  # type: ignore[attr-defined]
    assert exc.value.status == 503 and exc.value.code == "terminal_certificates_disabled"


def test_a_counter_refuses_to_personalize_when_the_server_has_no_authorization_key(tmp_path) -> None:
    """A server without ``[authorization_key]`` answers the renewal with a typed 503; the counter (terminal
    authentication on: the default) then refuses before its first card write — no root-less card."""
    from emulators.card.citizen_card import make_citizen_card as fresh_card

    from cityid.piv import DEFAULT_MANAGEMENT_KEY

    rig = make_rig(f"sqlite:///{tmp_path}/server.db")  # no authorization signer, no [authorization_key]
    auth = TerminalAuthorization("counter-1", rig.terminal_key)  # type: ignore[arg-type]
    renewer = CertificateRenewer(auth, rig.client.terminal_certificate)  # type: ignore[attr-defined]
    assert not renewer.renew_once()
    assert isinstance(renewer.last_error, ServerError) and renewer.last_error.status == 503
    counter = CounterEnrollment(
        rig.client, Verifier(memory_chain_view(rig.chain), "counter-1", NonceStore()),  # type: ignore[arg-type]
        authorization=auth,
    )  # fmt: skip
    conn = InProcessConnection(fresh_card(None))
    before = CitizenSession(conn).info()
    with pytest.raises(TerminalCertificateMissingError, match="terminal_certificates_disabled"):
        counter.run(conn, REQUEST)
    # nothing was written: the same GET INFO (no root, no credential) and the factory key still opens it
    conn.reset()
    citizen = CitizenSession(conn)
    after = citizen.info()
    assert after == before and after.authority is None
    citizen.authenticate(DEFAULT_MANAGEMENT_KEY)  # CARD_KEY never ran
