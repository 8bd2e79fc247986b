"""Speech the text model cannot read is not text: a window whose recognised words the recogniser was
not confident of carries no words. Measured on real voices with the embedded Whisper tiny.en: German
(EmoDB) marked absent, English (RAVDESS) kept."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from dmd_types import Word
from dmd_types.words import confident_words
from workers.settings import AsrSettings

ROOT = Path(__file__).resolve().parents[1]
VOICES = ROOT.parent / "shared" / "data" / "emotion_speech"


def test_a_window_of_unsure_words_has_none_and_a_window_of_sure_words_keeps_them() -> None:
    sure = [Word("kids", 0.1, 0.4, 0.9), Word("are", 0.4, 0.5, 0.6)]
    unsure = [Word("the", 0.1, 0.3, 0.3), Word("latin", 0.3, 0.8, 0.4)]
    assert confident_words(sure, 0.5) == sure
    assert confident_words(unsure, 0.5) == []
    assert confident_words([], 0.5) == []


@pytest.mark.slow
@pytest.mark.skipif(not VOICES.is_dir(), reason="labelled voices not here (../shared/data/emotion_speech)")
def test_german_speech_is_not_text_and_english_speech_is() -> None:
    pytest.importorskip("faster_whisper")
    from dmd_model.features import read_audio
    from workers.asr.factory import make_engine_factory

    _, factory = make_engine_factory("whisper", max_cpu=None)

    def kept(path: Path) -> bool:
        pcm, _ = read_audio(path)
        engine = factory()
        engine.feed(pcm, 0.0)
        words, _ = engine.finish()
        return bool(confident_words(words, AsrSettings.min_confidence))

    german = sorted((VOICES / "emodb").glob("*.flac"))[::40][:8]
    english = sorted((VOICES / "ravdess" / "Actor_01").glob("*.flac"))[::10][:6]
    german_kept = [kept(p) for p in german]
    english_kept = [kept(p) for p in english]
    assert statistics.mean(german_kept) <= 0.25, dict(zip((p.name for p in german), german_kept))
    assert all(english_kept), dict(zip((p.name for p in english), english_kept))
