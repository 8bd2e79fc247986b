"""Reading MMSA-format MOSI/MOSEI pickles (`aligned_50.pkl`, `unaligned_50.pkl`) for training.

The official DMD code reads these through MMSA's `MMDataset`; this module reads the same files the
same way (features as float32, `-inf` in audio set to 0, `text_bert` instead of `text` when BERT is
fine-tuned, labels from `regression_labels`) and checks them on load, so that a wrong file or a
configuration that does not match it fails at once with the file, split, key and shape named,
instead of as a shape error deep inside the network.

The file is a pickle: load only files you trust, as with any pickle.
"""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

SPLITS: tuple[str, str, str] = ("train", "valid", "test")
_REQUIRED = "an MMSA pickle needs text, audio, vision, regression_labels"
log = logging.getLogger(__name__)
_WRITTEN_BY = "was it written by MMSA-FET or `dmd extract`?"
# Samples checked for finite values at a time: MOSEI's text alone is ~2.5 GB, a boolean copy of it
# all at once would cost another 600 MB.
_FINITE_CHUNK = 1024


class DataError(ValueError):
    """A data file is missing, unreadable, or does not match what the model expects; the message
    names the file, split, key and shape, and the fix."""


@dataclass
class MMSASplit:
    """One split of an MMSA pickle, checked and converted.

    `text` is (N, Lt, Dt) features, or (N, 3, Lt) BERT inputs (ids, mask, segments; float like the
    official loader, the model casts) when loaded with `use_bert`. `audio` is (N, La, Da), `vision`
    (N, Lv, Dv). `audio_lengths`/`vision_lengths` are given by unaligned pickles only.
    """

    text: np.ndarray
    audio: np.ndarray
    vision: np.ndarray
    labels: np.ndarray
    ids: list[str]
    raw_text: list[str]
    audio_lengths: np.ndarray | None = None
    vision_lengths: np.ndarray | None = None
    # Written by `dmd extract` for emotion corpora and mixed data (the official files have neither):
    # `emotions` (N,) int64, an index into dmd_types.EMOTIONS or -1 where a sample has none (its
    # `labels` entry may then be NaN: no sentiment); `present` (N, 3) bool, text, audio, visual.
    emotions: np.ndarray | None = None
    present: np.ndarray | None = None
    # Mixed data (`merge_mmsa`): per sample the index of its source in `sources`, and each source's
    # sampling weight (a sample's chance to be drawn in training is proportional to its source's
    # weight; None: every sample once per epoch, shuffled, as officially).
    source: np.ndarray | None = None
    sources: tuple[str, ...] = ()
    weights: tuple[float, ...] | None = None

    def __len__(self) -> int:
        return len(self.labels)


class MMSAData(dict):
    """The splits of an MMSA pickle (`{"train": MMSASplit, "valid": ..., "test": ...}`), plus
    `metadata`: the pickle's top-level `meta` (written by `dmd extract`: the feature profile, the
    modalities present, the source), or {} for the official MMSA files, which have none."""

    metadata: dict[str, Any]

    def __init__(self, splits: dict[str, MMSASplit], metadata: dict[str, Any] | None = None) -> None:
        super().__init__(splits)
        self.metadata = dict(metadata or {})

    @property
    def profile(self) -> dict[str, Any] | None:
        """The feature profile the data was extracted with (`Profile.describe()`), if recorded."""
        return self.metadata.get("profile") or None

    @property
    def modalities(self) -> tuple[str, ...] | None:
        """The modalities present in the data, if recorded (e.g. ("text",) for transcripts only)."""
        found = self.metadata.get("modalities")
        return tuple(found) if found else None


