"""Mixed corpora in one run: several extracted pickles merged (`merge_mmsa`), each drawn with its
weight, and `dmd train --data A B@W` naming them."""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from dmd_model.training.data import DataError, load_mmsa, make_loaders, merge_mmsa, parse_data_sources

L, DIMS = 6, (5, 4, 3)


def write_pickle(path: Path, n: int, *, emotions: bool, profile: str = "live-v2", fill: float = 0.0) -> Path:
    rng = np.random.default_rng(n)
    splits = {}
    for split in ("train", "valid", "test"):
        entry = {
            "text": np.full((n, L, DIMS[0]), fill, np.float32),
            "audio": rng.normal(size=(n, L, DIMS[1])).astype(np.float32),
            "vision": np.zeros((n, L, DIMS[2]), np.float32),
            "regression_labels": (np.full(n, np.nan, np.float32) if emotions
                                  else rng.uniform(-3, 3, n).astype(np.float32)),
            "id": np.asarray([f"{path.stem}_{split}_{i}" for i in range(n)], dtype=object),
            "present": np.tile([not emotions, emotions, False], (n, 1)),
        }
        if emotions:
            entry["emotion_labels"] = (np.arange(n) % 7).astype(np.int64)
        splits[split] = entry
    splits["meta"] = {"profile": {"name": profile}, "modalities": ["audio"] if emotions else ["text"]}
    path.write_bytes(pickle.dumps(splits))
    return path


def test_data_sources_are_paths_with_an_optional_name_and_weight():
    assert parse_data_sources(["runs/mosi.pkl", "voice=runs/ravdess.pkl@2.5"]) == [
        ("mosi", Path("runs/mosi.pkl"), 1.0), ("voice", Path("runs/ravdess.pkl"), 2.5)]
    for bad in (["a.pkl@0"], ["a.pkl@-1"], ["a.pkl@many"], ["x=a.pkl", "x=b.pkl"]):
        with pytest.raises(DataError):
            parse_data_sources(bad)


def test_merged_splits_keep_every_sample_with_its_labels_flags_and_source(tmp_path):
    words = load_mmsa(write_pickle(tmp_path / "words.pkl", 10, emotions=False, fill=1.0))
    voices = load_mmsa(write_pickle(tmp_path / "voices.pkl", 14, emotions=True))
    data = merge_mmsa([("words", words, 1.0), ("voices", voices, 3.0)])
    train = data["train"]
    assert len(train) == 24 and train.sources == ("words", "voices") and train.weights == (1.0, 3.0)
    assert (train.source == np.repeat([0, 1], [10, 14])).all()
    assert (train.emotions[:10] == -1).all() and (train.emotions[10:] == np.arange(14) % 7).all()
    assert np.isfinite(train.labels[:10]).all() and np.isnan(train.labels[10:]).all()
    assert train.present[:10, 0].all() and train.present[10:, 1].all() and (train.text[:10] == 1).all()
    assert data.modalities == ("text", "audio")
    assert [m["name"] for m in data.metadata["source"]["mixed"]] == ["words", "voices"]


def test_sampling_follows_the_weights(tmp_path):
    words = load_mmsa(write_pickle(tmp_path / "words.pkl", 100, emotions=False))
    voices = load_mmsa(write_pickle(tmp_path / "voices.pkl", 100, emotions=True))
    even = make_loaders(merge_mmsa([("w", words, 1.0), ("v", voices, 1.0)]), 50, seed=0)["train"]
    skewed = make_loaders(merge_mmsa([("w", words, 1.0), ("v", voices, 4.0)]), 50, seed=0)["train"]

    def share_of_voices(loader) -> float:
        drawn = Counter()
        for _ in range(20):
            for batch in loader:
                drawn.update((batch["emotion"] >= 0).tolist())
        return drawn[True] / sum(drawn.values())

    assert share_of_voices(even) == pytest.approx(0.5, abs=0.05)
    assert share_of_voices(skewed) == pytest.approx(0.8, abs=0.05)  # 4 : 1 per sample, equal sizes


def test_pickles_of_different_profiles_or_shapes_are_refused_with_their_names(tmp_path):
    a = load_mmsa(write_pickle(tmp_path / "a.pkl", 4, emotions=False))
    b = load_mmsa(write_pickle(tmp_path / "b.pkl", 4, emotions=True, profile="live-v1"))
    with pytest.raises(DataError, match=r"different feature profiles.*--profile"):
        merge_mmsa([("a", a, 1.0), ("b", b, 1.0)])


def test_one_pickle_of_weight_one_is_the_data_as_it_was(tmp_path):
    a = load_mmsa(write_pickle(tmp_path / "a.pkl", 4, emotions=False))
    assert merge_mmsa([("a", a, 1.0)]) is a
