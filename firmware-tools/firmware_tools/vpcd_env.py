"""Bring up pcscd with the vsmartcard vpcd readers and put a virtual card in one (benchmarks, demos).

The same cross-process locks as the pytest fixture (tests/fixtures/pcsc.py) are used, so a benchmark and
test sessions running at once never share a vpcd reader, and a pcscd started here is stopped only when no
other user holds the shared "users" lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from smartcard import scard

from cityid.errors import CityIdError
from firmware_tools.card.os import VirtualCard
from firmware_tools.card.transport import DEFAULT_VPCD_PORT, VpcdCard

VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
VPCD_SLOTS = {DEFAULT_VPCD_PORT: "Virtual PCD 00 00", DEFAULT_VPCD_PORT + 1: "Virtual PCD 00 01"}
#: Same machine-wide lock directory as tests/fixtures/pcsc.py (not $TMPDIR, which differs between sessions).
LOCK_DIR = Path(os.environ.get("CITYID_PCSC_LOCK_DIR", "/tmp"))  # noqa: S108
POLL = 0.02


class VpcdEnvironmentError(CityIdError):
    """pcscd or the vpcd driver is missing, or a reader/card did not come up in time."""


def vpcd_readers() -> list[str]:
    """The vpcd readers pcscd lists now ([] when pcscd is not reachable)."""
    rc, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if rc != scard.SCARD_S_SUCCESS:
        return []
    try:
        rc, readers = scard.SCardListReaders(ctx, [])
        return [r for r in readers if r.startswith("Virtual PCD")] if rc == scard.SCARD_S_SUCCESS else []
    finally:
        scard.SCardReleaseContext(ctx)


def reader_has_card(reader: str) -> bool:
    """True when pcscd reports a card in ``reader``."""
    rc, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if rc != scard.SCARD_S_SUCCESS:
        return False
    try:
        rc, states = scard.SCardGetStatusChange(ctx, 0, [(reader, scard.SCARD_STATE_UNAWARE)])
        return rc == scard.SCARD_S_SUCCESS and bool(states[0][1] & scard.SCARD_STATE_PRESENT)
    finally:
        scard.SCardReleaseContext(ctx)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll every 20 ms; raise :class:`VpcdEnvironmentError` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise VpcdEnvironmentError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(POLL)


def _lock(name: str, mode: int, timeout: float) -> int:
    fd = os.open(LOCK_DIR / name, os.O_RDWR | os.O_CREAT, 0o666)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise VpcdEnvironmentError(f"timed out waiting for the lock {name}") from None
            time.sleep(0.05)


@contextlib.contextmanager
def running_pcscd(start_timeout: float = 15.0) -> Iterator[subprocess.Popen[bytes] | None]:
    """Use the running pcscd if it has the vpcd readers, else start ``pcscd --foreground`` (and stop it on
    exit when nobody else uses it). Yields the process started here, or None."""
    start_fd = _lock("cityid-pcscd-start.lock", fcntl.LOCK_EX, 60)
    users_fd = os.open(LOCK_DIR / "cityid-pcscd-users.lock", os.O_RDWR | os.O_CREAT, 0o666)
    proc: subprocess.Popen[bytes] | None = None
    try:
        try:
            if not vpcd_readers():
                proc = _start_pcscd(start_timeout)
            fcntl.flock(users_fd, fcntl.LOCK_SH)
        finally:
            fcntl.flock(start_fd, fcntl.LOCK_UN)
        yield proc
    finally:
        if proc is not None and proc.poll() is None:
            fcntl.flock(start_fd, fcntl.LOCK_EX)
            fcntl.flock(users_fd, fcntl.LOCK_UN)
            try:
                fcntl.flock(users_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass  # someone else still uses it
            else:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        os.close(users_fd)
        os.close(start_fd)


def _start_pcscd(timeout: float) -> subprocess.Popen[bytes]:
    exe = shutil.which("pcscd") or ("/usr/sbin/pcscd" if Path("/usr/sbin/pcscd").exists() else None)
    if exe is None:
        raise VpcdEnvironmentError("pcscd is not installed (apt-get install pcscd vsmartcard-vpcd)")
    if not VPCD_DRIVER.exists():
        raise VpcdEnvironmentError("the vpcd reader driver is missing (apt-get install vsmartcard-vpcd)")
    proc = subprocess.Popen(  # noqa: S603 - the system pcscd, fixed arguments
        [exe, "--foreground"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: bool(vpcd_readers()) or proc.poll() is not None, timeout, "pcscd's vpcd readers")
    except VpcdEnvironmentError:
        proc.kill()
        proc.wait()
        raise
    if proc.poll() is not None:
        raise VpcdEnvironmentError(f"pcscd exited with status {proc.returncode} (needs root or pcscd rights)")
    return proc


@contextlib.contextmanager
def vpcd_slot(timeout: float = 240.0) -> Iterator[tuple[int, str]]:
    """Lock a free vpcd reader (port, reader name) for as long as the block runs."""
    deadline = time.monotonic() + timeout
    while True:
        for port, reader in VPCD_SLOTS.items():
            try:
                fd = _lock(f"cityid-vpcd-{port}.lock", fcntl.LOCK_EX, 0)
            except VpcdEnvironmentError:
                continue
            try:
                wait_for(lambda r=reader: not reader_has_card(r), 10, f"{reader} to be empty")
                yield port, reader
            finally:
                os.close(fd)
            return
        if time.monotonic() > deadline:
            raise VpcdEnvironmentError("no free vpcd reader")
        time.sleep(0.1)


@contextlib.contextmanager
def inserted_card(card: VirtualCard, timeout: float = 10.0) -> Iterator[tuple[VpcdCard, str]]:
    """pcscd up, a reader locked, ``card`` inserted and seen by pcscd; removed on exit."""
    with running_pcscd(), vpcd_slot() as (port, reader):
        vpcd = VpcdCard(card, port=port)
        vpcd.start()
        try:
            wait_for(lambda: reader_has_card(reader), timeout, f"the card in {reader}")
            yield vpcd, reader
        finally:
            vpcd.stop()
            with contextlib.suppress(VpcdEnvironmentError):
                wait_for(lambda: not reader_has_card(reader), timeout, f"{reader} to be empty")
