"""The alignment: a window's timed words, acoustic frames and face frames -> the model's input.

This one function serves dataset extraction (a clip is one window, from 0 to its end) and live
serving (a window of the session, read back from the streams), so a model trained on extracted
clips sees the same kind of input live. The rule is MMSA's word-aligned data, made explicit:

- One position per text token (word-piece) of the window's words, in time order, at most L
  (50); the text vector is the token's embedding. Audio and visual at that position are their
  frames averaged over the time span of the token's word, so the word-pieces of one word share
  them. Positions after the last token are zeros.
- A window without words gets one position per 0.25 s time slot, text vector zero, so that face
  and voice still reach the model when nobody speaks (or the recogniser has not caught up).
- Profiles with `frames = "slots"` (live-v2) place audio and visual on fixed time slots of
  `frame_slot_s` over the window instead, whatever the words (text positions stay one per token):
  ceil(length / slot) positions, at most L; a longer span (an offline clip) stretches the slots to
  length / L so that all of it is seen. `spans` then holds the slots' spans.
- Presence per modality: text (at least one token), audio (at least 50 ms of voiced frames in
  the window: otherwise silence or noise) and visual (a face in at least a fifth of the window's
  video frames). The features are still filled in when a flag is false (silence has acoustic
  features too); the flag is for the model and the estimate's `present`.

Edge cases, decided once here:

- Which words: a word counts when at least half of it lies in the window (a word longer than the
  window: when the window is at least half covered by it); a zero-length word when its instant
  is in the window. Its span is then cut to the window. Words are normalised first (lower case,
  no punctuation; see `words.py`) and sorted by start time.
- Overlapping words each use their own span; frames in the overlap count for both.
- Tokens beyond L: the first L are kept (as MMSA truncates), the number dropped is reported.
  A 3 s window holds 10-20 tokens, so live windows never reach it; long offline clips can.
- A span with no frame inside it (a zero-length word, a 20 ms word between two 30 fps video
  frames, a 10 Hz camera): the nearest frame of the window within 0.1 s of the span is used;
  none that close, zeros. Only the window's own frames are used, never frames outside it, so the
  result does not depend on how much a reader fetched around the window.
- Visual averages only the frames in which a face was found; a span whose frames have no face
  gives zeros (and `face_present` false at that position). Audio averages all its frames, voiced
  or not, as MMSA's averaging of COVAREP frames does.
- Audio is standardised with the profile's fixed mean and std after averaging (zeros stay zeros
  where there were no frames); visual (scores 0-1, angles in radians) and text are not.
- Face frames are 62 wide (the tracker's 55, then the face expert's 7 probabilities, zeros where
  the expert was not run) or 55 (the tracker alone: read as frames the expert did not see). A
  profile without the expert (live-v1, live-v2) reads the first 55 columns, so it gives what it
  gave before the expert existed. With it (live-v3) the expert's 7 columns at a position are
  averaged over the frames with a face where the expert was run (zeros: none was), the other 55
  over the frames with a face as before.
- The window's face emotion (`face_emotions`) is the mean of the expert's probabilities over all of
  the window's frames with a face where it was run, whatever the profile (None where there is
  none): the face's own emotion, which the inference worker shows and fuses for a checkpoint that
  does not read the face itself.
- Frames are selected by `t_start <= time < t_end` and spans are half-open the same way.
  Averages are computed in float64, position by position, so the result does not depend on how
  many frames outside the window the caller passed in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from dmd_types import Frames, Word, normalise_words

from .errors import FeatureError
from .profile import AUDIO_NAMES, FACE_FRAME_NAMES, PROFILE, VISUAL_NAMES, Profile

MODALITIES = ("text", "audio", "visual")


class WordEncoder(Protocol):
    """What the alignment needs of a text encoder (`TextEncoder` is one)."""

    dim: int

    def encode(self, words: Sequence[str]):  # -> TokenEmbeddings
        ...


@dataclass(frozen=True)
class AlignedWindow:
    """The model input of one window, and what it was made from.

    text (L, Dt), audio (L, 25), visual (L, 55; 62 with the face expert): float32, zeros after `length`
    positions.
    present: per modality, whether it is really there (see the module docstring).
    token_word (L,): index into `words` of each position's word (-1: a time slot or padding).
    spans (L, 2): each position's (start, end) in seconds (zeros after `length`).
    audio_voiced, face_present (L,): whether the position's frames held voiced speech / a face.
    face_emotions (7,): the face expert's probabilities (`EMOTIONS` order) averaged over the window's
    frames with a face where it was run, float64 summing to 1; None where there is none.
    """

    text: np.ndarray
    audio: np.ndarray
    visual: np.ndarray
    length: int
    n_tokens: int
    present: dict[str, bool]
    words: tuple[Word, ...]
    tokens: tuple[str, ...]
    token_word: np.ndarray
    spans: np.ndarray
    audio_voiced: np.ndarray
    face_present: np.ndarray
    t_start: float
    t_end: float
    dropped_tokens: int
    profile: str
    face_emotions: np.ndarray | None = None

    @property
    def lengths(self) -> dict[str, int]:
        """Filled positions per modality (text: its tokens; audio and visual: every position)."""
        return {"text": self.n_tokens, "audio": self.length, "visual": self.length}

    @property
    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(text, audio, visual), the model's argument order."""
        return self.text, self.audio, self.visual

    def max_difference(self, other: AlignedWindow) -> float:
        """The largest absolute difference of the three inputs (inf if their shapes differ)."""
        worst = 0.0
        for a, b in zip(self.arrays, other.arrays):
            if a.shape != b.shape:
                return float("inf")
            worst = max(worst, float(np.abs(a - b).max(initial=0.0)))
        return worst