def load_mmsa(
    path: str | Path,
    *,
    use_bert: bool = False,
    feature_dims: tuple[int, int, int] | None = None,
    seq_lens: tuple[int, int, int] | None = None,
) -> MMSAData:
    """Read an MMSA pickle into its `train`, `valid` and `test` splits (a dict; its `metadata`,
    `profile` and `modalities` say what `dmd extract` recorded, empty for the official files).

    `feature_dims` and `seq_lens` are the model's (text, audio, visual) triples (`model.feature_dims`,
    `model.seq_lens`); when given, every split must match them. With `use_bert` the text comes from
    `text_bert`, its feature size is not checked and its length is `text_bert.shape[2]`.
    Raises `DataError` on anything the model could not train on.
    """
    path = Path(path)
    raw = _read_pickle(path)
    name = path.name
    if not isinstance(raw, dict):
        raise DataError(f"{name} holds a {type(raw).__name__}, expected a dict with splits train, valid, "
                        f"test: {_WRITTEN_BY}")
    missing = [s for s in SPLITS if s not in raw]
    if missing:
        raise DataError(f"{name} has no split(s) {missing} (found {sorted(map(str, raw))}): an MMSA pickle "
                        f"has train, valid and test; {_WRITTEN_BY}")
    meta = raw.get("meta")
    return MMSAData(
        {split: _check_split(raw[split], name, split, use_bert, feature_dims, seq_lens) for split in SPLITS},
        meta if isinstance(meta, dict) else None,
    )


def parse_data_sources(specs: Sequence[str]) -> list[tuple[str, Path, float]]:
    """`--data` arguments -> (name, path, weight): `PATH`, `NAME=PATH` or either with `@WEIGHT`
    (e.g. `ravdess=runs/ravdess.pkl@2`); the name defaults to the file's stem, the weight to 1."""
    out = []
    for spec in specs:
        text, _, weight_text = str(spec).rpartition("@") if "@" in str(spec) else (str(spec), "", "")
        name, sep, path = text.partition("=")
        if not sep:
            name, path = Path(text).stem, text
        try:
            weight = float(weight_text) if weight_text else 1.0
        except ValueError:
            weight = float("nan")
        if not (math.isfinite(weight) and weight > 0):
            raise DataError(f"data source {spec!r}: the weight after @ must be a positive number (e.g. {path}@2)")
        if any(name == n for n, _, _ in out):
            raise DataError(f"data source name {name!r} is given twice: name them NAME=PATH")
        out.append((name, Path(path), weight))
    return out


def merge_mmsa(parts: Sequence[tuple[str, MMSAData, float]]) -> MMSAData:
    """Several extracted pickles as one data set (mixed corpora in one run): each split is the
    concatenation of the parts' splits, with per-sample `emotions` (-1 where a part has none),
    `present` (all true where a part has none) and `source`; `weights` are the parts' sampling
    weights. The parts must share their feature profile and array shapes. One part is returned as
    it is (with its weight, if not 1)."""
    if not parts:
        raise DataError("no data to merge: give at least one pickle")
    names = [name for name, _, _ in parts]
    profiles = {(data.profile or {}).get("name") for _, data, _ in parts}
    if len(profiles) > 1:
        raise DataError(f"the pickles {names} were extracted with different feature profiles "
                        f"{sorted(map(str, profiles))}: re-extract them with one `dmd extract --profile NAME`")
    weights = tuple(float(w) for _, _, w in parts)
    if len(parts) == 1 and weights == (1.0,):
        return parts[0][1]
    splits = {}
    for split in SPLITS:
        pieces = [data[split] for _, data, _ in parts]
        for (name, _, _), piece in zip(parts, pieces):
            if piece.audio_lengths is not None or piece.vision_lengths is not None:
                raise DataError(f"{name} split {split!r} is unaligned (audio_lengths): only aligned pickles "
                                "(`dmd extract`) can be mixed")
            for key in ("text", "audio", "vision"):
                first = getattr(pieces[0], key).shape[1:]
                if getattr(piece, key).shape[1:] != first:
                    raise DataError(f"{name} split {split!r} has {key} of shape {getattr(piece, key).shape[1:]}, "
                                    f"{names[0]} {first}: mixed pickles need one profile and one length")

        def cat(key: str, fill: Any, pieces: list[MMSASplit] = pieces) -> np.ndarray:
            return np.concatenate([getattr(p, key) if getattr(p, key) is not None else fill(p) for p in pieces])

        splits[split] = MMSASplit(
            text=cat("text", None), audio=cat("audio", None), vision=cat("vision", None),
            labels=cat("labels", None), ids=[i for p in pieces for i in p.ids],
            raw_text=[t for p in pieces for t in p.raw_text],
            emotions=cat("emotions", lambda p: np.full(len(p), -1, np.int64)),
            present=cat("present", lambda p: np.ones((len(p), 3), bool)),
            source=np.concatenate([np.full(len(p), i, np.int64) for i, p in enumerate(pieces)]),
            sources=tuple(names), weights=weights,
        )
    metas = [data.metadata for _, data, _ in parts]
    modalities = sorted({m for meta in metas for m in (meta.get("modalities") or ())},
                        key=("text", "audio", "visual").index)
    metadata = {**metas[0], "modalities": modalities,
                "source": {"mixed": [{"name": n, "weight": w, "source": meta.get("source") or meta.get("sources")}
                                     for (n, _, w), meta in zip(parts, metas)]}}
    return MMSAData(splits, metadata)


