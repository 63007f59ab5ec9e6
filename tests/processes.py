"""Child processes in tests: started in their own process group, always stopped by a deadline.

A child that ignores its stop signal (or hangs in start-up) is killed with its group when the deadline
passes, so one stuck emulator cannot keep a virtual reader and cascade into unrelated failures.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def stop(proc: subprocess.Popen[Any], sig: int = signal.SIGINT, timeout: float = 15.0) -> tuple[Any, Any]:
    """Send ``sig``; wait up to ``timeout`` for the exit; then kill the whole group. Returns (out, err)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return proc.communicate(timeout=10)


@contextlib.contextmanager
def running(
    cmd: Sequence[str], *, sig: int = signal.SIGINT, timeout: float = 15.0, **popen: Any
) -> Iterator[subprocess.Popen[Any]]:
    """``cmd`` as a child in a new session; on exit: ``sig``, then SIGKILL to its group past ``timeout``."""
    proc = subprocess.Popen(list(cmd), start_new_session=True, **popen)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            stop(proc, sig, timeout)
        _kill_group(proc)  # grandchildren too
