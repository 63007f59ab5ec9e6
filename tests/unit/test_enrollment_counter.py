"""Counter enrollment flow with the in-process emulated card and the server app (in-memory chain gateway):
happy path, then a card pulled after every single APDU of the flow and a successful retry."""

from __future__ import annotations

import pytest
from emulators.card.citizen_card import make_citizen_card
from emulators.card.transport import InProcessConnection
from sqlalchemy import select

from cityid.chain.view import CredentialStatus
from cityid.errors import CardRemovedError, CityIdError
from cityid.piv import DEFAULT_MANAGEMENT_KEY, Algorithm, Slot, derive_management_key
from server.models import Credential
from terminal.flows.counter import CitizenRequest, CounterEnrollment, EnrollmentInterrupted, Step
from terminal.flows.kiosk import KioskVerification, service
from terminal.flows.personalize import card_identity
from terminal.sessions.citizen import CardIdentity, CitizenSession
from terminal.sessions.piv import PivSession
from terminal.verifier import NonceStore, Verifier
from tests.unit.server_support import TEST_MASTER_KEY, make_rig, memory_chain_view


def _identity(conn: InProcessConnection) -> CardIdentity:
    """GET IDENTITY behind the management key (the private GET INFO carries no serial/DID)."""
    return card_identity(conn, DEFAULT_MANAGEMENT_KEY, Algorithm.TDEA_3KEY)


AUDIENCE = "https://counter.busan.go.kr/counter-1"
REQUEST = CitizenRequest(
    family_name="Park", given_name="Jiwoo", birthdate="1958-07-01", district="Saha-gu",
    busan_resident=True, new_pin="246810", new_puk="97531864",
)  # fmt: skip


class TearingConnection:
    """Forwards APDUs to the card; at APDU number ``tear_at`` the card processes it, then is pulled."""

    def __init__(self, inner: InProcessConnection, tear_at: int | None = None) -> None:
        self.inner = inner
        self.tear_at = tear_at
        self.count = 0

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        self.count += 1
        result = self.inner.send_and_receive(apdu)
        if self.tear_at is not None and self.count == self.tear_at:
            self.inner.remove()
            raise CardRemovedError("card pulled (answer lost)")
        return result


@pytest.fixture
def desk(tmp_path):
    # A supervisor: the FIDO-registration flow adds a key to the citizen's existing DID and does not yet send
    # the card's presence proof (docs/server.md §Scopes).
    rig = make_rig(f"sqlite:///{tmp_path}/server.db", role="supervisor")
    view = memory_chain_view(rig.chain)
    counter = CounterEnrollment(rig.client, Verifier(view, AUDIENCE, NonceStore()))
    return rig, view, counter


def _live(rig, serial_hex: str) -> list[Credential]:
    from server.service import serial_hash

    with rig.db.sessions() as s:
        rows = s.scalars(select(Credential).where(Credential.card_serial_hash == serial_hash(
            bytes.fromhex(serial_hex)))).all()  # fmt: skip
    return [r for r in rows if r.state in ("pending", "issued", "suspended")]


def test_counter_enrollment_then_kiosk_discloses_only_requested(desk):
    rig, view, counter = desk
    conn = InProcessConnection(make_citizen_card(None, private_info=False))
    out = counter.run(conn, REQUEST)
    assert out.verdict.ok and out.verdict.claims == {}  # wiped: the counter keeps identifiers only
    info = _identity(conn)
    assert info.did == out.citizen_did and info.serial == out.card_serial
    kiosk = KioskVerification(
        Verifier(view, "https://kiosk.busan.go.kr/k1", NonceStore()), service("benefit-check")
    )
    verdict = kiosk.run_card(CitizenSession(conn), REQUEST.new_pin)
    assert verdict.ok, verdict
    assert verdict.claims == {"busan_resident": True, "age_over_65": True}
    assert verdict.subject == out.citizen_did
    kiosk.end()
    assert [r.id for r in _live(rig, out.card_serial)] == [out.credential_id]