def pickle_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of an MMSA pickle without loading its arrays when possible: `dmd extract` writes
    it beside the pickle (`<name>.json`); otherwise the pickle's `meta` entry ({} for the official
    files)."""
    import json

    path = Path(path)
    sidecar = path.with_name(path.name + ".json")
    if sidecar.is_file():
        try:
            found = json.loads(sidecar.read_text())
            if isinstance(found, dict):
                return found
        except (OSError, ValueError):
            pass
    raw = _read_pickle(path)
    meta = raw.get("meta") if isinstance(raw, dict) else None
    return dict(meta) if isinstance(meta, dict) else {}


def _read_pickle(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} not found: set data.path to an MMSA pickle "
                        "(aligned_50.pkl / unaligned_50.pkl of MOSI or MOSEI)")
    try:
        with path.open("rb") as f:
            return pickle.load(f)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, ValueError,
            TypeError, UnicodeDecodeError) as exc:
        raise DataError(f"{str(path)!r} is not a readable pickle ({type(exc).__name__}: {exc}): "
                        f"set data.path to an MMSA pickle; {_WRITTEN_BY}") from None


def _check_split(
    entry: Any,
    name: str,
    split: str,
    use_bert: bool,
    feature_dims: tuple[int, int, int] | None,
    seq_lens: tuple[int, int, int] | None,
) -> MMSASplit:
    where = f"{name} split {split!r}"
    if not isinstance(entry, dict):
        raise DataError(f"{where} is a {type(entry).__name__}, expected a dict of arrays: {_WRITTEN_BY}")
    if "regression_labels" not in entry and "labels" in entry:
        entry = mult_iemocap_entry(entry, where)
    text_key = "text_bert" if use_bert else "text"
    for key in (text_key, "audio", "vision", "regression_labels"):
        if key not in entry:
            hint = ""
            if key == "text_bert":
                hint = " (model.use_bert needs BERT token ids; set it false to use the `text` features)"
            raise DataError(f"{where} has no key {key!r}{hint}: {_REQUIRED}; {_WRITTEN_BY}")

    arrays = {key: _float_array(entry[key], where, key) for key in (text_key, "audio", "vision")}
    for key, arr in arrays.items():
        if arr.ndim != 3:
            expected = "(N, 3, L)" if key == "text_bert" else "(N, L, D)"
            raise DataError(f"{where} key {key!r} has shape {arr.shape}, expected {expected}: {_WRITTEN_BY}")
    if use_bert and arrays["text_bert"].shape[1] != 3:
        raise DataError(f"{where} key 'text_bert' has shape {arrays['text_bert'].shape}, expected (N, 3, L) "
                        "(token ids, attention mask, segment ids): the BERT inputs are not in MMSA's layout")

    labels = _float_array(entry["regression_labels"], where, "regression_labels")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels.reshape(-1)
    if labels.ndim != 1:
        raise DataError(f"{where} key 'regression_labels' has shape {labels.shape}, expected (N,): "
                        "one sentiment score per sample")
    n = len(labels)
    for key, arr in arrays.items():
        if arr.shape[0] != n:
            raise DataError(f"{where} key {key!r} has {arr.shape[0]} samples (shape {arr.shape}) but "
                            f"'regression_labels' has {n}: every modality needs one entry per label; "
                            "the file is inconsistent, re-extract it")

    text, audio, vision = arrays[text_key], arrays["audio"], arrays["vision"]
    _check_config(where, text_key, text, audio, vision, use_bert, feature_dims, seq_lens)

    audio[audio == -np.inf] = 0  # official MMSA behaviour: silent frames carry -inf log energies
    emotions = _emotions(entry.get("emotion_labels"), where, n)
    for key, arr in ((text_key, text), ("audio", audio), ("vision", vision)):
        _check_finite(where, key, arr)
    # a sample may lack a sentiment (NaN) only where it has an emotion
    _check_finite(where, "regression_labels", labels if emotions is None else labels[emotions < 0])
    present = None
    if entry.get("present") is not None:
        present = np.asarray(entry["present"]).astype(bool)
        if present.shape != (n, 3):
            raise DataError(f"{where} key 'present' has shape {present.shape}, expected ({n}, 3): one flag per "
                            "sample for text, audio, visual; re-extract the file")

    lengths = {}
    for key, arr in (("audio_lengths", audio), ("vision_lengths", vision)):
        if key in entry and entry[key] is not None:
            lengths[key] = _lengths(entry[key], where, key, n, arr.shape[1])

    return MMSASplit(
        text=text, audio=audio, vision=vision, labels=labels,
        ids=_strings(entry.get("id"), where, "id", n, lambda i: f"{split}_{i:05d}"),
        raw_text=_strings(entry.get("raw_text"), where, "raw_text", n, lambda i: ""),
        audio_lengths=lengths.get("audio_lengths"), vision_lengths=lengths.get("vision_lengths"),
        emotions=emotions, present=present,
    )


# MulT's IEMOCAP (`iemocap_data.pkl`, `iemocap_data_noalign.pkl`): per split `text` (N, L, 300)
# GloVe, `audio` (N, L, 74) COVAREP, `vision` (N, L, 35) Facet and `labels` (N, 4, 2), one
# [absent, present] pair per emotion in the order below (MulT's `eval_iemocap`). The DMD paper
# reports IEMOCAP in this layout. The four are the first four of dmd_types.EMOTIONS, in that order.
IEMOCAP_EMOTIONS = ("neutral", "happy", "sad", "angry")


def mult_iemocap_entry(entry: dict[str, Any], where: str) -> dict[str, Any]:
    """A split in MulT's IEMOCAP layout as the splits `_check_split` reads: `emotion_labels` from
    `labels` (the one emotion marked present; a sample marked with none or several is left out,
    and the count logged), `regression_labels` NaN (IEMOCAP has no sentiment on MOSI's scale)."""
    from dmd_types import EMOTIONS

    labels = np.asarray(entry["labels"])
    if labels.ndim != 3 or labels.shape[1:] != (len(IEMOCAP_EMOTIONS), 2):
        raise DataError(f"{where} key 'labels' has shape {labels.shape}, expected (N, 4, 2): MulT's IEMOCAP "
                        "layout, one [absent, present] pair per emotion (neutral, happy, sad, angry); an MMSA "
                        "pickle has regression_labels instead")
    marked = labels.argmax(-1) == 1  # (N, 4)
    single = marked.sum(1) == 1
    order = np.asarray([EMOTIONS.index(e) for e in IEMOCAP_EMOTIONS])
    n = len(labels)
    out = {k: (np.asarray(v)[single] if _per_sample(v, n) else v) for k, v in entry.items() if k != "labels"}
    out["emotion_labels"] = order[marked[single].argmax(1)].astype(np.int64)
    out["regression_labels"] = np.full(int(single.sum()), np.nan, np.float32)
    if not single.all():
        log.warning("%s: %d sample(s) marked with no emotion or with several are left out", where,
                    int((~single).sum()))
    return out


def _per_sample(value: Any, n: int) -> bool:
    return isinstance(value, (np.ndarray, list, tuple)) and len(value) == n


def _emotions(value: Any, where: str, n: int) -> np.ndarray | None:
    """`emotion_labels`: (N,) integers in [-1, 7) (-1: none), or None when the file has none."""
    if value is None:
        return None
    from dmd_types import EMOTIONS

    arr = np.asarray(value)
    if arr.shape != (n,) or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{where} key 'emotion_labels' has shape {arr.shape} and type {arr.dtype}, expected ({n},) "
                        "integers: one emotion index (or -1) per sample")
    bad = np.flatnonzero((arr < -1) | (arr >= len(EMOTIONS)))
    if bad.size:
        raise DataError(f"{where} key 'emotion_labels' has values outside -1..{len(EMOTIONS) - 1} at indices "
                        f"{bad[:5].tolist()}: an emotion is an index into {', '.join(EMOTIONS)}, -1 for none")
    return arr.astype(np.int64)