def select_words(words: Sequence[Word], t_start: float, t_end: float) -> list[Word]:
    """The window's words, normalised, in time order, with spans cut to the window."""
    length = t_end - t_start
    chosen = []
    for w in sorted(normalise_words(_finite(words)), key=lambda w: (w.start, w.end)):
        overlap = min(w.end, t_end) - max(w.start, t_start)
        if w.duration == 0.0:
            inside = t_start <= w.start < t_end
        else:
            inside = overlap > 0 and overlap >= 0.5 * min(w.duration, length)
        if inside:
            chosen.append(Word(w.text, max(w.start, t_start), min(w.end, t_end), w.confidence))
    return chosen


def _finite(words: Sequence[Word]) -> Sequence[Word]:
    for w in words:
        if not (math.isfinite(w.start) and math.isfinite(w.end)):
            raise FeatureError(f"word {w.text!r} has times {w.start}, {w.end}: give finite seconds")
    return words


def _frame_rows(times: np.ndarray, start: float, end: float, nearest_s: float) -> np.ndarray:
    """Indices of the frames in [start, end), or of the nearest one within nearest_s, or none."""
    i0, i1 = np.searchsorted(times, [start, end], side="left")
    if i1 > i0:
        return np.arange(i0, i1)
    if times.size == 0:
        return np.arange(0)
    # No frame inside: candidates are the last frame before the span and the first after it.
    best, best_d = -1, nearest_s
    for j in (i0 - 1, i0):
        if 0 <= j < times.size:
            d = max(start - times[j], times[j] - end, 0.0)
            if d <= best_d:
                best, best_d = j, d
    return np.arange(best, best + 1) if best >= 0 else np.arange(0)


def align_window(
    words: Sequence[Word],
    audio: Frames,
    visual: Frames,
    t_start: float,
    t_end: float,
    text_encoder: WordEncoder | None = None,
    profile: Profile = PROFILE,
) -> AlignedWindow:
    """The model input of the window [t_start, t_end) (see the module docstring for the rules).

    `words`, `audio` and `visual` may reach beyond the window; only what lies inside is used.
    `text_encoder` defaults to the profile's (loaded once per process).
    """
    t_start, t_end = float(t_start), float(t_end)
    text_encoder = _checked_inputs(audio, visual, t_start, t_end, text_encoder, profile)
    audio = audio.between(t_start, t_end)
    visual = face_frames(visual.between(t_start, t_end))
    chosen = select_words(words, t_start, t_end)
    tokens = text_encoder.encode([w.text for w in chosen])
    text, token_word, spans, length, n_tok = _positions(chosen, tokens, t_start, t_end, profile)
    if profile.frames == "slots":
        spans, length = _slots(t_start, t_end, profile.frame_slot_s, profile.seq_len, stretch=True)
    audio_out, audio_voiced, visual_out, face_present = _averaged_frames(audio, visual, spans, length, profile)
    expert = expert_rows(visual)
    n_visual = len(visual)
    present = {
        "text": n_tok > 0,
        "audio": int(audio.present.sum()) >= profile.min_voiced_frames,
        "visual": n_visual > 0 and visual.present.sum() >= profile.min_face_fraction * n_visual,
    }
    return AlignedWindow(
        text=text,
        audio=audio_out,
        visual=visual_out,
        length=int(length),
        n_tokens=int(n_tok),
        present={k: bool(v) for k, v in present.items()},
        words=tuple(chosen),
        tokens=tuple(tokens.tokens[:n_tok]),
        token_word=token_word,
        spans=spans,
        audio_voiced=audio_voiced,
        face_present=face_present,
        t_start=t_start,
        t_end=t_end,
        dropped_tokens=max(0, len(tokens) - profile.seq_len),
        profile=profile.name,
        face_emotions=_mean_probabilities(visual.values[expert, len(VISUAL_NAMES):]) if expert.any() else None,
    )


