"""Terminal card-layer figures (terminal.pcsc + sessions) through real pcscd + vpcd with pyscard, host side.

* trivial APDU round trip (empty VERIFY → 63Cx): median / p95 over ≥ 1000 runs (goal ≤ 0.5 ms median);
* VERIFY + PRESENT end to end in an open card session (SELECT + VERIFY + PRESENT) over ≥ 200 runs
  (goal ≤ 5 ms median), with extended APDUs and with the chained-short fallback;
* the same including connect / transaction / reset (a full kiosk card session);
* APDUs and bytes read per presentation;
* card inserted → ReaderMonitor event latency (the card-inserted → UI budget).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from emulators.card.citizen_card import make_citizen_card
from emulators.card.transport import InProcessConnection
from firmware_tools.vpcd_env import inserted_card, reader_has_card, wait_for

from bench._stats import summary_ms
from cityid import jose, sdjwt
from cityid.citizen import CredentialRecord, StoredDisclosure
from terminal.flows.personalize import personalize
from terminal.pcsc.connection import PcscConnection, open_connection
from terminal.pcsc.monitor import CardInserted, ReaderMonitor
from terminal.sessions.citizen import CitizenSession

PIN = "24681357"
CLAIMS = ["age_over_65", "district"]
NONCE = "bench-nonce-0000000001"
AUD = "https://kiosk.busan.example/bench"


def _personalized_state(path: Path) -> None:
    """A card with key, certificate, PIN and a small SD-JWT credential (personalized in process)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    conn = InProcessConnection(make_citizen_card(path))
    result = personalize(conn, pin="123456", new_pin=PIN)
    point = result.key.point
    issuer = ec.generate_private_key(ec.SECP256R1())
    claims = {
        "family_name": "Kim",
        "given_name": "Minsu",
        "birthdate": "1956-03-01",
        "district": "Haeundae-gu",
        "busan_resident": True,
        "age_over_19": True,
        "age_over_65": True,
        "card_number": "BS-0000-0001",
    }
    discs = [sdjwt.create_disclosure(k, v) for k, v in claims.items()]
    payload = {
        "iss": "did:ethr:0x7a69:0x1111111111111111111111111111111111111111",
        "vct": "urn:busan:citizen:1",
        "_sd_alg": "sha-256",
        "_sd": sorted(d.digest for d in discs),
        "cnf": {"jwk": jose.jwk_from_point(point)},
    }
    jwt = jose.sign_compact({"alg": "ES256", "typ": "dc+sd-jwt"}, payload, issuer)
    record = CredentialRecord(
        jwt, tuple(StoredDisclosure(d.name or "", d.encoded) for d in discs), payload["vct"]
    )
    personalize(conn, pin=None, generate_key=False, credential=record)


class _Counting:
    """Wraps a connection, counting APDUs and response bytes."""

    def __init__(self, inner: PcscConnection) -> None:
        self.inner = inner
        self.apdus = 0
        self.read = 0
        self.extended = inner.extended

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        data, sw = self.inner.send_and_receive(apdu)
        self.apdus += 1
        self.read += len(data) + 2
        return data, sw


class _CardClock:
    """Wraps the emulated card's ``transmit`` to add up the time the card itself spends (PIN hashing, state
    fsyncs, signing), so host-side time = end-to-end − card time."""

    def __init__(self, card: object) -> None:
        self.total = 0.0
        inner = card.transmit  # type: ignore[attr-defined]

        def timed(raw: bytes) -> bytes:
            t0 = time.perf_counter()
            try:
                return inner(raw)
            finally:
                self.total += time.perf_counter() - t0

        card.transmit = timed  # type: ignore[attr-defined]


def _time_split(fn: Callable[[], object], clock: _CardClock, n: int, warmup: int = 10) -> tuple[list, list]:
    """(end-to-end samples, host-side samples = end-to-end minus card processing)."""
    for _ in range(warmup):
        fn()
    total, host = [], []
    for _ in range(n):
        c0 = clock.total
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        total.append(dt)
        host.append(dt - (clock.total - c0))
    return total, host


def run(args: argparse.Namespace) -> None:
    quick = getattr(args, "quick", False)
    n_trivial = 200 if quick else 2000
    n_present = 40 if quick else 300
    n_insert = 3 if quick else 10
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "card.json"
        _personalized_state(state)
        card = make_citizen_card(state)
        clock = _CardClock(card)
        with inserted_card(card) as (vpcd, reader):
            print(f"   reader: {reader} (pcscd + vpcd, pyscard low-level API)")
            with open_connection(reader, reset_on_close=False) as conn:
                CitizenSession(conn)  # selects; an empty VERIFY then just reports the tries
                trivial = bytes.fromhex("00200080")
                samples, host = _time_split(lambda: conn.send_and_receive(trivial), clock, n_trivial)
                print(f"   trivial APDU round trip (empty VERIFY → 63Cx): {summary_ms(samples)}")
                print(f"     host side (minus the emulator's own processing): {summary_ms(host)}")

                for label, extended in (("extended APDUs", True), ("chained short APDUs", False)):

                    def present(ext: bool = extended) -> str:
                        citizen = CitizenSession(conn, extended=ext)
                        citizen.verify_pin(PIN)
                        return citizen.present(CLAIMS, NONCE, AUD, 1_780_000_000)

                    samples, host = _time_split(present, clock, n_present)
                    counter = _Counting(conn)
                    citizen = CitizenSession(counter, extended=extended)
                    citizen.verify_pin(PIN)
                    text = citizen.present(CLAIMS, NONCE, AUD, 1_780_000_000)
                    print(f"   SELECT+VERIFY+PRESENT, {label}: end to end {summary_ms(samples)}")
                    print(f"     host side (minus the emulator's own processing): {summary_ms(host)}")
                    print(
                        f"     {counter.apdus} APDUs, {counter.read} bytes read, "
                        f"presentation {len(text)} chars ({len(CLAIMS)} of 8 claims disclosed)"
                    )

            def full_session() -> str:
                with open_connection(reader) as c:
                    citizen = CitizenSession(c)
                    citizen.verify_pin(PIN)
                    return citizen.present(CLAIMS, NONCE, AUD, 1_780_000_000)

            samples, host = _time_split(full_session, clock, max(20, n_present // 3), warmup=3)
            print("   full session (connect, transaction, SELECT/VERIFY/PRESENT, reset):")
            print(f"     end to end: {summary_ms(samples)}")
            print(f"     host side: {summary_ms(host)}")

            latencies = []
            with ReaderMonitor(timeout_ms=1000) as monitor:
                q = monitor.events()
                monitor.ready.wait(5)
                for _ in range(n_insert):
                    vpcd.stop()
                    wait_for(lambda: not reader_has_card(reader), 10, "empty reader")
                    while not q.empty():
                        q.get_nowait()
                    t0 = time.perf_counter()
                    vpcd.start()
                    while True:
                        ev = q.get(timeout=10)
                        if isinstance(ev, CardInserted) and ev.reader == reader:
                            break
                    latencies.append(time.perf_counter() - t0)
            print(f"   card inserted → CardInserted event (pcscd polls vpcd): {summary_ms(latencies)}")
