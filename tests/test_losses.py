"""DMD's objective: the vectorised margin loss against its plain loop, the orthogonality loss against
the formulas it reproduces, the graph distillation losses, the official composition of the total, a
few training steps, and the cheap CPU dropout."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from dmd_model.config import GraphDistillConfig, LossConfig, ModelConfig
from dmd_model.kernels.dropout import (
    _uniform16,
    apply_keep_bits,
    dropout,
    keep_bits_rows,
    keep_mask_rows,
    keep_threshold,
    row_thresholds,
    splitmix64,
)
from dmd_model.network.dmd import DMD
from dmd_model.network.graph_distill import GraphDistillation
from dmd_model.training.losses import dmd_loss, margin_loss, margin_loss_reference, orthogonality_loss

SMALL = ModelConfig(
    feature_dims=(16, 5, 7), seq_lens=(8, 8, 8), d_model=12, num_heads=3, layers=1, conv_kernels=(3, 3, 3),
)
NO_DROPOUT = dataclasses.replace(
    SMALL, attn_dropout=(0.0, 0.0, 0.0), embed_dropout=0.0, output_dropout=0.0, text_dropout=0.0,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread is faster, and immune to spinning OpenMP workers on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def batch(cfg: ModelConfig, size: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    inputs = tuple(torch.randn(size, n, dim, generator=g) for n, dim in zip(cfg.seq_lens, cfg.feature_dims))
    labels = torch.randint(-3, 4, (size,), generator=g).float()
    return inputs, labels


# -- margin loss ------------------------------------------------------------------------------------
def random_case(n: int, seed: int, levels: int = 3, dim: int = 5):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, levels, (n,), generator=g).double() - 1.0  # few values: many repeats
    feats = torch.randn(n, dim, generator=g, dtype=torch.float64, requires_grad=True)
    return labels, feats


@pytest.mark.parametrize("n", [3, 4, 7, 12, 24])
@pytest.mark.parametrize("seed", range(6))
def test_margin_loss_equals_the_plain_loop_on_random_data(n, seed):
    labels, feats = random_case(n, seed)
    fast = margin_loss(labels, feats)
    slow = margin_loss_reference(labels, feats)
    torch.testing.assert_close(fast, slow)
    g_fast, = torch.autograd.grad(fast, feats)
    g_slow, = torch.autograd.grad(slow, feats)
    torch.testing.assert_close(g_fast, g_slow)


@pytest.mark.parametrize("margin_scale", [0.0, 0.15, 1.0])
def test_margin_loss_equals_the_plain_loop_for_any_margin_scale(margin_scale):
    labels, feats = random_case(10, seed=99, levels=4)
    torch.testing.assert_close(
        margin_loss(labels, feats, margin_scale), margin_loss_reference(labels, feats, margin_scale)
    )


def test_margin_loss_equals_the_plain_loop_with_real_valued_labels_and_duplicate_features():
    g = torch.Generator().manual_seed(5)
    labels = torch.tensor([-2.4, 0.6, 0.6, 1.8, -2.4, 0.6, 1.8, 3.0], dtype=torch.float64)
    feats = torch.randn(8, 4, generator=g, dtype=torch.float64)
    feats[5] = feats[1]  # ties between similarities
    feats[6] = 2 * feats[3]
    torch.testing.assert_close(margin_loss(labels, feats), margin_loss_reference(labels, feats))


def test_margin_loss_accepts_labels_as_a_column():
    labels, feats = random_case(9, seed=3)
    torch.testing.assert_close(margin_loss(labels.view(-1, 1), feats), margin_loss(labels, feats))


def test_margin_loss_is_zero_when_all_labels_are_equal():
    feats = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.ones(3, dtype=torch.float64)
    loss = margin_loss(labels, feats)
    assert loss.item() == 0.0
    assert margin_loss_reference(labels, feats).item() == 0.0
    loss.backward()  # still part of the graph, with a zero gradient
    assert torch.equal(feats.grad, torch.zeros_like(feats))


def test_margin_loss_with_a_single_different_label_skips_that_anchor():
    # the odd sample has negatives but no positive, so only the three others are anchors
    labels = torch.tensor([1.0, 1.0, 1.0, 2.0], dtype=torch.float64)
    feats = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    fast, slow = margin_loss(labels, feats), margin_loss_reference(labels, feats)
    torch.testing.assert_close(fast, slow)
    torch.testing.assert_close(torch.autograd.grad(fast, feats)[0], torch.autograd.grad(slow, feats)[0])


def test_margin_loss_by_hand_for_three_samples():
    # anchor 0: positive 1, negative 2; anchor 1: positive 0, negative 2; anchor 2 has no positive
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    cos01, cos02 = 0.0, 2 ** -0.5
    per_anchor = max(0.0, 0.15 - cos01 + cos02)  # same for anchor 1 by symmetry
    assert margin_loss(labels, feats).item() == pytest.approx(per_anchor, rel=1e-6)


# -- orthogonality loss -------------------------------------------------------------------------------------
def pytorch19_cosine_embedding_negative(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """PyTorch 1.9's `cosine_embedding_loss(x1, x2, tensor([-1]), margin=0)` as its ATen code computes
    it for any input rank: sums along dim 1, EPSILON = 1e-12, mean reduction."""
    eps = 1e-12
    prod_sum = (x1 * x2).sum(1)
    mag_square1 = (x1 * x1).sum(1) + eps
    mag_square2 = (x2 * x2).sum(1) + eps
    cos = prod_sum / (mag_square1 * mag_square2).sqrt()
    return (cos - 0.0).clamp_min(0).mean()


@pytest.mark.parametrize("seed", range(3))
def test_batch_orthogonality_equals_pytorch_1_9_cosine_along_dim_1(seed):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(6, 4, 12, generator=g, dtype=torch.float64)  # (L, B, d)
    c = torch.randn(6, 4, 12, generator=g, dtype=torch.float64)
    torch.testing.assert_close(orthogonality_loss(s, c, "batch"), pytorch19_cosine_embedding_negative(s, c))


@pytest.mark.parametrize("seed", range(3))
def test_feature_orthogonality_equals_cosine_embedding_loss_on_flattened_rows(seed):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(6, 4, 12, generator=g, dtype=torch.float64)
    c = torch.randn(6, 4, 12, generator=g, dtype=torch.float64)
    want = nn.CosineEmbeddingLoss()(s.reshape(-1, 12), c.reshape(-1, 12), -torch.ones(24, dtype=torch.float64))
    torch.testing.assert_close(orthogonality_loss(s, c, "feature"), want)


def test_orthogonality_is_zero_for_orthogonal_features_and_positive_for_aligned_ones():
    s = torch.zeros(3, 2, 4)
    c = torch.zeros(3, 2, 4)
    s[..., :2], c[..., 2:] = 1.0, 1.0
    assert orthogonality_loss(s, c, "feature").item() == 0.0
    assert orthogonality_loss(s, s, "feature").item() == pytest.approx(1.0)


# -- graph distillation losses --------------------------------------------------------------------------------
def official_distillation_loss(unit: GraphDistillation, logits, reprs, edges):
    """The official `DistillationKernel.distillation_loss` with `distance_metric` / `min_cosine`,
    written as the official loops (teachers detached there too)."""
    cfg, prior = unit.cfg, unit.prior
    reg = (edges.mean(1) - prior).pow(2).sum() * cfg.regularizer
    loss_logit, loss_repr, x = 0.0, 0.0, 0
    for j in range(3):
        for i in range(3):
            if i == j:
                continue
            w = edges[x] + prior[x]
            loss_logit = loss_logit + cfg.w_logit * ((logits[j] - logits[i].detach()).abs().sum(1) * w).mean()
            if cfg.repr_loss == "cosine":
                cos = nn.CosineEmbeddingLoss()(reprs[j], reprs[i].detach(), torch.tensor([-1]))
                loss_repr = loss_repr + cfg.w_repr * (cos * w).mean()
            else:
                loss_repr = loss_repr + cfg.w_repr * ((reprs[j] - reprs[i].detach()).abs().sum(1) * w).mean()
            x += 1
    return {"reg": reg, "logit": loss_logit, "repr": loss_repr}


@pytest.mark.parametrize("repr_loss", ["metric", "cosine"])
def test_graph_distillation_loss_equals_the_official_loops(repr_loss):
    torch.manual_seed(0)
    unit = GraphDistillation(GraphDistillConfig(gd_size=8, repr_loss=repr_loss), logit_dim=1, repr_dim=6)
    logits, reprs = torch.randn(3, 5, 1), torch.randn(3, 5, 6)
    edges, _ = unit(logits, reprs)
    got = unit.loss(logits, reprs, edges)
    want = official_distillation_loss(unit, logits, reprs, edges)
    for name in ("reg", "logit", "repr"):
        torch.testing.assert_close(got[name], want[name], msg=name)


def test_prior_is_the_configured_prior_softmaxed_at_its_temperature():
    unit = GraphDistillation(GraphDistillConfig(prior=(0, 0, 1, 0, 1, 1), prior_temperature=0.25), 1, 4)
    raw = torch.tensor([0.0, 0, 1, 0, 1, 1]) / 0.25
    torch.testing.assert_close(unit.prior, torch.softmax(raw, 0))
    assert "prior" not in unit.state_dict()


def test_distillation_gradient_reaches_only_the_students_not_the_teachers():
    """With the L1 metric, the gradient for modality j is the sum over the edges where j is the
    student of w * sign(logit_j - logit_teacher) / B; an undetached teacher would add the opposite
    terms for the edges where j teaches."""
    torch.manual_seed(1)
    unit = GraphDistillation(GraphDistillConfig(gd_size=8, metric="l1"), logit_dim=1, repr_dim=4)
    logits = torch.randn(3, 5, 1, requires_grad=True)
    reprs = torch.randn(3, 5, 4, requires_grad=True)
    edges = torch.softmax(torch.randn(6, 5), 0)  # fixed weights
    parts = unit.loss(logits, reprs, edges)
    g_logits, = torch.autograd.grad(parts["logit"], logits)
    g_reprs, = torch.autograd.grad(parts["repr"], reprs)
    weight = edges + unit.prior.unsqueeze(1)
    want_logits, want_reprs = torch.zeros_like(logits), torch.zeros_like(reprs)
    pairs = [(j, i) for j in range(3) for i in range(3) if i != j]  # (student, teacher), official order
    for x, (j, i) in enumerate(pairs):
        w = weight[x].unsqueeze(1) / 5
        want_logits[j] += w * torch.sign(logits[j] - logits[i]).detach()
        want_reprs[j] += unit.cfg.w_repr * w * torch.sign(reprs[j] - reprs[i]).detach()
    torch.testing.assert_close(g_logits, want_logits)
    torch.testing.assert_close(g_reprs, want_reprs)


def test_a_teacher_alone_gets_no_gradient_from_the_logit_loss():
    unit = GraphDistillation(GraphDistillConfig(gd_size=8), logit_dim=1, repr_dim=4)
    student = torch.randn(1, 5, 1, requires_grad=True)
    teachers = torch.randn(2, 5, 1, requires_grad=True)
    logits = torch.cat([student, teachers])
    edges = torch.zeros(6, 5)
    edges[:2] = 0.5  # only the two edges into modality 0 (the student): V->L, A->L
    prior = unit.prior.clone()
    unit.prior.zero_()  # weights are then the edges alone
    try:
        loss = unit.loss(logits, torch.randn(3, 5, 4), edges)["logit"]
        g_student, g_teachers = torch.autograd.grad(loss, (student, teachers))
    finally:
        unit.prior.copy_(prior)
    assert g_student.abs().sum() > 0
    assert torch.equal(g_teachers, torch.zeros_like(teachers))


def test_edges_learn_from_the_regulariser_and_the_weighted_losses():
    unit = GraphDistillation(GraphDistillConfig(gd_size=8), logit_dim=1, repr_dim=4)
    edges, _ = unit(torch.randn(3, 5, 1), torch.randn(3, 5, 4))
    parts = unit.loss(torch.randn(3, 5, 1), torch.randn(3, 5, 4), edges)
    sum(parts.values()).backward()
    assert unit.W_edge.weight.grad.abs().sum() > 0


# -- the total objective ----------------------------------------------------------------------------------------
TASK_TERMS = ["task_fused", "task_l_homo", "task_v_homo", "task_a_homo",
              "task_l_hetero", "task_v_hetero", "task_a_hetero", "task_c"]
EXPECTED_TERMS = set(TASK_TERMS) | {f"{kind}_{k}" for kind in ("recon", "cycle", "ort") for k in "lva"} | {
    "margin", "total"} | {f"{b}_gd_{t}" for b in ("homo", "hetero") for t in ("reg", "logit", "repr")}


@pytest.fixture(scope="module")
def loss_case():
    torch.manual_seed(0)
    model = DMD(SMALL).train()
    inputs, labels = batch(SMALL, 6)
    out = model(*inputs, distill=True)
    return model, out, labels


def test_dmd_loss_returns_every_term(loss_case):
    model, out, labels = loss_case
    terms = dmd_loss(model, out, labels, LossConfig())
    assert set(terms) == EXPECTED_TERMS
    assert all(t.dim() == 0 and torch.isfinite(t) for t in terms.values())


def test_total_is_the_official_composition(loss_case):
    model, out, labels = loss_case
    t = dmd_loss(model, out, labels, LossConfig())
    # official DMD.do_train
    task = sum(t[k] for k in TASK_TERMS)
    homo = t["homo_gd_logit"] + t["homo_gd_reg"]
    hetero = t["hetero_gd_logit"] + t["hetero_gd_repr"] + t["hetero_gd_reg"]
    cycle = t["cycle_l"] + t["cycle_v"] + t["cycle_a"]
    recon = t["recon_l"] + t["recon_v"] + t["recon_a"]
    ort = t["ort_l"] + t["ort_v"] + t["ort_a"]
    want = task + 0.05 * homo + 0.05 * hetero + 0.1 * (cycle + recon + 0.1 * (t["margin"] + ort))
    torch.testing.assert_close(t["total"], want)


def test_homo_representation_loss_enters_the_total_only_when_asked(loss_case):
    model, out, labels = loss_case
    official = dmd_loss(model, out, labels, LossConfig())
    with_repr = dmd_loss(model, out, labels, LossConfig(homo_repr_in_loss=True))
    torch.testing.assert_close(with_repr["total"] - official["total"], 0.05 * official["homo_gd_repr"])


def test_terms_are_the_official_task_reconstruction_cycle_and_margin_losses(loss_case):
    model, out, labels = loss_case
    t = dmd_loss(model, out, labels.view(-1, 1), LossConfig())
    y = labels.view(-1, 1)
    torch.testing.assert_close(t["task_fused"], (out["output_logit"] - y).abs().mean())
    torch.testing.assert_close(t["task_v_hetero"], (out["logits_v_hetero"] - y).abs().mean())
    torch.testing.assert_close(t["recon_a"], (out["recon_a"] - out["origin_a"]).pow(2).mean())
    torch.testing.assert_close(t["cycle_l"], (out["s_l"].permute(1, 2, 0) - out["s_l_r"]).pow(2).mean())
    torch.testing.assert_close(t["ort_v"], orthogonality_loss(out["s_v"], out["c_v"], "batch"))
    # official: anchors c_l_sim, c_v_sim, c_a_sim of sample 0, then of sample 1, ...
    feats = torch.cat([torch.stack([out["c_l_sim"][b], out["c_v_sim"][b], out["c_a_sim"][b]]) for b in range(6)])
    ids = torch.cat([y[b].repeat(3) for b in range(6)])
    torch.testing.assert_close(t["margin"], margin_loss_reference(ids, feats))


def test_orthogonality_axis_chooses_the_cosine_direction(loss_case):
    model, out, labels = loss_case
    t = dmd_loss(model, out, labels, LossConfig(orthogonality_axis="feature"))
    torch.testing.assert_close(t["ort_a"], orthogonality_loss(out["s_a"], out["c_a"], "feature"))


def test_a_few_training_steps_on_a_fixed_batch_reduce_the_total_loss():
    torch.manual_seed(0)
    model = DMD(NO_DROPOUT).train()
    inputs, labels = batch(NO_DROPOUT, 8, seed=2)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    totals = []
    for _ in range(15):
        optimiser.zero_grad()
        total = dmd_loss(model, model(*inputs, distill=True), labels, LossConfig())["total"]
        total.backward()
        optimiser.step()
        totals.append(total.item())
    assert totals[-1] < 0.8 * totals[0], totals


# -- dropout ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_dropout_keeps_one_minus_p_and_preserves_the_mean(p):
    torch.manual_seed(0)
    x = torch.ones(1 << 20)
    y = dropout(x, p)
    kept = (y != 0).double().mean().item()
    assert kept == pytest.approx(1 - p, abs=0.003)  # about 6 standard deviations
    assert y.mean().item() == pytest.approx(1.0, abs=0.006)
    # kept values are scaled by the inverse of the (rounded) keep probability
    assert y.unique().tolist() == [0.0, pytest.approx(65536 / keep_threshold(1 - p), rel=1e-6)]


def test_dropout_is_the_identity_in_eval_mode_and_for_p_zero():
    x = torch.randn(100)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0) is x


def test_dropout_gradient_uses_the_same_mask():
    x = torch.randn(1000, requires_grad=True)
    y = dropout(x, 0.3)
    y.sum().backward()
    assert torch.equal(x.grad == 0, y == 0)
    # kept elements pass the gradient scaled as their values were
    assert x.grad.unique().tolist() == [0.0, pytest.approx(65536 / keep_threshold(0.7), rel=1e-6)]


def test_dropout_without_gradients_draws_the_same_mask_as_with_them():
    x = torch.randn(4096, requires_grad=True)
    torch.manual_seed(4)
    with_grad = dropout(x, 0.4)
    torch.manual_seed(4)
    with torch.no_grad():
        without = dropout(x, 0.4)
    assert with_grad.requires_grad and not without.requires_grad
    assert torch.equal(with_grad.detach(), without)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_keep_bits_keep_values_exactly_and_zero_the_rest(dtype):
    x = torch.tensor([[-1.5, 2.0, float("nan"), -0.0], [3.0, -4.0, float("inf"), 5.0]], dtype=dtype)
    bits = torch.tensor([[-1, 0, 0, -1], [-1, -1, 0, 0]], dtype=torch.int32)
    got = apply_keep_bits(x, bits)
    assert got.dtype == dtype
    want = torch.tensor([[-1.5, 0.0, 0.0, -0.0], [3.0, -4.0, 0.0, 0.0]], dtype=dtype)
    assert torch.equal(got, want)
    # a dropped element is +0.0, not the -0.0 or NaN a product with zero would give
    assert torch.equal(torch.signbit(got), torch.tensor([[True, False, False, True], [False, True, False, False]]))
    out = torch.empty_like(x)
    assert apply_keep_bits(x, bits, out=out) is out and torch.equal(out, want)


def test_keep_bits_are_all_ones_or_zero_and_match_the_bool_mask():
    thresholds, _ = row_thresholds([0.8, 0.3], repeat=1, device=torch.device("cpu"))
    torch.manual_seed(6)
    bits = keep_bits_rows((2, 64, 64), thresholds)
    torch.manual_seed(6)
    mask = keep_mask_rows((2, 64, 64), thresholds)
    assert bits.dtype == torch.int32
    assert set(bits.unique().tolist()) == {-1, 0}
    assert torch.equal(bits == -1, mask)


def _splitmix64_reference(seed: int, count: int) -> list[int]:
    """SplitMix64 in plain Python integers, as published (Steele, Lea, Flood 2014)."""
    mask, state, out = (1 << 64) - 1, seed & ((1 << 64) - 1), []
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append(z ^ (z >> 31))
    return out


@pytest.mark.parametrize("seed", [0, 1234567, -(1 << 63), (1 << 63) - 1, -42])
def test_splitmix64_equals_the_published_generator_bit_for_bit(seed):
    got = [v & ((1 << 64) - 1) for v in splitmix64(seed, 3000).tolist()]
    assert got == _splitmix64_reference(seed, 3000)


def test_splitmix64_known_first_output():
    # the first output from state 0, as in the reference C code's test vectors
    assert splitmix64(0, 1).item() & ((1 << 64) - 1) == 0xE220A8397B1DCDAF


def test_uniform16_draws_are_uniform_and_follow_the_global_seed():
    torch.manual_seed(21)
    a = _uniform16(1 << 20, torch.device("cpu"))
    torch.manual_seed(21)
    b = _uniform16(1 << 20, torch.device("cpu"))
    c = _uniform16(1 << 20, torch.device("cpu"))
    assert torch.equal(a, b) and not torch.equal(b, c)
    # each byte value about equally often (chi-square with 255 degrees of freedom), and the four
    # 16-bit fields of a word do not move together
    counts = torch.bincount(a.view(torch.uint8).long(), minlength=256).double()
    chi2 = ((counts - counts.mean()) ** 2 / counts.mean()).sum().item()
    assert chi2 < 350, chi2  # p about 1e-4 for a uniform source
    fields = a.view(-1, 4).double()
    corr = torch.corrcoef(fields.T)
    assert (corr - torch.eye(4, dtype=torch.float64)).abs().max() < 0.01


def test_keep_threshold_rounds_to_a_16_bit_level():
    assert keep_threshold(0.7) == round(0.7 * 65536)
    assert keep_threshold(0.0) == 1
    assert keep_threshold(1.0) == 65536


def test_row_masks_keep_each_row_at_its_own_rate():
    torch.manual_seed(1)
    keep = [0.9, 0.7, 0.5]
    thresholds, scale = row_thresholds(keep, repeat=2, device=torch.device("cpu"))
    assert thresholds.dtype == torch.int16 and thresholds.shape == (6,)
    torch.testing.assert_close(scale, torch.tensor([65536 / keep_threshold(k) for k in keep]).repeat_interleave(2))
    mask = keep_mask_rows((6, 256, 256), thresholds)
    rates = mask.double().mean((1, 2))
    torch.testing.assert_close(rates, torch.tensor(keep, dtype=torch.float64).repeat_interleave(2), atol=0.006, rtol=0)
    # the scaled mask has mean one in every row
    torch.testing.assert_close(rates * scale.double(), torch.ones(6, dtype=torch.float64), atol=0.01, rtol=0)


def test_a_row_with_keep_probability_one_keeps_everything():
    torch.manual_seed(2)
    thresholds, scale = row_thresholds([1.0], repeat=1, device=torch.device("cpu"))
    assert scale.item() == 1.0
    mask = keep_mask_rows((1, 1 << 21), thresholds)
    assert mask.all(), f"{int((~mask).sum())} of {mask.numel()} dropped"
