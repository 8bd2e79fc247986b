"""DMD's objective for mixed corpora: sentiment and emotions, each sample with the labels and the
modalities it has.

    targets = Targets(sentiment, emotion, present)   # (B,) NaN: none; (B,) -1: none; (B, 3) bool
    terms = multitask_loss(model, out, targets, loss_cfg, emotion_weight=1.0)

Every term of `dmd_loss` is kept, and each counts only where it has something to learn from:

| term | counts for a sample where |
|------|---------------------------|
| task (L1) of the fused output and the shared head | it has a sentiment |
| task (L1) of a modality's homogeneous and heterogeneous heads | it has a sentiment and the modality |
| emotion (cross-entropy) of the fused output and the shared head | it has an emotion |
| emotion of a modality's heads | it has an emotion and the modality |
| reconstruction, cycle, orthogonality of a modality | it has the modality |
| margin (the shared features' ranking by sentiment) | it has a sentiment and the modality (per anchor) |
| graph distillation, per edge | it has both the teacher and the student modality |

A term is the mean over the samples that count (exactly zero, with zero gradient, when none does),
so with every label and modality present and no emotions it is `dmd_loss` term for term (a test
holds them equal). Absent modalities are fed as zeros, as live; they still pass through the
crossmodal attention of the present ones, but nothing is learnt from their own heads, their
reconstruction or their edges.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import GD_ORDER, MODALITIES, LossConfig
from ..network.dmd import DMD, SHORT
from ..network.graph_distill import EDGE_PAIRS, _distance, cosine_embedding_negative
from .losses import margin_loss, orthogonality_loss, weighted_total

_KEYS = ("l", "v", "a")  # official order of the per-modality terms
_MOD_OF = {SHORT[m]: m for m in MODALITIES}


@dataclass(frozen=True)
class Targets:
    """The labels and modalities of a batch: `sentiment` (B,) float, NaN where there is none;
    `emotion` (B,) long, an index into dmd_types.EMOTIONS or -1; `present` (B, 3) bool, modalities
    in MODALITIES order (text, audio, visual)."""

    sentiment: Tensor
    emotion: Tensor
    present: Tensor

    def has(self, modality: str) -> Tensor:
        return self.present[:, MODALITIES.index(modality)].bool()


def _masked_mean(per_sample: Tensor, mask: Tensor) -> Tensor:
    """Mean of `per_sample` (B,) over `mask`; zero (with a zero gradient) when the mask is empty."""
    mask = mask.to(per_sample.dtype)
    return (per_sample * mask).sum() / mask.sum().clamp_min(1.0)


def _l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    return _masked_mean((pred.reshape(-1) - torch.nan_to_num(target)).abs(), mask)


def _ce(logits: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    return _masked_mean(F.cross_entropy(logits, target.clamp_min(0), reduction="none"), mask)


def _mse(x: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """Per-sample MSE of (B, ...) tensors, averaged over the masked samples: with every sample in,
    it equals F.mse_loss (every sample has the same number of elements)."""
    return _masked_mean((x - y).pow(2).flatten(1).mean(1), mask)


def multitask_loss(model: DMD, out: dict[str, Tensor], targets: Targets, cfg: LossConfig,
                   emotion_weight: float = 1.0) -> dict[str, Tensor]:
    """Every term (see the module docstring) and their weighted sum ("total")."""
    dtype = out["output_logit"].dtype
    sentiment = targets.sentiment.reshape(-1).to(dtype)
    has_sentiment = ~torch.isnan(sentiment)
    emotion = targets.emotion.reshape(-1).long()
    has_emotion = emotion >= 0
    has = {k: targets.has(_MOD_OF[k]) for k in _KEYS}
    emotions_on = "emotion_logit" in out

    terms: dict[str, Tensor] = {}
    terms["task_fused"] = _l1(out["output_logit"], sentiment, has_sentiment)
    for k in _KEYS:
        terms[f"task_{k}_homo"] = _l1(out[f"logits_{k}_homo"], sentiment, has_sentiment & has[k])
    for k in _KEYS:
        terms[f"task_{k}_hetero"] = _l1(out[f"logits_{k}_hetero"], sentiment, has_sentiment & has[k])
    terms["task_c"] = _l1(out["logits_c"], sentiment, has_sentiment)
    task = sum(terms[t] for t in list(terms))
    emotion_task = out["output_logit"].sum() * 0.0
    if emotions_on:
        terms["emotion_fused"] = _ce(out["emotion_logit"], emotion, has_emotion)
        for k in _KEYS:
            terms[f"emotion_{k}_homo"] = _ce(out[f"emotion_{k}_homo"], emotion, has_emotion & has[k])
            terms[f"emotion_{k}_hetero"] = _ce(out[f"emotion_{k}_hetero"], emotion, has_emotion & has[k])
        terms["emotion_c"] = _ce(out["emotion_c"], emotion, has_emotion)
        emotion_task = sum(v for t, v in terms.items() if t.startswith("emotion_"))

    for k in _KEYS:
        terms[f"recon_{k}"] = _mse(out[f"recon_{k}"], out[f"origin_{k}"], has[k])
    for k in _KEYS:
        terms[f"cycle_{k}"] = _mse(out[f"s_{k}"].permute(1, 2, 0), out[f"s_{k}_r"], has[k])
    for k in _KEYS:
        s, c = out[f"s_{k}"][:, has[k]], out[f"c_{k}"][:, has[k]]  # (L, B', d)
        terms[f"ort_{k}"] = (orthogonality_loss(s, c, cfg.orthogonality_axis) if s.shape[1]
                             else out[f"s_{k}"].sum() * 0.0)
    # anchors interleaved per sample as in the official loop: l, v, a of sample 0, then sample 1, ...
    feats = torch.stack([out["c_l_sim"], out["c_v_sim"], out["c_a_sim"]], dim=1).flatten(0, 1)
    anchors = torch.stack([has_sentiment & has[k] for k in _KEYS], dim=1).flatten()
    labels = torch.nan_to_num(sentiment).reshape(-1, 1).repeat_interleave(3, dim=0)
    terms["margin"] = (margin_loss(labels[anchors], feats[anchors], cfg.margin_scale) if bool(anchors.any())
                       else feats.sum() * 0.0)

    gd_present = torch.stack([targets.has(m) for m in GD_ORDER])  # (3, B)
    edge_mask = torch.stack([gd_present[j] & gd_present[i] for j, i in EDGE_PAIRS]).to(dtype)  # (6, B)
    for branch, unit in (("homo", model.homo_gd), ("hetero", model.hetero_gd)):
        logits, reprs = model.gd_inputs(out, branch)
        for name, value in _gd_loss(unit, logits, reprs, out[f"edges_{branch}_raw"], edge_mask).items():
            terms[f"{branch}_gd_{name}"] = value

    terms["total"] = weighted_total(terms, task + emotion_weight * emotion_task, cfg)
    return terms


def _gd_loss(unit, logits: Tensor, reprs: Tensor, raw: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """`GraphDistillation.loss` with each edge counted only for the samples of `mask` (6, B): the
    edges are softmaxed over a sample's present edges only (an absent modality's scores would
    otherwise move the others' weights, and take gradient through them), and the batch means become
    means over those samples, so a full mask gives the official values."""
    cfg = unit.cfg
    scores = (raw * cfg.alpha).masked_fill(mask == 0, float("-inf"))
    any_edge = mask.sum(0, keepdim=True) > 0  # (1, B)
    edges = torch.where(any_edge, torch.softmax(torch.where(any_edge, scores, torch.zeros_like(scores)), dim=0),
                        torch.zeros_like(scores)) * mask
    prior = unit.prior.to(edges.dtype)
    count = mask.sum(1).clamp_min(1.0)  # (6,)
    edge_mean = (edges * mask).sum(1) / count
    reg = ((edge_mean - prior).pow(2) * (mask.sum(1) > 0)).sum() * cfg.regularizer
    weight = edges + prior.unsqueeze(1)
    students = [j for j, _ in EDGE_PAIRS]
    teachers = [i for _, i in EDGE_PAIRS]
    distance = _distance(logits[students], logits[teachers].detach(), cfg.metric)  # (6, B)
    loss_logit = cfg.w_logit * ((distance * weight * mask).sum(1) / count).sum()
    student_reprs, teacher_reprs = reprs[students], reprs[teachers].detach()
    if cfg.repr_loss == "cosine":
        cos = cosine_embedding_negative(student_reprs, teacher_reprs, -1)
        per_edge = ((cos * mask).sum(1) / count) * ((weight * mask).sum(1) / count)
    else:
        per_edge = (_distance(student_reprs, teacher_reprs, cfg.metric) * weight * mask).sum(1) / count
    return {"reg": reg, "logit": loss_logit, "repr": cfg.w_repr * per_edge.sum()}
