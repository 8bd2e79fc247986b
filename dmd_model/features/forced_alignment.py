"""Word times for a known transcript: forced alignment with pocketsphinx 5 and its bundled en-us model.

Dataset clips (MOSI, MOSEI) come with transcripts but without word times; the alignment needs
them to average audio and face over each word, as it does live with the recogniser's times.
pocketsphinx's recognition is poor, but aligning a known text is what it does well (LibriVox "he
was not an ill disposed young man": every word within a few centiseconds of by-ear times).

Words the pronunciation dictionary lacks are given a pronunciation before aligning, in this order:
the dictionary word with an apostrophe put back ("dont" -> "don't", the way MOSI writes
contractions), two dictionary words run together ("worthwhile"), digits spelled out ("3d" ->
"three" + "d"), and last a rough letter-to-sound guess. The transcript is normalised as all text
is (`words.normalise_text`).

pocketsphinx may give up before the end of the text (the audio ends early, the transcript does
not match); it is then retried with wider search beams, and words it still leaves out get times
interpolated between their aligned neighbours, with `confidence` 0.0 instead of 1.0, so that a
clip is never lost to one bad word.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from dmd_types import Word, normalise_text, normalise_word

from .audio import Resampler
from .errors import FeatureError, missing_package
from .profile import SAMPLE_RATE

_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Rough letter-to-sound rules for words nobody wrote down (names, typos): digraphs first.
_DIGRAPHS = {
    "ch": "CH", "sh": "SH", "th": "TH", "ph": "F", "ng": "NG", "ck": "K", "qu": "K W", "wh": "W",
    "ee": "IY", "ea": "IY", "oo": "UW", "ou": "AW", "ow": "OW", "ai": "EY", "ay": "EY", "oi": "OY",
    "oy": "OY", "er": "ER", "ir": "ER", "ur": "ER", "ar": "AA R", "or": "AO R", "gh": "",
}
_LETTERS = {
    "a": "AE", "b": "B", "c": "K", "d": "D", "e": "EH", "f": "F", "g": "G", "h": "HH", "i": "IH", "j": "JH",
    "k": "K", "l": "L", "m": "M", "n": "N", "o": "AA", "p": "P", "q": "K", "r": "R", "s": "S", "t": "T",
    "u": "AH", "v": "V", "w": "W", "x": "K S", "y": "IY", "z": "Z",
}
_WIDE_BEAMS = {"beam": 1e-100, "wbeam": 1e-80, "pbeam": 1e-100, "lpbeam": 1e-80, "lponlybeam": 1e-80}


def letters_to_phones(word: str) -> str:
    """A rough pronunciation (CMU phones) of a lower-case ASCII word."""
    word = re.sub(r"(.)\1", r"\1", word)  # doubled letters sound once
    if len(word) > 2 and word.endswith("e") and word[-2] not in "aeiou":
        word = word[:-1]  # silent final e
    phones: list[str] = []
    i = 0
    while i < len(word):
        pair = word[i : i + 2]
        if len(pair) == 2 and pair in _DIGRAPHS:
            phones.append(_DIGRAPHS[pair])
            i += 2
        else:
            phones.append(_LETTERS.get(word[i], ""))
            i += 1
    return " ".join(p for p in phones if p) or "AH"


class ForcedAligner:
    """Aligns transcripts to speech; one pocketsphinx decoder, reused (building one takes ~0.5 s).

    Not thread-safe: use one aligner per thread.
    """

    def __init__(self) -> None:
        try:
            from pocketsphinx import Decoder
        except ImportError as e:
            raise missing_package("pocketsphinx", "forced alignment of transcripts") from e
        self._Decoder = Decoder
        self._decoder = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")
        self._wide: Any = None
        self._added: dict[str, str] = {}
        self.frame_rate = int(self._decoder.config["frate"])

    def _phones(self, word: str) -> str | None:
        return self._decoder.lookup_word(word)

    def pronunciation(self, word: str) -> str:
        """The phones pocketsphinx will align `word` with (the dictionary's, or a guess)."""
        found = self._phones(word) or self._added.get(word)
        if found:
            return found
        for i in range(1, len(word)):
            found = self._phones(word[:i] + "'" + word[i:])
            if found:
                return found
        for i in range(len(word) - 2, 1, -1):
            head, tail = self._phones(word[:i]), self._phones(word[i:])
            if head and tail:
                return f"{head} {tail}"
        parts = re.findall(r"\d|[^\d]+", word)
        if len(parts) > 1 or word.isdigit():
            return " ".join(self.pronunciation(_DIGITS[int(p)] if p.isdigit() else p) for p in parts)
        return letters_to_phones(word)

    def _ensure_words(self, words: Sequence[str]) -> None:
        for word in set(words):
            if self._phones(word) is None and word not in self._added:
                phones = self.pronunciation(word)
                for decoder in (self._decoder, self._wide):
                    if decoder is not None:
                        decoder.add_word(word, phones, True)
                self._added[word] = phones

    def _run(self, decoder: Any, pcm: bytes, text: str) -> list[tuple[str, int, int]] | None:
        try:
            decoder.set_align_text(text)
        except RuntimeError as e:
            raise FeatureError(f"pocketsphinx cannot align the text {text[:60]!r}: {e}") from e
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        segments = decoder.seg()
        if segments is None:
            return None
        return [(re.sub(r"\(\d+\)$", "", s.word), s.start_frame, s.end_frame) for s in segments]

    def align(
        self, samples: np.ndarray, transcript: str | Sequence[str], sample_rate: int = SAMPLE_RATE, t0: float = 0.0
    ) -> list[Word]:
        """The transcript's words (normalised) with their times, t0 + seconds into `samples`.

        `samples`: mono (n,) int16 PCM or floats in [-1, 1] at `sample_rate` (resampled to 16 kHz).
        """
        if isinstance(transcript, str):
            words = normalise_text(transcript)
        else:
            words = [w for token in transcript for w in normalise_word(token)]
        samples = np.asarray(samples)
        if samples.ndim != 1:
            raise FeatureError(f"speech for alignment has shape {samples.shape}: give mono samples (n,)")
        resampler = Resampler(sample_rate, 1)
        pcm = np.concatenate([resampler.feed(samples), resampler.finish()])
        duration = pcm.size / SAMPLE_RATE
        if not words:
            return []
        if duration < 0.05:
            raise FeatureError(
                f"{duration:.3f} s of audio is too short to align {len(words)} words: give the whole clip"
            )
        self._ensure_words(words)
        text, raw = " ".join(words), pcm.tobytes()
        times = self._match(words, self._run(self._decoder, raw, text) or [], duration)
        if None in times:
            if self._wide is None:
                self._wide = self._Decoder(samprate=SAMPLE_RATE, loglevel="FATAL", **_WIDE_BEAMS)
                for word, phones in self._added.items():
                    self._wide.add_word(word, phones, True)
            wide = self._match(words, self._run(self._wide, raw, text) or [], duration)
            if sum(t is not None for t in wide) > sum(t is not None for t in times):
                times = wide
        return _fill_gaps(words, times, duration, t0)

    def _match(
        self, words: list[str], segments: list[tuple[str, int, int]], duration: float
    ) -> list[tuple[float, float] | None]:
        """The aligned (start, end) of each transcript word, matched in order; None if left out."""
        times: list[tuple[float, float] | None] = [None] * len(words)
        i = 0
        for name, first, last in segments:
            if i < len(words) and name == words[i]:
                start = min(first / self.frame_rate, duration)
                end = min((last + 1) / self.frame_rate, duration)
                times[i] = (start, max(start, end))
                i += 1
        return times


def _fill_gaps(
    words: list[str], times: list[tuple[float, float] | None], duration: float, t0: float
) -> list[Word]:
    """Words with their aligned times; runs of words left out share the gap between their aligned
    neighbours (or the clip's start / end) evenly, with confidence 0."""
    out: list[Word] = []
    k = 0
    while k < len(words):
        if times[k] is not None:
            s, e = times[k]
            out.append(Word(words[k], t0 + s, t0 + e, 1.0))
            k += 1
            continue
        run_end = k
        while run_end < len(words) and times[run_end] is None:
            run_end += 1
        gap_start = times[k - 1][1] if k > 0 else 0.0
        gap_end = times[run_end][0] if run_end < len(words) else duration
        gap_end = max(gap_start, gap_end)
        step = (gap_end - gap_start) / (run_end - k)
        for j in range(k, run_end):
            s = gap_start + (j - k) * step
            out.append(Word(words[j], t0 + s, t0 + s + step, 0.0))
        k = run_end
    return out


@functools.lru_cache(maxsize=1)
def _shared_aligner() -> ForcedAligner:
    return ForcedAligner()


def align_transcript(
    samples: np.ndarray, transcript: str | Sequence[str], sample_rate: int = SAMPLE_RATE, t0: float = 0.0
) -> list[Word]:
    """`ForcedAligner().align` with one aligner shared per process (single-threaded use)."""
    return _shared_aligner().align(samples, transcript, sample_rate, t0)
