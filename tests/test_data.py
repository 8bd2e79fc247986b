"""Loading MMSA pickles: shapes, the official -inf fix, clear errors, and reproducible loaders."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from dmd_model.training.data import DataError, MMSADataset, describe, load_mmsa, make_loaders
from dmd_model.training.synthetic import write_synthetic_mmsa

SMALL = {"n_train": 20, "n_valid": 8, "n_test": 6, "feature_dims": (16, 5, 7)}


def _rewrite(path, change):
    with path.open("rb") as f:
        data = pickle.load(f)
    change(data)
    with path.open("wb") as f:
        pickle.dump(data, f)
    return path


@pytest.fixture
def aligned(tmp_path):
    return write_synthetic_mmsa(tmp_path / "aligned_50.pkl", seq_lens=(12, 12, 12), **SMALL)


def test_aligned_pickle_loads_with_official_shapes(aligned):
    splits = load_mmsa(aligned, feature_dims=(16, 5, 7), seq_lens=(12, 12, 12))
    assert set(splits) == {"train", "valid", "test"}
    train = splits["train"]
    assert train.text.shape == (20, 12, 16) and train.text.dtype == np.float32
    assert train.audio.shape == (20, 12, 5) and train.vision.shape == (20, 12, 7)
    assert train.labels.shape == (20,) and train.labels.dtype == np.float32
    assert train.ids[12] == "synthetic_00012" and len(train.raw_text) == 20
    assert train.audio_lengths is None and train.vision_lengths is None
    assert splits["valid"].ids[0] == "synthetic_00020"  # ids are unique across splits
    assert len(splits["test"]) == 6


def test_synthetic_labels_have_zeros_repeats_and_padding(aligned):
    train = load_mmsa(aligned)["train"]
    assert (train.labels == 0).any()
    assert len(np.unique(train.labels)) < len(train.labels)
    assert np.all(np.abs(train.labels) <= 3)
    # zero padding at the end, at least 8 real steps, the same length in every modality when aligned
    real = [np.abs(x).sum(axis=2) > 0 for x in (train.text, train.audio, train.vision)]
    lengths = [r.sum(axis=1) for r in real]
    assert all((r == (np.arange(12)[None, :] < n[:, None])).all() for r, n in zip(real, lengths))
    assert lengths[0].min() >= 8
    assert (lengths[0] == lengths[1]).all() and (lengths[0] == lengths[2]).all()


def test_synthetic_text_carries_the_label(aligned):
    train = load_mmsa(aligned)["train"]
    mean_text = train.text.sum(axis=1) / (np.abs(train.text).sum(axis=2) > 0).sum(axis=1, keepdims=True)
    coef, *_ = np.linalg.lstsq(mean_text, train.labels, rcond=None)
    assert np.corrcoef(mean_text @ coef, train.labels)[0, 1] > 0.9


def test_unaligned_pickle_carries_lengths(tmp_path):
    path = write_synthetic_mmsa(tmp_path / "unaligned_50.pkl", seq_lens=(10, 30, 25), aligned=False, **SMALL)
    split = load_mmsa(path, seq_lens=(10, 30, 25))["valid"]
    assert split.audio.shape == (8, 30, 5) and split.vision.shape == (8, 25, 7)
    assert split.audio_lengths.shape == (8,) and split.vision_lengths.dtype == np.int64
    assert split.audio_lengths.min() >= 8 and split.audio_lengths.max() <= 30
    # the lengths describe the features: nothing after them
    for i, n in enumerate(split.audio_lengths):
        assert not split.audio[i, n:].any() and split.audio[i, n - 1].any()
    item = MMSADataset(split)[0]
    assert int(item["audio_lengths"]) == split.audio_lengths[0]


def test_bert_text_comes_from_text_bert(tmp_path):
    path = write_synthetic_mmsa(tmp_path / "bert.pkl", seq_lens=(12, 12, 12), with_bert=True, vocab_size=30,
                                **SMALL)
    splits = load_mmsa(path, use_bert=True, feature_dims=(768, 5, 7), seq_lens=(12, 12, 12))
    text = splits["train"].text
    assert text.shape == (20, 3, 12) and text.dtype == np.float32
    ids, mask, segments = text[:, 0], text[:, 1], text[:, 2]
    assert set(np.unique(mask)) <= {0.0, 1.0} and not segments.any()
    assert ((ids >= 1) & (ids < 30))[mask == 1].all() and not ids[mask == 0].any()
    assert load_mmsa(path)["train"].text.shape == (20, 12, 16)  # the features are still there


def test_bert_requested_but_absent_names_the_setting(aligned):
    with pytest.raises(DataError, match=r"no key 'text_bert'.*use_bert"):
        load_mmsa(aligned, use_bert=True)


def test_minus_inf_in_audio_becomes_zero(aligned):
    def poison(data):
        data["train"]["audio"][3, 2, :] = -np.inf
    splits = load_mmsa(_rewrite(aligned, poison))
    assert np.isfinite(splits["train"].audio).all()
    assert not splits["train"].audio[3, 2].any()


def test_nan_features_are_reported_with_counts_and_samples(aligned):
    def poison(data):
        data["test"]["vision"][4, 0, :2] = np.nan
    with pytest.raises(DataError, match=r"split 'test' key 'vision' has 2 NaN or infinite value\(s\) in 1 "
                                        r"sample\(s\) \(indices 4\)"):
        load_mmsa(_rewrite(aligned, poison))


def test_missing_key_is_named(aligned):
    def drop(data):
        del data["train"]["audio"]
    with pytest.raises(DataError, match=r"aligned_50.pkl split 'train' has no key 'audio'.*regression_lab"):
        load_mmsa(_rewrite(aligned, drop))


def test_missing_split_is_named(aligned):
    with pytest.raises(DataError, match=r"no split\(s\) \['valid'\]"):
        load_mmsa(_rewrite(aligned, lambda data: data.pop("valid")))


def test_wrong_rank_names_key_and_shape(aligned):
    def flatten(data):
        data["valid"]["vision"] = data["valid"]["vision"].reshape(8, -1)
    with pytest.raises(DataError, match=r"key 'vision' has shape \(8, 84\), expected \(N, L, D\)"):
        load_mmsa(_rewrite(aligned, flatten))


def test_feature_size_mismatch_names_the_config_field(aligned):
    with pytest.raises(DataError, match=r"key 'audio' has shape \(20, 12, 5\).*expected 74.*"
                                        r"set model.feature_dims to \[16, 5, 7\]"):
        load_mmsa(aligned, feature_dims=(16, 74, 7))


def test_sequence_length_mismatch_names_the_config_field(aligned):
    with pytest.raises(DataError, match=r"key 'text' has shape \(20, 12, 16\).*expected 50.*"
                                        r"set model.seq_lens to \[12, 12, 12\]"):
        load_mmsa(aligned, seq_lens=(50, 12, 12))


def test_sample_count_mismatch_is_named(aligned):
    def truncate(data):
        data["train"]["text"] = data["train"]["text"][:15]
    with pytest.raises(DataError, match=r"key 'text' has 15 samples \(shape \(15, 12, 16\)\) but "
                                        r"'regression_labels' has 20"):
        load_mmsa(_rewrite(aligned, truncate))


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"not found: set data.path"):
        load_mmsa(tmp_path / "nowhere.pkl")


def test_non_pickle_file_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.pkl"
    path.write_text("this is not a pickle\n")
    with pytest.raises(DataError, match=r"is not a readable pickle"):
        load_mmsa(path)


def test_pickle_of_wrong_type_is_a_clear_error(tmp_path):
    path = tmp_path / "list.pkl"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DataError, match=r"holds a list, expected a dict"):
        load_mmsa(path)


def test_loader_batches_have_expected_shapes(aligned):
    loaders = make_loaders(load_mmsa(aligned), batch_size=8, eval_batch_size=5)
    batch = next(iter(loaders["train"]))
    assert batch["text"].shape == (8, 12, 16) and batch["text"].dtype == torch.float32
    assert batch["audio"].shape == (8, 12, 5) and batch["vision"].shape == (8, 12, 7)
    assert batch["label"].shape == (8, 1) and batch["label"].dtype == torch.float32
    assert batch["index"].shape == (8,)
    assert [len(b["label"]) for b in loaders["valid"]] == [5, 3]  # last batch kept


def test_train_order_is_reproducible_with_the_same_seed(aligned):
    splits = load_mmsa(aligned)

    def order(seed):
        torch.manual_seed(1234 + seed)  # the global RNG must not matter
        loader = make_loaders(splits, batch_size=4, seed=seed)["train"]
        return [torch.cat([b["index"] for b in loader]).tolist() for _ in range(2)]

    assert order(3) == order(3)
    assert order(3) != order(4)
    assert sorted(order(3)[0]) == list(range(20))


def test_evaluation_loaders_keep_file_order(aligned):
    loaders = make_loaders(load_mmsa(aligned), batch_size=4)
    assert torch.cat([b["index"] for b in loaders["test"]]).tolist() == list(range(6))


def test_describe_is_json_able(aligned):
    info = describe(load_mmsa(aligned))
    json.dumps(info)
    assert info["train"]["n"] == 20 and info["valid"]["audio"] == [8, 12, 5]
    assert info["test"]["has_lengths"] is False
    assert isinstance(info["train"]["label_std"], float)


def test_bert_sequence_length_is_the_token_axis_and_width_is_not_checked(tmp_path):
    path = write_synthetic_mmsa(tmp_path / "bert.pkl", seq_lens=(12, 12, 12), with_bert=True, **SMALL)
    load_mmsa(path, use_bert=True, feature_dims=(768, 5, 7), seq_lens=(12, 12, 12))
    with pytest.raises(DataError, match=r"key 'text_bert' has shape \(20, 3, 12\).*12 steps, expected 50"):
        load_mmsa(path, use_bert=True, seq_lens=(50, 12, 12))
