"""pcscd with the vsmartcard vpcd readers, and virtual cards in them: the one implementation that the pytest
fixtures (tests/fixtures/pcsc.py), the benchmarks and ``kiosk demo`` share.

pcscd and vpcd's TCP ports are machine-wide, so concurrent users (test sessions, benchmarks, a demo) keep
apart with file locks in one fixed directory (``$CITYID_PCSC_LOCK_DIR``, default ``/tmp`` — not ``$TMPDIR``,
which differs between sessions):

* ``cityid-pcscd-start.lock`` (exclusive, held briefly): one user at a time checks for / starts pcscd;
* ``cityid-pcscd-users.lock`` (shared while pcscd is in use): whoever started pcscd stops it only when it
  can take this lock exclusively, i.e. when nobody else uses it;
* ``cityid-vpcd-<port>.lock`` (exclusive): one user per vpcd reader.

A running pcscd that lists the vpcd readers is reused and never stopped here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from emulators.card.os import VirtualCard
from emulators.card.transport import DEFAULT_VPCD_PORT, VpcdCard
from smartcard import scard

from cityid.errors import CityIdError

VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
#: vpcd's two readers: TCP port -> the reader name pcscd gives it.
VPCD_SLOTS = {DEFAULT_VPCD_PORT: "Virtual PCD 00 00", DEFAULT_VPCD_PORT + 1: "Virtual PCD 00 01"}
#: The first vpcd reader: a pcscd listing it is a pcscd with the vpcd driver loaded.
VPCD_READER = VPCD_SLOTS[DEFAULT_VPCD_PORT]
LOCK_DIR = Path(os.environ.get("CITYID_PCSC_LOCK_DIR", "/tmp"))  # noqa: S108 - machine-wide on purpose
START_LOCK = "cityid-pcscd-start.lock"
USERS_LOCK = "cityid-pcscd-users.lock"
START_TIMEOUT = 15.0  # pcscd up with the vpcd readers
CARD_TIMEOUT = 10.0  # pcscd sees a card inserted / removed
SLOT_WAIT = 240.0  # a free vpcd reader (below pytest-timeout's 300 s: a busy machine fails clearly)
LOCK_WAIT = 60.0  # the pcscd start lock
POLL = 0.02


class VpcdEnvironmentError(CityIdError):
    """pcscd or the vpcd driver is missing, or pcscd did not start."""


class VpcdTimeoutError(VpcdEnvironmentError, TimeoutError):
    """A reader, card, lock or pcscd did not come up in time."""


# --- PC/SC state ----------------------------------------------------------------------------------


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
    """Poll ``predicate`` every 20 ms until true; raise :class:`VpcdTimeoutError` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise VpcdTimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(POLL)


# --- locks ----------------------------------------------------------------------------------------


def open_lock(name: str) -> int:
    """The file descriptor of the lock file ``name`` in :data:`LOCK_DIR` (closing it drops its lock)."""
    return os.open(LOCK_DIR / name, os.O_RDWR | os.O_CREAT, 0o666)


def slot_lock_name(port: int) -> str:
    """The lock file of the vpcd reader on ``port``."""
    return f"cityid-vpcd-{port}.lock"


