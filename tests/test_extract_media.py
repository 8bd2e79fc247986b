"""`dmd extract` on a dataset folder in the MMSA-FET layout: generated clips -> an MMSA pickle in the
live profile that `load_mmsa` reads and the trainer trains on; the clip cache; failed clips."""

from __future__ import annotations

import csv
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from media_helpers import write_media

from dmd_model.datasets import ExtractError, Extractor, dataset_labels, extract
from dmd_model.features import PROFILE, align_transcript, align_window, extract_media, load_text_encoder
from dmd_model.training.data import load_mmsa, pickle_metadata

av = pytest.importorskip("av")
pytest.importorskip("opensmile")
pytest.importorskip("mediapipe")
pytest.importorskip("pocketsphinx")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MOSI = DATA / "clips" / "mosi"
needs_clips = pytest.mark.skipif(not MOSI.is_dir(),
                                 reason="real clips not here (../shared/data/clips): developer data only")

LIVE_DIMS = PROFILE.feature_dims  # (384, 25, 55)
LIVE_LENS = (50, 50, 50)


def write_clip(path: Path, seconds: float = 1.5, fps: int = 10, freq: float = 180.0) -> Path:
    """A small mp4 like the MOSI clips (H.264 + AAC 44.1 kHz stereo): colour bars (no face) and a
    harmonic tone that pauses in the middle."""
    return write_media(path, seconds, fps=fps, freq=freq, pause=(0.6, 0.8))


ROWS = [  # video_id, clip_id, text, label, mode
    ("vidA", "1", "Hello there, this is fine!", 1.5, "train"),
    ("vidA", "2", "not good at all", -2.0, "train"),
    ("vidB", "1", "it was okay", 0.4, "valid"),
    ("vidB", "2", "really bad", -1.2, "test"),
]


def write_dataset(root: Path, rows=ROWS, broken: bool = False) -> Path:
    """An MMSA-FET folder: label.csv and Raw/<video_id>/<clip_id>.mp4. With `broken`, one more clip
    whose file is not media and one whose file is missing."""
    rows = list(rows)
    clips = root / "Raw"
    for i, (vid, cid, *_rest) in enumerate(rows):
        write_clip(clips / vid / f"{cid}.mp4", freq=180.0 + 20 * i)
    if broken:
        rows += [("vidC", "1", "this one is damaged", 0.0, "train"), ("vidC", "2", "this one is gone", 1.0, "test")]
        (clips / "vidC").mkdir(parents=True, exist_ok=True)
        (clips / "vidC" / "1.mp4").write_text("not a video at all\n" * 20)
    with (root / "label.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "clip_id", "text", "label", "label_T", "label_A", "label_V", "annotation", "mode"])
        for vid, cid, text, label, mode in rows:
            w.writerow([vid, cid, text, label, label, label, label, "x", mode])
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("mmsa_fet") / "ds", broken=True)


