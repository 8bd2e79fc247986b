"""The live feature profile: one way to compute DMD's inputs, for training data and live streams.

    from dmd_model.features import PROFILE, AudioFeatureStream, FaceTracker, Word, align_window

    audio = AudioFeatureStream(sample_rate=16000, t0=0.0)      # openSMILE eGeMAPSv02 LLDs, 100 Hz
    face = FaceFeatureStream()                                # blendshapes + head pose + face expert
    ...feed chunks and frames as they come, take what is ready, finish at the end...
    window = align_window(words, audio_frames, face_frames, t_start, t_end)
    window.text, window.audio, window.visual                  # (50, 384), (50, 25), (50, 55)

| modality | extractor                                           | per frame |
|----------|-----------------------------------------------------|-----------|
| audio    | openSMILE eGeMAPSv02 low-level descriptors, 16 kHz  | 25        |
| visual   | MediaPipe Face Landmarker: 52 blendshapes + yaw, pitch, roll | 55 |
|          | + the face expert (fer's mini-Xception, FER2013): 7 emotion probabilities (live-v3) | 7 |
| text     | all-MiniLM-L6-v2 token embeddings (frozen)          | 384       |

Face frames always carry 62 values (the expert's 7 are zeros where it was not run); profiles before
live-v3 read the first 55. live-v4 normalises the voice per session (`SessionVoice`, `voice_norm`):
the same running statistic of the session's voiced frames offline and live.

Offline, `extract_media(path)` gives a whole file's frames and `align_transcript` its words' times;
the same `align_window` over the clip's span makes the training sample. `PROFILE.describe()` is
what a checkpoint records; `check_profile` refuses one this code cannot serve.

The feature libraries (opensmile, mediapipe, av, transformers, pocketsphinx) are imported only
when an extractor is built, so `PROFILE` and the dataclasses work without them.
"""

from __future__ import annotations

from dmd_types import Frames, PcmChunk, VideoFrame, Word, normalise_text, normalise_word, normalise_words

from .alignment import AlignedWindow, align_window, select_words, stack_windows
from .audio import AudioFeatureStream, Resampler, extract_audio, f0_hz
from .errors import FeatureError
from .forced_alignment import ForcedAligner, align_transcript
from .media import (
    MediaFeatures,
    MediaInfo,
    decode_media,
    extract_media,
    probe_media,
    read_audio,
)
from .profile import (
    AUDIO_NAMES,
    FACE_EXPERT_NAMES,
    FACE_FRAME_NAMES,
    LIVE_V1,
    LIVE_V1_BERT,
    LIVE_V2,
    LIVE_V3,
    LIVE_V4,
    PROFILE,
    VISUAL_NAMES,
    Profile,
    check_profile,
    get_profile,
    voiced_mask,
)
from .text import TextEncoder, TokenEmbeddings, load_text_encoder
from .visual import FaceFeatureStream, FaceTracker, head_pose
from .voice_norm import SessionVoice, VoiceMoments, normalise_sessions, voiced_moments

__all__ = [
    "AUDIO_NAMES",
    "FACE_EXPERT_NAMES",
    "FACE_FRAME_NAMES",
    "LIVE_V1",
    "LIVE_V1_BERT",
    "LIVE_V2",
    "LIVE_V3",
    "LIVE_V4",
    "PROFILE",
    "VISUAL_NAMES",
    "AlignedWindow",
    "AudioFeatureStream",
    "FaceFeatureStream",
    "FaceTracker",
    "FeatureError",
    "ForcedAligner",
    "Frames",
    "MediaFeatures",
    "MediaInfo",
    "PcmChunk",
    "Profile",
    "Resampler",
    "SessionVoice",
    "TextEncoder",
    "TokenEmbeddings",
    "VideoFrame",
    "VoiceMoments",
    "Word",
    "align_transcript",
    "align_window",
    "check_profile",
    "decode_media",
    "extract_audio",
    "extract_media",
    "f0_hz",
    "get_profile",
    "head_pose",
    "load_text_encoder",
    "normalise_sessions",
    "normalise_text",
    "normalise_word",
    "normalise_words",
    "probe_media",
    "read_audio",
    "select_words",
    "stack_windows",
    "voiced_mask",
    "voiced_moments",
]