def flock_wait(fd: int, mode: int, timeout: float, what: str) -> None:
    """``flock(fd, mode)``, retrying every 50 ms; :class:`VpcdTimeoutError` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise VpcdTimeoutError(f"timed out waiting for the {what} lock") from None
            time.sleep(0.05)


def acquire_slot(ports: Iterable[int] | None = None, timeout: float = SLOT_WAIT) -> tuple[int, int]:
    """Lock one free vpcd reader among ``ports`` (default: all); return (port, lock fd — close it to free)."""
    fds = {p: open_lock(slot_lock_name(p)) for p in (VPCD_SLOTS if ports is None else ports)}
    deadline = time.monotonic() + timeout
    try:
        while True:
            for port, fd in fds.items():
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                del fds[port]
                return port, fd
            if time.monotonic() > deadline:
                raise VpcdTimeoutError(f"no free vpcd reader after {timeout:.0f}s (other sessions hold them)")
            time.sleep(0.05)
    finally:
        for fd in fds.values():
            os.close(fd)


@contextlib.contextmanager
def vpcd_slot(ports: Iterable[int] | None = None, timeout: float = SLOT_WAIT) -> Iterator[tuple[int, str]]:
    """A free vpcd reader (port, reader name), locked and seen empty, for as long as the block runs."""
    port, fd = acquire_slot(ports, timeout)
    try:
        reader = VPCD_SLOTS[port]
        # A card left over from a crashed user would confuse this one: wait until the reader is empty.
        wait_for(lambda: not reader_has_card(reader), CARD_TIMEOUT, f"{reader} to be empty")
        yield port, reader
        with contextlib.suppress(VpcdTimeoutError):
            wait_for(lambda: not reader_has_card(reader), CARD_TIMEOUT, f"{reader} to be empty")
    finally:
        os.close(fd)


# --- pcscd ----------------------------------------------------------------------------------------


def pcscd_executable() -> str | None:
    """The system pcscd, or None when it is not installed."""
    return shutil.which("pcscd") or ("/usr/sbin/pcscd" if Path("/usr/sbin/pcscd").exists() else None)


def can_start_pcscd() -> bool:
    """pcscd and the vpcd driver are installed and we are root (pcscd's socket is in /run/pcscd)."""
    return pcscd_executable() is not None and VPCD_DRIVER.exists() and os.geteuid() == 0


@dataclass
class Pcscd:
    """The pcscd in use: the vpcd readers it listed, and ``process`` when it was started here."""

    readers: list[str]
    process: subprocess.Popen[bytes] | None = field(default=None)


@contextlib.contextmanager
def running_pcscd(start_timeout: float = START_TIMEOUT, log_path: Path | None = None) -> Iterator[Pcscd]:
    """Use the running pcscd if it lists the vpcd readers, else start ``pcscd --foreground`` (output to
    ``log_path`` when given) and, on exit, stop it — only when nobody else uses it."""
    start_fd = open_lock(START_LOCK)
    users_fd = open_lock(USERS_LOCK)
    proc: subprocess.Popen[bytes] | None = None
    try:
        flock_wait(start_fd, fcntl.LOCK_EX, LOCK_WAIT, "pcscd start")
        try:
            readers = vpcd_readers()
            if VPCD_READER not in readers:
                proc, readers = _start_pcscd(start_timeout, log_path)
            # Shared lock = "I use pcscd"; its starter stops it only when nobody else holds one.
            fcntl.flock(users_fd, fcntl.LOCK_SH)
        finally:
            fcntl.flock(start_fd, fcntl.LOCK_UN)
        yield Pcscd(readers, proc)
    finally:
        if proc is not None and proc.poll() is None:
            _stop_if_unused(proc, start_fd, users_fd, log_path)
        os.close(users_fd)
        os.close(start_fd)


def _stop_if_unused(
    proc: subprocess.Popen[bytes], start_fd: int, users_fd: int, log_path: Path | None
) -> None:
    try:
        flock_wait(start_fd, fcntl.LOCK_EX, LOCK_WAIT, "pcscd start")
    except VpcdTimeoutError:
        return  # someone is starting to use it: leave it running
    try:
        fcntl.flock(users_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # another user still holds the shared lock: leave it running
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if log_path is not None:
        with contextlib.suppress(OSError):
            log_path.unlink()


def _start_pcscd(timeout: float, log_path: Path | None) -> tuple[subprocess.Popen[bytes], list[str]]:
    exe = pcscd_executable()
    if exe is None:
        raise VpcdEnvironmentError("pcscd is not installed (apt-get install pcscd vsmartcard-vpcd)")
    if not VPCD_DRIVER.exists():
        raise VpcdEnvironmentError(
            "the vpcd reader driver is not installed (apt-get install vsmartcard-vpcd)"
        )
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(log_path, "wb")) if log_path is not None else subprocess.DEVNULL
        proc = subprocess.Popen(  # noqa: S603 - the system pcscd, fixed arguments
            [exe, "--foreground"], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_for(lambda: VPCD_READER in vpcd_readers() or proc.poll() is not None, timeout, "pcscd")
    except VpcdTimeoutError:
        proc.kill()
        proc.wait()
        raise VpcdTimeoutError(
            f"pcscd did not come up with the vpcd readers in {timeout:.0f}s{_tail(log_path)}"
        ) from None
    if proc.poll() is not None:
        raise VpcdEnvironmentError(
            f"pcscd exited with status {proc.returncode} (needs root or pcscd rights){_tail(log_path)}"
        )
    return proc, vpcd_readers()


def _tail(log_path: Path | None) -> str:
    if log_path is None:
        return ""
    try:
        return ":\n" + log_path.read_text(errors="replace")[-2000:]
    except OSError:
        return ""


# --- a card in a reader ---------------------------------------------------------------------------


@contextlib.contextmanager
def inserted_card(card: VirtualCard, timeout: float = CARD_TIMEOUT) -> Iterator[tuple[VpcdCard, str]]:
    """pcscd up, a reader locked, ``card`` inserted and seen by pcscd; removed on exit."""
    with running_pcscd(), vpcd_slot() as (port, reader):
        vpcd = VpcdCard(card, port=port)
        vpcd.start()
        try:
            wait_for(lambda: reader_has_card(reader), timeout, f"the card in {reader}")
            yield vpcd, reader
        finally:
            vpcd.stop()
            with contextlib.suppress(VpcdTimeoutError):
                wait_for(lambda: not reader_has_card(reader), timeout, f"{reader} to be empty")
