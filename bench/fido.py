"""FIDO2 latency: makeCredential and getAssertion end to end, host side (median / p95).

Paths: the CTAP core alone (reference), the in-process CTAPHID device with python-fido2's CtapHidDevice,
and the virtual key in pcscd's vpcd reader through python-fido2's CtapPcscDevice and through the terminal's
CtapSmartCardDevice on a PcscConnection. The key keeps its state in a file (atomic writes with fsync), as
``cardtool emulate fido`` does. Goal: getAssertion ≤ 5 ms host-side through pcscd.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
from pathlib import Path

from emulators.card.store import CardStore
from emulators.fido.authenticator import Authenticator
from emulators.fido.card import make_fido_card
from emulators.fido.hid import VirtualHidDevice
from fido2.ctap2 import Ctap2
from fido2.hid import CtapHidDevice
from firmware_tools.vpcd_env import inserted_card

from bench._stats import summary_ms, timed

RP = {"id": "busan.go.kr", "name": "Busan"}
ALGS = [{"type": "public-key", "alg": -7}]


def _summary(samples: list[float]) -> str:
    return summary_ms(samples, 2)


def _ctap_round(label: str, ctap: Ctap2, n: int) -> None:
    counter = iter(range(10**9))

    def make() -> object:
        i = next(counter) % 20  # re-registering a user replaces its credential: the key never fills up
        user = {"id": f"citizen-{i}".encode(), "name": f"c{i}"}
        return ctap.make_credential(os.urandom(32), RP, user, ALGS, options={"rk": True})

    fixed = {"id": b"bench-assertion-user", "name": "bench"}
    att = ctap.make_credential(os.urandom(32), RP, fixed, ALGS, options={"rk": True})
    allow = [{"type": "public-key", "id": att.auth_data.credential_data.credential_id}]
    mc = timed(make, n)
    ga = timed(lambda: ctap.get_assertion("busan.go.kr", os.urandom(32), allow_list=allow), n)
    print(f"   {label:<42} makeCredential (rk)  {_summary(mc)}")
    print(f"   {'':<42} getAssertion        {_summary(ga)}")


def _core(n: int, state: Path) -> None:
    from fido2 import cbor

    auth = Authenticator(CardStore(state / "core.json"))
    counter = iter(range(10**9))

    def make() -> bytes:
        i = next(counter) % 20
        req = {1: os.urandom(32), 2: RP, 3: {"id": f"u{i}".encode()}, 4: ALGS, 7: {"rk": True}}
        return auth.process(b"\x01" + cbor.encode(req))

    fixed = {1: os.urandom(32), 2: RP, 3: {"id": b"bench-assertion-user"}, 4: ALGS, 7: {"rk": True}}
    resp = cbor.decode(auth.process(b"\x01" + cbor.encode(fixed))[1:])
    from fido2.webauthn import AuthenticatorData

    cred_id = AuthenticatorData(resp[2]).credential_data.credential_id
    get = b"\x02" + cbor.encode({1: "busan.go.kr", 2: b"\0" * 32, 3: [{"type": "public-key", "id": cred_id}]})
    mc = timed(make, n)
    ga = timed(lambda: auth.process(get), n)
    assert auth.process(get)[0] == 0
    print(f"   {'CTAP core (no transport)':<42} makeCredential (rk)  {_summary(mc)}")
    print(f"   {'':<42} getAssertion        {_summary(ga)}")


def run(args: argparse.Namespace) -> None:
    n = 30 if getattr(args, "quick", False) else 200
    load = os.getloadavg()[0]
    print(f"   (load average {load:.1f} on {os.cpu_count()} CPUs; the state file is fsync'ed per rk write)")
    with tempfile.TemporaryDirectory(prefix="bench-fido-") as tmp:
        state = Path(tmp)
        _core(n, state)
        device = VirtualHidDevice(Authenticator(CardStore(state / "hid.json")))
        _ctap_round(
            "USB HID (in-process CtapHidDevice)", Ctap2(CtapHidDevice(device.descriptor, device.open())), n
        )

        from terminal.fido.device import CtapSmartCardDevice, pcsc_device
        from terminal.pcsc.connection import PcscConnection

        card, _ = make_fido_card(state / "pcsc.json")
        with inserted_card(card) as (_, reader):
            device = pcsc_device(reader)
            try:
                _ctap_round("pcscd+vpcd, python-fido2 CtapPcscDevice", Ctap2(device), n)
            finally:
                device.close()
                del device
                gc.collect()  # pyscard releases its PC/SC context in __del__: do it while pcscd still runs
            with PcscConnection(reader, reset_on_close=False) as conn:
                _ctap_round(
                    "pcscd+vpcd, terminal CtapSmartCardDevice", Ctap2(CtapSmartCardDevice(conn, reader)), n
                )
