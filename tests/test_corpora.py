"""The seven emotions and the corpus converters (`dmd convert`): each corpus's labels map by the one
table, splits are by speaker, and the written layout is the MMSA-FET one `dmd extract` reads. Real
files from ../shared/data where they exist (skipped without it); named fakes for the naming rules."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from dmd_model.datasets.corpora import (
    EMODB_SPLITS,
    RAVDESS_SPLITS,
    corpus_clips,
    write_corpus,
)
from dmd_model.datasets.labels import ExtractError, read_labels
from dmd_types import EMOTIONS, emotion_index, emotion_of

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RAVDESS = SHARED / "emotion_speech" / "ravdess"
EMODB = SHARED / "emotion_speech" / "emodb"
MELD = SHARED / "labels" / "meld"


def test_the_seven_emotions_in_their_order() -> None:
    assert EMOTIONS == ("neutral", "happy", "sad", "angry", "fearful", "disgusted", "surprised")
    assert [emotion_index(e) for e in EMOTIONS] == list(range(7))


@pytest.mark.parametrize(("corpus", "label", "emotion"), [
    ("ravdess", "01", "neutral"), ("ravdess", "02", "neutral"), ("ravdess", "03", "happy"),
    ("ravdess", "04", "sad"), ("ravdess", "05", "angry"), ("ravdess", "06", "fearful"),
    ("ravdess", "07", "disgusted"), ("ravdess", "08", "surprised"),
    ("emodb", "N", "neutral"), ("emodb", "L", "neutral"), ("emodb", "F", "happy"), ("emodb", "T", "sad"),
    ("emodb", "W", "angry"), ("emodb", "A", "fearful"), ("emodb", "E", "disgusted"),
    ("meld", "neutral", "neutral"), ("meld", "joy", "happy"), ("meld", "sadness", "sad"), ("meld", "anger", "angry"),
    ("meld", "fear", "fearful"), ("meld", "disgust", "disgusted"), ("meld", "Surprise", "surprised"),
    ("fer2013", "surprise", "surprised"), ("iemocap", "happy", "happy"),
])
def test_each_corpus_label_maps_into_the_seven(corpus: str, label: str, emotion: str) -> None:
    assert emotion_of(corpus, label) == emotion


def test_an_unknown_label_or_corpus_is_refused_naming_what_there_is() -> None:
    with pytest.raises(ValueError, match=r"ravdess label '09' has no emotion: expected one of 01, 02"):
        emotion_of("ravdess", "09")
    with pytest.raises(ValueError, match="unknown corpus 'crema'"):
        emotion_of("crema", "ANG")
    with pytest.raises(ValueError, match="emotion 'contempt' is not one of neutral, happy"):
        emotion_index("contempt")


def test_ravdess_names_give_emotion_text_and_a_split_by_actor(tmp_path: Path) -> None:
    for name in ("03-01-05-02-01-01-12.flac", "03-01-02-01-02-02-17.flac", "03-01-08-01-01-01-20.wav",
                 "03-02-05-01-01-01-01.wav"):  # the last one is song: left out
        (tmp_path / name).write_bytes(b"")
    clips = {c.clip_id: c for c in corpus_clips("ravdess", tmp_path)}
    assert set(clips) == {"03-01-05-02-01-01-12", "03-01-02-01-02-02-17", "03-01-08-01-01-01-20"}
    angry, calm, surprised = (clips["03-01-05-02-01-01-12"], clips["03-01-02-01-02-02-17"],
                              clips["03-01-08-01-01-01-20"])
    assert (angry.emotion, angry.corpus_label, angry.mode, angry.speaker, angry.text) == (
        "angry", "angry", "train", "12", "Kids are talking by the door")
    assert (calm.emotion, calm.corpus_label, calm.mode, calm.text) == (
        "neutral", "calm", "valid", "Dogs are sitting by the door")
    assert (surprised.emotion, surprised.mode, surprised.video_id) == ("surprised", "test", "Actor_20")


def test_a_name_that_is_not_the_corpus_s_is_refused_with_the_expected_form(tmp_path: Path) -> None:
    (tmp_path / "angry_01.wav").write_bytes(b"")
    with pytest.raises(ExtractError, match=r"not a RAVDESS file name \(expected MM-VV-EE-II-SS-RR-AA"):
        corpus_clips("ravdess", tmp_path)
    with pytest.raises(ExtractError, match=r"not an EmoDB file name \(expected SSTTTEV"):
        corpus_clips("emodb", tmp_path)
    with pytest.raises(ExtractError, match="no ravdess files under"):
        corpus_clips("ravdess", tmp_path / "x") if (tmp_path / "x").mkdir() is None else None


def test_emodb_has_no_words_and_boredom_is_neutral(tmp_path: Path) -> None:
    for name in ("03a01Wa.flac", "13b09La.flac", "12a05Fb.flac"):
        (tmp_path / name).write_bytes(b"")
    clips = {c.clip_id: c for c in corpus_clips("emodb", tmp_path)}
    assert (clips["03a01Wa"].emotion, clips["03a01Wa"].mode, clips["03a01Wa"].text) == ("angry", "test", "")
    assert (clips["13b09La"].emotion, clips["13b09La"].corpus_label) == ("neutral", "boredom")
    assert clips["12a05Fb"].mode == "valid"


def test_the_speaker_splits_do_not_share_a_speaker() -> None:
    for splits in (RAVDESS_SPLITS, EMODB_SPLITS):
        by_mode: dict[str, set[str]] = {}
        for speaker, mode in splits.items():
            by_mode.setdefault(mode, set()).add(speaker)
        assert set(by_mode) == {"train", "valid", "test"}
        assert not (by_mode["train"] & by_mode["test"]) and not (by_mode["valid"] & by_mode["test"])


def test_the_written_layout_is_read_back_by_extract_s_label_reader(tmp_path: Path) -> None:
    source = tmp_path / "src" / "Actor_19"
    source.mkdir(parents=True)
    for name in ("03-01-04-01-01-01-19.flac", "03-01-03-02-02-01-19.flac"):
        (source / name).write_bytes(b"fLaC")
    label = write_corpus(corpus_clips("ravdess", tmp_path / "src"), tmp_path / "out")
    rows = list(csv.DictReader(label.open()))
    assert [r["emotion"] for r in rows] == ["happy", "sad"] or [r["emotion"] for r in rows] == ["sad", "happy"]
    assert all(r["label"] == "" and r["mode"] == "test" for r in rows)
    raw = tmp_path / "out" / "Raw" / "Actor_19" / "03-01-04-01-01-01-19.flac"
    assert raw.is_symlink() and raw.read_bytes() == b"fLaC"
    specs = read_labels(label, tmp_path / "out" / "Raw")
    assert {s.id for s in specs} == {"Actor_19$_$03-01-04-01-01-01-19", "Actor_19$_$03-01-03-02-02-01-19"}
    assert all(s.media and s.media.endswith(".flac") for s in specs)


@pytest.mark.skipif(not RAVDESS.is_dir(), reason="../shared/data/emotion_speech/ravdess is absent")
def test_the_real_ravdess_speech_converts_whole() -> None:
    clips = corpus_clips("ravdess", RAVDESS)
    assert len(clips) == 1200
    assert {m: sum(c.mode == m for c in clips) for m in ("train", "valid", "test")} == {
        "train": 960, "valid": 120, "test": 120}
    assert sum(c.emotion == "neutral" for c in clips) == 240  # neutral and calm


@pytest.mark.skipif(not EMODB.is_dir(), reason="../shared/data/emotion_speech/emodb is absent")
def test_the_real_emodb_converts_whole() -> None:
    clips = corpus_clips("emodb", EMODB)
    assert len(clips) == 408 and {c.speaker for c in clips if c.mode == "test"} == {"03", "13"}


@pytest.mark.skipif(not MELD.is_dir(), reason="../shared/data/labels/meld is absent")
def test_the_real_meld_transcripts_convert_by_their_own_splits() -> None:
    clips = corpus_clips("meld", MELD)
    assert {m: sum(c.mode == m for c in clips) for m in ("train", "valid", "test")} == {
        "train": 9989, "valid": 1109, "test": 2610}
    assert all(c.media is None and c.text for c in clips)
    assert {c.emotion for c in clips} == set(EMOTIONS)


def test_a_label_file_with_emotions_reads_them_and_an_empty_sentiment_as_nan(tmp_path: Path) -> None:
    path = tmp_path / "label.csv"
    path.write_text("video_id,clip_id,text,label,mode,emotion\n"
                    "v,1,hello there,1.5,train,happy\n"
                    "v,2,,,test,angry\n"
                    "v,3,fine,-0.5,valid,\n")
    specs = {s.clip_id: s for s in read_labels(path)}
    assert (specs["1"].label, specs["1"].emotion) == (1.5, EMOTIONS.index("happy"))
    assert specs["2"].label != specs["2"].label and specs["2"].emotion == EMOTIONS.index("angry")  # NaN
    assert (specs["3"].label, specs["3"].emotion) == (-0.5, -1)


@pytest.mark.parametrize(("row", "message"), [
    ("v,1,hi,,train,", r"line 2: ''\): the `label` column holds the sentiment in \[-3, 3\] "
                       r"\(empty only beside an `emotion`\)"),
    ("v,1,hi,0.5,train,contempt", r"emotion\(s\) are not known \(line 2: emotion 'contempt' is not one of"),
])
def test_a_row_without_any_label_or_with_an_unknown_emotion_is_refused(tmp_path: Path, row: str, message: str) -> None:
    path = tmp_path / "label.csv"
    path.write_text(f"video_id,clip_id,text,label,mode,emotion\n{row}\n")
    with pytest.raises(ExtractError, match=message):
        read_labels(path)


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.skipif(not (RAVDESS.is_dir() and EMODB.is_dir()), reason="../shared/data/emotion_speech is absent")
def test_real_voices_convert_and_extract_audio_only_with_their_emotions(tmp_path: Path, capsys) -> None:
    """dmd convert, then dmd extract on audio-only clips (FLAC): voice present, no face, the RAVDESS
    sentence forced-aligned as the words, EmoDB without words, emotions kept, no sentiment."""
    import json
    import pickle

    import numpy as np

    from workers.cli import main as dmd

    for corpus, files in (("ravdess", [RAVDESS / "Actor_19" / "03-01-05-02-01-01-19.flac",
                                       RAVDESS / "Actor_20" / "03-01-01-01-02-01-20.flac"]),
                          ("emodb", [EMODB / "03a01Wa.flac", EMODB / "13a01Nb.flac"])):
        source = tmp_path / f"{corpus}-src"
        source.mkdir()
        for f in files:
            (source / f.name).symlink_to(f)
        assert dmd(["convert", corpus, str(source), "--out", str(tmp_path / corpus)]) == 0
        assert dmd(["extract", str(tmp_path / corpus), "-o", str(tmp_path / f"{corpus}.pkl"), "--splits", "test",
                    "--cache", str(tmp_path / "cache")]) == 0
        assert json.loads(capsys.readouterr().out.split("\n{", 1)[-1].join(["{", ""]))["failed"] == 0
        with open(tmp_path / f"{corpus}.pkl", "rb") as f:
            test = pickle.load(f)["test"]
        assert len(test["id"]) == 2
        assert np.isnan(test["regression_labels"]).all()
        assert test["present"][:, 1].all() and not test["present"][:, 2].any()  # voice, no face
        emotions = sorted(test["emotion_labels"].tolist())
        if corpus == "ravdess":
            assert emotions == sorted([EMOTIONS.index("angry"), EMOTIONS.index("neutral")])
            assert test["present"][:, 0].all()
            assert sorted(test["raw_text"]) == ["dogs are sitting by the door", "kids are talking by the door"]
        else:
            assert emotions == sorted([EMOTIONS.index("angry"), EMOTIONS.index("neutral")])
            assert not test["present"][:, 0].any() and list(test["raw_text"]) == ["", ""]
