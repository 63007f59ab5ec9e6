"""pcscd + vpcd for benchmarks outside pytest (the locks of tests/fixtures/pcsc.py: runs never collide)."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from firmware_tools.card.os import VirtualCard
from firmware_tools.card.transport import DEFAULT_VPCD_PORT, VpcdCard

from tests.fixtures.pcsc import (
    CARD_TIMEOUT,
    LOCK_DIR,
    START_TIMEOUT,
    VPCD_READER,
    _flock,
    card_present,
    vpcd_readers,
    wait_for,
)


@contextmanager
def vpcd_session(card: VirtualCard) -> Iterator[str]:
    """Insert ``card`` into the vpcd reader (starting pcscd if needed); yield the reader name."""
    start_fd = os.open(LOCK_DIR / "cityid-pcscd-start.lock", os.O_RDWR | os.O_CREAT, 0o666)
    users_fd = os.open(LOCK_DIR / "cityid-pcscd-users.lock", os.O_RDWR | os.O_CREAT, 0o666)
    lock_fd = os.open(LOCK_DIR / f"cityid-vpcd-{DEFAULT_VPCD_PORT}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    proc: subprocess.Popen[bytes] | None = None
    vpcd: VpcdCard | None = None
    try:
        _flock(start_fd, fcntl.LOCK_EX, 60, "pcscd start")
        try:
            if VPCD_READER not in vpcd_readers():
                exe = shutil.which("pcscd") or "/usr/sbin/pcscd"
                proc = subprocess.Popen(
                    [exe, "--foreground"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                wait_for(lambda: VPCD_READER in vpcd_readers(), START_TIMEOUT, "pcscd with the vpcd readers")
            fcntl.flock(users_fd, fcntl.LOCK_SH)
        finally:
            fcntl.flock(start_fd, fcntl.LOCK_UN)
        _flock(lock_fd, fcntl.LOCK_EX, 600, "vpcd reader")
        wait_for(lambda: not card_present(VPCD_READER), CARD_TIMEOUT, f"{VPCD_READER} to be empty")
        vpcd = VpcdCard(card, port=DEFAULT_VPCD_PORT)
        vpcd.start()
        wait_for(lambda: card_present(VPCD_READER), CARD_TIMEOUT, f"a card in {VPCD_READER}")
        yield VPCD_READER
    finally:
        if vpcd is not None:
            vpcd.stop()
            with suppress(TimeoutError):
                wait_for(lambda: not card_present(VPCD_READER), CARD_TIMEOUT, "the reader to be empty")
        fcntl.flock(lock_fd, fcntl.LOCK_UN)
        os.close(lock_fd)
        if proc is not None:
            _flock(start_fd, fcntl.LOCK_EX, 60, "pcscd start")
            try:
                fcntl.flock(users_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass
            else:
                proc.terminate()
                proc.wait(5)
        os.close(users_fd)
        os.close(start_fd)
