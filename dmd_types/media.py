"""Timed media: a run of PCM samples and a video frame, on the session clock."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16_000  # every PCM chunk of the project: 16 kHz, mono, int16


@dataclass(frozen=True, eq=False)
class PcmChunk:
    """16 kHz mono int16 samples, the first at session time `t0` (seconds). What a file decoder, a
    microphone and a WebRTC peer yield, what the audio stream carries and what the recognisers read."""

    t0: float
    pcm: np.ndarray

    @property
    def samples(self) -> int:
        return len(self.pcm)

    @property
    def t_end(self) -> float:
        """Session time just after the last sample."""
        return self.t0 + self.samples / SAMPLE_RATE


@dataclass(frozen=True, eq=False)
class VideoFrame:
    """One picture: its session time `t` (seconds) and RGB pixels (height, width, 3) uint8."""

    t: float
    rgb: np.ndarray
