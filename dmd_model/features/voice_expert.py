"""The voice expert: the seven emotions read from a window's acoustic frames by a small linear model,
pooled with DMD's emotions as the face expert's are (workers/infer/fusion.py).

Why: measured on unseen speakers, a classifier on per-session normalised statistics of the voiced
eGeMAPS frames reads the voice as well as DMD trained on the same corpora, or better (RAVDESS, 10
actor folds: 0.57 UAR against 0.48-0.50; EmoDB test speakers 0.74 against 0.57; BENCHMARKS.md, "A
voice expert from the live frames"), and costs a few hundred multiplications a window.

The input (`voice_vector`): over the window's voiced frames, each voiced frame z-scored by the
session's running statistic (`voice_norm.SessionVoice`, the statistic of live-v4), each of the 25
descriptors' mean, spread and 10th, 50th and 90th percentiles, and the share of voiced frames: 126
values. Fewer than `MIN_VOICED` voiced frames: no vector (the expert does not speak).

The model (`models/voice_expert.npz`, made by `bench/voice_expert.py --save`): a standardisation
(mean, scale) and a multinomial logistic regression (7 x 126 and 7), trained on the RAVDESS and
EmoDB train speakers of `dmd convert` (research and non-commercial terms: CC BY-NC-SA 4.0 and
EmoDB's; see NOTICE), with its test accuracy and UAR on their test speakers, which weigh it in the pool.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dmd_types import EMOTIONS, Frames

from .errors import FeatureError
from .profile import Profile
from .voice_norm import SessionVoice

MODEL_FILE = Path(__file__).resolve().parent / "models" / "voice_expert.npz"
MIN_VOICED = 30  # 0.3 s of voiced speech: less is not read
DIM = 25 * 5 + 1


def voice_vector(frames: Frames, t_start: float, t_end: float, voice: SessionVoice, profile: Profile
                 ) -> np.ndarray | None:
    """The expert's 126 inputs for [t_start, t_end) (see the module docstring), None with fewer than
    `MIN_VOICED` voiced frames. `voice` is the session's statistic, its frames up to t_end added."""
    window = frames.between(float(t_start), float(t_end))
    if int(window.present.sum()) < MIN_VOICED:
        return None
    return voice_statistics(voice.normalise_frames(window, profile), profile)


def voice_statistics(frames: Frames, profile: Profile) -> np.ndarray:
    """(126,): over the voiced frames (in the profile's standardised units), each descriptor's mean,
    spread and 10th, 50th and 90th percentiles, then the share of voiced frames."""
    z = profile.standardise_audio(frames.values[frames.present]).astype(np.float64)
    stats = [z.mean(0), z.std(0), *np.percentile(z, [10, 50, 90], axis=0)]
    return np.concatenate([*stats, [float(frames.present.mean())]])


@dataclass(frozen=True)
class VoiceExpert:
    """A standardisation and a multinomial logistic regression over `voice_vector`'s 126 values."""

    mean: np.ndarray  # (126,)
    scale: np.ndarray  # (126,)
    coef: np.ndarray  # (7, 126), rows in EMOTIONS order
    intercept: np.ndarray  # (7,)
    meta: dict  # how it was trained and its test figures (accuracy, uar)

    def probabilities(self, vector: np.ndarray) -> tuple[float, ...]:
        """The seven probabilities (EMOTIONS order, summing to 1) for one vector."""
        x = (np.asarray(vector, np.float64) - self.mean) / self.scale
        logits = self.coef @ x + self.intercept
        logits -= logits.max()
        p = np.exp(logits)
        p /= p.sum()
        return tuple(float(v) for v in p)

    @property
    def accuracy(self) -> float:
        """Its accuracy on its test speakers: its weight in the pool."""
        return float(self.meta["test"]["accuracy"])

    def save(self, path: Path) -> None:
        np.savez(path, mean=self.mean, scale=self.scale, coef=self.coef, intercept=self.intercept,
                 meta=np.asarray(json.dumps(self.meta)))

    @classmethod
    def load(cls, path: Path = MODEL_FILE) -> VoiceExpert:
        try:
            with np.load(path, allow_pickle=False) as z:
                expert = cls(z["mean"], z["scale"], z["coef"], z["intercept"], json.loads(str(z["meta"])))
        except (OSError, KeyError, ValueError) as exc:
            raise FeatureError(f"the voice expert's weights {path} cannot be read ({exc}): reinstall live-dmd, or "
                               "make them with `python bench/voice_expert.py DATASET --save`") from None
        if expert.coef.shape != (len(EMOTIONS), DIM) or expert.mean.shape != (DIM,):
            raise FeatureError(f"the voice expert's weights {path} have shape {expert.coef.shape}, expected "
                               f"{(len(EMOTIONS), DIM)}")
        return expert


@functools.lru_cache(maxsize=1)
def load_voice_expert() -> VoiceExpert:
    """The carried expert, loaded once per process."""
    return VoiceExpert.load()
