"""The in-process CTAPHID device: python-fido2's CtapHidDevice on it, framing rules, bad packets, fuzzing."""

from __future__ import annotations

import os
import struct
import threading

import pytest
from emulators.fido.hid import (
    BROADCAST_CID,
    MAX_MESSAGE,
    REPORT_SIZE,
    VirtualHidDevice,
    list_devices,
    register,
    unregister,
)
from emulators.fido.presence import UserPresence
from fido2.ctap import CtapError
from fido2.ctap2 import Ctap2
from fido2.hid import CTAPHID, CtapHidDevice
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.fido_support import ES256, RP, Clock, cdh, make_auth, user

ERR = CtapError.ERR


def init_packet(cid: int, cmd: int, length: int, data: bytes = b"") -> bytes:
    return (struct.pack(">IBH", cid, 0x80 | cmd, length) + data).ljust(REPORT_SIZE, b"\0")


def cont_packet(cid: int, seq: int, data: bytes = b"") -> bytes:
    return (struct.pack(">IB", cid, seq) + data).ljust(REPORT_SIZE, b"\0")


class Raw:
    """A raw host: writes packets, reads answers."""

    def __init__(self, device: VirtualHidDevice) -> None:
        self.conn = device.open()

    def send(self, packet: bytes) -> None:
        self.conn.write_packet(packet)

    def recv(self) -> tuple[int, int, bytes]:
        pkt = self.conn.queue.get(timeout=5)
        cid, cmd, length = struct.unpack_from(">IBH", pkt)
        return cid, cmd & 0x7F, pkt[7 : 7 + length]

    def pending(self) -> int:
        return self.conn.queue.qsize()

    def allocate(self) -> int:
        nonce = os.urandom(8)
        self.send(init_packet(BROADCAST_CID, CTAPHID.INIT, 8, nonce))
        cid, cmd, data = self.recv()
        assert (cid, cmd, data[:8]) == (BROADCAST_CID, CTAPHID.INIT, nonce)
        return struct.unpack_from(">I", data, 8)[0]

    def expect_error(self, cid: int, code: int) -> None:
        rcid, cmd, data = self.recv()
        assert (rcid, cmd, data[0]) == (cid, CTAPHID.ERROR, code)


@pytest.fixture
def device() -> VirtualHidDevice:
    return VirtualHidDevice(make_auth())


def test_python_fido2_talks_to_it(device) -> None:
    hid = CtapHidDevice(device.descriptor, device.open())
    assert hid.version == 2 and hid.capabilities & 0x04  # CBOR
    assert hid.ping(b"x" * 1000) == b"x" * 1000  # fragmented both ways
    hid.wink()
    ctap = Ctap2(hid)
    att = ctap.make_credential(cdh(), RP, user(), ES256, options={"rk": True})
    h = cdh()
    a = ctap.get_assertion("busan.go.kr", h)
    a.verify(h, att.auth_data.credential_data.public_key)
    with pytest.raises(CtapError) as info:
        hid.call(CTAPHID.LOCK, b"\x01")
    assert info.value.code == ERR.INVALID_COMMAND
    assert hid.call(CTAPHID.MSG, b"\x00\x01\x00\x00") == b"\x6d\x00"  # no U2F


def test_channels_are_distinct_and_two_hosts_coexist(device) -> None:
    a, b = CtapHidDevice(device.descriptor, device.open()), CtapHidDevice(device.descriptor, device.open())
    assert a._channel_id != b._channel_id
    assert a.ping(b"a") == b"a" and b.ping(b"b") == b"b"


def test_registry_lists_plugged_devices(device) -> None:
    register(device)
    try:
        devs = list(list_devices())
        assert any(d.descriptor.path == device.descriptor.path for d in devs)
    finally:
        unregister(device)
    assert all(d.descriptor.path != device.descriptor.path for d in list_devices())


