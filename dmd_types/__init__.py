"""The values every part of Live DMD passes around, each defined once.

    from dmd_types import Word, normalise_words

- `Word`: a word and its time span on the session clock, as a recogniser, an aligner or a
  transcript gives it; `normalise_word`, `normalise_text`, `normalise_words`: the one text
  normalisation, applied before the text model sees a word, in training and live alike.
- `PcmChunk` (16 kHz mono int16 samples from a start time) and `VideoFrame` (an RGB picture at a
  time): what a file, a camera, a microphone or a WebRTC peer delivers.
- `EMOTIONS`, `emotion_of`, `emotion_index`: the seven emotions and the one table that maps each
  corpus's labels into them.
- `Frames`: a run of feature frames of one modality (times, values, presence flags), from the
  extractors through the streams to the alignment.

This package imports the standard library and numpy only: never torch, redis or another part of
the project. The protocol (`stream`), the model (`dmd_model`) and every process (`workers`) use it,
so each value keeps one type from where it is made to where it is used.
"""

from .emotions import EMOTIONS, emotion_index, emotion_of
from .frames import Frames
from .media import SAMPLE_RATE, PcmChunk, VideoFrame
from .words import Word, normalise_text, normalise_word, normalise_words

__all__ = ["EMOTIONS", "SAMPLE_RATE", "Frames", "PcmChunk", "VideoFrame", "Word", "emotion_index", "emotion_of",
           "normalise_text", "normalise_word", "normalise_words"]
