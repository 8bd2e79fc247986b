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
`raw_text`, `text` (N, 50, 384), `audio` (N, 50, 25), `vision` (N, 50, 55; 62 in live-v3, with the
face expert's probabilities), `regression_labels`), so `dmd train` reads it as it reads the official
files, plus:

- per split: `present` (N, 3) bool in (text, audio, visual) order, `n_tokens` (N,), and
  `transcript` (the label file's text; `raw_text` holds the normalised words the model saw);
- `emotion_labels` (N,) int64 when the label file has an `emotion` column with values (an index
  into dmd_types.EMOTIONS, -1 for none; `regression_labels` is then NaN where a clip has no
  sentiment): emotion corpora written by `dmd convert`, audio-only clips (wav, flac) included;
- a top-level `meta`: the profile (`PROFILE.describe()`), the modalities present in the data, the
  source, the counts and failures. `dmd_model.training.data.load_mmsa(...).metadata` exposes it and
  `pickle_metadata(path)` reads it from the JSON written beside the pickle.

The arrays are stored as `align_window` made them, present or not (silence still has acoustic
features; positions without a face are already zeros), because the inference worker feeds the
model its windows the same way (`Predictor.predict` without `present`): training and serving see the
same input for the same situation. The presence flags are stored beside them. A profile that
normalises the voice per session (live-v4) replays each session's clips (a speaker's: label.csv's
`speaker`, else the `video_id`) in a seeded order through `voice_norm.SessionVoice` once all clips are
in, as the inference worker does with a live session's windows.

Sub-span augmentation (`subspans`): a live window is 3 s, six to nine words, while a transcript is
a whole utterance. `subspans=K` adds K random contiguous runs of `subspan_words` words of every
training utterance to the train split, with the utterance's label; `windows_only` makes every split
of such runs instead (to measure how a model does on live-length text). Valid and test stay whole
utterances otherwise, so MMSA's metrics keep their meaning.

Caches, so that an interrupted run resumes and a second run is quick (`cache_dir`, `cache.py`):

- `text/`: token embeddings keyed by the words, the text model and the extractor versions (the
  embedding of ~27,000 transcripts takes minutes; the same words in another file or run are free);
- `clips/`: one file per media clip, keyed by the clip id, the media file (path, size, time), the
  transcript, the profile's name and the extractor versions.

Several processes (`workers`, `parallel.py`): each builds its own extractor set (text model, aligner,
face tracker); a clip that raises, or whose process dies, is reported with its reason and the run
goes on.

The parts: `labels.py` (label files, dataset folders, the clips to extract), `samples.py` (one
clip through the live profile), `cache.py`, `parallel.py`, and here the run and the pickle.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import pickle
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..features.alignment import MODALITIES
from ..features.profile import PROFILE, Profile
from ..features.voice_norm import normalise_sessions
from .cache import EXTRACT_VERSION, default_cache_dir
from .labels import SPLITS, ExtractError, select_clips
from .parallel import run_parallel
from .samples import NOMINAL_WORD_S, Extractor, Failure, Recogniser, Sample, extract_one

FORMAT = "live-dmd-extract"


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




def metadata_path(pickle_path: str | Path) -> Path:
    """Where the metadata of an extracted pickle is written beside it (`<name>.json`)."""
    p = Path(pickle_path)
    return p.with_name(p.name + ".json")


class SplitArrays:
    """The pickle's arrays, one row per clip of each split, filled as results come in any order;
    `finish` keeps the rows that were extracted (failed clips leave none)."""

    def __init__(self, splits: Sequence[str], profile: Profile) -> None:
        counts = Counter(splits)
        L, dims = profile.seq_len, profile.feature_dims
        self.arrays = {
            split: {
                "text": np.zeros((n, L, dims[0]), np.float32),
                "audio": np.zeros((n, L, dims[1]), np.float32),
                "vision": np.zeros((n, L, dims[2]), np.float32),
                "present": np.zeros((n, 3), bool),
                "n_tokens": np.zeros(n, np.int64),
                "regression_labels": np.zeros(n, np.float32),
                "emotion_labels": np.full(n, -1, np.int64),
                "ok": np.zeros(n, bool),
                "id": [""] * n, "raw_text": [""] * n, "transcript": [""] * n,
                "afeat": [None] * n, "span": [(0.0, 0.0)] * n, "session": [""] * n,
            }
            for split, n in ((s, counts.get(s, 0)) for s in SPLITS)
        }
        self.profile = profile
        self.row: list[int] = []  # the row of the i-th clip in its split
        filled: Counter[str] = Counter()
        for split in splits:
            self.row.append(filled[split])
            filled[split] += 1

    def put(self, index: int, sample: Sample) -> None:
        a, j = self.arrays[sample.split], self.row[index]
        a["text"][j], a["audio"][j], a["vision"][j] = sample.text, sample.audio, sample.vision
        a["present"][j] = sample.present
        a["n_tokens"][j] = sample.n_tokens
        a["regression_labels"][j] = sample.label
        a["emotion_labels"][j] = sample.emotion
        a["id"][j], a["raw_text"][j], a["transcript"][j] = sample.id, sample.words, sample.transcript
        if self.profile.voice_session and sample.afeat is not None:
            a["afeat"][j], a["span"][j], a["session"][j] = sample.afeat, sample.span, sample.session
        a["ok"][j] = True

    def finish(self) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
        """The splits as MMSA has them, and the number of samples of each."""
        out: dict[str, dict[str, Any]] = {}
        counts = {}
        for split, a in self.arrays.items():
            afeat, spans, sessions = a.pop("afeat"), a.pop("span"), a.pop("session")
            rows = [j for j, f in enumerate(afeat) if f is not None]
            if rows:  # each session's clips replayed in their seeded order (live-v4)
                a["audio"][rows] = normalise_sessions([afeat[j] for j in rows], [spans[j] for j in rows],
                                                      [sessions[j] for j in rows], [a["id"][j] for j in rows],
                                                      self.profile)
            ok = a.pop("ok")
            keep = np.flatnonzero(ok)
            whole = keep.size == ok.size
            entry = {k: (v if whole else v[keep]) for k, v in a.items() if isinstance(v, np.ndarray)}
            for k in ("id", "raw_text", "transcript"):
                entry[k] = np.asarray([a[k][i] for i in keep], dtype=object)
            out[split] = entry
            counts[split] = int(keep.size)
        if not any((entry["emotion_labels"] >= 0).any() for entry in out.values()):
            for entry in out.values():  # sentiment only: the official layout, without the key
                del entry["emotion_labels"]
        return out, counts


@contextmanager
def _progress(total: int, show: bool) -> Iterator[Any]:
    if not show:
        yield None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="extract", unit="clip", dynamic_ncols=True, file=sys.stderr)
    try:
        yield bar
    finally:
        bar.close()


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
    specs = select_clips(sources, text_only=text_only, splits=splits, limit=limit, subspans=subspans,
                         subspan_words=subspan_words, windows_only=windows_only)
    no_transcript = sum(1 for s in specs if not s.text and s.words is None)
    if no_transcript and not text_only:
        log(f"{no_transcript} clip(s) have no transcript: their words will come from speech recognition (ASR)"
            + ("" if recogniser else "; no recogniser is available yet, so they will be reported as failed"))
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    table = SplitArrays([s.split for s in specs], profile)
    failures: list[Failure] = []
    stats: Counter[str] = Counter()
    with _progress(len(specs), progress) as bar:

        def on_result(index: int, result: Sample | Failure) -> None:
            if isinstance(result, Failure):
                failures.append(result)
            else:
                table.put(index, result)
                stats["cached" if result.cached else "computed"] += 1
                stats["dropped_tokens"] += result.dropped_tokens
            if bar is not None:
                bar.update(1)
                if failures:
                    bar.set_postfix(failed=len(failures), refresh=False)

        if workers <= 1 or len(specs) < 2:
            ex = extractor or Extractor(profile, cache, recogniser)
            for i, spec in enumerate(specs):
                on_result(i, extract_one(ex, spec))
            hits, misses = ex.text.hits, ex.text.misses
        else:
            if recogniser is not None and callable(recogniser):
                raise ExtractError("with several workers give the recogniser as 'module:function'")
            settings = {"profile": profile.name, "cache_dir": str(cache), "recogniser": recogniser,
                        "threads": max(1, (os.cpu_count() or 1) // max(workers, 1))}
            hits, misses = run_parallel(specs, workers, settings, on_result)
    out_splits, counts = table.finish()
    augmentation = ({"subspans": subspans, "words": list(subspan_words), "windows_only": windows_only}
                    if (subspans or windows_only) else None)
    meta = _metadata(out_splits, counts, profile, sources, text_only=text_only, failed=len(failures),
                     dropped_tokens=int(stats["dropped_tokens"]), augmentation=augmentation)
    failures_path = _write(output, out_splits, meta, failures)
    return ExtractReport(output=output, counts=counts, failures=failures, modalities=tuple(meta["modalities"]),
                         seconds=time.time() - started, computed=stats["computed"], cached=stats["cached"],
                         text_hits=hits, text_misses=misses, failures_path=failures_path, no_transcript=no_transcript)


def _metadata(splits: dict[str, dict[str, Any]], counts: dict[str, int], profile: Profile,
              sources: Sequence[str | Path], *, text_only: bool, failed: int, dropped_tokens: int,
              augmentation: dict[str, Any] | None) -> dict[str, Any]:
    """The pickle's `meta`: its profile, the modalities its data holds, where it came from."""
    present_any = [bool(any(splits[s]["present"][:, i].any() for s in SPLITS)) for i in range(3)]
    total = sum(counts.values())
    return {
        "format": FORMAT,
        "extract_version": EXTRACT_VERSION,
        "profile": profile.describe(),
        "modalities": [m for m, p in zip(MODALITIES, present_any) if p],
        "mode": "text-only" if text_only else "media",
        "sources": [str(s) for s in sources],
        "counts": counts,
        "failed": failed,
        "present_fraction": {m: round(float(np.mean(np.concatenate([splits[s]["present"][:, i] for s in SPLITS])
                                                    if total else 0.0)), 4)
                             for i, m in enumerate(MODALITIES)},
        "dropped_tokens": dropped_tokens,
        "text_only": {"nominal_word_s": NOMINAL_WORD_S} if text_only else None,
        "augmentation": augmentation,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _write(output: Path, splits: dict[str, dict[str, Any]], meta: dict[str, Any],
           failures: list[Failure]) -> Path | None:
    """The pickle (written whole, then renamed into place), its metadata beside it, and the failures
    (a stale report of an earlier run is removed). Returns the failures file, if any."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    with tmp.open("wb") as f:
        pickle.dump({**splits, "meta": meta}, f, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(output)
    metadata_path(output).write_text(json.dumps(meta, indent=2))
    failures_path = output.with_name(output.name + ".failed.json")
    if failures:
        failures.sort(key=lambda f: f.id)
        failures_path.write_text(json.dumps([dataclasses.asdict(f) for f in failures], indent=2))
        return failures_path
    failures_path.unlink(missing_ok=True)
    return None
