"""Label files and dataset folders: what clips there are, their transcripts, labels and splits.

Two layouts: MMSA-FET / MOSEI (`video_id, clip_id, text, label, mode`, media at
`Raw/<video_id>/<clip_id>.<ext>`) and MOSI (`id, text, label, mode`). Either may have a `language` column
(ISO 639-1; a clip in another language than English gets no words) and an `emotion`
column (one of `dmd_types.EMOTIONS`, or empty); with it, `label` may be empty where a clip has no
sentiment (an emotion corpus: `dmd convert`), and is then NaN. `select_clips` makes the list
an extraction runs over (its splits, a limit, word sub-spans of the transcripts).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dmd_types import emotion_index, normalise_text

SPLIT_OF_MODE = {"train": "train", "valid": "valid", "val": "valid", "dev": "valid", "test": "test"}
SPLITS = ("train", "valid", "test")
MEDIA_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".wav", ".flac", ".mp3", ".m4a")


class ExtractError(ValueError):
    """The input of an extraction (a label file, a dataset folder, an option) cannot be used."""


@dataclass(frozen=True)
class ClipSpec:
    """One labelled clip (or transcript) of a label file."""

    id: str  # MMSA's sample id: "<video_id>$_$<clip_id>" (MMSA-FET, MOSEI) or the file's `id` (MOSI)
    text: str  # transcript as written in the label file ("" when none)
    label: float  # sentiment in [-3, 3]; NaN: none (an emotion corpus)
    split: str  # train, valid, test
    video_id: str = ""
    clip_id: str = ""
    media: str | None = None  # media file, None in text-only mode
    words: tuple[str, ...] | None = None  # a sub-span's words (augmentation); None: all of `text`
    source: str = ""  # the label file
    emotion: int = -1  # index in dmd_types.EMOTIONS; -1: none
    language: str = ""  # the speech's language ("" unknown); not English: no words (the text model reads English)
    # whose voice: the clips of one session share the per-session normalisation of the voice
    # (live-v4); label.csv's `speaker` column where there is one, else the video_id
    session: str = ""


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
    has_emotion = "emotion" in columns
    specs, bad_modes, bad_labels, bad_emotions = [], Counter(), [], []
    for i, row in enumerate(rows, start=2):  # line numbers as an editor shows them (header is line 1)
        mode = (row.get("mode") or "").strip().lower()
        split = SPLIT_OF_MODE.get(mode)
        if split is None:
            bad_modes[mode] += 1
            continue
        emotion = -1
        if has_emotion and (row.get("emotion") or "").strip():
            try:
                emotion = emotion_index(row["emotion"])
            except ValueError as exc:
                bad_emotions.append(f"line {i}: {exc}")
                continue
        try:
            label = float(row["label"]) if (row.get("label") or "").strip() or emotion < 0 else math.nan
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
                              video_id=video_id, clip_id=clip_id, media=media, source=str(path), emotion=emotion,
                              language=(row.get("language") or "").strip().lower(),
                              session=(row.get("speaker") or "").strip() or video_id))
    if bad_modes:
        raise ExtractError(f"{path.name}: mode(s) {dict(bad_modes)} are not train, valid (dev) or test: fix the "
                           "`mode` column")
    if bad_labels:
        raise ExtractError(f"{path.name}: {len(bad_labels)} label(s) are not numbers ({', '.join(bad_labels[:3])}): "
                           "the `label` column holds the sentiment in [-3, 3] (empty only beside an `emotion`)")
    if bad_emotions:
        raise ExtractError(f"{path.name}: {len(bad_emotions)} emotion(s) are not known ({'; '.join(bad_emotions[:3])})")
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


def select_clips(sources: Sequence[str | Path], *, text_only: bool, splits: Iterable[str] = SPLITS,
                 limit: int | None = None, subspans: int = 0, subspan_words: tuple[int, int] = (4, 10),
                 windows_only: bool = False) -> list[ClipSpec]:
    """The clips to extract from `sources` (label files with `text_only`, else one dataset folder):
    those of `splits`, the first `limit`, and with `subspans` / `windows_only` word runs of the
    transcripts (see `dmd_model.datasets.extract`). ExtractError for inputs that cannot be used."""
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
        return [w for s in specs for w in word_windows(s, max(subspans, 1), lo, hi)]
    if subspans:
        return specs + [w for s in specs if s.split == "train" for w in word_windows(s, subspans, lo, hi)]
    return specs
