"""Voice guidance files (issue 15 item 3): one per catalogue key and language, rebuilt when a text changes."""

from __future__ import annotations

import json
import shutil
import wave
from pathlib import Path

import pytest

from terminal.config import LANGUAGES
from terminal.web import voice
from terminal.web.catalog import catalogue

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


def test_every_catalogue_key_has_audio_in_both_languages() -> None:
    voice.build()  # what ./dev setup runs; nothing to do when up to date
    for language in LANGUAGES:
        stems = {p.stem for p in (voice.VOICE_DIR / language).glob("*.wav")}
        for key in catalogue(language):
            assert key in stems or any(s.startswith(key + "@") for s in stems), (language, key)
        with wave.open(str(voice.VOICE_DIR / language / "idle.title.wav")) as w:
            assert w.getnframes() / w.getframerate() > 0.5  # real speech, not an empty file
    for n in range(9):
        assert (voice.VOICE_DIR / "ko" / f"voice.pin.count@{n}.wav").exists()


def test_no_file_speaks_a_pin_digit_alone() -> None:
    for language in LANGUAGES:
        for stem, text in voice.utterances(language):
            assert not text.strip().isdigit(), (language, stem)


def test_a_changed_text_is_spoken_again_and_only_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(voice, "utterances", lambda lang: iter([("a", f"hello {lang}"), ("b", "world")]))
    assert voice.build(tmp_path) == 4
    assert voice.build(tmp_path) == 0
    monkeypatch.setattr(
        voice, "utterances", lambda lang: iter([("a", f"hello again {lang}"), ("b", "world")])
    )
    assert voice.build(tmp_path) == 2
    assert set(json.loads((tmp_path / "manifest.json").read_text())) == {
        "ko/a.wav",
        "ko/b.wav",
        "en/a.wav",
        "en/b.wav",
    }
