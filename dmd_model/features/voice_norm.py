"""Per-session normalisation of the voice: a running statistic of the session's voiced frames, so
that a speaker's habitual pitch and loudness are not read as emotion (profiles with `voice_session`,
live-v4). The one code for dataset extraction and the inference worker.

The statistic is the mean and spread, per eGeMAPS descriptor, of every voiced acoustic frame of the
session so far (in the profile's standardised units: `Profile.standardise_audio`), shrunk towards
mean 0 and spread 1 (the profile's own standardisation) by `Profile.voice_prior_frames` frames'
worth, so that the first seconds of a session are barely moved and a long one is normalised by its
own voice. Each voiced frame is z-scored with it before the frames are averaged into the window's
time slots (`voice_positions`); unvoiced frames and silence are left as they are, so a pause looks
the same whoever the speaker, and positions without frames (padding) stay zero.

- Live (`workers/infer`): one `SessionVoice` per session in the worker; each window adds the voiced
  frames it holds that no earlier window of the session added (`after` = the last frame counted),
  then its voice positions are computed with the statistic so far, its own frames included.
- Offline (`dmd extract`): a session is a speaker's clips (label.csv's `speaker`, else `video_id`) in a
  seeded random order (`session_order`), each clip adding all its voiced frames, then its positions
  computed the same way. Clips are extracted in parallel and in any order, so a sample keeps its
  clip's acoustic frames and span, and the sessions are replayed once all are in (`normalise_sessions`).

Why frames: a frame is counted once whatever the windows' overlap (a live frame is in about six 3 s
windows at a 0.5 s hop), and only voiced frames, so silence between utterances moves nothing. Why
at all: bench/voice_norm_dmd.py and bench/voice_baseline.py (BENCHMARKS.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from dmd_types import Frames

from .alignment import voice_positions
from .profile import AUDIO_NAMES, Profile

DIM = len(AUDIO_NAMES)
MIN_SPREAD = 0.05  # in the profile's units: a descriptor that barely moves is not blown up


@dataclass(frozen=True)
class VoiceMoments:
    """Voiced frames counted: how many, and per descriptor their sum and sum of squares (float64,
    standardised units); `until`: the time of the last frame looked at (-inf: none)."""

    n: float = 0.0
    total: np.ndarray = field(default_factory=lambda: np.zeros(DIM))
    squares: np.ndarray = field(default_factory=lambda: np.zeros(DIM))
    until: float = float("-inf")

    def as_array(self) -> np.ndarray:
        """(1 + 2 * 25,) float64: n, sums, sums of squares (what a cached sample stores)."""
        return np.concatenate([[self.n], self.total, self.squares])

    @classmethod
    def from_array(cls, values: np.ndarray) -> VoiceMoments:
        values = np.asarray(values, np.float64)
        if values.shape != (1 + 2 * DIM,):
            raise ValueError(f"voice moments are {1 + 2 * DIM} numbers, got shape {values.shape}")
        return cls(float(values[0]), values[1:1 + DIM].copy(), values[1 + DIM:].copy())


def voiced_moments(audio: Frames, profile: Profile, after: float = float("-inf"),
                   before: float = float("inf")) -> VoiceMoments:
    """The moments of the voiced frames of `audio` with after < time < before (standardised)."""
    keep = (audio.times > after) & (audio.times < before)
    times = audio.times[keep]
    until = float(times.max()) if times.size else after
    voiced = audio.values[keep & audio.present]
    if voiced.size == 0:
        return VoiceMoments(until=until)
    x = profile.standardise_audio(voiced).astype(np.float64)
    return VoiceMoments(float(len(x)), x.sum(0), (x * x).sum(0), until)


class SessionVoice:
    """The running statistic of one session (see the module docstring)."""

    def __init__(self, prior_frames: float) -> None:
        if not prior_frames >= 0:
            raise ValueError(f"prior_frames must be >= 0, got {prior_frames!r}")
        self.prior = float(prior_frames)
        self.n = 0.0
        self.total = np.zeros(DIM)
        self.squares = np.zeros(DIM)
        self.until = float("-inf")

    def add(self, moments: VoiceMoments) -> None:
        self.n += moments.n
        self.total = self.total + moments.total
        self.squares = self.squares + moments.squares
        self.until = max(self.until, moments.until)

    def statistic(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, spread) per descriptor, shrunk towards (0, 1) by the prior."""
        weight = self.n + self.prior
        if weight <= 0:
            return np.zeros(DIM), np.ones(DIM)
        mean = self.total / weight
        second = (self.squares + self.prior) / weight  # the prior's second moment: mean 0, spread 1
        spread = np.sqrt(np.maximum(second - mean * mean, MIN_SPREAD ** 2))
        return mean, spread

    def normalise_frames(self, audio: Frames, profile: Profile) -> Frames:
        """The frames with each voiced one z-scored by the statistic, given back in openSMILE's units
        (so that the alignment's standardisation yields the z-score); unvoiced frames unchanged."""
        mean, spread = self.statistic()
        values = audio.values.astype(np.float64)
        voiced = audio.present
        p_mean, p_std = np.asarray(profile.audio_mean), np.asarray(profile.audio_std)
        z = (values[voiced] - p_mean) / p_std
        values[voiced] = (z - mean) / spread * p_std + p_mean
        return Frames(audio.times, values.astype(np.float32), audio.present)

    def positions(self, audio: Frames, t_start: float, t_end: float, profile: Profile) -> np.ndarray:
        """The window's (L, 25) voice positions from its frames normalised by the statistic so far."""
        return voice_positions(self.normalise_frames(audio, profile), t_start, t_end, profile)


def session_order(ids: Sequence[str], session: str) -> list[int]:
    """The order in which a session's clips are replayed offline: a random order seeded by the
    session's name (the same on every run and machine), so a corpus sorted by emotion does not give
    each session its calm clips first."""
    seed = int.from_bytes(hashlib.sha256(session.encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    ordered = sorted(range(len(ids)), key=lambda i: ids[i])
    return [ordered[i] for i in rng.permutation(len(ordered))]


def normalise_sessions(frames: Sequence[Frames], spans: Sequence[tuple[float, float]], sessions: Sequence[str],
                       ids: Sequence[str], profile: Profile) -> np.ndarray:
    """Offline: N clips' acoustic frames, spans (t_start, t_end), sessions and ids -> their (N, L, 25)
    voice positions, each clip's as its session would give it live (see the module docstring)."""
    out = np.zeros((len(frames), profile.seq_len, len(AUDIO_NAMES)), np.float32)
    by_session: dict[str, list[int]] = {}
    for i, name in enumerate(sessions):
        by_session.setdefault(str(name), []).append(i)
    for name, rows in sorted(by_session.items()):
        voice = SessionVoice(profile.voice_prior_frames)
        for k in session_order([ids[r] for r in rows], name):
            r = rows[k]
            t_start, t_end = spans[r]
            voice.add(voiced_moments(frames[r], profile, after=t_start - 1e-9, before=t_end))
            out[r] = voice.positions(frames[r], t_start, t_end, profile)
    return out
