"""The paper's categorical setting: IEMOCAP's four emotions in the layout MulT published (`labels`
(N, 4, 2), one [absent, present] pair per emotion). IEMOCAP is not on these machines: a synthetic
pickle of the same layout (features of the same sizes, shorter here) goes through `dmd train` with
the shipped configuration and `dmd eval --json --plot`."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml

import configs
from dmd_model.training.data import DataError, load_mmsa
from dmd_types import EMOTIONS
from workers.cli import main as dmd

DIMS = (300, 74, 35)  # GloVe, COVAREP, Facet: the shipped configuration's feature sizes


def write_mult_iemocap(path: Path, n: dict[str, int], seq_len: int = 8, seed: int = 0) -> Path:
    """MulT's iemocap_data.pkl layout: the emotion shows in the audio, so it can be learnt."""
    rng = np.random.default_rng(seed)
    data = {}
    for split, count in n.items():
        emotion = rng.integers(0, 4, count)
        labels = np.zeros((count, 4, 2), np.float32)
        labels[:, :, 0] = 1
        labels[np.arange(count), emotion] = (0, 1)
        audio = rng.normal(size=(count, seq_len, DIMS[1])).astype(np.float32)
        audio[:, :, :4] += 2.0 * np.eye(4, dtype=np.float32)[emotion][:, None, :]
        data[split] = {"text": rng.normal(size=(count, seq_len, DIMS[0])).astype(np.float32), "audio": audio,
                       "vision": rng.normal(size=(count, seq_len, DIMS[2])).astype(np.float32), "labels": labels}
    with path.open("wb") as f:
        pickle.dump(data, f)
    return path


def test_the_mult_layout_reads_as_the_four_emotions_without_sentiment(tmp_path: Path) -> None:
    path = write_mult_iemocap(tmp_path / "iemocap.pkl", {"train": 12, "valid": 4, "test": 4})
    with path.open("rb") as f:
        raw = pickle.load(f)
    splits = load_mmsa(path)
    train = splits["train"]
    expected = raw["train"]["labels"].argmax(-1).argmax(1)  # the emotion marked present
    assert train.emotions.tolist() == expected.tolist()
    assert [EMOTIONS[k] for k in range(4)] == ["neutral", "happy", "sad", "angry"]  # MulT's order
    assert np.isnan(train.labels).all()


def test_a_sample_marked_with_no_or_two_emotions_is_left_out(tmp_path: Path) -> None:
    path = write_mult_iemocap(tmp_path / "iemocap.pkl", {"train": 3, "valid": 1, "test": 1})
    with path.open("rb") as f:
        raw = pickle.load(f)
    raw["train"]["labels"][0] = [(1, 0)] * 4  # none
    raw["train"]["labels"][1] = [(0, 1), (0, 1), (1, 0), (1, 0)]  # two
    with path.open("wb") as f:
        pickle.dump(raw, f)
    train = load_mmsa(path)["train"]
    assert train.emotions.tolist() == [int(raw["train"]["labels"][2].argmax(-1).argmax())]
    assert len(train.audio) == len(train.text) == 1


def test_labels_of_another_shape_are_refused_naming_the_layout(tmp_path: Path) -> None:
    path = write_mult_iemocap(tmp_path / "iemocap.pkl", {"train": 2, "valid": 1, "test": 1})
    with path.open("rb") as f:
        raw = pickle.load(f)
    raw["valid"]["labels"] = np.zeros((1, 6, 2))
    with path.open("wb") as f:
        pickle.dump(raw, f)
    with pytest.raises(DataError, match=r"'labels' has shape \(1, 6, 2\), expected \(N, 4, 2\): MulT's IEMOCAP"):
        load_mmsa(path)


@pytest.mark.timeout(180)
def test_dmd_train_and_eval_on_the_layout_with_the_shipped_configuration(tmp_path: Path, capsys) -> None:
    data = write_mult_iemocap(tmp_path / "iemocap.pkl", {"train": 64, "valid": 16, "test": 24})
    cfg = yaml.safe_load(configs.path("iemocap_aligned").read_text())
    assert cfg["model"]["emotion_classes"] == 4
    cfg["model"].update(seq_lens={"text": 8, "audio": 8, "visual": 8}, d_model=10, num_heads=2, layers=1,
                        conv_kernels={"text": 3, "audio": 3, "visual": 3}, output_dropout=0.1, text_dropout=0.1)
    cfg["train"].update(update_epochs=1, learning_rate=3e-3, max_epochs=15, early_stop=15, seeds=[3])
    (tmp_path / "iemocap.yaml").write_text(yaml.safe_dump(cfg))
    assert dmd(["train", "--config", str(tmp_path / "iemocap.yaml"), "--data", str(data), "--out",
                str(tmp_path / "run"), "--quiet"]) == 0
    checkpoint = json.loads(capsys.readouterr().out)["checkpoints"][0]
    plot = tmp_path / "confusion.png"
    assert dmd(["eval", checkpoint, "--data", str(data), "--json", "--plot", str(plot), "--quiet"]) == 0
    printed = capsys.readouterr().out.strip()
    assert "\n" not in printed
    result = json.loads(printed)
    emotion = result["emotion"]
    assert emotion["n"] == 24 and len(emotion["confusion"]) == 4 and sum(map(sum, emotion["confusion"])) == 24
    assert set(emotion) >= {"accuracy", "uar", "weighted_f1", "confusion", "per_emotion"}
    assert set(emotion["per_emotion"]) == {"neutral", "happy", "sad", "angry"}
    assert emotion["uar"] > 0.4, emotion  # the audio carries the emotion: well above chance (0.25)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
