"""SoftHSM2 tokens for tests (docs/operations.md §HSM). The library reads ``SOFTHSM2_CONF`` at
``C_Initialize``: :func:`softhsm_tokens` points it at a fresh token directory and re-initializes the module
if this process loaded it already, so test modules with their own tokens work in any order."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
USER_PIN = "1234"
SO_PIN = "5678"


@contextmanager
def softhsm_tokens(base: Path, labels: Sequence[str]) -> Iterator[Path]:
    """Empty tokens ``labels`` (user PIN 1234) in ``base``; yields the config file path."""
    if not shutil.which("softhsm2-util") or not Path(SOFTHSM_MODULE).exists():
        pytest.fail("softhsm2 is not installed (apt-get install softhsm2; ./dev APT_PACKAGES)")
    (base / "tokens").mkdir(parents=True, exist_ok=True)
    conf = base / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {base}/tokens\nobjectstore.backend = file\nlog.level = ERROR\n")
    mp = pytest.MonkeyPatch()
    mp.setenv("SOFTHSM2_CONF", str(conf))
    for label in labels:
        cmd = ["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", USER_PIN,
               "--so-pin", SO_PIN]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True, env=dict(os.environ))
    _reinitialize()
    try:
        yield conf
    finally:
        mp.undo()


def _reinitialize() -> None:
    import pkcs11

    pkcs11.lib(SOFTHSM_MODULE).reinitialize()  # loads it, or makes a loaded one read the new config