def _flow_apdu_count(desk_factory) -> int:
    _rig, _view, counter = desk_factory()
    conn = TearingConnection(InProcessConnection(make_citizen_card(None)))
    counter.run(conn, REQUEST)
    return conn.count


def test_card_pulled_after_every_apdu_then_retry_succeeds(tmp_path):
    def factory(i=[0]):  # noqa: B006
        i[0] += 1
        rig = make_rig(f"sqlite:///{tmp_path}/s{i[0]}.db")
        view = memory_chain_view(rig.chain)
        return rig, view, CounterEnrollment(rig.client, Verifier(view, AUDIENCE, NonceStore()))

    total = _flow_apdu_count(factory)
    assert 10 < total < 60
    for tear_at in range(1, total + 1):
        rig, _view, counter = factory()
        inner = InProcessConnection(make_citizen_card(None))
        conn = TearingConnection(inner, tear_at)
        with pytest.raises(EnrollmentInterrupted):
            counter.run(conn, REQUEST)
        inner.insert()
        conn.tear_at = None
        out = counter.run(conn, REQUEST)
        live = _live(rig, out.card_serial)
        assert [r.id for r in live] == [out.credential_id], f"tear at APDU {tear_at}"
        assert live[0].state == "issued"
        # every other credential of this card is revoked on chain; the live one is valid
        with rig.db.sessions() as s:
            for r in s.scalars(select(Credential)).all():
                expect = CredentialStatus.VALID if r.id == out.credential_id else CredentialStatus.REVOKED
                assert rig.chain.status.get((1, r.status_index), CredentialStatus.VALID) == expect
        # the citizen's PIN works at a kiosk and the PIN tries are full
        piv = PivSession(inner)
        piv.verify_pin(REQUEST.new_pin)
        assert piv.pin_attempts() == 3


@pytest.mark.parametrize("step", [Step.KEY, Step.ENROLL, Step.WRITE, Step.PIN, Step.CHECK])
def test_card_pulled_before_each_step(desk, step):
    rig, _view, counter = desk
    conn = InProcessConnection(make_citizen_card(None))
    pulled = []

    def hook(s: Step) -> None:
        if s is step and not pulled:
            pulled.append(s)
            conn.remove()

    counter.before_step = hook
    with pytest.raises(EnrollmentInterrupted) as exc:
        counter.run(conn, REQUEST)
    # ENROLL does not touch the card: the pull shows at the next card step
    assert exc.value.step is (Step.WRITE if step is Step.ENROLL else step)
    conn.insert()
    out = counter.run(conn, REQUEST)
    assert [r.id for r in _live(rig, out.card_serial)] == [out.credential_id]


def test_key_changed_behind_our_back_is_detected_and_reenrolled(desk):
    rig, _view, counter = desk
    conn = InProcessConnection(make_citizen_card(None, private_info=False))
    counter.before_step = lambda s: conn.remove() if s is Step.CHECK and not conn.removed else None
    with pytest.raises(EnrollmentInterrupted):
        counter.run(conn, REQUEST)
    counter.before_step = lambda s: None
    conn.insert()
    piv = PivSession(conn)
    serial = bytes.fromhex(CitizenSession(conn).info().serial)
    piv = PivSession(conn)
    piv.authenticate_management_key(derive_management_key(TEST_MASTER_KEY, serial), Algorithm.AES_128)
    piv.generate_key(Slot.AUTHENTICATION)  # someone with the card's key replaced the holder key
    out = counter.run(conn, REQUEST)
    assert out.verdict.ok
    with rig.db.sessions() as s:
        states = sorted(r.state for r in s.scalars(select(Credential)).all())
    assert states == ["issued", "superseded"]


def test_abandon_revokes_and_erases(desk):
    rig, _view, counter = desk
    conn = InProcessConnection(make_citizen_card(None, private_info=False))
    counter.before_step = lambda s: conn.remove() if s is Step.PIN and not conn.removed else None
    with pytest.raises(EnrollmentInterrupted):
        counter.run(conn, REQUEST)
    conn.insert()
    serial = bytes.fromhex(_identity(conn).serial)
    revoked = counter.abandon(serial, conn)
    assert len(revoked) == 1
    assert _identity(conn).did is None
    assert rig.client.status(revoked[0])["state"] == "revoked"


