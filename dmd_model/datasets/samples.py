"""One sample: a clip's (or a transcript's) window through the live profile, as the model sees it.

`Extractor` is the extractor set of one process; `extract_one` turns any clip into a `Sample` or a
`Failure` with its reason, never an exception.
"""

from __future__ import annotations

import importlib
import re
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dmd_types import Frames, Word, normalise_text
from dmd_types.words import confident_words

from ..features.alignment import MODALITIES, align_window
from ..features.errors import FeatureError
from ..features.profile import AUDIO_NAMES, PROFILE, SAMPLE_RATE, VISUAL_NAMES, Profile, extractor_versions
from .cache import EXTRACT_VERSION, CachedTextEncoder, atomic_savez, digest
from .labels import ClipSpec, ExtractError

# A word's nominal length in text-only extraction (there is no audio to time it): about the
# speaking rate of the MOSI clips (Sqr0AcuoNnk_12: 9 words in 2.42 s). With no audio and no face
# frames it only decides the window's span; the text input does not depend on it.
NOMINAL_WORD_S = 0.3


@dataclass
class Failure:
    id: str
    split: str
    reason: str
    media: str | None = None


@dataclass
class Sample:
    """One extracted sample: the model input of the clip's window and what to store with it."""

    id: str
    split: str
    label: float
    text: np.ndarray  # (L, Dt)
    audio: np.ndarray  # (L, 25)
    vision: np.ndarray  # (L, 55; 62 with the face expert)
    present: tuple[bool, bool, bool]  # text, audio, visual
    n_tokens: int
    words: str  # the normalised words the model saw (the window's), space-joined
    transcript: str
    cached: bool = False
    no_transcript: bool = False
    dropped_tokens: int = 0
    emotion: int = -1  # index in dmd_types.EMOTIONS; -1: none
    # the clip's acoustic frames and the span of its window, for the per-session normalisation of
    # the voice (live-v4: `voice_norm.normalise_sessions`); None: no media (text only)
    afeat: Frames | None = None
    span: tuple[float, float] = (0.0, 0.0)
    session: str = ""  # the clip's session for that normalisation (`ClipSpec.session`)


def _arrays(window: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[bool, bool, bool]]:
    """The window's arrays as the alignment made them (as served live) and its presence flags."""
    present = tuple(bool(window.present[m]) for m in MODALITIES)
    return window.text, window.audio, window.visual, present  # type: ignore[return-value]


def nominal_words(words: Sequence[str], word_s: float = NOMINAL_WORD_S) -> list[Word]:
    """Words one after the other, `word_s` seconds each from 0: timing for text without audio."""
    return [Word(w, i * word_s, (i + 1) * word_s) for i, w in enumerate(words)]


def text_window(words: Sequence[str], encoder: Any, profile: Profile = PROFILE) -> Any:
    """The aligned window of words without media (text-only extraction, and a transcript typed in):
    nominal times, no audio or face frames, through the one `align_window`."""
    timed = nominal_words(words)
    t_end = max(len(timed), 1) * NOMINAL_WORD_S
    return align_window(timed, Frames.empty(len(AUDIO_NAMES)), Frames.empty(len(VISUAL_NAMES)), 0.0, t_end,
                        encoder, profile)


Recogniser = Callable[[np.ndarray, float], list[Word]]


def resolve_recogniser(spec: str | Recogniser | None) -> Recogniser | None:
    """A recogniser given as a callable or as "module:function" (importable in worker processes)."""
    if spec is None or callable(spec):
        return spec
    module, _, name = str(spec).partition(":")
    if not module or not name:
        raise ExtractError(f"recogniser {spec!r}: give it as 'package.module:function'")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ExtractError(f"recogniser {spec!r} cannot be imported ({e})") from None


