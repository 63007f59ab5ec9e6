"""Persistent card state: one JSON file with named sections, every write atomic.

A real card writes EEPROM/flash transactionally (Java Card ``JCSystem.beginTransaction``); the emulator gets
the same guarantee from the file system: the new state is written to a temporary file in the same directory,
fsync'ed, renamed over the old file with :func:`os.replace` (atomic on POSIX) and the directory is fsync'ed.
A tear at any moment (card pulled, process killed, power lost) therefore leaves the old or the new state,
never a mix. Several sections changed by one command go through :meth:`CardStore.commit_many` so they change
together.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cityid.errors import CityIdError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


class CardStoreError(CityIdError):
    """The state file cannot be read or written (unreadable, not our format, disk error)."""


class CardStore:
    """Sections of card state (``{name: dict}``) backed by a JSON file, or memory when ``path`` is None."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._sections: dict[str, dict[str, Any]] = {}
        #: Test hook: called with a stage name ("written", "synced", "replaced") during each commit; raising
        #: from it simulates a tear at that point.
        self.fault_hook: Callable[[str], None] | None = None
        if self.path is not None:
            self._remove_stale_temp_files(self.path)
            if self.path.exists():
                self._sections = self._load(self.path)

    @staticmethod
    def _remove_stale_temp_files(path: Path) -> None:
        """Delete temp files a killed writer left (they never hold the current state)."""
        try:
            stale = list(path.parent.glob(f".{path.name}.*.tmp"))
        except OSError:
            return
        for tmp in stale:
            with contextlib.suppress(OSError):
                tmp.unlink()

    @staticmethod
    def _load(path: Path) -> dict[str, dict[str, Any]]:
        try:
            raw = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise CardStoreError(f"cannot read card state {path}: {exc}") from exc
        if (
            not isinstance(raw, dict)
            or raw.get("format") != FORMAT_VERSION
            or not isinstance(raw.get("sections"), dict)
            or not all(isinstance(v, dict) for v in raw["sections"].values())
        ):
            raise CardStoreError(f"{path} is not a card state file (format {FORMAT_VERSION})")
        return raw["sections"]

    @property
    def persistent(self) -> bool:
        return self.path is not None

    def section(self, name: str) -> dict[str, Any]:
        """A deep copy of section ``name`` (empty if it was never written)."""
        with self._lock:
            return copy.deepcopy(self._sections.get(name, {}))

    def commit(self, name: str, data: Mapping[str, Any]) -> None:
        """Replace section ``name`` with ``data``, atomically on disk."""
        self.commit_many({name: data})

    def commit_many(self, sections: Mapping[str, Mapping[str, Any]]) -> None:
        """Replace several sections in one atomic write: all of them change, or none."""
        with self._lock:
            new = dict(self._sections)
            for name, data in sections.items():
                new[name] = copy.deepcopy(dict(data))
            if self.path is not None:
                try:
                    self._write(new)
                except OSError as exc:
                    raise CardStoreError(f"cannot write card state {self.path}: {exc}") from exc
            self._sections = new

    def _stage(self, stage: str) -> None:
        if self.fault_hook is not None:
            self.fault_hook(stage)

    def _write(self, sections: dict[str, dict[str, Any]]) -> None:
        assert self.path is not None
        payload = json.dumps(
            {"format": FORMAT_VERSION, "sections": sections}, sort_keys=True, separators=(",", ":")
        ).encode()
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{self.path.name}.", suffix=".tmp")
        except OSError as exc:
            raise CardStoreError(f"cannot write card state in {directory}: {exc}") from exc
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
                f.flush()
                self._stage("written")
                os.fsync(f.fileno())
            self._stage("synced")
            os.replace(tmp, self.path)
            self._stage("replaced")
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        logger.debug("card state written to %s (%d bytes)", self.path, len(payload))
