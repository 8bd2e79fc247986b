"""The values every part of Live DMD passes around, each defined once.

    from dmd_types import Word, normalise_words

- `Word`: a word and its time span on the session clock, as a recogniser, an aligner or a
  transcript gives it; `normalise_word`, `normalise_text`, `normalise_words`: the one text
  normalisation, applied before the text model sees a word, in training and live alike.

This package imports the standard library only: never torch, numpy, redis or another part of the
project. The protocol (`stream`), the model (`dmd_model`) and every process (`workers`) use it,
so a word keeps one type from the recogniser to the subscriber.
"""

from .words import Word, normalise_text, normalise_word, normalise_words

__all__ = ["Word", "normalise_text", "normalise_word", "normalise_words"]
