"""DMD's training objective, term by term as the official trainer composes it (`DMD.do_train`):

    total = sum of 8 L1 task losses (fused output, 3 homogeneous, 3 heterogeneous, shared)
          + 0.05 * (HomoGD logit + HomoGD regulariser)
          + 0.05 * (HeteroGD logit + HeteroGD representation + HeteroGD regulariser)
          + 0.1 * (cycle + reconstruction + 0.1 * (margin + orthogonality))

The weights come from `LossConfig`. `dmd_loss` returns every term, so a run can log them and
docs/FIDELITY.md can compare each one with the official code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import LossConfig
from ..network.dmd import DMD
from ..network.graph_distill import cosine_embedding_negative

_KEYS = ("l", "v", "a")  # official order of the per-modality terms


def margin_loss(labels: Tensor, feats: Tensor, margin_scale: float = 0.15) -> Tensor:
    """The official `HingeLoss`, vectorised: a margin ranking loss on cosine similarities.

    feats (N, F) with labels (N,). For anchor i, every j != i with the same label (positive) and
    every k with another label (negative) give max(0, m_ik - cos_ij + cos_ik), m_ik =
    margin_scale * |y_i - y_k|; an anchor's loss is the mean over its (j, k) pairs, and the loss
    is the mean over anchors that have both kinds. The official code loops over anchors in Python
    and materialises every (j, k) pair; here each anchor's sum over pairs comes from sorting its
    positive similarities once (O(N^2 log N) time, O(N^2) memory), which gives the same value.
    """
    n = feats.shape[0]
    norms = (feats.pow(2).sum(1) + 1e-8).sqrt().clamp_min(1e-8)
    cos = (feats @ feats.t()) / (norms.unsqueeze(1) * norms.unsqueeze(0))  # (N, N)
    labels = labels.reshape(-1)
    same = labels.unsqueeze(1) == labels.unsqueeze(0)
    not_self = ~torch.eye(n, dtype=torch.bool, device=feats.device)
    positive = same & not_self
    negative = ~same
    n_pos = positive.sum(1)
    n_neg = negative.sum(1)
    valid = (n_pos > 0) & (n_neg > 0)
    if not bool(valid.any()):
        return feats.sum() * 0.0
    # For anchor i: sum over positives j, negatives k of relu(a_k - b_j), a_k = m_ik + cos_ik,
    # b_j = cos_ij. With the b_j sorted, the positives below a_k are a prefix: count and sum it.
    b = cos.masked_fill(~positive, float("inf"))
    b_sorted, _ = b.sort(dim=1)
    finite = torch.isfinite(b_sorted)
    prefix = torch.cumsum(b_sorted.masked_fill(~finite, 0.0), dim=1)  # (N, N)
    a = margin_scale * (labels.unsqueeze(0) - labels.unsqueeze(1)).abs() + cos
    count = torch.searchsorted(b_sorted.detach().contiguous(), a.detach().contiguous(), right=False)
    count = torch.minimum(count, n_pos.unsqueeze(1))
    below = torch.where(count > 0, prefix.gather(1, (count - 1).clamp_min(0)), torch.zeros_like(a))
    pair_sum = ((count.to(a.dtype) * a - below) * negative).sum(1)
    per_anchor = pair_sum / (n_pos * n_neg).clamp_min(1).to(a.dtype)
    return (per_anchor * valid).sum() / valid.sum()


def margin_loss_reference(labels: Tensor, feats: Tensor, margin_scale: float = 0.15) -> Tensor:
    """A plain loop over anchors and pairs, written from the definition; tests compare with it."""
    n = feats.shape[0]
    labels = labels.reshape(-1)
    norms = (feats.pow(2).sum(1) + 1e-8).sqrt().clamp_min(1e-8)
    total, anchors = feats.sum() * 0.0, 0
    for i in range(n):
        pos = [j for j in range(n) if j != i and labels[j] == labels[i]]
        neg = [k for k in range(n) if labels[k] != labels[i]]
        if not pos or not neg:
            continue
        cos = [(feats[i] * feats[j]).sum() / (norms[i] * norms[j]) for j in range(n)]
        terms = [
            torch.relu(margin_scale * (labels[i] - labels[k]).abs() - cos[j] + cos[k])
            for j in pos for k in neg
        ]
        total = total + torch.stack(terms).mean()
        anchors += 1
    return total / max(anchors, 1)


def orthogonality_loss(s: Tensor, c: Tensor, axis: str = "batch") -> Tensor:
    """max(0, cos(s, c)) averaged, for (L, B, d) private and shared features.

    "batch" reproduces what the official `CosineEmbeddingLoss()(s, c, tensor([-1]))` call on 3-D
    tensors computed under PyTorch 1.9, the authors' version: the cosine is taken along dim 1, the
    batch axis, giving one value per (time step, channel). PyTorch 2 rejects the call. "feature"
    takes one cosine per (time step, sample) along the features, which is what the paper describes.
    """
    if axis == "batch":
        return cosine_embedding_negative(s, c, dim=1).mean()
    d = s.shape[-1]
    return cosine_embedding_negative(s.reshape(-1, d), c.reshape(-1, d), dim=1).mean()


def dmd_loss(model: DMD, out: dict[str, Tensor], labels: Tensor, cfg: LossConfig) -> dict[str, Tensor]:
    """Every term of the objective and their weighted sum ("total"). `out` is the model's forward
    output with `distill=True`; labels (B,) or (B, 1)."""
    labels = labels.reshape(-1, 1).to(out["output_logit"].dtype)
    terms: dict[str, Tensor] = {}
    terms["task_fused"] = F.l1_loss(out["output_logit"], labels)
    for k in _KEYS:
        terms[f"task_{k}_homo"] = F.l1_loss(out[f"logits_{k}_homo"], labels)
    for k in _KEYS:
        terms[f"task_{k}_hetero"] = F.l1_loss(out[f"logits_{k}_hetero"], labels)
    terms["task_c"] = F.l1_loss(out["logits_c"], labels)
    task = sum(terms[t] for t in list(terms))

    for k in _KEYS:
        terms[f"recon_{k}"] = F.mse_loss(out[f"recon_{k}"], out[f"origin_{k}"])
    for k in _KEYS:
        terms[f"cycle_{k}"] = F.mse_loss(out[f"s_{k}"].permute(1, 2, 0), out[f"s_{k}_r"])
    for k in _KEYS:
        terms[f"ort_{k}"] = orthogonality_loss(out[f"s_{k}"], out[f"c_{k}"], cfg.orthogonality_axis)
    # anchors interleaved per sample as in the official loop: l, v, a of sample 0, then sample 1, ...
    feats = torch.stack([out["c_l_sim"], out["c_v_sim"], out["c_a_sim"]], dim=1).flatten(0, 1)
    terms["margin"] = margin_loss(labels.repeat_interleave(3, dim=0), feats, cfg.margin_scale)

    for branch, unit in (("homo", model.homo_gd), ("hetero", model.hetero_gd)):
        logits, reprs = model.gd_inputs(out, branch)
        parts = unit.loss(logits, reprs, out[f"edges_{branch}"])
        for name, value in parts.items():
            terms[f"{branch}_gd_{name}"] = value

    terms["total"] = weighted_total(terms, task, cfg)
    return terms


def weighted_total(terms: dict[str, Tensor], task: Tensor, cfg: LossConfig) -> Tensor:
    """The official composition of the terms around the task losses `task` (module docstring)."""
    recon = terms["recon_l"] + terms["recon_v"] + terms["recon_a"]
    cycle = terms["cycle_l"] + terms["cycle_v"] + terms["cycle_a"]
    ort = terms["ort_l"] + terms["ort_v"] + terms["ort_a"]
    homo = terms["homo_gd_logit"] + terms["homo_gd_reg"]
    if cfg.homo_repr_in_loss:
        homo = homo + terms["homo_gd_repr"]
    hetero = terms["hetero_gd_logit"] + terms["hetero_gd_repr"] + terms["hetero_gd_reg"]
    return (
        task
        + cfg.gd_weight * (homo + hetero)
        + cfg.decoupling_weight * (cycle + recon + cfg.margin_ort_weight * (terms["margin"] + ort))
    )
