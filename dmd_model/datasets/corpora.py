"""Emotion corpora in the MMSA-FET layout that `dmd extract` reads: `dmd convert CORPUS SOURCE --out DIR`.

Each corpus names its files its own way; this turns them into one layout:

```
DIR/label.csv                       video_id, clip_id, text, label, mode, emotion, corpus, corpus_label,
                                    speaker, language
DIR/Raw/<video_id>/<clip_id>.<ext>  the media (a symbolic link to SOURCE's file, or a copy with copy=True)
```

`label` is the sentiment in [-3, 3], empty where the corpus has none (none of these has one on that
scale); `emotion` is one of `dmd_types.EMOTIONS` (by the table in `dmd_types.emotions`); `corpus_label`
is the corpus's own label (calm, boredom: kept, so a run can leave them out); `speaker` the speaker.

Splits are by speaker, never by utterance, so a test speaker's voice is never heard in training:

| corpus  | train | valid | test |
|---------|-------|-------|------|
| RAVDESS | actors 01-16 | 17-18 | 19-20 |
| EmoDB   | speakers 08, 09, 10, 11, 14 | 12 | 03, 13 (one male, one female) |
| MELD    | its train | its dev | its test (by file, as published) |

- RAVDESS speech (`Actor_NN/03-01-EE-II-SS-RR-AA.flac|wav`): the text is the sentence the statement
  code names ("Kids are talking by the door", "Dogs are sitting by the door"); `dmd extract` aligns
  it to the audio.
- EmoDB (`SSTTTEV.flac|wav`): German, so no text (the text model reads English): `text` is empty,
  `language` is "de", and `dmd extract` gives its clips no words (no recogniser runs on them).
- MELD (`{train,dev,test}_sent_emo.csv`): transcripts only (no media here): a text-only corpus.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from dmd_types.emotions import CORPUS_LABEL_NAMES, emotion_of

from .labels import ExtractError

CORPORA = ("ravdess", "emodb", "meld")
COLUMNS = ("video_id", "clip_id", "text", "label", "mode", "emotion", "corpus", "corpus_label", "speaker",
           "language")
AUDIO_SUFFIXES = (".flac", ".wav")

RAVDESS_STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
RAVDESS_SPLITS = {**{f"{a:02d}": "train" for a in range(1, 17)}, "17": "valid", "18": "valid", "19": "test",
                  "20": "test"}
EMODB_SPLITS = {"08": "train", "09": "train", "10": "train", "11": "train", "14": "train", "12": "valid",
                "03": "test", "13": "test"}
MELD_FILES = {"train": "train_sent_emo.csv", "valid": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}

_RAVDESS_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")
_EMODB_NAME = re.compile(r"^(\d\d)([a-z]\d\d)([A-Z])([a-z])$")


@dataclass(frozen=True)
class CorpusClip:
    """One row of a converted label file, and where its media comes from (None: text only)."""

    video_id: str
    clip_id: str
    text: str
    mode: str
    emotion: str
    corpus: str
    corpus_label: str
    speaker: str
    media: Path | None = None
    label: str = ""  # sentiment in [-3, 3]; empty: none
    language: str = "en"

    def row(self) -> dict[str, str]:
        return {"video_id": self.video_id, "clip_id": self.clip_id, "text": self.text, "label": self.label,
                "mode": self.mode, "emotion": self.emotion, "corpus": self.corpus,
                "corpus_label": self.corpus_label, "speaker": self.speaker, "language": self.language}


def _audio_files(source: Path) -> list[Path]:
    return sorted(p for p in source.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def ravdess_clips(source: Path) -> Iterator[CorpusClip]:
    """RAVDESS speech files under `source` (any depth). Song files (vocal channel 02) are skipped."""
    for path in _audio_files(source):
        m = _RAVDESS_NAME.match(path.stem)
        if m is None:
            raise ExtractError(f"{path}: not a RAVDESS file name (expected MM-VV-EE-II-SS-RR-AA, e.g. "
                               "03-01-05-02-01-01-12.flac)")
        _, channel, code, _, statement, _, actor = m.groups()
        if channel != "01":
            continue  # song
        if actor not in RAVDESS_SPLITS or statement not in RAVDESS_STATEMENTS:
            raise ExtractError(f"{path}: actor {actor} or statement {statement} is not RAVDESS's (actors 01-24 "
                               "are 01-20 here; statements 01, 02)")
        yield CorpusClip(video_id=f"Actor_{actor}", clip_id=path.stem, text=RAVDESS_STATEMENTS[statement],
                         mode=RAVDESS_SPLITS[actor], emotion=emotion_of("ravdess", code), corpus="ravdess",
                         corpus_label=CORPUS_LABEL_NAMES["ravdess"][code], speaker=actor, media=path)


def emodb_clips(source: Path) -> Iterator[CorpusClip]:
    """EmoDB files under `source`: speaker, text code, emotion letter, version."""
    for path in _audio_files(source):
        m = _EMODB_NAME.match(path.stem)
        if m is None:
            raise ExtractError(f"{path}: not an EmoDB file name (expected SSTTTEV, e.g. 03a01Wa.flac)")
        speaker, _, code, _ = m.groups()
        if speaker not in EMODB_SPLITS:
            raise ExtractError(f"{path}: speaker {speaker} is not one of EmoDB's ({', '.join(sorted(EMODB_SPLITS))})")
        yield CorpusClip(video_id=f"speaker_{speaker}", clip_id=path.stem, text="", mode=EMODB_SPLITS[speaker],
                         emotion=emotion_of("emodb", code), corpus="emodb",
                         corpus_label=CORPUS_LABEL_NAMES["emodb"][code], speaker=speaker, media=path,
                         language="de")


def meld_clips(source: Path) -> Iterator[CorpusClip]:
    """MELD's three CSV files in `source`: transcripts with their emotion, by its own splits."""
    for mode, name in MELD_FILES.items():
        path = source / name
        if not path.is_file():
            raise ExtractError(f"{path} not found: give the folder with MELD's train_sent_emo.csv, "
                               "dev_sent_emo.csv and test_sent_emo.csv")
        with path.open(newline="", encoding="utf-8-sig") as f:
            for row in csv.DictReader(f):
                try:
                    dialogue, utterance = int(row["Dialogue_ID"]), int(row["Utterance_ID"])
                    text, label = row["Utterance"], row["Emotion"]
                except (KeyError, ValueError) as exc:
                    raise ExtractError(f"{path}: row {row.get('Sr No.', '?')} lacks Dialogue_ID, Utterance_ID, "
                                       f"Utterance or Emotion ({exc})") from None
                yield CorpusClip(video_id=f"{mode}_dia{dialogue}", clip_id=f"utt{utterance}",
                                 text=_plain(text), mode=mode, emotion=emotion_of("meld", label), corpus="meld",
                                 corpus_label=label.strip().lower(), speaker=row.get("Speaker", "").strip())