def test_framing_errors(device) -> None:
    host = Raw(device)
    cid = host.allocate()
    # command on channel 0 / broadcast / unallocated
    host.send(init_packet(0, CTAPHID.PING, 1, b"x"))
    host.expect_error(0, ERR.INVALID_CHANNEL)
    host.send(init_packet(BROADCAST_CID, CTAPHID.PING, 1, b"x"))
    host.expect_error(BROADCAST_CID, ERR.INVALID_CHANNEL)
    host.send(init_packet(0x12345678, CTAPHID.PING, 1, b"x"))
    host.expect_error(0x12345678, ERR.INVALID_CHANNEL)
    # unknown command, INIT with a wrong length, oversized message
    host.send(init_packet(cid, 0x33, 0))
    host.expect_error(cid, ERR.INVALID_COMMAND)
    host.send(init_packet(BROADCAST_CID, CTAPHID.INIT, 7, b"1234567"))
    host.expect_error(BROADCAST_CID, ERR.INVALID_LENGTH)
    host.send(init_packet(cid, CTAPHID.CBOR, MAX_MESSAGE + 1))
    host.expect_error(cid, ERR.INVALID_LENGTH)
    host.send(init_packet(cid, CTAPHID.CBOR, 0))
    host.expect_error(cid, ERR.INVALID_LENGTH)
    # a short report
    host.send(init_packet(cid, CTAPHID.PING, 1, b"x")[:20])
    host.expect_error(cid, ERR.INVALID_LENGTH)
    # wrong sequence number
    host.send(init_packet(cid, CTAPHID.PING, 100, b"a" * 57))
    host.send(cont_packet(cid, 1, b"b" * 43))
    host.expect_error(cid, ERR.INVALID_SEQ)
    # a new init packet while a message is being assembled
    host.send(init_packet(cid, CTAPHID.PING, 100, b"a" * 57))
    host.send(init_packet(cid, CTAPHID.PING, 1, b"x"))
    host.expect_error(cid, ERR.INVALID_SEQ)
    # spurious continuation packets are ignored; the channel still works
    host.send(cont_packet(cid, 0, b"zz"))
    host.send(init_packet(cid, CTAPHID.PING, 2, b"ok"))
    assert host.recv() == (cid, CTAPHID.PING, b"ok")
    assert host.pending() == 0


def test_busy_channel_and_resync(device) -> None:
    host = Raw(device)
    one, two = host.allocate(), host.allocate()
    host.send(init_packet(one, CTAPHID.PING, 100, b"a" * 57))
    host.send(init_packet(two, CTAPHID.PING, 1, b"x"))
    host.expect_error(two, ERR.CHANNEL_BUSY)
    # INIT on the busy channel resynchronises it (the partial message is dropped)
    nonce = os.urandom(8)
    host.send(init_packet(one, CTAPHID.INIT, 8, nonce))
    cid, cmd, data = host.recv()
    assert (cid, cmd, data[:8], struct.unpack_from(">I", data, 8)[0]) == (one, CTAPHID.INIT, nonce, one)
    host.send(init_packet(two, CTAPHID.PING, 1, b"y"))
    assert host.recv() == (two, CTAPHID.PING, b"y")


def test_partial_message_times_out() -> None:
    clock = Clock()
    device = VirtualHidDevice(make_auth(clock=clock), clock=clock)
    host = Raw(device)
    cid = host.allocate()
    host.send(init_packet(cid, CTAPHID.PING, 100, b"a" * 57))
    clock.advance(1.0)
    host.send(init_packet(cid, CTAPHID.PING, 1, b"z"))  # the next packet finds the stale message
    host.expect_error(cid, ERR.TIMEOUT)
    assert host.recv() == (cid, CTAPHID.PING, b"z")