def test_server_answer_lost_to_a_timeout_then_retry(desk):
    import requests

    rig, _view, counter = desk
    transport = rig.transport
    original = transport.request
    dropped = []

    def lossy(method, url, **kw):
        resp = original(method, url, **kw)  # the server did the work...
        if url.endswith("/v1/enrollments") and not dropped:
            dropped.append(resp.status_code)
            raise requests.ReadTimeout("answer lost")  # ...but the answer never arrived
        return resp

    transport.request = lossy
    conn = InProcessConnection(make_citizen_card(None))
    with pytest.raises(EnrollmentInterrupted) as exc:
        counter.run(conn, REQUEST)
    assert exc.value.step is Step.ENROLL and dropped == [201]
    out = counter.run(conn, REQUEST)
    assert [r.id for r in _live(rig, out.card_serial)] == [out.credential_id]
    with rig.db.sessions() as s:
        assert len(s.scalars(select(Credential)).all()) == 1


def test_counter_enrolled_card_has_the_card_signed_9a_certificate(desk):
    """The counter runs the same personalization as ``cardtool personalize``: the 9A certificate object
    holds the enrolled key, signed by the card itself (docs/card-profile.md: OpenSC lists the key)."""
    from cityid.keys import P256PublicKey

    rig, _view, counter = desk
    conn = InProcessConnection(make_citizen_card(None))
    out = counter.run(conn, REQUEST)
    cert = PivSession(conn).get_certificate(Slot.AUTHENTICATION)
    cert.verify_directly_issued_by(cert)  # raises if the card did not sign it
    assert out.card_serial.upper() in cert.subject.rfc4514_string().upper()
    with rig.db.sessions() as s:
        row = s.get(Credential, out.credential_id)
        assert row is not None and row.state == "issued"
        enrolled = bytes.fromhex(row.card_key)
    assert P256PublicKey.from_crypto(cert.public_key()).point == enrolled


class _SpyNonces(NonceStore):
    """A NonceStore that remembers what it issued (to show none is left outstanding)."""

    def __init__(self) -> None:
        super().__init__()
        self.issued: list[str] = []

    def issue(self, service: str) -> str:
        nonce = super().issue(service)
        self.issued.append(nonce)
        return nonce

    def outstanding(self) -> list[str]:
        return [n for n in self.issued if n in self._outstanding]


def _key_registration_desk(desk):
    import contextlib

    from emulators.fido.card import make_fido_card

    from terminal.flows.fido_registration import FidoKeyRegistration
    from terminal.flows.tokens import open_fido

    rig, view, counter = desk
    nonces = _SpyNonces()
    flow = FidoKeyRegistration(rig.client, Verifier(view, AUDIENCE, nonces))
    key_card, _applet = make_fido_card(None)

    @contextlib.contextmanager
    def open_key():
        yield open_fido(InProcessConnection(key_card))

    return rig, counter, flow, nonces, open_key


@pytest.mark.filterwarnings("ignore:Deprecated use of webauthn_json_mapping")
def test_fido_key_registration_uses_credprotect_3_and_leaves_no_nonce(desk):
    """The counter registers the key's credential with credProtect userVerificationRequired (CTAP 2.1
    §12.1) and the card's presentation nonce is consumed."""
    import contextlib

    rig, counter, flow, nonces, open_key = _key_registration_desk(desk)
    conn = InProcessConnection(make_citizen_card(None))
    out = counter.run(conn, REQUEST)
    reg = flow.run(lambda: contextlib.nullcontext(conn), REQUEST.new_pin, open_key, "4321")
    assert reg.did == out.citizen_did and reg.citizen_credential_id != out.credential_id
    assert rig.client.status(reg.citizen_credential_id)["state"] == "issued"
    with open_key() as session:
        assert [c.cred_protect for c in session.credentials("4321")] == [3]
    assert nonces.issued and nonces.outstanding() == []