def _float_array(value: Any, where: str, key: str) -> np.ndarray:
    try:
        # copy=False: MOSEI's arrays are gigabytes and usually float32 already.
        return np.asarray(value).astype(np.float32, copy=False)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where} key {key!r} is not a numeric array ({exc}): {_WRITTEN_BY}") from None


def _check_config(
    where: str, text_key: str, text: np.ndarray, audio: np.ndarray, vision: np.ndarray, use_bert: bool,
    feature_dims: tuple[int, int, int] | None, seq_lens: tuple[int, int, int] | None,
) -> None:
    # (modality, key, array, index of its length axis)
    parts = (("text", text_key, text, 2 if use_bert else 1), ("audio", "audio", audio, 1),
             ("visual", "vision", vision, 1))
    if feature_dims is not None:
        # with use_bert the text axis 2 is the token count, not a feature size: keep the configured one
        found = tuple(feature_dims[0] if use_bert and m == "text" else arr.shape[2] for m, _, arr, _ in parts)
        for i, (modality, key, arr, _) in enumerate(parts):
            if use_bert and modality == "text":
                continue
            if arr.shape[2] != feature_dims[i]:
                raise DataError(
                    f"{where} key {key!r} has shape {arr.shape}: {modality} features are {arr.shape[2]} "
                    f"wide, expected {feature_dims[i]} (model.feature_dims = {list(feature_dims)}): set "
                    f"model.feature_dims to {list(found)} for this file"
                    + (" (text width is not checked with use_bert)" if use_bert else "")
                )
    if seq_lens is not None:
        found = tuple(arr.shape[axis] for _, _, arr, axis in parts)
        for i, (modality, key, arr, axis) in enumerate(parts):
            if arr.shape[axis] != seq_lens[i]:
                raise DataError(
                    f"{where} key {key!r} has shape {arr.shape}: {modality} sequences have "
                    f"{arr.shape[axis]} steps, expected {seq_lens[i]} (model.seq_lens = {list(seq_lens)}): "
                    f"set model.seq_lens to {list(found)} for this file"
                )


