"""Certificates (docs/certificates.md): format, verifier refusals, the batching anchor queue on the embedded
chain (one transaction per batch, nothing anchored twice, crash between send and record)."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cityid import certificate as c
from cityid.jose import b64url_encode, json_dumps
from cityid.keys import P256PublicKey
from server.certificates import AnchorQueue, DbKioskDirectory, QueueProofSource
from server.chain.registrar import Registrar, start_embedded
from server.db import Database

FACTS = {"family_name": "김", "given_name": "민지", "district": "Haeundae-gu", "busan_resident": True}
REQUESTED = ("family_name", "given_name", "district", "busan_resident")
NOW = 1_800_000_000


def _pem(key: ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


class CountingRegistrar:
    """The real registrar, counting anchor transactions; ``crash_after_send`` loses the receipt once."""

    def __init__(self, registrar: Registrar) -> None:
        self.registrar = registrar
        self.anchors = registrar.anchors
        self.sent = 0
        self.crash_after_send = False

    def anchor_batch(self, hashes):  # type: ignore[no-untyped-def]
        batch = self.registrar.anchor_batch(hashes)
        self.sent += 1
        if self.crash_after_send:
            self.crash_after_send = False
            raise OSError("server died after sending")
        return batch


@pytest.fixture(scope="module")
def world(tmp_path_factory):  # type: ignore[no-untyped-def]
    chain = start_embedded()
    registrar = Registrar(chain.network, chain.client(), chain.accounts[0])
    db = Database.from_url(f"sqlite:///{tmp_path_factory.mktemp('cert')}/server.db")
    db.init()
    kiosk_key = ec.generate_private_key(ec.SECP256R1())
    db.add_terminal("kiosk-1", _pem(kiosk_key))
    other_key = ec.generate_private_key(ec.SECP256R1())
    db.add_terminal("kiosk-2", _pem(other_key))
    clock = [float(NOW)]
    counting = CountingRegistrar(registrar)
    queue = AnchorQueue(db, counting, window_s=60, max_batch=4, clock=lambda: clock[0])
    checker = c.ChainAnchorChecker(chain.client(), chain.network)
    verifier = c.CertificateVerifier(
        DbKioskDirectory(db), checker, QueueProofSource(queue), clock=lambda: clock[0]
    )
    return {
        "chain": chain,
        "db": db,
        "key": kiosk_key,
        "other": other_key,
        "queue": queue,
        "clock": clock,
        "verifier": verifier,
        "anchor": checker.anchor,
        "registrar": counting,
    }


def _issue(world, kiosk: str = "kiosk-1", key=None, **kw) -> c.Certificate:  # type: ignore[no-untyped-def]
    return c.issue(
        key or world["key"],
        kiosk=kiosk,
        service="residence",
        facts=FACTS,
        requested=REQUESTED,
        anchor=world["anchor"],
        now=world["clock"][0],
        **kw,
    )


def _anchor(world, cert: c.Certificate) -> None:  # type: ignore[no-untyped-def]
    world["queue"].submit(cert.document_hash, cert.kiosk)
    world["queue"].flush(force=True)


def test_only_requested_facts_and_a_fresh_salt_each_time(world) -> None:
    with pytest.raises(c.CertificateError, match="not requested"):
        c.issue(
            world["key"],
            kiosk="kiosk-1",
            service="residence",
            facts={**FACTS, "birthdate": "1950-01-01"},
            requested=REQUESTED,
            anchor=world["anchor"],
        )
    with pytest.raises(c.CertificateError, match="not disclosed"):
        c.issue(
            world["key"],
            kiosk="kiosk-1",
            service="residence",
            facts={"district": "Seo-gu"},
            requested=REQUESTED,
            anchor=world["anchor"],
        )
    a, b = _issue(world), _issue(world)
    assert a.payload["facts"] == b.payload["facts"] == FACTS
    assert a.payload["salt"] != b.payload["salt"] and a.confirmation != b.confirmation
    assert a.document_hash != b.document_hash
    assert c.parse_qr(a.qr_text()).payload == a.payload


def test_anchored_certificate_verifies_with_fetched_and_embedded_proof(world) -> None:
    cert = _issue(world)
    with pytest.raises(c.CertificateRejected) as pending:
        world["verifier"].verify(cert.qr_text())  # queued, not on chain yet: never "valid"
    assert pending.value.reason is c.Rejection.PENDING
    _anchor(world, cert)
    ok = world["verifier"].verify(cert.qr_text())
    assert ok.facts == FACTS and ok.kiosk == "kiosk-1" and ok.confirmation == cert.confirmation
    ticket = world["queue"].lookup(cert.document_hash)
    assert ticket.status == "anchored"
    embedded = cert.with_proof(ticket.proof).qr_text()
    assert world["verifier"].verify(embedded).document_hash == cert.document_hash
    no_server = c.CertificateVerifier(
        DbKioskDirectory(world["db"]), world["verifier"].chain, clock=world["verifier"].clock
    )
    assert no_server.verify(embedded).facts == FACTS


def _retamper(cert: c.Certificate, **changes) -> str:  # type: ignore[no-untyped-def]
    head, _payload, sig = cert.jws.split(".")
    payload = {**cert.payload, **changes}
    return f"{c.QR_PREFIX}{head}.{b64url_encode(json_dumps(payload))}.{sig}"


def test_tampered_certificates_are_refused(world) -> None:
    cert = _issue(world)
    _anchor(world, cert)
    v = world["verifier"]

    def reason(text: str) -> c.Rejection:
        with pytest.raises(c.CertificateRejected) as exc:
            v.verify(text)
        return exc.value.reason

    assert reason(_retamper(cert, facts={**FACTS, "district": "Seo-gu"})) is c.Rejection.SIGNATURE
    # other kiosk: names a registered kiosk it was not signed by, or one the city does not know
    _head, _, sig = cert.jws.split(".")
    other_head = b64url_encode(json_dumps({"alg": "ES256", "typ": c.JWS_TYP, "kid": "kiosk-2"}))
    payload = b64url_encode(json_dumps({**cert.payload, "kiosk": "kiosk-2"}))
    assert reason(f"{c.QR_PREFIX}{other_head}.{payload}.{sig}") is c.Rejection.SIGNATURE
    rogue = ec.generate_private_key(ec.SECP256R1())
    assert reason(_issue(world, kiosk="kiosk-9", key=rogue).qr_text()) is c.Rejection.KIOSK_UNKNOWN
    world["db"].set_terminal_active("kiosk-2", False)
    assert reason(_issue(world, kiosk="kiosk-2", key=world["other"]).qr_text()) is c.Rejection.KIOSK_UNKNOWN
    world["db"].set_terminal_active("kiosk-2", True)
    # expired
    short = _issue(world, validity_s=120)
    _anchor(world, short)
    assert v.verify(short.qr_text())
    world["clock"][0] += 121
    try:
        assert reason(short.qr_text()) is c.Rejection.EXPIRED
    finally:
        world["clock"][0] -= 121
    # anchor missing: a proof to a root nobody anchored; a certificate never submitted
    fake = c.AnchorProof(c.compute_root(cert.document_hash, [b"\x07" * 32]), (b"\x07" * 32,))
    assert reason(cert.with_proof(fake).qr_text()) is c.Rejection.NOT_ANCHORED
    assert reason(_issue(world).qr_text()) is c.Rejection.PENDING
    broken = c.AnchorProof(b"\x01" * 32, ())
    assert reason(cert.with_proof(broken).qr_text()) is c.Rejection.NOT_ANCHORED
    # other chain, garbage, oversized
    elsewhere = c.issue(
        world["key"],
        kiosk="kiosk-1",
        service="residence",
        facts=FACTS,
        requested=REQUESTED,
        anchor="eip155:1:0x" + "ab" * 20,
        now=NOW,
    )
    assert reason(elsewhere.qr_text()) is c.Rejection.WRONG_CHAIN
    for junk in (
        "",
        "hello",
        "BC1:a.b.c",
        c.QR_PREFIX + "x" * 5000,
        _retamper(cert, v=2),
        _retamper(cert, facts={"x": {"nested": [1]}}),
    ):
        assert reason(junk) is c.Rejection.MALFORMED


def test_one_transaction_per_batch_and_never_twice(world) -> None:
    q, reg, clock = world["queue"], world["registrar"], world["clock"]
    q.flush(force=True)
    before = reg.sent
    certs = [_issue(world) for _ in range(3)]
    for cert in certs:
        q.submit(cert.document_hash, "kiosk-1")
        q.submit(cert.document_hash, "kiosk-1")  # a retry: same entry
    assert q.pending() == 3 and not q.due()  # under max_batch and within the window
    assert q.flush() == 0 and reg.sent == before
    clock[0] += 61
    assert q.due()
    assert q.flush() == 3 and reg.sent == before + 1
    roots = {q.lookup(cert.document_hash).proof.root for cert in certs}
    assert len(roots) == 1
    # max_batch (4) reached: due at once, one tx per 4 documents
    more = [_issue(world) for _ in range(5)]
    for cert in more:
        q.submit(cert.document_hash, "kiosk-1")
    assert q.due()
    assert q.flush() == 4 and reg.sent == before + 2 and q.pending() == 1
    q.flush(force=True)
    assert reg.sent == before + 3
    # resubmitting an anchored document changes nothing
    assert q.submit(more[0].document_hash, "kiosk-1").status == "anchored"
    q.flush(force=True)
    assert reg.sent == before + 3


def test_crash_between_send_and_record_does_not_anchor_twice(world) -> None:
    q, reg = world["queue"], world["registrar"]
    q.flush(force=True)
    cert = _issue(world)
    q.submit(cert.document_hash, "kiosk-1")
    reg.crash_after_send = True
    with pytest.raises(OSError):
        q.flush(force=True)
    sent = reg.sent
    assert q.lookup(cert.document_hash).status == "queued"
    assert q.flush(force=True) == 1 and reg.sent == sent  # found on chain, recorded, not re-sent
    assert world["verifier"].verify(cert.qr_text()).confirmation == cert.confirmation


def test_static_directory_from_json() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = P256PublicKey.from_crypto(key.public_key()).jwk()
    d = c.StaticKioskDirectory.from_json(json.loads(json.dumps({"k": jwk})))
    assert d.kiosk_key("k") == P256PublicKey.from_crypto(key.public_key()) and d.kiosk_key("x") is None


def test_routes_without_a_registrar_and_authentication(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from terminal.certificate_client import ServerAnchorQueue
    from tests.unit.server_support import make_rig

    rig = make_rig(f"sqlite:///{tmp_path}/s.db")  # MemoryChain: no anchoring account
    client = rig.app.test_client()
    page = client.get("/certificates/verify")
    assert page.status_code == 200 and "증명서 확인" in page.get_data(as_text=True)
    assert client.post("/certificates/verify", json={"qr": "BC1:x"}).status_code == 503  # never "valid"
    assert client.post("/certificates/verify", json={"nope": 1}).status_code == 400
    assert client.post("/certificates/anchors", json={"document_hash": "00" * 32}).status_code == 401
    assert client.get("/certificates/anchors/xyz").status_code == 400
    assert client.get("/certificates/anchors/" + "00" * 32).status_code == 404
    assert client.get("/certificates/kiosks/nobody").status_code == 404
    jwk = client.get("/certificates/kiosks/counter-1").get_json()["jwk"]
    assert P256PublicKey.from_jwk(jwk) == P256PublicKey.from_crypto(rig.terminal_key.public_key())
    queue = ServerAnchorQueue("http://city.test", "counter-1", rig.terminal_key, session=rig.transport)
    assert queue.submit(b"\x11" * 32) is None  # queued
    assert queue.submit(b"\x11" * 32) is None and queue.proof(b"\x11" * 32) is None
    assert client.get("/certificates/anchors/" + "11" * 32).get_json()["status"] == "queued"
    bad = rig.transport.client.post("/certificates/anchors", json={"document_hash": "AB"})
    assert bad.status_code == 401  # unsigned
    from terminal.server_client import ServerError

    with pytest.raises(ServerError) as refused:
        queue._call("POST", "/certificates/anchors", {"document_hash": "AB"})  # signed, but not a hash
    assert refused.value.status == 400


class _ForgetfulAnchors:
    """The anchor registry as a node restored from an older snapshot shows it: ``forgotten`` roots read as
    never anchored, ``moved`` roots in another block."""

    def __init__(self, real) -> None:  # type: ignore[no-untyped-def]
        self.real = real
        self.forgotten: set[bytes] = set()
        self.moved: dict[bytes, int] = {}
        self.reads = 0

    def anchor_of(self, root: bytes):  # type: ignore[no-untyped-def]
        self.reads += 1
        if root in self.forgotten:
            return 0, 0, "0x" + "00" * 20
        ts, block, who = self.real.anchor_of(root)
        return ts, self.moved.get(root, block), who


def test_reconcile_reanchors_a_lost_root_and_follows_a_moved_one(world, tmp_path) -> None:
    db = Database.from_url(f"sqlite:///{tmp_path}/reconcile.db")
    db.init()
    counting = CountingRegistrar(world["registrar"].registrar)
    forgetful = _ForgetfulAnchors(counting.anchors)
    counting.anchors = forgetful
    queue = AnchorQueue(db, counting, window_s=60, max_batch=2)
    docs = [bytes([0x51 + i]) * 32 for i in range(6)]  # three batches of two
    for d in docs:
        queue.submit(d, "kiosk-1")
    queue.flush(force=True)
    tickets = [queue.lookup(d) for d in docs]
    roots = sorted({t.proof.root for t in tickets}, key=lambda r: [t.proof.root for t in tickets].index(r))
    assert len(roots) == 3 and counting.sent == 3
    assert queue.reconcile() == 0 and counting.sent == 3  # all on chain: nothing re-sent

    lost, moved = roots[0], roots[1]
    forgetful.forgotten.add(lost)
    forgetful.moved[moved] = 10**6
    forgetful.reads = 0
    assert queue.reconcile(recent=1) == 0  # only the latest root checked: the older loss is not seen yet
    assert forgetful.reads == 1
    assert queue.reconcile(everything=True) == 1
    assert queue.lookup(docs[0]).status == "queued"  # not "anchored" while the chain lacks it
    assert queue.lookup(docs[2]).block == 10**6
    forgetful.forgotten.clear()  # the re-send lands on the (real) chain again
    counting.anchors = counting.registrar.anchors
    queue.flush()  # resumes the lost batch without waiting for the window
    again = [queue.lookup(d) for d in docs[:2]]
    assert [t.proof for t in again] == [t.proof for t in tickets[:2]]  # same root, same printed proofs
    assert all(t.status == "anchored" for t in again)