@pytest.fixture(scope="module")
def extracted(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    cache = out / "cache"
    first = extract(dataset, out / "live.pkl", cache_dir=cache, progress=False)
    second = extract(dataset, out / "again.pkl", cache_dir=cache, progress=False)
    return first, second, out


def test_a_dataset_folder_extracts_to_a_pickle_that_load_mmsa_reads_in_the_live_profile(extracted):
    first, _, out = extracted
    assert first.counts == {"train": 2, "valid": 1, "test": 1}
    splits = load_mmsa(out / "live.pkl", feature_dims=LIVE_DIMS, seq_lens=LIVE_LENS)
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [2, 1, 1]
    train = splits["train"]
    assert train.text.shape == (2, 50, 384) and train.audio.shape == (2, 50, 25) and train.vision.shape == (2, 50, 55)
    assert train.ids == ["vidA$_$1", "vidA$_$2"] and list(train.labels) == [1.5, -2.0]
    assert train.raw_text[0] == "hello there this is fine"  # the words the model saw, normalised
    assert splits.metadata["profile"]["name"] == "live-v1" and splits.profile["dims"] == PROFILE.dims
    # a tone is voiced speech to the profile; the synthetic image has no face
    assert splits.modalities == ("text", "audio")
    with (out / "live.pkl").open("rb") as f:
        raw = pickle.load(f)
    present = raw["train"]["present"]
    assert present.dtype == bool and present[:, :2].all() and not present[:, 2].any()
    assert not raw["train"]["vision"].any()  # no face anywhere: zeros, as the alignment makes them
    assert list(raw["train"]["transcript"]) == ["Hello there, this is fine!", "not good at all"]
    assert pickle_metadata(out / "live.pkl")["modalities"] == ["text", "audio"]


def test_the_sample_is_one_align_window_over_the_whole_clip(extracted, dataset):
    _, _, out = extracted
    splits = load_mmsa(out / "live.pkl")
    clip = dataset / "Raw" / "vidA" / "2.mp4"
    media = extract_media(clip)
    words = align_transcript(media.pcm, "not good at all", t0=media.t0)
    window = align_window(words, media.audio, media.visual, 0.0, media.duration + 0.5, load_text_encoder())
    assert window.n_tokens == 4
    np.testing.assert_allclose(splits["train"].text[1], window.text, atol=1e-5)
    np.testing.assert_allclose(splits["train"].audio[1], window.audio, atol=1e-4)


def test_a_second_run_reads_every_clip_from_the_cache(extracted):
    first, second, out = extracted
    assert (first.computed, first.cached) == (4, 0)
    assert (second.computed, second.cached) == (0, 4)
    assert second.seconds < first.seconds
    a, b = load_mmsa(out / "live.pkl"), load_mmsa(out / "again.pkl")
    for s in ("train", "valid", "test"):
        assert np.array_equal(a[s].text, b[s].text) and np.array_equal(a[s].audio, b[s].audio)


def test_an_interrupted_run_resumes_from_the_clips_already_done(tmp_path):
    ds = write_dataset(tmp_path / "ds", rows=ROWS[:2])
    partial = extract(ds, tmp_path / "a.pkl", cache_dir=tmp_path / "cache", limit=1, progress=False)
    assert partial.computed == 1
    full = extract(ds, tmp_path / "b.pkl", cache_dir=tmp_path / "cache", progress=False)
    assert (full.cached, full.computed) == (1, 1)


def test_a_changed_media_file_is_extracted_again(tmp_path):
    ds = write_dataset(tmp_path / "ds", rows=ROWS[:1])
    extract(ds, tmp_path / "a.pkl", cache_dir=tmp_path / "cache", progress=False)
    write_clip(ds / "Raw" / "vidA" / "1.mp4", seconds=1.2)
    os.utime(ds / "Raw" / "vidA" / "1.mp4", ns=(1, 1))
    again = extract(ds, tmp_path / "b.pkl", cache_dir=tmp_path / "cache", progress=False)
    assert (again.cached, again.computed) == (0, 1)


def test_broken_clips_are_reported_with_their_reason_and_the_others_are_extracted(extracted):
    first, _, out = extracted
    assert first.total == 4 and len(first.failures) == 2
    report = json.loads((out / "live.pkl.failed.json").read_text())
    reasons = {r["id"]: r["reason"] for r in report}
    assert "cannot read" in reasons["vidC$_$1"] and "as media" in reasons["vidC$_$1"]
    assert "does not exist" in reasons["vidC$_$2"]
    assert {r["split"] for r in report} == {"train", "test"}
    assert "2 failed" in first.summary() and "live.pkl.failed.json" in first.summary()


def die(pcm, t0):  # a recogniser that takes its process down, as a crashing native library would
    os._exit(3)


def test_several_workers_extract_the_same_samples_and_survive_a_dead_process(extracted, dataset, tmp_path):
    _, _, out = extracted
    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    with (ds / "label.csv").open("a", newline="") as f:
        csv.writer(f).writerow(["vidA", "1x", "", 0.5, 0.5, 0.5, 0.5, "x", "train"])  # no transcript
    shutil.copy(ds / "Raw" / "vidA" / "1.mp4", ds / "Raw" / "vidA" / "1x.mp4")
    # the token embeddings are already cached (the workers need not load the text model); the clips are not
    shutil.copytree(out / "cache" / "text", tmp_path / "cache" / "text")
    report = extract(ds, tmp_path / "par.pkl", cache_dir=tmp_path / "cache", workers=2, progress=False,
                     recogniser=f"{__name__}:die")
    reasons = {f.id: f.reason for f in report.failures}
    assert report.no_transcript == 1 and "process died (exit code 3)" in reasons["vidA$_$1x"]
    assert set(reasons) == {"vidA$_$1x", "vidC$_$1", "vidC$_$2"}
    serial, parallel = load_mmsa(out / "live.pkl"), load_mmsa(tmp_path / "par.pkl")
    for s in ("train", "valid", "test"):
        assert serial[s].ids == parallel[s].ids
        np.testing.assert_allclose(serial[s].text, parallel[s].text, atol=1e-5)
        np.testing.assert_allclose(serial[s].audio, parallel[s].audio, atol=1e-4)


def test_a_clip_without_transcript_and_no_recogniser_fails_with_that_reason(tmp_path):
    ds = write_dataset(tmp_path / "ds", rows=[("v", "1", "", 0.0, "train"), ("v", "2", "fine words", 1.0, "train")])
    messages = []
    report = extract(ds, tmp_path / "o.pkl", cache_dir=tmp_path / "cache", progress=False, log=messages.append)
    assert any("words will come from speech recognition" in m for m in messages)
    assert report.total == 1 and "no speech recogniser" in report.failures[0].reason


def test_the_extracted_pickle_trains_for_one_epoch_and_the_checkpoint_records_profile_and_modalities(
        extracted, tmp_path):
    from dmd_model.artefacts.checkpoint import load_checkpoint
    from dmd_model.config import DMDConfig
    from dmd_model.training.train import train

    _, _, out = extracted
    cfg = DMDConfig.from_dict({
        "name": "tiny_live",
        "model": {"feature_dims": list(LIVE_DIMS), "seq_lens": list(LIVE_LENS), "d_model": 8, "num_heads": 2,
                  "layers": 1, "memory_layers": 1, "conv_kernels": [3, 3, 3]},
        "train": {"batch_size": 2, "learning_rate": 1e-3, "update_epochs": 1, "max_epochs": 1, "seeds": [1]},
    })
    splits = load_mmsa(out / "live.pkl", feature_dims=cfg.model.feature_dims, seq_lens=cfg.model.seq_lens)
    summary = train(cfg, splits, out_dir=tmp_path / "run", progress=False, profile=splits.profile,
                    modalities=splits.modalities)
    assert summary.runs[0].epochs == 1 and np.isfinite(summary.runs[0].valid["MAE"])
    ckpt = load_checkpoint(summary.runs[0].checkpoint)
    assert ckpt.profile["name"] == "live-v1" and ckpt.modalities == ("text", "audio")


def test_a_folder_without_label_csv_or_raw_is_refused_with_the_layout(tmp_path):
    with pytest.raises(ExtractError, match=r"no label\.csv"):
        dataset_labels(tmp_path)
    (tmp_path / "label.csv").write_text("video_id,clip_id,text,label,mode\nv,1,hi,0.5,train\n")
    with pytest.raises(ExtractError, match=r"no Raw/ folder.*--text-only"):
        dataset_labels(tmp_path)
    (tmp_path / "Raw").mkdir()
    (tmp_path / "label.csv").write_text("video_id,clip_id,text,label,mode\nv,1,hi,0.5,training\n")
    with pytest.raises(ExtractError, match=r"mode\(s\) \{'training': 1\}"):
        dataset_labels(tmp_path)


@needs_clips
def test_real_mosi_clips_extract_with_face_voice_and_words(tmp_path):
    raw = tmp_path / "ds" / "Raw" / "Sqr0AcuoNnk"
    raw.mkdir(parents=True)
    os.symlink(MOSI / "Sqr0AcuoNnk_12.mp4", raw / "12.mp4")
    os.symlink(MOSI / "Sqr0AcuoNnk_12.mp4", raw / "12asr.mp4")  # the same clip without its transcript
    (tmp_path / "ds" / "Raw" / "03bSnISJMiM").mkdir()
    os.symlink(MOSI / "03bSnISJMiM_1.wav", tmp_path / "ds" / "Raw" / "03bSnISJMiM" / "1.wav")
    (tmp_path / "ds" / "label.csv").write_text(
        "video_id,clip_id,text,label,mode\n"
        "Sqr0AcuoNnk,12,and he is one of my favorite actors ever,2.0,train\n"
        "03bSnISJMiM,1,anyhow it was really good,2.4,test\n"
        "Sqr0AcuoNnk,12asr,,2.0,valid\n")
    recogniser = "workers.asr.factory:recognise_pcm"  # the ASR worker's engine (Whisper tiny.en here)
    extractor = Extractor(cache_dir=None, text_encoder=load_text_encoder(), recogniser=recogniser)
    report = extract(tmp_path / "ds", tmp_path / "mosi.pkl", cache_dir=tmp_path / "cache", progress=False,
                     extractor=extractor, recogniser=recogniser)
    assert report.total == 3 and report.no_transcript == 1, report.failures
    with (tmp_path / "mosi.pkl").open("rb") as f:
        raw_data = pickle.load(f)
    assert list(raw_data["train"]["present"][0]) == [True, True, True]  # a face, a voice, words
    assert list(raw_data["test"]["present"][0]) == [True, True, False]  # a sound file has no face
    assert raw_data["train"]["n_tokens"][0] == 9
    assert "favorite actors" in raw_data["valid"]["raw_text"][0] and raw_data["valid"]["present"][0].all()
