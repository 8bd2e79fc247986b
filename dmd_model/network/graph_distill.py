"""Graph distillation units (GD-Units): HomoGD on the modality-irrelevant features, HeteroGD on the
modality-exclusive ones.

Each unit is a small dynamic graph over the three modalities. For every ordered pair (teacher i ->
student j) it computes an edge weight from both modalities' logits and representations; the six
directed edges of a sample are normalised together by a softmax at temperature `alpha` (1/8). The
distillation loss makes each student imitate each (detached) teacher, weighted by edge + prior.

Edge order is the official one: for student j in (0, 1, 2), for teacher i != j, with modalities in
`GD_ORDER` = (text, visual, audio): V->L, A->L, L->V, A->V, L->A, V->A.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import GD_ORDER, MODALITIES, GraphDistillConfig

# (student, teacher) per edge, in GD_ORDER indices
EDGE_PAIRS: tuple[tuple[int, int], ...] = tuple((j, i) for j in range(3) for i in range(3) if i != j)
_STUDENTS = [j for j, _ in EDGE_PAIRS]
_TEACHERS = [i for _, i in EDGE_PAIRS]


def cosine_embedding_negative(x: Tensor, y: Tensor, dim: int) -> Tensor:
    """`CosineEmbeddingLoss(target=-1)` before reduction: max(0, cos(x, y)) along `dim`.

    Computed as PyTorch does it, with 1e-12 added to each squared norm.
    """
    dot = (x * y).sum(dim)
    denom = (((x * x).sum(dim) + 1e-12) * ((y * y).sum(dim) + 1e-12)).sqrt()
    return (dot / denom).clamp_min(0)


def _distance(student: Tensor, teacher: Tensor, metric: str) -> Tensor:
    """Per-sample distance along the last axis (official `distance_metric` before weighting)."""
    if metric == "l1":
        return (student - teacher).abs().sum(-1)
    if metric == "l2":
        return (student - teacher).pow(2).sum(-1)
    if metric == "cosine":
        return 1 - F.cosine_similarity(student, teacher, dim=-1)
    raise ValueError(f"unknown distillation metric {metric!r}: use l1, l2 or cosine")


class GraphDistillation(nn.Module):
    """One GD-Unit (official `DistillationKernel`)."""

    def __init__(self, cfg: GraphDistillConfig, logit_dim: int, repr_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.W_logit = nn.Linear(logit_dim, cfg.gd_size)
        self.W_repr = nn.Linear(repr_dim, cfg.gd_size)
        self.W_edge = nn.Linear(cfg.gd_size * 4, 1)
        # in float64 then rounded, as the official code softmaxes its prior in NumPy float64
        prior = torch.softmax(torch.tensor(cfg.prior, dtype=torch.float64) / cfg.prior_temperature, 0).float()
        # not in the state dict, as in the official code: it follows from the configuration
        self.register_buffer("prior", prior, persistent=False)

    def forward(self, logits: Tensor, reprs: Tensor) -> tuple[Tensor, Tensor]:
        """logits (3, B, n_logits), reprs (3, B, D), modalities in GD_ORDER.

        Returns (edges, raw): edges (6, B), softmax over the six edges of each sample; raw (6, B),
        the edge scores before the softmax.
        """
        z = torch.cat([self.W_logit(logits), self.W_repr(reprs)], dim=-1)  # (3, B, 2g)
        # W_edge on [z_student, z_teacher] splits into a student part and a teacher part
        g2 = z.shape[-1]
        w = self.W_edge.weight[0]
        student_score = z @ w[:g2]  # (3, B)
        teacher_score = z @ w[g2:]
        raw = student_score[_STUDENTS] + teacher_score[_TEACHERS] + self.W_edge.bias  # (6, B)
        edges = torch.softmax(raw * self.cfg.alpha, dim=0)
        return edges, raw

    def loss(self, logits: Tensor, reprs: Tensor, edges: Tensor) -> dict[str, Tensor]:
        """Regulariser, logit and representation distillation (official `distillation_loss`).

        Teachers are detached: knowledge flows from teacher to student only. The official loop reads
        the teacher as `from_idx[i]` but skips the pair when `i == j`, using the enumerate position;
        with all three modalities as teachers (`from_idx = [0, 1, 2]`, the only setting the official
        code uses) position and index coincide, so this is the same computation.
        """
        cfg = self.cfg
        prior = self.prior.to(edges.dtype)
        reg = (edges.mean(1) - prior).pow(2).sum() * cfg.regularizer
        weight = edges + prior.unsqueeze(1)  # (6, B)
        student_logits, teacher_logits = logits[_STUDENTS], logits[_TEACHERS].detach()
        loss_logit = cfg.w_logit * (_distance(student_logits, teacher_logits, cfg.metric) * weight).mean(1).sum()
        student_reprs, teacher_reprs = reprs[_STUDENTS], reprs[_TEACHERS].detach()
        if cfg.repr_loss == "cosine":
            # official min_cosine: the loss is already a batch mean, then scaled by the mean weight
            per_edge = cosine_embedding_negative(student_reprs, teacher_reprs, -1).mean(1) * weight.mean(1)
        else:
            per_edge = (_distance(student_reprs, teacher_reprs, cfg.metric) * weight).mean(1)
        loss_repr = cfg.w_repr * per_edge.sum()
        return {"reg": reg, "logit": loss_logit, "repr": loss_repr}


def edge_matrix(edges: Tensor) -> Tensor:
    """Per-sample 3x3 matrices M[b, teacher, student] of the softmaxed edges, modalities in the
    order of `MODALITIES` (text, audio, visual); the diagonal is zero. edges: (6, B)."""
    B = edges.shape[1]
    display = [MODALITIES.index(m) for m in GD_ORDER]  # display row of each GD index
    m = edges.new_zeros(B, 3, 3)
    for x, (j, i) in enumerate(EDGE_PAIRS):
        m[:, display[i], display[j]] = edges[x]
    return m
