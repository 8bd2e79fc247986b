"""Timestamped feature frames: what an extractor hands out, what the afeat and vfeat streams carry,
and what the alignment reads back.

Audio (100 Hz) and face (the camera's rate) frames have the same shape on purpose: a time per
frame on the session clock, a feature vector, and a presence flag (voiced speech for audio, a face
found for video). The capture worker publishes them as they come, the inference worker reads a
window's span back, and dataset extraction keeps a whole clip's; the alignment treats all three
alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Frames:
    """A run of feature frames of one modality, in time order.

    times:   (n,) float64, seconds on the session clock (the extractor documents which instant
             of a frame it stamps)
    values:  (n, d) float32 features
    present: (n,) bool, whether the modality is really there in that frame (audio: voiced speech,
             visual: a face was found; a frame without a face holds zeros)
    """

    times: np.ndarray
    values: np.ndarray
    present: np.ndarray

    def __post_init__(self) -> None:
        times = np.asarray(self.times, dtype=np.float64).reshape(-1)
        values = np.asarray(self.values, dtype=np.float32)
        present = np.asarray(self.present, dtype=bool).reshape(-1)
        if values.ndim != 2 or values.shape[0] != times.shape[0] or present.shape[0] != times.shape[0]:
            raise ValueError(
                f"frames have {times.shape[0]} times, values of shape {values.shape} and "
                f"{present.shape[0]} presence flags: expected (n,), (n, d) and (n,)"
            )
        if times.size > 1 and np.any(np.diff(times) < 0):
            raise ValueError("frame times go backwards: sort the frames by time before building Frames")
        object.__setattr__(self, "times", times)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "present", present)

    @classmethod
    def empty(cls, dim: int) -> Frames:
        """No frames, `dim` features wide."""
        return cls(np.zeros(0), np.zeros((0, dim), np.float32), np.zeros(0, bool))

    @classmethod
    def concat(cls, parts: Sequence[Frames], dim: int | None = None) -> Frames:
        """The frames of several runs, one after the other (they must already be in time order)."""
        parts = [p for p in parts if len(p)]
        if not parts:
            if dim is None:
                raise ValueError("concatenating no frames needs the feature size: pass dim=")
            return cls.empty(dim)
        return cls(
            np.concatenate([p.times for p in parts]),
            np.concatenate([p.values for p in parts]),
            np.concatenate([p.present for p in parts]),
        )

    def __len__(self) -> int:
        return int(self.times.shape[0])

    @property
    def t_end(self) -> float:
        """The time of the last frame: how far the run carries data (a stream entry's id)."""
        if not len(self):
            raise ValueError("no frames: an empty run has no end")
        return float(self.times[-1])

    @property
    def dim(self) -> int:
        return int(self.values.shape[1])

    def between(self, t_start: float, t_end: float) -> Frames:
        """The frames with `t_start <= time < t_end`: what a window reads back from a stream."""
        i0, i1 = np.searchsorted(self.times, [t_start, t_end], side="left")
        return Frames(self.times[i0:i1], self.values[i0:i1], self.present[i0:i1])

    def shifted(self, dt: float) -> Frames:
        """The same frames with `dt` seconds added to every time."""
        return Frames(self.times + dt, self.values, self.present)
