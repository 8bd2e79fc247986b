"""A small MMSA-format pickle with a learnable signal, for tests and offline smoke runs.

The real MOSI/MOSEI pickles cannot ship with the repository, so tests and first runs use this
stand-in. It has the official layout (`train`/`valid`/`test`, each with `text`, `audio`, `vision`,
`regression_labels`, `id`, `raw_text`, and for unaligned data `audio_lengths`/`vision_lengths`) and
a signal a model can learn: each sample has a hidden sentiment s in [-3, 3], and every real time
step of every modality is noise plus s times a fixed direction of that modality (strongest in text,
as in the real data). Labels are rounded to one decimal, with exact zeros and repeated values, so
the metrics' Has0/Non0 split and Acc-7 ties are exercised.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

SPLITS: tuple[str, str, str] = ("train", "valid", "test")
# Signal strength per modality (text, audio, visual), relative to unit noise per feature.
_SIGNAL = (1.0, 0.5, 0.7)
_MIN_LEN = 8


def _sentiments(rng: np.random.Generator, n: int) -> np.ndarray:
    s = np.round(rng.uniform(-3.0, 3.0, size=n), 1)
    s[::9] = 0.0  # exact zeros: the Has0/Non0 distinction
    s[4::7] = s[3::7][: len(s[4::7])]  # repeated values: ties
    return s.astype(np.float32)


def _lengths(rng: np.random.Generator, n: int, seq_len: int) -> np.ndarray:
    low = min(_MIN_LEN, seq_len)
    return rng.integers(low, seq_len + 1, size=n)


def _features(
    rng: np.random.Generator, s: np.ndarray, lengths: np.ndarray, seq_len: int, direction: np.ndarray,
    strength: float,
) -> np.ndarray:
    n, dim = len(s), len(direction)
    x = rng.normal(0.0, 1.0, size=(n, seq_len, dim)).astype(np.float32)
    x += (strength * s)[:, None, None] * direction[None, None, :]
    x[np.arange(seq_len)[None, :] >= lengths[:, None]] = 0.0  # zero padding after the real steps
    return x


def _token_ids(rng: np.random.Generator, s: np.ndarray, lengths: np.ndarray, seq_len: int,
               vocab_size: int) -> np.ndarray:
    """(N, 3, L) BERT inputs: ids, mask, segments. Ids carry the sentiment too: with probability
    |s|/3 a token is drawn from the upper half of the vocabulary when s > 0, the lower when s < 0."""
    n = len(s)
    ids = rng.integers(1, vocab_size, size=(n, seq_len))
    half = max(2, vocab_size // 2)
    polar = rng.uniform(size=(n, seq_len)) < (np.abs(s) / 3.0)[:, None]
    positive = rng.integers(half, vocab_size, size=(n, seq_len)) if half < vocab_size else ids
    negative = rng.integers(1, half, size=(n, seq_len))
    ids = np.where(polar & (s[:, None] > 0), positive, ids)
    ids = np.where(polar & (s[:, None] < 0), negative, ids)
    mask = np.arange(seq_len)[None, :] < lengths[:, None]
    ids = np.where(mask, ids, 0)
    return np.stack([ids, mask, np.zeros_like(ids)], axis=1).astype(np.float32)


def write_synthetic_mmsa(
    path: str | Path,
    *,
    n_train: int = 96,
    n_valid: int = 32,
    n_test: int = 32,
    seq_lens: tuple[int, int, int] = (50, 50, 50),
    feature_dims: tuple[int, int, int] = (768, 5, 20),
    aligned: bool = True,
    seed: int = 0,
    with_bert: bool = False,
    vocab_size: int = 100,
    emotions: bool = False,
) -> Path:
    """Write a synthetic MMSA pickle to `path` (parents created) and return the path.

    `seq_lens` and `feature_dims` are (text, audio, visual), as in `ModelConfig`. Aligned data has
    one real length per sample shared by the three modalities (word-aligned, like
    `aligned_50.pkl`); unaligned data has its own length per modality and carries `audio_lengths`
    and `vision_lengths` (like `unaligned_50.pkl`). Each sequence has at least 8 real steps (all of
    them if shorter). `with_bert` adds `text_bert` (N, 3, Lt): token ids in [1, vocab_size) with 0
    on padding, attention mask, segment ids 0.

    `emotions` makes mixed data as `dmd extract` writes it for emotion corpora: `emotion_labels`
    (the sentiment's seventh of [-3, 3], so the same signal carries both tasks) and `present`; in
    every split a third of the samples keep only their emotion (sentiment NaN), a sixth only their
    sentiment (emotion -1), and a quarter have no visual input (zeros, flag false).
    """
    sizes = {"train": n_train, "valid": n_valid, "test": n_test}
    for name, n in sizes.items():
        if n < 0:
            raise ValueError(f"n_{name} = {n}: a split size cannot be negative")
    if len(seq_lens) != 3 or any(v < 1 for v in seq_lens):
        raise ValueError(f"seq_lens = {seq_lens}: give three positive lengths (text, audio, visual)")
    if len(feature_dims) != 3 or any(v < 1 for v in feature_dims):
        raise ValueError(f"feature_dims = {feature_dims}: give three positive sizes (text, audio, visual)")
    if with_bert and vocab_size < 3:
        raise ValueError(f"vocab_size = {vocab_size}: token ids need at least 3 (0 is padding)")

    rng = np.random.default_rng(seed)
    directions = []
    for dim in feature_dims:
        d = rng.normal(size=dim)
        directions.append((d / np.linalg.norm(d)).astype(np.float32))

    data: dict[str, dict] = {}
    offset = 0
    for split in SPLITS:
        n = sizes[split]
        s = _sentiments(rng, n)
        if aligned:
            shared = _lengths(rng, n, max(seq_lens))
            lengths = [np.minimum(shared, L) for L in seq_lens]
        else:
            lengths = [_lengths(rng, n, L) for L in seq_lens]
        text, audio, vision = (
            _features(rng, s, lengths[i], seq_lens[i], directions[i], _SIGNAL[i]) for i in range(3)
        )
        ids = [f"synthetic_{offset + i:05d}" for i in range(n)]
        entry = {
            "id": np.array(ids, dtype=object),
            "raw_text": np.array([f"synthetic utterance {offset + i}" for i in range(n)], dtype=object),
            "text": text,
            "audio": audio,
            "vision": vision,
            "regression_labels": s,
        }
        if emotions:
            emotion = np.clip(np.floor((s + 3.0) / 6.0 * 7), 0, 6).astype(np.int64)
            kind = rng.random(n)
            entry["regression_labels"] = np.where(kind < 1 / 3, np.nan, s).astype(np.float32)
            entry["emotion_labels"] = np.where((kind >= 1 / 3) & (kind < 0.5), -1, emotion)
            present = np.ones((n, 3), bool)
            present[:, 2] = rng.random(n) >= 0.25
            vision[~present[:, 2]] = 0.0
            entry["present"] = present
        if with_bert:
            entry["text_bert"] = _token_ids(rng, s, lengths[0], seq_lens[0], vocab_size)
        if not aligned:
            entry["audio_lengths"] = lengths[1].astype(np.int64)
            entry["vision_lengths"] = lengths[2].astype(np.int64)
        data[split] = entry
        offset += n

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(data, f, protocol=4)
    return path
