"""terminal.verifier.NonceStore: 128-bit, single use, bound to a service, expiring, bounded, thread-safe."""

from __future__ import annotations

import threading

import pytest

from cityid import jose
from terminal.flows.kiosk import SERVICES, UnknownServiceError, service
from terminal.verifier import NonceStore


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_nonce_shape_and_single_use() -> None:
    store = NonceStore()
    n = store.issue("benefit-check")
    assert len(jose.b64url_decode(n)) == 16 and 8 <= len(n) <= 64
    assert store.consume(n, "benefit-check")
    assert not store.consume(n, "benefit-check")
    assert len({store.issue("s") for _ in range(1000)}) == 1000


def test_wrong_service_burns_nonce() -> None:
    store = NonceStore()
    n = store.issue("residence")
    assert not store.consume(n, "benefit-check")
    assert not store.consume(n, "residence")


def test_expiry_and_discard() -> None:
    clock = Clock()
    store = NonceStore(ttl=10, clock=clock)
    n1, n2 = store.issue("s"), store.issue("s")
    clock.t += 10.5
    assert not store.consume(n1)
    store.discard(n2)
    assert not store.consume(n2)
    n3 = store.issue("s")  # issuing expires old entries
    assert len(store) == 1 and store.consume(n3)


def test_bounded() -> None:
    store = NonceStore(max_outstanding=3)
    nonces = [store.issue("s") for _ in range(5)]
    assert len(store) == 3
    assert not store.consume(nonces[0]) and store.consume(nonces[4])
    with pytest.raises(ValueError):
        NonceStore(ttl=0)


def test_concurrent_consume_succeeds_once() -> None:
    store = NonceStore()
    n = store.issue("s")
    wins: list[bool] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        wins.append(store.consume(n, "s"))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1


def test_declared_services() -> None:
    assert service("benefit-check").claims == ("busan_resident", "age_over_65")
    assert set(SERVICES["residence"].claims) == {"family_name", "given_name", "district", "busan_resident"}
    assert service("residence").purpose_key == "service.residence.purpose"
    with pytest.raises(UnknownServiceError):
        service("tax-refund")
