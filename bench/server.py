"""City server figures: enrollment latency (server side, embedded chain, SQLite; the request waits for its
chain write, docs/server.md §Chain outbox — bench/outbox.py has the answered-at-once and city-scale figures),
retry cost, batched revocation, request-authentication cost, and the whole counter flow with the in-process
emulated card."""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def _fmt(name: str, values: list[float]) -> None:
    p50, p95 = statistics.median(values) * 1e3, _pct(values, 95) * 1e3
    print(f"   {name:<48} p50 {p50:8.2f} ms   p95 {p95:8.2f} ms   (n={len(values)})")


def _point() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def run(args: Any) -> None:
    from emulators.card.citizen_card import make_citizen_card
    from emulators.card.transport import InProcessConnection

    from cityid.chain.live import LiveChainView
    from server.auth import SignedRequest
    from server.chain.registrar import start_embedded
    from terminal.flows.counter import CitizenRequest, CounterEnrollment
    from terminal.server_client import sign_request
    from terminal.verifier import NonceStore, Verifier
    from tests.unit.server_support import CLAIMS, make_rig, registrar_gateway

    n = 10 if getattr(args, "quick", False) else 60
    with tempfile.TemporaryDirectory() as tmp:
        chain = start_embedded()
        gateway = registrar_gateway(chain.network, chain.client(), chain.accounts[0])
        rig = make_rig(f"sqlite:///{tmp}/bench.db", chain=gateway)

        enroll, retry, ids = [], [], []
        for i in range(n):
            card = _point()
            t0 = time.perf_counter()
            res = rig.client.enroll(f"bench-enroll-{i:06d}", CLAIMS, card, i.to_bytes(8, "big"))
            enroll.append(time.perf_counter() - t0)
            ids.append(res.credential_id)
            t0 = time.perf_counter()
            rig.client.enroll(f"bench-enroll-{i:06d}", CLAIMS, card, i.to_bytes(8, "big"))
            retry.append(time.perf_counter() - t0)
        _fmt("enroll, until its key is on chain (?wait, inline window)", enroll)
        _fmt("enroll retry, same idempotency key", retry)

        before = chain.client().request("eth_blockNumber")
        t0 = time.perf_counter()
        rig.client.revoke(ids, "lost")
        dt = time.perf_counter() - t0
        after = chain.client().request("eth_blockNumber")
        print(
            f"   revoke {len(ids)} lost cards in one request            {dt * 1e3:8.1f} ms total, "
            f"{dt / len(ids) * 1e3:.2f} ms per card ({int(after, 16) - int(before, 16)} blocks)"
        )

        auth = rig.app.extensions["cityid.auth"]
        body = b'{"x":1}'
        samples = []
        for _ in range(n * 5):
            h = sign_request(rig.terminal_key, "counter-1", "POST", "/v1/revocations", body)
            t0 = time.perf_counter()
            auth.authenticate(SignedRequest("POST", "/v1/revocations", h, body))
            samples.append(time.perf_counter() - t0)
        _fmt("request authentication (verify + nonce insert)", samples)

        view = LiveChainView(chain.client(), chain.network)
        counter = CounterEnrollment(rig.client, Verifier(view, "https://counter.busan.go.kr/b", NonceStore()))
        req = CitizenRequest("Kim", "Minji", "1950-03-14", "Haeundae-gu", True, "246810", "97531864")
        flows = []
        for _ in range(max(3, n // 6)):
            conn = InProcessConnection(make_citizen_card(None))
            t0 = time.perf_counter()
            counter.run(conn, req)
            flows.append(time.perf_counter() - t0)
        _fmt("counter flow, in-process card (key→…→self-check)", flows)