def _check_finite(where: str, key: str, arr: np.ndarray) -> None:
    bad_count, bad_samples = 0, []
    for start in range(0, len(arr), _FINITE_CHUNK):
        chunk = arr[start:start + _FINITE_CHUNK]
        bad = ~np.isfinite(chunk)
        if bad.any():
            bad_count += int(bad.sum())
            per_sample = bad.reshape(len(chunk), -1).any(axis=1)
            bad_samples.extend((np.flatnonzero(per_sample) + start).tolist())
    if bad_count:
        shown = ", ".join(map(str, bad_samples[:5])) + (", ..." if len(bad_samples) > 5 else "")
        raise DataError(
            f"{where} key {key!r} has {bad_count} NaN or infinite value(s) in {len(bad_samples)} sample(s) "
            f"(indices {shown}): the official files have none; re-extract the features or replace them"
        )


def _lengths(value: Any, where: str, key: str, n: int, max_len: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.shape != (n,) or not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{where} key {key!r} has shape {arr.shape} ({arr.dtype}), expected ({n},) "
                        "numbers: one length per sample")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > max_len):
        raise DataError(f"{where} key {key!r} has lengths from {arr.min()} to {arr.max()}, but the "
                        f"sequences have {max_len} steps: the lengths do not belong to these features")
    return arr


def _strings(value: Any, where: str, key: str, n: int, default) -> list[str]:
    if value is None:  # optional in practice: ids and raw text only label the samples
        return [default(i) for i in range(n)]
    items = [str(v) for v in np.asarray(value, dtype=object).reshape(-1)]
    if len(items) != n:
        raise DataError(f"{where} key {key!r} has {len(items)} entries but 'regression_labels' has {n}: "
                        "the file is inconsistent, re-extract it")
    return items


