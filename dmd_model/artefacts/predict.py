"""Inference on ready model inputs: what a serving process needs from a checkpoint.

`Predictor` wraps a checkpoint for batched inference: it takes model inputs as arrays (a batch of
aligned windows), runs DMD in `torch.inference_mode` on the chosen device (bf16 autocast on CUDA),
and returns per-sample results with plain Python numbers: the fused sentiment, each modality's
homogeneous and heterogeneous predictions, and both GD-Units' 3x3 edge matrices.

A checkpoint with an emotion head (`model.emotion_classes` > 0) also gives emotion probabilities in
`dmd_types.EMOTIONS` order: the fused head's softmax, and per modality the mean of its homogeneous
and heterogeneous heads' softmaxes (the two heads see the same modality from the two spaces, and
neither is the modality's "own" prediction, as the sentiment's `homo` / `hetero` pair shows). A head
of E < 7 classes predicts the first E of `EMOTIONS` (IEMOCAP's four are those); the others get 0.
Softmaxes are taken in float64, so each vector sums to 1 to within 1e-12. Without an emotion head
they are None.

Modalities the checkpoint was not trained with are fed as zeros, as its training data had them
(see `Predictor.modalities`). Other inputs go in as the alignment made them, present or not, since
dataset extraction stores them the same way; presence is reported, not imposed.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dmd_types import EMOTIONS

from ..config import MODALITIES
from ..network.dmd import SHORT
from .checkpoint import Checkpoint, load_checkpoint

LABELS = ("negative", "neutral", "positive")


def sentiment_label(value: float, neutral_band: float = 0.5) -> str:
    """negative / neutral / positive for a sentiment in [-3, 3]; |value| < neutral_band is neutral."""
    if value <= -neutral_band:
        return "negative"
    if value >= neutral_band:
        return "positive"
    return "neutral"


@dataclass
class Prediction:
    """One sample's result, in plain Python numbers (finite: non-finite outputs raise)."""

    sentiment: float  # fused output, clipped to [-3, 3]
    raw: float  # fused output before clipping
    homo: dict[str, float] = field(default_factory=dict)  # per modality, homogeneous head
    hetero: dict[str, float] = field(default_factory=dict)  # per modality, heterogeneous head
    shared: float = 0.0  # the irrelevant-space (shared) head
    edges_homo: list[list[float]] = field(default_factory=list)  # [teacher][student], MODALITIES order
    edges_hetero: list[list[float]] = field(default_factory=list)
    # emotion probabilities in dmd_types.EMOTIONS order; None without an emotion head
    emotions: list[float] | None = None  # fused: softmax of `emotion_logit`
    modality_emotions: dict[str, list[float]] | None = None  # per modality: mean of homo and hetero softmaxes


