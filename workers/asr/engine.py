"""Speech recognition engines: the three-call streaming shape, words, the watermark.

An engine turns 16 kHz mono int16 PCM into words on the session clock:

```
engine.feed(pcm, t0)            # audio starting at session time t0 (chunks in time order)
words, watermark = engine.take()    # words committed since the last call, and the watermark
words, watermark = engine.finish()  # end of audio: the last words; the watermark is the end of audio
```

- Words are committed once and never revised: what `take` returns is final.
- The watermark is the session time before which the engine will emit no more words: every word
  that starts before it has been returned. It never goes back, it is at least the end of every
  word returned, and after `finish` it is the end of the audio fed. A window that ends at or before
  the watermark has all its words (`stream.messages.AsrWords`).
- A word found later than the watermark promised (a recogniser that revises its timing) is moved to
  start at the watermark, never earlier, and counted in `stats()["late_words"]` when it moved by
  more than 0.1 s: the words stream stays in order, whatever the recogniser does.

Words are normalised as the text model saw them in training (`dmd_types.normalise_words`, the one
normalisation of the project): lower case, apostrophes dropped ("I'm" -> "im", as the MOSI
transcripts write it), every other punctuation mark splits ("well-known" -> "well", "known"),
recogniser markers ("[unk]", "<noise>") dropped.

Session time is kept by the engine from the `t0` of each chunk: a gap up to `fill_gap_s` is filled
with silence, a longer one ends the current utterance and starts the clock again at the new chunk
(so no engine transcribes minutes of padding), and audio that overlaps what was already fed is
dropped.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dmd_types import Word, normalise_words
from stream.messages import SAMPLE_RATE

LATE_TOLERANCE_S = 0.1  # a word moved later by more than this counts as late (word times are this rough)
def word_error_rate(reference: list[str], hypothesis: list[str]) -> float:
    """Word error rate: (substitutions + deletions + insertions) / len(reference), by edit distance."""
    if not reference:
        return float(len(hypothesis) > 0)
    previous = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        current = [i] + [0] * len(hypothesis)
        for j, hyp in enumerate(hypothesis, 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref != hyp))
        previous = current
    return previous[-1] / len(reference)


@dataclass
class EngineStats:
    """What an engine has done: audio fed, CPU spent, recognition passes, words committed and words
    moved to the watermark. `cpu_s` is process CPU time measured around the engine's own calls
    (recognisers compute in their own threads, so no per-thread clock sees it): exact while one
    session computes at a time, and counting the others' work too while several do. `busy_s`, the
    wall time in its calls, bounds its CPU either way for an engine that computes on one thread
    (Whisper with cpu_threads=1, Vosk). `cpu_share` is CPU seconds per second of audio."""

    audio_s: float = 0.0
    cpu_s: float = 0.0
    busy_s: float = 0.0  # wall time in the engine's calls: bounds its CPU when it computes on one thread
    passes: int = 0
    skipped: int = 0  # passes not run because nothing new was said (voice activity) or CPU was spent
    words: int = 0
    late_words: int = 0
    restarts: int = 0  # gaps in the audio longer than fill_gap_s
    context_words: int = 0  # words before the resume point, dropped (see `resume_from`)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"audio_s": round(self.audio_s, 3), "cpu_s": round(self.cpu_s, 3), "busy_s": round(self.busy_s, 3),
                "cpu_share": round(self.cpu_s / self.audio_s, 3) if self.audio_s else 0.0,
                "passes": self.passes, "skipped": self.skipped, "words": self.words,
                "late_words": self.late_words, "restarts": self.restarts, "context_words": self.context_words,
                **self.extra}


class Engine(ABC):
    """Base of the engines: the session clock, normalisation, the watermark's guarantees and CPU
    accounting. A subclass implements `_feed` (samples that follow on), `_take`, `_finish` and
    `_restart`, in its own time (seconds since `self.origin`), returning raw `Word`s in session
    time and a watermark candidate."""

    name = "engine"

    def __init__(self, *, fill_gap_s: float = 1.0) -> None:
        self.fill_gap_s = fill_gap_s
        self.origin: float | None = None  # session time of the first sample of the current run
        self.samples = 0  # samples fed in the current run
        self._watermark = 0.0
        self._last_start = 0.0
        self._resume: float | None = None
        self._pending: list[Word] = []  # committed by a restart inside feed, handed out by take
        self._finished = False
        self._stats = EngineStats()

    # --- the three calls --------------------------------------------------------------------------

    def resume_from(self, t: float) -> None:
        """Words up to session time `t` were committed by an earlier run (a worker that stopped): the
        audio fed before `t` is context only. Words that start before `t` (less 0.1 s) are dropped,
        the rest start at `t` or later. Call it before the first `feed`."""
        if self.origin is not None:
            raise RuntimeError(f"{self.name} engine: resume_from after audio was fed")
        self._resume = float(t)
        self._watermark = max(self._watermark, self._resume)
        self._last_start = max(self._last_start, self._resume)

    def feed(self, pcm: np.ndarray, t0: float) -> None:
        """Audio: 16 kHz mono int16 samples, the first at session time `t0`."""
        if self._finished:
            raise RuntimeError(f"{self.name} engine: feed after finish")
        pcm = np.asarray(pcm)
        if pcm.dtype != np.int16 or pcm.ndim != 1:
            raise ValueError(f"{self.name} engine: audio is {pcm.dtype} {pcm.shape}, expected int16 (samples,) "
                             f"at {SAMPLE_RATE} Hz mono")
        if not math.isfinite(t0) or t0 < 0:
            raise ValueError(f"{self.name} engine: chunk time t0 = {t0!r}, expected session seconds >= 0")
        with self._timed():
            if self.origin is None:
                self.origin = float(t0)
                self._watermark = max(self._watermark, self.origin)
                self._last_start = max(self._last_start, self.origin)
            gap = t0 - self.audio_end
            if gap * SAMPLE_RATE >= 0.5:  # half a sample or more: a gap
                if gap <= self.fill_gap_s:
                    self._feed_samples(np.zeros(round(gap * SAMPLE_RATE), np.int16))
                else:
                    self._stats.restarts += 1
                    words, watermark = self._restart()
                    self._pending.extend(self._commit(words, max(watermark, self.audio_end)))
                    self.origin, self.samples = float(t0), 0
                    self._watermark = max(self._watermark, self.origin)  # nothing was said in the gap
            elif gap * SAMPLE_RATE <= -0.5:  # overlaps what was fed: drop the overlap
                pcm = pcm[min(len(pcm), round(-gap * SAMPLE_RATE)):]
            if len(pcm):
                self._feed_samples(pcm)

    def take(self) -> tuple[list[Word], float]:
        """The words committed since the last call (in time order) and the watermark."""
        with self._timed():
            words = self._pending
            self._pending = []
            if self.origin is not None and not self._finished:
                raw, candidate = self._take()
                words = words + self._commit(raw, candidate)
        return words, self._watermark

    def finish(self) -> tuple[list[Word], float]:
        """End of audio: the last words and the final watermark (the end of the audio fed)."""
        with self._timed():
            words = self._pending
            self._pending = []
            if self.origin is not None and not self._finished:
                raw, _ = self._finish()
                words = words + self._commit(raw, self.audio_end)
            self._finished = True
        return words, self._watermark

    # --- what the engines share ---------------------------------------------------------------------

    @property
    def audio_end(self) -> float:
        """Session time of the end of the audio fed (the origin before any audio)."""
        return (self.origin or 0.0) + self.samples / SAMPLE_RATE

    @property
    def watermark(self) -> float:
        return self._watermark

    @property
    def partial(self) -> str:
        """The words heard but not yet committed, for display only (may change, never streamed)."""
        return ""

    def stats(self) -> dict[str, Any]:
        return self._stats.as_dict()

    def _feed_samples(self, pcm: np.ndarray) -> None:
        self._feed(pcm)
        self.samples += len(pcm)
        self._stats.audio_s += len(pcm) / SAMPLE_RATE

    def _commit(self, raw: list[Word], candidate: float) -> list[Word]:
        """Normalise, order and time-check committed words, and move the watermark on."""
        words: list[Word] = []
        end = self.audio_end
        for w in normalise_words(raw):
            if self._resume is not None and w.start < self._resume - LATE_TOLERANCE_S:
                self._stats.context_words += 1  # committed before the resume point, by the earlier run
                continue
            if w.start < self._watermark - LATE_TOLERANCE_S:
                self._stats.late_words += 1
            start = min(max(w.start, self._watermark, self._last_start), max(end, self._watermark))
            stop = min(max(w.end, start), max(end, start))
            confidence = min(1.0, max(0.0, float(w.confidence)))
            words.append(Word(w.text, start, stop, confidence))
            self._last_start = start
        if words:
            candidate = max(candidate, max(w.end for w in words))
        self._watermark = max(self._watermark, min(candidate, max(end, self._watermark)))
        self._stats.words += len(words)
        return words

    def _timed(self) -> _CpuTimer:
        return _CpuTimer(self._stats)

    # --- what an engine implements ----------------------------------------------------------------

    @abstractmethod
    def _feed(self, pcm: np.ndarray) -> None:
        """Samples that follow on from the last ones (gaps and overlaps are handled already)."""

    @abstractmethod
    def _take(self) -> tuple[list[Word], float]:
        """Newly committed raw words (session time) and a watermark candidate."""

    @abstractmethod
    def _finish(self) -> tuple[list[Word], float]:
        """End of audio: the rest of the words."""

    def _restart(self) -> tuple[list[Word], float]:
        """A long gap: end the current run as at `finish`, ready for audio at a new origin."""
        return self._finish()


class _CpuTimer:
    def __init__(self, stats: EngineStats) -> None:
        self.stats = stats

    def __enter__(self) -> None:
        self.t, self.wall = time.process_time(), time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.stats.cpu_s += time.process_time() - self.t
        self.stats.busy_s += time.perf_counter() - self.wall


class LoudnessGate:
    """Where sound starts, by loudness: 20 ms frames louder than both -55 dBFS and the noise floor
    plus 10 dB. The floor follows the quietest frames at once and rises slowly (2.5 dB/s), so it
    adapts to a room. Cheap and approximate: for watermarks, never for words."""

    frame = 320  # 20 ms

    def __init__(self, t0: float) -> None:
        self.t0 = t0  # session time of frame 0
        self.floor: float | None = None
        self._loud: list[bool] = []
        self._rest = np.zeros(0, np.float64)

    def feed(self, pcm: np.ndarray) -> None:
        audio = np.concatenate([self._rest, pcm.astype(np.float64)])
        n = len(audio) // self.frame * self.frame
        self._rest = audio[n:]
        if not n:
            return
        rms = np.sqrt(np.mean(audio[:n].reshape(-1, self.frame) ** 2, axis=1))
        for db in 20 * np.log10(rms / 32768 + 1e-9):
            self.floor = db if self.floor is None else min(self.floor + 0.05, db)
            self._loud.append(bool(db > max(-55.0, self.floor + 10.0)))

    def onset_after(self, t: float) -> float | None:
        """Start of the first loud frame at or after `t` (a frame under way at `t` counts), or None."""
        first = max(0, int((t - self.t0) * 50))
        for i in range(first, len(self._loud)):
            if self._loud[i]:
                return max(t, self.t0 + i / 50)
        return None

    def forget_before(self, t: float) -> None:
        drop = max(0, int((t - self.t0) * 50))
        if drop:
            del self._loud[:drop]
            self.t0 += drop / 50


class NoEngine(Engine):
    """`--asr none`: no words; the watermark follows the audio, so windows never wait for text."""

    name = "none"

    def _feed(self, pcm: np.ndarray) -> None:
        pass

    def _take(self) -> tuple[list[Word], float]:
        return [], self.audio_end

    def _finish(self) -> tuple[list[Word], float]:
        return [], self.audio_end