def face_frames(visual: Frames) -> Frames:
    """Face frames as 62 columns: 55-wide ones (the tracker alone) get zeros in the expert's 7 (not run)."""
    if visual.dim == len(FACE_FRAME_NAMES):
        return visual
    values = np.zeros((len(visual), len(FACE_FRAME_NAMES)), np.float32)
    values[:, : visual.dim] = visual.values
    return Frames(visual.times, values, visual.present)


def expert_rows(visual: Frames) -> np.ndarray:
    """(n,) bool: the 62-wide face frames with a face on which the expert was run (its row sums to 1, not 0)."""
    return visual.present & (visual.values[:, len(VISUAL_NAMES):].sum(axis=1) > 0.5)


def _mean_probabilities(rows: np.ndarray) -> np.ndarray:
    """The mean of (n, 7) probability rows in float64, renormalised (float32 rows sum to 1 only to ~1e-7)."""
    mean = rows.astype(np.float64).mean(axis=0)
    return mean / mean.sum()


def _checked_inputs(audio: Frames, visual: Frames, t_start: float, t_end: float, text_encoder: WordEncoder | None,
                    profile: Profile) -> WordEncoder:
    """The text encoder to use (the profile's when none is given), once the inputs fit the profile."""
    if not t_end > t_start:
        raise FeatureError(f"window [{t_start}, {t_end}) is empty: t_end must be after t_start")
    if audio.dim != len(AUDIO_NAMES):
        raise FeatureError(f"audio frames are {audio.dim} wide, the profile's are {len(AUDIO_NAMES)} (eGeMAPSv02 LLDs)")
    if visual.dim not in (len(VISUAL_NAMES), len(FACE_FRAME_NAMES)):
        raise FeatureError(f"visual frames are {visual.dim} wide, expected {len(FACE_FRAME_NAMES)} (face tracking with "
                           f"the face expert's probabilities) or {len(VISUAL_NAMES)} (face tracking alone)")
    if text_encoder is None:
        from .text import load_text_encoder

        text_encoder = load_text_encoder(profile.text_model)
    if text_encoder.dim != profile.text_dim:
        raise FeatureError(
            f"the text encoder gives {text_encoder.dim}-wide vectors, profile {profile.name!r} expects "
            f"{profile.text_dim}: use its model ({profile.text_model})"
        )
    return text_encoder