@pytest.mark.filterwarnings("ignore:Deprecated use of webauthn_json_mapping")
def test_fido_key_registration_rejected_card_discards_its_nonce(desk):
    """A revoked card does not verify: nothing is registered and the nonce it saw is not left usable."""
    import contextlib

    from terminal.flows.fido_registration import CardDidNotVerifyError

    rig, counter, flow, nonces, _open_key = _key_registration_desk(desk)
    conn = InProcessConnection(make_citizen_card(None))
    out = counter.run(conn, REQUEST)
    rig.client.revoke([out.credential_id], "lost")

    def no_key():
        raise AssertionError("the key must not be touched when the card did not verify")

    with pytest.raises(CardDidNotVerifyError, match="status"):
        flow.run(lambda: contextlib.nullcontext(conn), REQUEST.new_pin, no_key, "4321")
    assert len(nonces.issued) == 1 and nonces.outstanding() == []


def test_torn_enrollment_never_leaves_a_presentable_card_with_default_pins(tmp_path):
    """Issue 12 item 3: on a card that needs ACTIVATE, a tear at any APDU leaves the credential inactive
    unless the citizen's PIN is already set (ACTIVATE is the last write); the retry activates it."""
    from cityid.citizen import CredentialState
    from terminal.sessions.citizen import CitizenSession

    def factory(i=[0]):  # noqa: B006
        i[0] += 1
        rig = make_rig(f"sqlite:///{tmp_path}/a{i[0]}.db")
        view = memory_chain_view(rig.chain)
        return rig, view, CounterEnrollment(rig.client, Verifier(view, AUDIENCE, NonceStore()))

    total = _flow_apdu_count(factory)
    inactive = 0
    for tear_at in range(1, total + 1):
        _rig, _view, counter = factory()
        inner = InProcessConnection(make_citizen_card(None, activation_required=True))
        conn = TearingConnection(inner, tear_at)
        with pytest.raises(EnrollmentInterrupted):
            counter.run(conn, REQUEST)
        inner.insert()
        state = CitizenSession(inner).info().credential_state
        if state is not None and state & CredentialState.ACTIVATED:
            PivSession(inner).verify_pin(REQUEST.new_pin)  # activated only after the citizen's PIN
        else:
            inactive += 1
        conn.tear_at = None
        counter.run(conn, REQUEST)
        assert (
            CitizenSession(inner).info().credential_state
            == CredentialState.PRESENT | CredentialState.ACTIVATED
        )
    assert total - inactive <= 5  # only tears at ACTIVATE's answer or in the self-check


@pytest.mark.filterwarnings("ignore:Deprecated use of webauthn_json_mapping")
def test_fido_key_registration_checks_the_batch_attestation(desk, tmp_path):
    """The counter trusts the attestation batch root (docs/fido.md "Attestation"): a key of that batch
    registers with a trusted attestation, a key of another batch is refused before anything is issued."""
    import contextlib

    from emulators.fido.attestation import AttestationBatch
    from emulators.fido.card import make_fido_card

    from terminal.flows.fido_registration import FidoKeyRegistration
    from terminal.flows.tokens import open_fido

    rig, _view, counter = desk
    city_batch = AttestationBatch.open(tmp_path / "city-batch")
    flow = FidoKeyRegistration(
        rig.client, Verifier(_view, AUDIENCE, _SpyNonces()), trusted_roots=[city_batch.root_pem.encode()]
    )
    conn = InProcessConnection(make_citizen_card(None))
    counter.run(conn, REQUEST)

    def key_of(batch):
        card, _ = make_fido_card(None, attestation=batch)

        @contextlib.contextmanager
        def open_key():
            yield open_fido(InProcessConnection(card))

        return open_key

    reg = flow.run(lambda: contextlib.nullcontext(conn), REQUEST.new_pin, key_of(city_batch), "4321")
    assert rig.client.status(reg.citizen_credential_id)["state"] == "issued"
    stranger = key_of(AttestationBatch.open(tmp_path / "other-batch"))
    with pytest.raises(CityIdError, match="registration rejected"):
        flow.run(lambda: contextlib.nullcontext(conn), REQUEST.new_pin, stranger, "4321")
