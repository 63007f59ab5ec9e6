"""Counter and kiosk with terminal authentication (issue 12 item 1), in process: the counter writes the city
authorization root and enrolls the card's presentation-binding key; a kiosk with a certificate gets exactly
its claims; without one, with an expired one, or when its renewal is refused it gets nothing."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from emulators.card.citizen_card import make_citizen_card
from emulators.card.transport import InProcessConnection

from cityid.credential import AGE_OVER_65, BUSAN_RESIDENT, CLAIM_NAMES
from cityid.errors import CityIdError
from cityid.keys import P256PublicKey
from cityid.piv import DEFAULT_MANAGEMENT_KEY
from cityid.terminal_cert import issue_certificate
from terminal.flows.authorization import (
    CertificateRenewer,
    TerminalAuthorization,
    TerminalCertificateMissingError,
)
from terminal.flows.counter import CitizenRequest, CounterEnrollment, EnrollmentInterrupted
from terminal.flows.kiosk import KioskVerification, service
from terminal.flows.personalize import card_identity
from terminal.sessions.citizen import CitizenSession, TerminalNotAuthorizedError
from terminal.verifier import NonceStore, Verifier
from tests.unit.server_support import make_rig, memory_chain_view

ROOT_KEY = ec.generate_private_key(ec.SECP256R1())
ROOT = P256PublicKey.from_crypto(ROOT_KEY.public_key())
COUNTER_ID, KIOSK_ID = "counter-1", "busan-kiosk-001"
REQUEST = CitizenRequest(
    family_name="Park", given_name="Jiwoo", birthdate="1958-07-01", district="Saha-gu",
    busan_resident=True, new_pin="246810", new_puk="97531864",
)  # fmt: skip


def authorization(terminal_id: str, claims: tuple[str, ...], lifetime: int = 3600, now: float | None = None):
    key = ec.generate_private_key(ec.SECP256R1())
    t = int(time.time() if now is None else now)
    cert = issue_certificate(
        ROOT_KEY, terminal_id, P256PublicKey.from_crypto(key.public_key()), claims, t - 60, t + lifetime
    )
    return TerminalAuthorization(terminal_id, key, cert), key


@pytest.fixture
def enrolled(tmp_path):
    rig = make_rig(f"sqlite:///{tmp_path}/server.db")
    view = memory_chain_view(rig.chain)
    counter_auth, _ = authorization(COUNTER_ID, CLAIM_NAMES)
    counter = CounterEnrollment(
        rig.client,
        Verifier(view, COUNTER_ID, NonceStore()),
        authorization_root=ROOT,
        authorization=counter_auth,
    )
    conn = InProcessConnection(make_citizen_card(None))
    out = counter.run(conn, REQUEST)
    assert out.verdict.ok, out.verdict  # the self-check PRESENT went through terminal authentication
    return view, conn, out


def test_counter_enrolls_the_binding_key_not_9a(enrolled) -> None:
    _view, conn, _out = enrolled
    ident = card_identity(conn, DEFAULT_MANAGEMENT_KEY, pin=REQUEST.new_pin)  # own 9B key: after the PIN
    assert ident.binding_key is not None
    from cityid.piv import Slot
    from terminal.sessions.piv import PivSession

    piv_key = P256PublicKey.from_crypto(PivSession(conn).get_certificate(Slot.AUTHENTICATION).public_key())
    assert piv_key != ident.binding_key  # PIV 9A stays the PIV authentication key
    conn.reset()
    assert CitizenSession(conn).info().authority is not None


def test_authorized_kiosk_gets_exactly_its_claims(enrolled) -> None:
    view, conn, out = enrolled
    auth, _ = authorization(KIOSK_ID, (BUSAN_RESIDENT, AGE_OVER_65))
    flow = KioskVerification(Verifier(view, KIOSK_ID, NonceStore()), service("benefit-check"))
    verdict = flow.run_card(CitizenSession(conn), REQUEST.new_pin, auth)
    assert verdict.ok, verdict
    assert verdict.claims == {BUSAN_RESIDENT: True, AGE_OVER_65: True} and verdict.subject == out.citizen_did
    flow.end()
    # the residence service asks for names: outside this kiosk's certificate
    conn.reset()
    flow = KioskVerification(Verifier(view, KIOSK_ID, NonceStore()), service("residence"))
    with pytest.raises(TerminalNotAuthorizedError):
        flow.run_card(CitizenSession(conn), REQUEST.new_pin, auth)
    assert flow.claims == {}


def test_kiosk_without_authentication_or_with_an_expired_certificate_gets_nothing(enrolled) -> None:
    view, conn, _ = enrolled
    flow = KioskVerification(Verifier(view, KIOSK_ID, NonceStore()), service("benefit-check"))
    with pytest.raises(TerminalNotAuthorizedError):
        flow.run_card(CitizenSession(conn), REQUEST.new_pin)
    conn.reset()
    expired, _ = authorization(KIOSK_ID, (BUSAN_RESIDENT, AGE_OVER_65), lifetime=30, now=time.time() - 3600)
    with pytest.raises(TerminalCertificateMissingError):  # the kiosk knows its certificate is stale
        flow.run_card(CitizenSession(conn), REQUEST.new_pin, expired)
    # a kiosk ignoring its own clock is refused by the card
    cert = expired.certificate
    assert cert is not None
    with pytest.raises(TerminalNotAuthorizedError):
        CitizenSession(conn).authenticate_terminal(cert, expired.sign, cert.body.not_before + 1)


def test_renewal_refused_means_refused_after_expiry(enrolled) -> None:
    view, conn, _ = enrolled
    now = [time.time()]
    key = ec.generate_private_key(ec.SECP256R1())
    point = P256PublicKey.from_crypto(key.public_key())
    claims = (BUSAN_RESIDENT, AGE_OVER_65)
    first = issue_certificate(ROOT_KEY, KIOSK_ID, point, claims, int(now[0]) - 60, int(now[0]) + 600)
    auth = TerminalAuthorization(KIOSK_ID, key, first, clock=lambda: now[0])
    revoked = [False]

    def renew():
        if revoked[0]:
            raise CityIdError("city server: terminal authorization revoked on chain (terminal_revoked)")
        t = int(now[0])
        return issue_certificate(ROOT_KEY, KIOSK_ID, point, claims, t - 60, t + 600)

    renewer = CertificateRenewer(auth, renew, clock=lambda: now[0])
    now[0] += 400  # past half its life: renewal due
    assert renewer.due_in() == 0 and renewer.renew_once()
    assert auth.certificate is not None and auth.certificate.body.not_after > first.body.not_after
    revoked[0] = True  # the kiosk is taken out of service on chain
    now[0] += 400
    assert not renewer.renew_once() and renewer.last_error is not None
    verifier = Verifier(view, KIOSK_ID, NonceStore(), clock=lambda: now[0])
    flow = KioskVerification(verifier, service("benefit-check"), clock=lambda: now[0])
    assert flow.run_card(CitizenSession(conn), REQUEST.new_pin, auth).ok  # still within its validity
    flow.end()
    now[0] += 400  # expired now
    conn.reset()
    with pytest.raises(TerminalCertificateMissingError):
        flow.run_card(CitizenSession(conn), REQUEST.new_pin, auth)


def test_kiosk_terminal_requires_the_audience_to_be_its_id(enrolled) -> None:
    from terminal.flows.kiosk import KioskTerminal

    view, _, _ = enrolled
    auth, _ = authorization(KIOSK_ID, (BUSAN_RESIDENT,))
    with pytest.raises(ValueError):
        KioskTerminal(
            Verifier(view, "https://kiosk.example/other", NonceStore()), [], None, authorization=auth
        )  # type: ignore[arg-type]


def test_counter_with_terminal_authentication_survives_a_pull_at_every_apdu(tmp_path) -> None:
    """Step BINDING is tear-safe: a pull at any APDU, then a retry, leaves a card that authenticates the
    kiosk and presents with the binding key the server enrolled (one live credential)."""
    from tests.unit.test_enrollment_counter import TearingConnection, _live

    def flow(i: int):
        rig = make_rig(f"sqlite:///{tmp_path}/t{i}.db")
        view = memory_chain_view(rig.chain)
        auth, _ = authorization(COUNTER_ID, CLAIM_NAMES)
        counter = CounterEnrollment(
            rig.client, Verifier(view, COUNTER_ID, NonceStore()), authorization_root=ROOT, authorization=auth
        )
        return rig, view, counter

    _rig, _view, counter = flow(0)
    probe = TearingConnection(InProcessConnection(make_citizen_card(None)))
    counter.run(probe, REQUEST)
    total = probe.count
    kiosk, _ = authorization(KIOSK_ID, (BUSAN_RESIDENT, AGE_OVER_65))
    for tear_at in range(1, total + 1):
        rig, view, counter = flow(tear_at)
        inner = InProcessConnection(make_citizen_card(None))
        conn = TearingConnection(inner, tear_at)
        with pytest.raises(EnrollmentInterrupted):
            counter.run(conn, REQUEST)
        inner.insert()
        conn.tear_at = None
        out = counter.run(conn, REQUEST)
        assert [r.id for r in _live(rig, out.card_serial)] == [out.credential_id], f"tear at {tear_at}"
        inner.reset()
        verification = KioskVerification(Verifier(view, KIOSK_ID, NonceStore()), service("benefit-check"))
        assert verification.run_card(CitizenSession(inner), REQUEST.new_pin, kiosk).ok, f"tear at {tear_at}"
        verification.end()


def test_renewer_start_tries_once_then_waits_the_retry_interval() -> None:
    """``kiosk serve`` starts the renewer: one attempt at start-up; after a failure the thread retries
    after ``retry_s`` (not at once — one warning per attempt, not two at every start)."""
    import threading

    from cityid.terminal_cert import TerminalCertificate
    from terminal.server_client import ServerError

    calls: list[float] = []
    second = threading.Event()

    def down() -> TerminalCertificate:
        calls.append(time.monotonic())
        if len(calls) >= 2:
            second.set()
        raise ServerError(0, "unreachable", "no server")

    auth = TerminalAuthorization("kiosk-1", ec.generate_private_key(ec.SECP256R1()))
    renewer = CertificateRenewer(auth, down, retry_s=0.5)
    t0 = time.monotonic()
    renewer.start()
    try:
        assert len(calls) == 1 and auth.renewal_error and "no server" in auth.renewal_error
        assert second.wait(5)
        assert calls[1] - t0 >= 0.45, calls  # the retry waited its interval
    finally:
        renewer.stop()
