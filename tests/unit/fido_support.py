"""Test support for the FIDO tests: a controllable clock, a direct CtapDevice and authenticator factories."""

from __future__ import annotations

import os
from collections.abc import Callable
from threading import Event
from typing import Any

from emulators.card.store import CardStore
from emulators.fido.attestation import AttestationBatch
from emulators.fido.authenticator import Authenticator
from emulators.fido.presence import UserPresence
from fido2.ctap import CtapDevice, CtapError
from fido2.ctap2 import Ctap2
from fido2.hid import CAPABILITY, CTAPHID

RP = {"id": "busan.go.kr", "name": "Busan"}
ES256 = [{"type": "public-key", "alg": -7}]


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class DirectDevice(CtapDevice):
    """A python-fido2 CtapDevice straight into :meth:`Authenticator.process` (no transport)."""

    def __init__(self, auth: Authenticator) -> None:
        self.auth = auth
        self.requests: list[bytes] = []

    @property
    def capabilities(self) -> int:
        return CAPABILITY.CBOR

    def call(
        self,
        cmd: int,
        data: bytes = b"",
        event: Event | None = None,
        on_keepalive: Callable[[Any], None] | None = None,
    ) -> bytes:
        if cmd != CTAPHID.CBOR:
            raise CtapError(CtapError.ERR.INVALID_COMMAND)
        self.requests.append(data)
        return self.auth.process(data, event, on_keepalive)

    @classmethod
    def list_devices(cls):  # pragma: no cover - not discoverable
        return iter(())


def make_auth(
    store: CardStore | None = None,
    clock: Clock | None = None,
    up: UserPresence | None = None,
    attestation: AttestationBatch | None = None,
) -> Authenticator:
    """A key on ``store`` (memory by default); without ``attestation`` it joins the process default batch."""
    return Authenticator(store or CardStore(None), up=up, clock=clock or Clock(), attestation=attestation)


def ctap_for(auth: Authenticator) -> Ctap2:
    return Ctap2(DirectDevice(auth))


def user(n: int = 1) -> dict[str, Any]:
    return {"id": f"citizen-{n}".encode(), "name": f"citizen{n}", "displayName": f"Citizen {n}"}


def cdh() -> bytes:
    return os.urandom(32)
