"""pcscd stopping and coming back while the kiosk runs: the ReaderMonitor reports it, rebuilds its PC/SC
context, and the application reads the card again without restarting.

Only done when this test session started pcscd itself and no other session uses it (CI's case): stopping a
pcscd that others use would break them.
"""

from __future__ import annotations

import fcntl
import os
import queue
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from emulators.card.citizen_card import make_citizen_card

from cityid.errors import PcscUnavailableError
from terminal.pcsc.connection import list_readers, open_connection
from terminal.pcsc.monitor import (
    CardInserted,
    ReaderEvent,
    ReaderMonitor,
    ServiceLost,
    ServiceRestored,
)
from terminal.sessions.citizen import CitizenSession
from tests.fixtures.pcsc import LOCK_DIR, VPCD_READER, vpcd_readers, wait_for

pytestmark = pytest.mark.integration

USERS_LOCK = LOCK_DIR / "cityid-pcscd-users.lock"


def _other_users() -> set[int]:
    """PIDs other than ours holding a lock on the pcscd users lock file (/proc/locks)."""
    if not USERS_LOCK.exists():
        return set()
    st = os.stat(USERS_LOCK)
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = set()
    with open("/proc/locks") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 5 and parts[5] == ident:
                pids.add(int(parts[4]))
    return pids - {os.getpid()}


def _describe(pids: set[int]) -> str:
    out = []
    for pid in sorted(pids):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            cmd = "?"
        out.append(f"{pid} ({cmd.strip()[:80]})")
    return ", ".join(out)


def _wait_event(q: queue.Queue[ReaderEvent], want: Callable[[ReaderEvent], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        try:
            ev = q.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        seen.append(ev)
        if want(ev):
            return
    raise AssertionError(f"expected event not seen; got {seen}")


def _restart_pcscd(pcscd, request) -> subprocess.Popen:
    """Start pcscd again after the test stopped it; stopped at the very end of the session unless someone
    else uses it then."""
    exe = shutil.which("pcscd") or "/usr/sbin/pcscd"
    log = open(LOCK_DIR / f"cityid-pcscd-{os.getpid()}-restart.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([exe, "--foreground"], stdout=log, stderr=subprocess.STDOUT)
    pcscd.process = proc

    def stop_restarted() -> None:
        fd = os.open(USERS_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        finally:
            os.close(fd)
        proc.terminate()
        proc.wait(10)
        log.close()

    request.config.add_cleanup(stop_restarted)
    return proc


def test_pcscd_stops_and_comes_back(pcscd, vpcd_card_factory, tmp_path, request) -> None:
    if pcscd.process is None:
        pytest.skip("pcscd was not started by this test session; stopping it would disturb its owner")
    if _other_users():
        pytest.skip(f"another test session uses this pcscd right now: {_describe(_other_users())}")
    state = tmp_path / "card.json"
    handle = vpcd_card_factory(lambda: make_citizen_card(state), state)
    reader = handle.reader_name
    with ReaderMonitor(timeout_ms=500, poll=0.05) as monitor:
        q = monitor.events()
        assert monitor.ready.wait(5)
        assert reader in monitor.cards()

        pcscd.process.terminate()
        pcscd.process.wait(10)
        try:
            _wait_event(q, lambda e: isinstance(e, ServiceLost), 10)
            with pytest.raises(PcscUnavailableError):
                list_readers()
            assert monitor.cards() == {}
        finally:  # whatever failed above, pcscd comes back: every later PC/SC test needs it
            proc = _restart_pcscd(pcscd, request)
        wait_for(lambda: VPCD_READER in vpcd_readers(), 15, "pcscd back with the vpcd readers")
        _wait_event(q, lambda e: isinstance(e, ServiceRestored), 10)
        _wait_event(q, lambda e: isinstance(e, CardInserted) and e.reader == reader, 15)  # card reconnected
        assert proc.poll() is None

    with open_connection(reader) as conn:  # same process, fresh context: the card answers again
        assert CitizenSession(conn).info().pin_tries == 3
