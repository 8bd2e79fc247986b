"""Timed words, and the one text normalisation used everywhere.

Training text (the MOSI transcripts) is lower-case words without punctuation ("im not even gonna
sugar coat this"); recognisers give cased, punctuated words (Whisper: " I'm", "this."). Every word
goes through `normalise_word` before the text model or the forced aligner sees it, so training and
live text look alike: lower case, apostrophes dropped ("I'm" -> "im", as MOSI writes it), other
punctuation splits ("well-known" -> "well", "known"), and recogniser markers such as "[noise]",
"<unk>" or "(laughs)" are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_MARKER = re.compile(r"^\s*[\[<(].*[\]>)]\s*$")
_APOSTROPHES = re.compile(r"['\u2019\u2018`]")
_SPLIT = re.compile(r"[\W_]+")


@dataclass(frozen=True)
class Word:
    """A word and its time span on the session clock (seconds), with a confidence in [0, 1] from
    the recogniser or aligner (forced alignment: 1.0 aligned, 0.0 when its time was interpolated).

    A plain value: it is checked where it enters a part that relies on it (the stream's encoder and
    decoder, the alignment), each with its own error."""

    text: str
    start: float
    end: float
    confidence: float = 1.0

    @property
    def duration(self) -> float:
        return max(0.0, self.end - self.start)


def normalise_word(text: str) -> list[str]:
    """One recognised word as the text model sees it: zero, one or more lower-case words."""
    if _MARKER.match(text):
        return []
    return [w for w in _SPLIT.split(_APOSTROPHES.sub("", text.lower())) if w]


def normalise_text(text: str) -> list[str]:
    """A transcript as the list of words the text model sees."""
    return [w for token in text.split() for w in normalise_word(token)]


def normalise_words(words: Iterable[Word]) -> list[Word]:
    """Timed words normalised, in the order given. A word that splits into several shares its span
    out evenly among them; a word that normalises to nothing is dropped; an end before the start is
    taken as the start (a zero-length word)."""
    out: list[Word] = []
    for word in words:
        parts = normalise_word(word.text)
        end = max(word.end, word.start)
        step = (end - word.start) / max(1, len(parts))
        for i, part in enumerate(parts):
            out.append(Word(part, word.start + i * step, word.start + (i + 1) * step, word.confidence))
    return out


MIN_CONFIDENCE = 0.5  # the default of asr.min_confidence


def confident_words(words: list[Word], min_confidence: float = MIN_CONFIDENCE) -> list[Word]:
    """Recognised words, or none when the recogniser was not confident of them (mean confidence below
    `min_confidence`): speech the text model cannot read (another language, noise) is not text. The
    live inference worker applies it to a window's words, `dmd extract` to a clip's recognised words,
    so a model is trained on what it is served."""
    if not words or sum(w.confidence for w in words) >= min_confidence * len(words):
        return words
    return []