def _positions(chosen: Sequence[Word], tokens: Any, t_start: float, t_end: float, profile: Profile
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """The window's positions: one per token (its embedding, its word, the word's span), or without
    words one per time slot. Returns text (L, Dt), token_word (L,), spans (L, 2), the number of
    positions filled and the number of tokens."""
    L = profile.seq_len
    n_tok = min(len(tokens), L)
    text = np.zeros((L, profile.text_dim), np.float32)
    token_word = np.full(L, -1, np.int64)
    spans = np.zeros((L, 2), np.float64)
    if n_tok:
        text[:n_tok] = tokens.vectors[:n_tok]
        token_word[:n_tok] = tokens.word_index[:n_tok]
        spans[:n_tok] = [(chosen[i].start, chosen[i].end) for i in token_word[:n_tok]]
        return text, token_word, spans, n_tok, n_tok
    spans, length = _slots(t_start, t_end, profile.slot_s, L, stretch=False)
    return text, token_word, spans, length, 0


def _slots(t_start: float, t_end: float, slot_s: float, L: int, stretch: bool) -> tuple[np.ndarray, int]:
    """Time slots of `slot_s` from t_start: (L, 2) spans (zeros after the filled ones) and how many.
    More than L slots: the first L (`stretch` false), or L slots of (t_end - t_start) / L (true)."""
    slots = max(int(np.ceil((t_end - t_start) / slot_s - 1e-9)), 1)
    if slots > L and stretch:
        slot_s, slots = (t_end - t_start) / L, L
    length = min(slots, L)
    spans = np.zeros((L, 2), np.float64)
    starts = t_start + slot_s * np.arange(length)
    spans[:length, 0] = starts
    spans[:length, 1] = np.minimum(starts + slot_s, t_end)
    return spans, length


def _averaged_frames(audio: Frames, visual: Frames, spans: np.ndarray, length: int, profile: Profile
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per position, the audio frames and the face frames of its span averaged (audio standardised),
    and whether they held voiced speech and a face: audio (L, 25), voiced (L,), visual (L, 55 or 62), face (L,).
    `visual` is 62 wide (`face_frames`)."""
    L = profile.seq_len
    n_face = len(VISUAL_NAMES)
    audio_out = np.zeros((L, len(AUDIO_NAMES)), np.float32)
    visual_out = np.zeros((L, len(profile.visual_names)), np.float32)
    expert = expert_rows(visual) if profile.face_expert else None
    audio_voiced = np.zeros(L, bool)
    face_present = np.zeros(L, bool)
    for p in range(length):
        if p and spans[p, 0] == spans[p - 1, 0] and spans[p, 1] == spans[p - 1, 1]:
            # another word-piece of the same word (or a word with the same span): same frames
            audio_out[p], visual_out[p] = audio_out[p - 1], visual_out[p - 1]
            audio_voiced[p], face_present[p] = audio_voiced[p - 1], face_present[p - 1]
            continue
        rows = _frame_rows(audio.times, spans[p, 0], spans[p, 1], profile.nearest_s)
        if rows.size:
            audio_out[p] = profile.standardise_audio(audio.values[rows].astype(np.float64).mean(0)[None])[0]
            audio_voiced[p] = bool(audio.present[rows].any())
        rows = _frame_rows(visual.times, spans[p, 0], spans[p, 1], profile.nearest_s)
        rows = rows[visual.present[rows]]
        if rows.size:
            visual_out[p, :n_face] = visual.values[rows, :n_face].astype(np.float64).mean(0)
            face_present[p] = True
            if expert is not None and expert[rows].any():
                visual_out[p, n_face:] = visual.values[rows[expert[rows]], n_face:].astype(np.float64).mean(0)
    return audio_out, audio_voiced, visual_out, face_present


def voice_positions(audio: Frames, t_start: float, t_end: float, profile: Profile) -> np.ndarray:
    """(L, 25): the voice positions `align_window` gives the window [t_start, t_end) in a profile with
    fixed time slots (live-v2 and later), without the words and the face: what the per-session
    normalisation of the voice recomputes from normalised frames (`voice_norm`)."""
    if profile.frames != "slots":
        raise FeatureError(f"profile {profile.name!r} places voice frames by words: its positions need the words")
    spans, length = _slots(float(t_start), float(t_end), profile.frame_slot_s, profile.seq_len, stretch=True)
    empty = Frames.empty(len(FACE_FRAME_NAMES))
    return _averaged_frames(audio.between(float(t_start), float(t_end)), empty, spans, length, profile)[0]


def stack_windows(windows: Sequence[AlignedWindow]) -> dict[str, np.ndarray]:
    """A batch: text (B, L, Dt), audio (B, L, 25), visual (B, L, 55 or 62), lengths (B,), present (B, 3)
    in the order text, audio, visual."""
    if not windows:
        raise FeatureError("no windows to stack: give at least one AlignedWindow")
    return {
        "text": np.stack([w.text for w in windows]),
        "audio": np.stack([w.audio for w in windows]),
        "visual": np.stack([w.visual for w in windows]),
        "lengths": np.asarray([w.length for w in windows], np.int64),
        "present": np.asarray([[w.present[m] for m in MODALITIES] for w in windows], bool),
    }
