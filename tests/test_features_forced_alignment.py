"""Word times for known transcripts: pocketsphinx forced alignment, with fallbacks that never lose a clip."""

from __future__ import annotations

import csv
import itertools
import re
from pathlib import Path

import numpy as np
import pytest

from dmd_model.features import FeatureError, ForcedAligner, align_transcript, read_audio
from dmd_model.features.forced_alignment import letters_to_phones

pytest.importorskip("pocketsphinx")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SPEECH = DATA / "speech"
MOSI = DATA / "clips" / "mosi"


def transcripts() -> dict[str, str]:
    """The LibriVox utterances' exact transcripts: '<s> words </s> (file)' per line."""
    out = {}
    for line in (SPEECH / "transcription").read_text().splitlines():
        m = re.match(r"<s>(.*)</s>\s*\((.*)\)", line.strip())
        if m:
            out[m.group(2)] = m.group(1).strip()
    return out


def check_times(words, duration: float) -> None:
    starts = [w.start for w in words]
    assert starts == sorted(starts)
    assert all(0.0 <= w.start <= w.end <= duration + 1e-6 for w in words)
    assert all(a.end <= b.start + 1e-6 for a, b in itertools.pairwise(words))


def test_pronunciations_for_words_the_dictionary_lacks():
    aligner = ForcedAligner()
    assert aligner.pronunciation("dont") == aligner.pronunciation("don't")  # MOSI writes contractions so
    assert aligner.pronunciation("worthwhile").split() == (aligner.pronunciation("worth") + " " +
                                                           aligner.pronunciation("while")).split()
    assert aligner.pronunciation("3d").startswith(aligner.pronunciation("three"))
    assert letters_to_phones("zorblax") == "Z AO R B L AE K S"


def test_speech_that_cannot_carry_the_text_still_gives_every_word_a_time():
    rng = np.random.default_rng(1)
    noise = (rng.standard_normal(32000) * 300).astype(np.int16)  # 2 s, no speech at all
    words = align_transcript(noise, "Zorblax, the 3D movie!")
    assert [w.text for w in words] == ["zorblax", "the", "3d", "movie"]
    check_times(words, 2.0)
    assert all(w.confidence in (0.0, 1.0) for w in words)


def test_nothing_to_align_and_too_little_audio():
    assert align_transcript(np.zeros(16000, np.int16), "  ...  ") == []
    with pytest.raises(FeatureError, match="too short to align 2 words: give the whole clip"):
        align_transcript(np.zeros(400, np.int16), "hello world")
    with pytest.raises(FeatureError, match=r"shape \(100, 2\): give mono samples"):
        align_transcript(np.zeros((100, 2), np.int16), "hello")


@pytest.mark.skipif(not SPEECH.is_dir(), reason="LibriVox utterances not here (../shared/data/speech): developer data")
def test_librivox_utterances_align_word_by_word_inside_the_clip():
    texts = transcripts()
    assert len(texts) == 5
    for name, text in texts.items():
        pcm, _ = read_audio(SPEECH / f"{name}.wav")
        words = align_transcript(pcm, text)
        assert [w.text for w in words] == text.split()
        assert all(w.confidence == 1.0 for w in words)
        check_times(words, pcm.size / 16000)
    pcm, _ = read_audio(SPEECH / "sense_and_sensibility_01_austen_64kb-0880.wav")
    words = align_transcript(pcm, texts["sense_and_sensibility_01_austen_64kb-0880"], t0=5.0)
    assert words[0].text == "he" and words[0].start == pytest.approx(5.21, abs=0.05)
    assert words[-1].text == "man" and words[-1].end == pytest.approx(7.74, abs=0.05)


@pytest.mark.skipif(not MOSI.is_dir(), reason="real clips not here (../shared/data/clips/mosi): developer data only")
def test_mosi_transcripts_align_inside_their_clips():
    with open(MOSI / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    for row in rows:
        pcm, _ = read_audio(MOSI / row["file"])
        words = align_transcript(pcm, row["text"])
        assert [w.text for w in words] == row["text"].split()
        check_times(words, pcm.size / 16000)
        assert np.mean([w.confidence for w in words]) >= 0.8, row["file"]
        assert words[-1].end > 0.5 * pcm.size / 16000  # the words spread over the clip
