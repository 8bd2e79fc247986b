"""The mixed-corpora objective (dmd_model.training.multitask): with every label and modality present it
is the official objective term for term; an absent label or modality contributes exactly zero gradient."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from dmd_model.config import LossConfig, ModelConfig
from dmd_model.network.dmd import DMD
from dmd_model.training.losses import dmd_loss
from dmd_model.training.multitask import Targets, multitask_loss

CFG = ModelConfig(feature_dims=(16, 5, 7), seq_lens=(8, 8, 8), d_model=12, num_heads=3, layers=1,
                  conv_kernels=(3, 3, 3), output_dropout=0.0, text_dropout=0.0, embed_dropout=0.0,
                  attn_dropout=(0.0, 0.0, 0.0))
B = 6


def model_and_out(cfg: ModelConfig, seed: int = 0):
    torch.manual_seed(seed)
    model = DMD(cfg).train()
    g = torch.Generator().manual_seed(seed + 1)
    inputs = [torch.randn(B, n, d, generator=g) for n, d in zip(cfg.seq_lens, cfg.feature_dims)]
    return model, model(*inputs, distill=True)


def targets(sentiment=None, emotion=None, present=None) -> Targets:
    return Targets(
        sentiment=torch.tensor(sentiment if sentiment is not None else [-2.0, -1.0, 0.0, 0.5, 1.5, 2.5]),
        emotion=torch.tensor(emotion if emotion is not None else [-1] * B),
        present=torch.tensor(present if present is not None else [[True, True, True]] * B))


@pytest.mark.parametrize("axis", ["batch", "feature"])
def test_with_everything_present_it_is_the_official_objective_term_for_term(axis: str) -> None:
    model, out = model_and_out(CFG)
    loss_cfg = LossConfig(orthogonality_axis=axis)
    official = dmd_loss(model, out, targets().sentiment, loss_cfg)
    ours = multitask_loss(model, out, targets(), loss_cfg)
    assert set(official) <= set(ours)
    for name, value in official.items():
        assert torch.allclose(ours[name], value, rtol=1e-5, atol=1e-6), (name, float(ours[name]), float(value))


def test_an_absent_modality_teaches_its_heads_and_decoders_nothing() -> None:
    cfg = dataclasses.replace(CFG, emotion_classes=7)
    model, out = model_and_out(cfg)
    absent_visual = [[True, True, False]] * B
    terms = multitask_loss(model, out, targets(emotion=[0, 1, 2, 3, 4, 5], present=absent_visual), LossConfig())
    terms["total"].backward()
    for name in ("homo_head.visual", "hetero_head.visual", "decoder.visual", "align_shared.visual",
                 "proj_cosine.visual"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(name)]
        assert grads and all(g is None or torch.count_nonzero(g) == 0 for g in grads), name
    assert float(terms["recon_v"].detach()) == 0.0 and float(terms["ort_v"].detach()) == 0.0
    assert all(p.grad is not None and torch.count_nonzero(p.grad) > 0
               for n, p in model.named_parameters() if n.startswith("homo_head.text"))


def test_a_missing_label_gives_its_sample_s_outputs_zero_gradient() -> None:
    cfg = dataclasses.replace(CFG, emotion_classes=7)
    model, out = model_and_out(cfg)
    t = targets(sentiment=[math.nan, -1.0, 0.0, math.nan, 1.5, 2.5], emotion=[3, -1, 2, -1, 1, 0])
    total = multitask_loss(model, out, t, LossConfig())["total"]
    sentiment_grad, emotion_grad = torch.autograd.grad(total, [out["output_logit"], out["emotion_logit"]],
                                                       retain_graph=True)
    assert torch.count_nonzero(sentiment_grad[[0, 3]]) == 0 and torch.count_nonzero(sentiment_grad[[1, 2, 4, 5]]) > 0
    assert torch.count_nonzero(emotion_grad[[1, 3]]) == 0 and torch.count_nonzero(emotion_grad[[0, 2, 4, 5]]) > 0


def test_a_batch_without_any_emotion_or_sentiment_is_finite_and_zero_for_those_terms() -> None:
    cfg = dataclasses.replace(CFG, emotion_classes=7)
    model, out = model_and_out(cfg)
    terms = multitask_loss(model, out, targets(sentiment=[math.nan] * B), LossConfig())
    assert all(torch.isfinite(v) for v in terms.values())
    assert float(terms["task_fused"].detach()) == 0.0 and float(terms["emotion_fused"].detach()) == 0.0
    assert float(terms["margin"].detach()) == 0.0