class Predictor:
    """Batched DMD inference from a checkpoint (a path or a loaded `Checkpoint`)."""

    def __init__(self, checkpoint: str | Path | Checkpoint, device: str = "auto", bf16: bool | None = None,
                 threads: int | None = None) -> None:
        self.checkpoint = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.bf16 = (self.device.type == "cuda") if bf16 is None else bf16
        if threads is not None:
            torch.set_num_threads(threads)
        self.model = self.checkpoint.build_model(self.device)
        cfg = self.checkpoint.config.model
        self.seq_lens = dict(zip(MODALITIES, cfg.seq_lens))
        self.feature_dims = dict(zip(MODALITIES, cfg.feature_dims))
        self.modalities = tuple(self.checkpoint.modalities)
        self.name = self.checkpoint.config.name
        self.emotion_classes = cfg.emotion_classes
        if self.emotion_classes > len(EMOTIONS):
            raise ValueError(f"the checkpoint {self.name!r} has {self.emotion_classes} emotion classes, more than the "
                             f"{len(EMOTIONS)} of dmd_types.EMOTIONS: its classes have no names to publish")
        self.sha256 = self.checkpoint.sha256 or ""

    def input_shape(self, modality: str) -> tuple[int, int]:
        return self.seq_lens[modality], self.feature_dims[modality]

    def predict(self, text: np.ndarray, audio: np.ndarray, visual: np.ndarray,
                present: np.ndarray | None = None) -> list[Prediction]:
        """text (B, Lt, Dt), audio (B, La, Da), visual (B, Lv, Dv) float arrays. Modalities the
        checkpoint was not trained with are zeroed. `present` (B, 3) bool in (text, audio, visual)
        order, when given, also zeroes the modalities marked absent (for checkpoints trained that
        way; the default keeps the aligned features as extraction stores them)."""
        arrays = {"text": text, "audio": audio, "visual": visual}
        batch = len(text)
        for m, arr in arrays.items():
            want = self.input_shape(m)
            if arr.ndim != 3 or tuple(arr.shape[1:]) != want or len(arr) != batch:
                raise ValueError(f"{m} input has shape {tuple(arr.shape)}, expected ({batch}, {want[0]}, {want[1]}): "
                                 f"the checkpoint {self.name!r} expects its feature profile "
                                 f"({self.checkpoint.profile.get('name', '?')})")
        tensors = {}
        for i, m in enumerate(MODALITIES):
            x = torch.as_tensor(np.asarray(arrays[m], dtype=np.float32))
            keep = torch.ones(batch, dtype=torch.bool)
            if m not in self.modalities:
                keep[:] = False
            elif present is not None:
                keep &= torch.as_tensor(np.asarray(present)[:, i], dtype=torch.bool)
            x = x * keep.view(-1, 1, 1)
            x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
            tensors[m] = x.to(self.device, non_blocking=True)
        with torch.inference_mode():
            ctx = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()
            with ctx:
                out = self.model(tensors["text"], tensors["audio"], tensors["visual"], distill=True, check=False)
        return self._unpack(out, batch)

    @staticmethod
    def _unpack(out: dict[str, torch.Tensor], batch: int) -> list[Prediction]:
        def col(key: str) -> list[float]:
            return out[key].float().view(-1).cpu().tolist()

        fused = col("output_logit")
        shared = col("logits_c")
        homo = {m: col(f"logits_{SHORT[m]}_homo") for m in MODALITIES}
        hetero = {m: col(f"logits_{SHORT[m]}_hetero") for m in MODALITIES}
        e_homo = out["edges_homo_matrix"].float().cpu().tolist()
        e_hetero = out["edges_hetero_matrix"].float().cpu().tolist()
        fused_emotions, modality_emotions = _emotion_probabilities(out)
        results = []
        for b in range(batch):
            values = [fused[b], shared[b], *(homo[m][b] for m in MODALITIES), *(hetero[m][b] for m in MODALITIES)]
            if not all(math.isfinite(v) for v in values):
                raise FloatingPointError(f"the model produced a non-finite output for sample {b}: {values}")
            emotions = per_modality = None
            if fused_emotions is not None and modality_emotions is not None:
                emotions = fused_emotions[b]
                per_modality = {m: modality_emotions[m][b] for m in MODALITIES}
                if not all(math.isfinite(p) for vector in (emotions, *per_modality.values()) for p in vector):
                    raise FloatingPointError(f"the model produced non-finite emotion logits for sample {b}")
            results.append(Prediction(
                sentiment=max(-3.0, min(3.0, fused[b])), raw=fused[b], shared=shared[b],
                homo={m: homo[m][b] for m in MODALITIES}, hetero={m: hetero[m][b] for m in MODALITIES},
                edges_homo=e_homo[b], edges_hetero=e_hetero[b], emotions=emotions, modality_emotions=per_modality,
            ))
        return results


def _emotion_probabilities(out: dict[str, torch.Tensor]
                           ) -> tuple[list[list[float]] | None, dict[str, list[list[float]]] | None]:
    """Per sample, the fused emotion probabilities and each modality's, padded to `EMOTIONS`; (None,
    None) without an emotion head. float64: the vectors sum to 1 to rounding, not to bf16 precision."""
    if "emotion_logit" not in out:
        return None, None

    def softmax(key: str) -> torch.Tensor:
        probabilities = torch.softmax(out[key].detach().to("cpu", torch.float64), dim=-1)
        return F.pad(probabilities, (0, len(EMOTIONS) - probabilities.shape[-1]))

    fused = softmax("emotion_logit").tolist()
    per_modality = {m: ((softmax(f"emotion_{SHORT[m]}_homo") + softmax(f"emotion_{SHORT[m]}_hetero")) / 2).tolist()
                    for m in MODALITIES}
    return fused, per_modality