class MMSADataset(Dataset):
    """A split as a PyTorch dataset, items as the official `MMDataset` gives them (without raw text).

    An item is `{"text", "audio", "vision", "label", "emotion", "present", "index"}`: float32
    tensors, `label` of shape (1,) (NaN: no sentiment), `emotion` an int64 index into
    dmd_types.EMOTIONS (-1: none; always -1 for the official files), `present` the (3,) modality
    flags (all true where the file has none) and the sample's `index` in the split (its id is
    `split.ids[index]`). Unaligned splits add
    `audio_lengths` and `vision_lengths` (int64 scalars), as the official loader does.
    """

    def __init__(self, split: MMSASplit) -> None:
        self.split = split
        # Tensors are views of the arrays: no copy of the (possibly gigabytes of) features.
        self._text = torch.from_numpy(split.text)
        self._audio = torch.from_numpy(split.audio)
        self._vision = torch.from_numpy(split.vision)
        self._labels = torch.from_numpy(np.ascontiguousarray(split.labels.reshape(-1, 1)))
        self._audio_lengths = _tensor_or_none(split.audio_lengths)
        self._vision_lengths = _tensor_or_none(split.vision_lengths)
        n = len(split)
        emotions = split.emotions if split.emotions is not None else np.full(n, -1, np.int64)
        present = split.present if split.present is not None else np.ones((n, 3), bool)
        self._emotions = torch.from_numpy(np.ascontiguousarray(emotions))
        self._present = torch.from_numpy(np.ascontiguousarray(present))

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {
            "text": self._text[index],
            "audio": self._audio[index],
            "vision": self._vision[index],
            "label": self._labels[index],
            "emotion": self._emotions[index],
            "present": self._present[index],
            "index": index,
        }
        if self._audio_lengths is not None:
            item["audio_lengths"] = self._audio_lengths[index]
        if self._vision_lengths is not None:
            item["vision_lengths"] = self._vision_lengths[index]
        return item


def _tensor_or_none(arr: np.ndarray | None) -> torch.Tensor | None:
    return None if arr is None else torch.from_numpy(arr)


def make_loaders(
    splits: dict[str, MMSASplit],
    batch_size: int,
    eval_batch_size: int | None = None,
    num_workers: int = 0,
    seed: int = 0,
    epoch_samples: int = 0,
) -> dict[str, DataLoader]:
    """One DataLoader per split: `train` shuffled by a generator seeded with `seed` (the same seed
    gives the same order, whatever else used the global RNG), the others in file order with
    `eval_batch_size` (default `batch_size`). The last, smaller batch is kept, as officially.
    A mixed train split (`merge_mmsa` with weights) is drawn by weight, `epoch_samples` draws per
    epoch (0: as many as it has samples)."""
    if batch_size < 1:
        raise ValueError(f"batch_size = {batch_size}: must be at least 1 (train.batch_size)")
    eval_batch_size = eval_batch_size or batch_size
    loaders = {}
    for name, split in splits.items():
        train = name == "train"
        generator = torch.Generator().manual_seed(seed) if train else None
        sampler = None
        if train and split.weights is not None and split.source is not None:
            # mixed corpora: each sample drawn with its source's weight, as many draws per epoch as samples
            per_sample = torch.as_tensor(np.asarray(split.weights, np.float64)[split.source])
            sampler = WeightedRandomSampler(per_sample, num_samples=epoch_samples or len(split), replacement=True,
                                            generator=generator)
        loaders[name] = DataLoader(
            MMSADataset(split),
            batch_size=batch_size if train else eval_batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            generator=generator if sampler is None else None,
            num_workers=num_workers,
        )
    return loaders


def describe(splits: dict[str, MMSASplit]) -> dict[str, Any]:
    """A JSON-able summary of the data (sizes, shapes, label statistics per split), stored in
    checkpoints so that a result can be traced to the data it came from."""
    out: dict[str, Any] = {}
    for name, split in splits.items():
        labels = split.labels.astype(np.float64)
        labels = labels[~np.isnan(labels)]  # samples without a sentiment (emotion corpora)
        out[name] = {
            "n": len(split),
            "text": list(split.text.shape),
            "audio": list(split.audio.shape),
            "vision": list(split.vision.shape),
            "label_mean": round(float(labels.mean()), 6) if labels.size else None,
            "label_std": round(float(labels.std()), 6) if labels.size else None,
            # unaligned pickles carry per-sample lengths, aligned ones do not
            "has_lengths": split.audio_lengths is not None or split.vision_lengths is not None,
        }
        if split.emotions is not None:
            from dmd_types import EMOTIONS

            counts = np.bincount(split.emotions[split.emotions >= 0], minlength=len(EMOTIONS))
            out[name]["emotions"] = dict(zip(EMOTIONS, counts.tolist()))
            out[name]["with_sentiment"] = int(labels.size)
        if split.source is not None and split.sources:
            counts = np.bincount(split.source, minlength=len(split.sources)).tolist()
            out[name]["sources"] = {src: {"n": n, "weight": w} for src, n, w in
                                    zip(split.sources, counts, split.weights or (1.0,) * len(counts))}
    return out
