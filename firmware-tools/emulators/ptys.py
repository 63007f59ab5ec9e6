"""A pseudo-terminal pair from Debian ``socat`` — a real serial port for tests, benchmarks and the demo.

``socat -d -d pty,raw,echo=0 pty,raw,echo=0`` creates two ``/dev/pts/N`` and copies bytes between them;
pyserial opens either end like a UART. Closing the pair (killing socat) is what a pulled cable looks like:
the next read or write on either end fails with EIO.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from types import TracebackType

_PTY = re.compile(r"PTY is (/dev/pts/\d+)")


class PtyPairError(RuntimeError):
    """socat is missing or did not create the pair."""


class PtyPair:
    """``host`` is the end the application opens, ``device`` the end an emulator opens."""

    def __init__(self, timeout: float = 5.0, host_link: str | None = None) -> None:
        """``host_link``: a stable path (symlink) for the host end, like ``/dev/ttyUSB0`` coming back after
        the cable is plugged in again."""
        socat = shutil.which("socat")
        if socat is None:
            raise PtyPairError("socat not found (Debian package socat; ./dev setup installs it)")
        # socat logs to stderr for its whole life: a file, not a pipe we would have to keep draining
        self._log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives as long as socat
        self._proc = subprocess.Popen(  # noqa: S603 - fixed arguments
            [socat, "-d", "-d", "pty,raw,echo=0" + (f",link={host_link}" if host_link else ""),
             "pty,raw,echo=0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log,
        )  # fmt: skip
        paths: list[str] = []
        deadline = time.monotonic() + timeout
        while len(paths) < 2 and time.monotonic() < deadline and self._proc.poll() is None:
            time.sleep(0.01)
            self._log.seek(0)
            paths = _PTY.findall(self._log.read())
        if len(paths) < 2:
            self.close()
            raise PtyPairError("socat did not report two ptys")
        self.host, self.device = host_link or paths[0], paths[1]

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    def close(self) -> None:
        """Pull the cable: stop socat (both ends become dead ports)."""
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()

    def __enter__(self) -> PtyPair:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()