def test_keepalive_while_waiting_for_touch_and_cancel() -> None:
    up = UserPresence(delay=0.35)
    device = VirtualHidDevice(make_auth(up=up, clock=Clock()))
    hid = CtapHidDevice(device.descriptor, device.open())
    ctap = Ctap2(hid)
    statuses = []
    att = ctap.make_credential(cdh(), RP, user(), ES256, on_keepalive=statuses.append)
    assert att.fmt == "packed" and statuses == [2]  # UPNEEDED (reported once per change)
    # another channel is busy meanwhile
    up.delay = 5.0
    event = threading.Event()
    threading.Timer(0.3, event.set).start()
    with pytest.raises(CtapError) as info:
        ctap.make_credential(cdh(), RP, user(2), ES256, event=event)
    assert info.value.code == ERR.KEEPALIVE_CANCEL


def test_channel_busy_while_processing() -> None:
    up = UserPresence(delay=0.5)
    device = VirtualHidDevice(make_auth(up=up, clock=Clock()))
    first = Ctap2(CtapHidDevice(device.descriptor, device.open()))
    raw = Raw(device)
    other = raw.allocate()
    done = threading.Event()
    threading.Thread(target=lambda: (first.selection(), done.set()), daemon=True).start()
    while device._busy is None:  # wait until the first channel's transaction runs
        threading.Event().wait(0.01)
    raw.send(init_packet(other, CTAPHID.PING, 1, b"x"))
    raw.expect_error(other, ERR.CHANNEL_BUSY)
    assert done.wait(5)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(min_size=REPORT_SIZE, max_size=REPORT_SIZE),
            st.tuples(
                st.sampled_from([1, 2, 0xFFFFFFFF, 0]),
                st.integers(0, 255),
                st.integers(0, 8000),
                st.binary(max_size=57),
            ).map(lambda t: init_packet(t[0], t[1] & 0x7F, t[2], t[3])),
            st.tuples(st.sampled_from([1, 2]), st.integers(0, 130), st.binary(max_size=59)).map(
                lambda t: cont_packet(*t)
            ),
        ),
        max_size=8,
    )
)
def test_random_packets_never_break_the_device(packets: list[bytes]) -> None:
    device = VirtualHidDevice(make_auth(clock=Clock()))
    host = Raw(device)
    for packet in packets:
        if packet[4] & 0x7F == CTAPHID.CBOR and packet[4] & 0x80:
            continue  # keep CBOR out: it runs on a worker thread (covered by the CBOR fuzz test)
        host.send(packet)
    # every answer is a well-formed frame and the device still serves a fresh host
    while host.pending():
        pkt = host.conn.queue.get_nowait()
        assert len(pkt) == REPORT_SIZE
    hid = CtapHidDevice(device.descriptor, device.open())
    assert hid.ping(b"alive") == b"alive"


def test_webauthn_prf_over_hmac_secret_with_python_fido2_client(device) -> None:
    from fido2.client import DefaultClientDataCollector, Fido2Client

    collector = DefaultClientDataCollector("https://busan.go.kr")
    client = Fido2Client(CtapHidDevice(device.descriptor, device.open()), collector)
    created = client.make_credential(
        {
            "rp": {"id": "busan.go.kr", "name": "Busan"},
            "user": {"id": b"citizen-1", "name": "kim"},
            "challenge": os.urandom(16),
            "pubKeyCredParams": [{"type": "public-key", "alg": -7}],
            "extensions": {"prf": {}},
            "authenticatorSelection": {"userVerification": "discouraged", "residentKey": "required"},
        }
    )
    assert created.client_extension_results == {"prf": {"enabled": True}}

    def prf(salt: bytes) -> str:
        request = {
            "rpId": "busan.go.kr",
            "challenge": os.urandom(16),
            "userVerification": "discouraged",
            "extensions": {"prf": {"eval": {"first": salt}}},
        }
        response = client.get_assertion(request).get_response(0)
        return response.client_extension_results["prf"]["results"]["first"]

    one, two = os.urandom(32), os.urandom(32)
    assert prf(one) == prf(one) != prf(two)
