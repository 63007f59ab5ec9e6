"""Spoken guidance for the kiosk: every catalogue key in Korean and English, spoken offline by espeak-ng.

``python -m terminal.web.voice build`` (run by ``./dev setup``, so CI has the files) writes
``terminal/web/static/voice/<lang>/<key>.wav`` for every key of :func:`terminal.web.catalog.catalogue` and a
``manifest.json`` of text hashes: only keys whose text changed are spoken again, so a catalogue change
regenerates exactly its audio. The files are build output (gitignored), never committed.

Placeholders (docs/ui.md §Voice guidance): ``{n}`` is spoken for n = 0…:data:`MAX_N` (``<key>@<n>.wav``: the
countdown's seconds, tries left, digits entered); ``{service}`` for each service title
(``<key>@<service>.wav``); any other placeholder is left out. PIN digits are never a file: the keypad says
only how many digits were entered (``voice.pin.count``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from terminal.config import LANGUAGES
from terminal.web.catalog import catalogue

logger = logging.getLogger(__name__)

VOICE_DIR = Path(__file__).resolve().parent / "static" / "voice"
VOICES = {"ko": "ko", "en": "en-gb"}  # espeak-ng voice names (Debian espeak-ng-data)
MAX_N = 20  # the 20 s countdown is the longest count spoken
SERVICES = ("benefit-check", "residence")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


class VoiceError(RuntimeError):
    """espeak-ng is missing or failed."""


def utterances(language: str) -> Iterator[tuple[str, str]]:
    """(file stem, text) for every catalogue key of ``language``, placeholders expanded."""
    cat = catalogue(language)
    for key, text in sorted(cat.items()):
        names = set(_PLACEHOLDER.findall(text))
        if "n" in names:
            for n in range(MAX_N + 1):
                yield f"{key}@{n}", _fill(text, n=str(n))
        elif "service" in names:
            for sid in SERVICES:
                yield f"{key}@{sid}", _fill(text, service=cat.get(f"service.{sid}.title", sid))
        else:
            yield key, _fill(text)


def _fill(text: str, **values: str) -> str:
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), ""), text)


def _speak(language: str, text: str, path: Path) -> None:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise VoiceError("espeak-ng is not installed (apt-get install espeak-ng)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    result = subprocess.run(  # noqa: S603 (fixed executable, text as one argument)
        [exe, "-v", VOICES[language], "-s", "150", "-w", str(tmp), "--", text],
        capture_output=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0 or not tmp.exists():
        raise VoiceError(f"espeak-ng failed: {result.stderr.decode(errors='replace')[:200]}")
    tmp.replace(path)


def build(out: Path = VOICE_DIR, jobs: int = 2) -> int:
    """Speak every utterance whose text changed since the last build; return how many were spoken."""
    manifest_path = out / "manifest.json"
    try:
        manifest: dict[str, str] = json.loads(manifest_path.read_text("utf-8"))
    except (OSError, ValueError):
        manifest = {}
    todo: list[tuple[str, str, Path, str]] = []
    wanted: dict[str, str] = {}
    for language in LANGUAGES:
        for stem, text in utterances(language):
            rel = f"{language}/{stem}.wav"
            digest = hashlib.sha256(f"{VOICES[language]}\0{text}".encode()).hexdigest()
            wanted[rel] = digest
            if manifest.get(rel) != digest or not (out / rel).exists():
                todo.append((language, text, out / rel, rel))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(lambda job: _speak(job[0], job[1], job[2]), todo))
    for rel in set(manifest) - set(wanted):
        (out / rel).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps(wanted, indent=0, sort_keys=True), "utf-8")
    return len(todo)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m terminal.web.voice", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("command", choices=["build"])
    parser.add_argument("--out", type=Path, default=VOICE_DIR)
    args = parser.parse_args(argv)
    try:
        spoken = build(args.out)
    except VoiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"voice: {spoken} utterances spoken into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