def _plain(text: str) -> str:
    """MELD's transcripts carry typographic quotes and stray encodings: plain ASCII quotes."""
    return (text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
            .replace("\u0092", "'").replace("\u0085", "...").strip())


READERS = {"ravdess": ravdess_clips, "emodb": emodb_clips, "meld": meld_clips}


def corpus_clips(corpus: str, source: str | Path) -> list[CorpusClip]:
    """Every clip of `corpus` found in `source`; ExtractError if there is none or a name is not the corpus's."""
    name = corpus.lower()
    if name not in READERS:
        raise ExtractError(f"unknown corpus {corpus!r}: expected one of {', '.join(CORPORA)}")
    source = Path(source)
    if not source.is_dir():
        raise ExtractError(f"{source} is not a folder: give the folder holding the {name} files")
    clips = list(READERS[name](source))
    if not clips:
        raise ExtractError(f"no {name} files under {source} (looked for {', '.join(AUDIO_SUFFIXES)} files)")
    return clips


def write_corpus(clips: Iterable[CorpusClip], out: str | Path, *, copy: bool = False) -> Path:
    """`out/label.csv` and `out/Raw/<video_id>/<clip_id>.<ext>` (links to the media, or copies).
    Returns the label file's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for clip in clips:
        rows.append(clip.row())
        if clip.media is None:
            continue
        target = out / "Raw" / clip.video_id / f"{clip.clip_id}{clip.media.suffix.lower()}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        if copy:
            shutil.copyfile(clip.media, target)
        else:
            os.symlink(clip.media.resolve(), target)
    path = out / "label.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path