class Extractor:
    """The extractor set of one process: profile, text encoder (cached), forced aligner, and a face
    tracker per clip (MediaPipe's VIDEO mode keeps state, so a clip never shares one).

    `recogniser(pcm, t0) -> [Word]`: where a clip's words come from when it has no transcript (16 kHz
    int16 mono PCM and the time of its first sample). The ASR worker provides one; without it such
    clips fail with a reason that says so.
    """

    def __init__(self, profile: Profile = PROFILE, cache_dir: str | Path | None = None,
                 recogniser: str | Recogniser | None = None, text_encoder: Any = None) -> None:
        self.profile = profile
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.text = CachedTextEncoder(profile.text_model, profile.text_dim, self.cache_dir, text_encoder)
        self._recogniser_spec = recogniser
        self._recogniser: Recogniser | None = None
        self._aligner: Any = None
        self.versions = extractor_versions()

    # text only ------------------------------------------------------------------------------
    def text_sample(self, spec: ClipSpec) -> Sample:
        words = list(spec.words) if spec.words is not None else normalise_text(spec.text)
        if not words:
            raise FeatureError("no words: the transcript is empty after normalisation, and text-only extraction "
                               "has nothing else")
        window = text_window(words, self.text, self.profile)
        text, audio, vision, present = _arrays(window)
        return Sample(spec.id, spec.split, spec.label, text, audio, vision, present, window.n_tokens,
                      " ".join(w.text for w in window.words), spec.text, dropped_tokens=window.dropped_tokens,
                      emotion=spec.emotion)

    # media ----------------------------------------------------------------------------------
    def clip_key(self, spec: ClipSpec) -> str:
        media = Path(spec.media or "")
        stat = media.stat() if media.is_file() else None
        return digest({
            "v": EXTRACT_VERSION, "id": spec.id, "profile": self.profile.name, "versions": self.versions,
            "media": str(media.resolve()) if stat else str(media), "size": stat.st_size if stat else None,
            "mtime_ns": stat.st_mtime_ns if stat else None, "text": spec.text,
            "recogniser": None if spec.text else str(self._recogniser_spec), "language": spec.language,
        })

    def _clip_path(self, spec: ClipSpec) -> Path | None:
        if self.cache_dir is None:
            return None
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", spec.id)[:80]
        return self.cache_dir / "clips" / f"{safe}-{self.clip_key(spec)[:20]}.npz"

    def media_sample(self, spec: ClipSpec) -> Sample:
        path = self._clip_path(spec)
        if path is not None and path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    # the clip's acoustic frames: kept and needed only by a profile that normalises
                    # the voice per session (live-v4); one cached without them is extracted again
                    has_frames = "afeat_times" in z.files
                    if self.profile.voice_session and not has_frames:
                        raise KeyError("afeat_times")
                    afeat = Frames(z["afeat_times"], z["afeat_values"], z["afeat_present"]) if has_frames else None
                    span = (float(z["span"][0]), float(z["span"][1])) if has_frames else (0.0, 0.0)
                    return Sample(spec.id, spec.split, spec.label, z["text"], z["audio"], z["vision"],
                                  tuple(bool(p) for p in z["present"]), int(z["n_tokens"]), str(z["words"]),
                                  spec.text, cached=True, no_transcript=not spec.text,
                                  dropped_tokens=int(z["dropped"]), emotion=spec.emotion, afeat=afeat, span=span,
                                  session=spec.session)
            except (OSError, ValueError, KeyError, EOFError):
                pass  # damaged: extract again
        sample = self._extract_media(spec)
        if path is not None:
            # the acoustic frames (about 10 KB a second of audio) only where the profile needs them
            frames = ({"afeat_times": sample.afeat.times, "afeat_values": sample.afeat.values,
                       "afeat_present": sample.afeat.present, "span": np.asarray(sample.span)}
                      if self.profile.voice_session and sample.afeat is not None else {})
            atomic_savez(path, text=sample.text, audio=sample.audio, vision=sample.vision,
                         present=np.asarray(sample.present), n_tokens=sample.n_tokens, words=sample.words,
                         dropped=sample.dropped_tokens, **frames)
        return sample

    def _extract_media(self, spec: ClipSpec) -> Sample:
        from ..features.media import extract_media, probe_media

        if spec.media is None:
            raise FeatureError("no media file for this clip")
        info = probe_media(spec.media)
        if not (info.has_audio or info.has_video):
            raise FeatureError(f"{spec.media} has neither video nor audio")
        # the face expert only where the profile reads it (live-v3): the other profiles read 55 columns
        media = extract_media(spec.media, video=info.has_video, audio=info.has_audio,
                              face_expert_every=1 if self.profile.face_expert else 0)
        words = self._words(spec, media)
        ends = [info.duration, media.t0 + media.pcm.size / SAMPLE_RATE]
        if len(media.audio):
            ends.append(float(media.audio.times[-1]) + 0.01)
        if len(media.visual):
            ends.append(float(media.visual.times[-1]) + 1.0 / (info.fps or 30.0))
        if words:
            ends.append(max(w.end for w in words))
        starts = [0.0, media.t0]
        if len(media.visual):
            starts.append(float(media.visual.times[0]))
        t_start, t_end = min(starts), max(ends) + 1e-6
        window = align_window(words, media.audio, media.visual, t_start, t_end, self.text, self.profile)
        text, audio, vision, present = _arrays(window)
        return Sample(spec.id, spec.split, spec.label, text, audio, vision, present, window.n_tokens,
                      " ".join(w.text for w in window.words), spec.text, no_transcript=not spec.text,
                      dropped_tokens=window.dropped_tokens, emotion=spec.emotion, afeat=media.audio,
                      span=(t_start, t_end), session=spec.session)

    def _words(self, spec: ClipSpec, media: Any) -> list[Word]:
        if spec.language not in ("", "en"):
            return []  # the text model reads English: speech in another language is no text (EmoDB)
        if spec.text:
            if media.pcm.size == 0:
                # no sound to align to: spread the words evenly over the clip, flagged unaligned
                words = normalise_text(spec.text)
                step = (media.duration or NOMINAL_WORD_S * len(words)) / max(len(words), 1)
                return [Word(w, i * step, (i + 1) * step, 0.0) for i, w in enumerate(words)]
            if self._aligner is None:
                from ..features.forced_alignment import ForcedAligner

                self._aligner = ForcedAligner()
            return self._aligner.align(media.pcm, spec.text, t0=media.t0)
        if self._recogniser is None:
            self._recogniser = resolve_recogniser(self._recogniser_spec)
        if self._recogniser is None:
            raise FeatureError("no transcript, and no speech recogniser to take the words from: give the clip's "
                               "text in label.csv, or pass a recogniser (dmd extract --asr MODULE:FUNCTION)")
        if media.pcm.size == 0:
            return []
        return confident_words(list(self._recogniser(media.pcm, media.t0)))  # as the live worker gates them

    def sample(self, spec: ClipSpec) -> Sample:
        return self.media_sample(spec) if spec.media is not None else self.text_sample(spec)


def extract_one(extractor: Extractor, spec: ClipSpec) -> Sample | Failure:
    """The clip's sample, or its failure with the reason (a failed clip never stops a run)."""
    try:
        return extractor.sample(spec)
    except FeatureError as e:
        return Failure(spec.id, spec.split, str(e), spec.media)
    except Exception as e:  # noqa: BLE001  (a failed clip never stops the run)
        where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
        at = f" (at {Path(where.filename).name}:{where.lineno})" if where else ""
        return Failure(spec.id, spec.split, f"{type(e).__name__}: {e}{at}", spec.media)
