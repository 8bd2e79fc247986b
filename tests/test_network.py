"""The DMD network: official output names and shapes, GD edges, input checks, dropout behaviour, the
official parameter count, the stacked transformer encoders and the hand-written attention backward."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import configs
from dmd_model.config import DMDConfig, ModelConfig
from dmd_model.kernels import attention as attention_module
from dmd_model.kernels import stacked
from dmd_model.kernels.attention import attention
from dmd_model.kernels.dropout import keep_mask_rows, row_thresholds
from dmd_model.network.dmd import DMD
from dmd_model.network.graph_distill import EDGE_PAIRS, edge_matrix
from dmd_model.network.transformer import EncoderStack, allowed_positions

# Small configurations (d_model 12, 3 heads): aligned, and unaligned with a visual input that is
# already d_model wide, so the official model skips its convolution.
ALIGNED = ModelConfig(
    feature_dims=(16, 5, 7), seq_lens=(8, 8, 8), d_model=12, num_heads=3, layers=1, conv_kernels=(3, 3, 3),
)
UNALIGNED = ModelConfig(
    feature_dims=(16, 5, 12), seq_lens=(8, 11, 9), d_model=12, num_heads=3, layers=1, conv_kernels=(3, 2, 4),
)
NO_DROPOUT = {
    "attn_dropout": (0.0, 0.0, 0.0), "relu_dropout": 0.0, "res_dropout": 0.0, "embed_dropout": 0.0,
    "output_dropout": 0.0, "text_dropout": 0.0,
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: one thread is faster, and immune to spinning OpenMP workers when other
    processes share the cores (a forward pass went from 25 ms to 1 s on a busy two-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(cfg: ModelConfig, seed: int = 0) -> DMD:
    torch.manual_seed(seed)
    return DMD(cfg)


def make_inputs(cfg: ModelConfig, batch: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, n, dim, generator=g) for n, dim in zip(cfg.seq_lens, cfg.feature_dims))  # type: ignore[return-value]


def expected_shapes(cfg: ModelConfig, batch: int) -> dict[str, tuple[int, ...]]:
    """The official `dmd.py` outputs and their shapes, written out from the official forward."""
    d = cfg.d_model
    lens = dict(zip(("l", "a", "v"), cfg.conv_lens))
    shapes: dict[str, tuple[int, ...]] = {}
    for k in ("l", "v", "a"):
        L = lens[k]
        shapes |= {
            f"logits_{k}_homo": (batch, 1), f"repr_{k}_homo": (batch, d),
            f"origin_{k}": (batch, d, L),
            f"s_{k}": (L, batch, d), f"c_{k}": (L, batch, d),
            f"s_{k}_r": (batch, d, L), f"recon_{k}": (batch, d, L),
            f"proj_s_{k}": (batch, d), f"c_{k}_sim": (batch, d),
            f"logits_{k}_hetero": (batch, 1), f"repr_{k}_hetero": (batch, 2 * d), f"last_h_{k}": (batch, 2 * d),
        }
    shapes |= {"logits_c": (batch, 1), "output_logit": (batch, 1)}
    return shapes


# -- outputs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [ALIGNED, UNALIGNED], ids=["aligned", "unaligned"])
def test_forward_returns_the_official_output_names_and_shapes(cfg):
    model = make_model(cfg).eval()
    with torch.no_grad():
        out = model(*make_inputs(cfg, batch=4))
    expected = expected_shapes(cfg, batch=4)
    assert set(out) == set(expected)
    for name, shape in expected.items():
        assert tuple(out[name].shape) == shape, name
        assert torch.isfinite(out[name]).all(), name


def test_unaligned_modalities_keep_their_own_lengths_after_the_convolution():
    # text 8 - 3 + 1, audio 11 - 2 + 1, visual already 12 wide: no convolution, all 9 steps kept
    assert UNALIGNED.conv_lens == (6, 10, 9)
    assert not UNALIGNED.projects("visual") and UNALIGNED.projects("audio")


def test_a_modality_already_d_model_wide_skips_the_convolution_as_in_the_official_model():
    model = make_model(UNALIGNED).eval()
    text, audio, visual = make_inputs(UNALIGNED, batch=3)
    with torch.no_grad():
        out = model(text, audio, visual)
    assert torch.equal(out["origin_v"], visual.transpose(1, 2))
    # the others go through their bias-free temporal convolution
    conv = F.conv1d(audio.transpose(1, 2), model.project["audio"].weight)
    torch.testing.assert_close(out["origin_a"], conv)


def test_decoupled_features_follow_the_official_layouts():
    model = make_model(ALIGNED).eval()
    with torch.no_grad():
        out = model(*make_inputs(ALIGNED, batch=2))
    # s_* and c_* are (L, B, d) views of the same encoders that produce origin (B, d, L)
    s_l = torch.einsum("oi,bil->lbo", model.private["text"].weight, out["origin_l"])
    torch.testing.assert_close(out["s_l"], s_l)
    c_a = torch.einsum("oi,bil->lbo", model.shared.weight, out["origin_a"])
    torch.testing.assert_close(out["c_a"], c_a)
    # s_*_r re-encodes the reconstruction with the private encoder
    s_v_r = torch.einsum("oi,bil->bol", model.private["visual"].weight, out["recon_v"])
    torch.testing.assert_close(out["s_v_r"], s_v_r)


def test_batch_of_one_runs_in_train_and_eval_mode():
    model = make_model(UNALIGNED)
    inputs = make_inputs(UNALIGNED, batch=1)
    for mode in (True, False):
        model.train(mode)
        out = model(*inputs, distill=True)
        for name, shape in expected_shapes(UNALIGNED, batch=1).items():
            assert tuple(out[name].shape) == shape, name
        assert out["edges_homo"].shape == (6, 1)


# -- graph distillation edges ----------------------------------------------------------------------
# official edge order (teacher -> student): V->L, A->L, L->V, A->V, L->A, V->A; matrix rows/columns
# are (text, audio, visual)
OFFICIAL_EDGES = [("visual", "text"), ("audio", "text"), ("text", "visual"), ("audio", "visual"),
                  ("text", "audio"), ("visual", "audio")]
INDEX = {"text": 0, "audio": 1, "visual": 2}


def test_edge_pairs_are_in_the_official_order():
    gd_order = ("text", "visual", "audio")
    pairs = [(gd_order[i], gd_order[j]) for j, i in EDGE_PAIRS]  # (teacher, student)
    assert pairs == OFFICIAL_EDGES


@pytest.mark.parametrize("cfg", [ALIGNED, UNALIGNED], ids=["aligned", "unaligned"])
def test_edges_of_each_sample_sum_to_one_over_the_six_edges(cfg):
    model = make_model(cfg).eval()
    with torch.no_grad():
        out = model(*make_inputs(cfg, batch=5), distill=True)
    for branch in ("homo", "hetero"):
        edges = out[f"edges_{branch}"]
        assert edges.shape == (6, 5)
        assert out[f"edges_{branch}_raw"].shape == (6, 5)
        assert (edges > 0).all()
        torch.testing.assert_close(edges.sum(0), torch.ones(5))
        torch.testing.assert_close(edges, torch.softmax(out[f"edges_{branch}_raw"] / 8, dim=0))


def test_edge_matrices_have_a_zero_diagonal_and_hold_each_edge_at_teacher_student():
    model = make_model(ALIGNED).eval()
    with torch.no_grad():
        out = model(*make_inputs(ALIGNED, batch=4), distill=True)
    for branch in ("homo", "hetero"):
        edges, matrix = out[f"edges_{branch}"], out[f"edges_{branch}_matrix"]
        assert matrix.shape == (4, 3, 3)
        assert (torch.diagonal(matrix, dim1=1, dim2=2) == 0).all()
        for x, (teacher, student) in enumerate(OFFICIAL_EDGES):
            assert torch.equal(matrix[:, INDEX[teacher], INDEX[student]], edges[x])
        torch.testing.assert_close(matrix.sum((1, 2)), torch.ones(4))


def test_edge_matrix_places_every_edge_once():
    edges = torch.arange(1.0, 7.0).unsqueeze(1)  # (6, 1): edge x has value x + 1
    matrix = edge_matrix(edges)[0]
    assert sorted(matrix.flatten().tolist()) == [0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def test_edge_scores_are_w_edge_on_student_then_teacher_embeddings_as_officially():
    model = make_model(ALIGNED).eval()
    with torch.no_grad():
        out = model(*make_inputs(ALIGNED, batch=3), distill=True)
        unit = model.hetero_gd
        logits, reprs = model.gd_inputs(out, "hetero")
        z = torch.cat([unit.W_logit(logits), unit.W_repr(reprs)], dim=-1)
        # official: for j in to_idx, for i in from_idx, i != j: W_edge(cat(z[j], z[i]))
        raw = [unit.W_edge(torch.cat([z[j], z[i]], dim=-1)).squeeze(-1) for j in range(3) for i in range(3) if i != j]
        torch.testing.assert_close(out["edges_hetero_raw"], torch.stack(raw))


# -- input checks -------------------------------------------------------------------------------------
def test_input_of_the_wrong_length_raises_a_value_error_naming_the_modality_and_the_fix():
    model = make_model(ALIGNED)
    text, audio, visual = make_inputs(ALIGNED, batch=2)
    with pytest.raises(ValueError, match=r"audio input has shape \(2, 7, 5\), expected \(2, 8, 5\).*model.seq_lens"):
        model(text, audio[:, :7], visual)


def test_input_of_the_wrong_feature_size_raises_a_value_error():
    model = make_model(ALIGNED)
    text, audio, visual = make_inputs(ALIGNED, batch=2)
    with pytest.raises(ValueError, match=r"text input has shape \(2, 8, 15\), expected \(2, 8, 16\)"):
        model(text[..., :15], audio, visual)


def test_inputs_with_different_batch_sizes_raise_a_value_error():
    model = make_model(ALIGNED)
    text, audio, visual = make_inputs(ALIGNED, batch=2)
    with pytest.raises(ValueError, match=r"visual input has shape \(3, 8, 7\), expected \(2, 8, 7\)"):
        model(text, audio, torch.cat([visual, visual[:1]]))


def test_an_unbatched_input_raises_a_value_error():
    model = make_model(ALIGNED)
    text, audio, visual = make_inputs(ALIGNED, batch=1)
    with pytest.raises(ValueError, match=r"audio input has shape \(8, 5\)"):
        model(text, audio[0], visual)


# -- determinism and dropout --------------------------------------------------------------------------
def test_eval_mode_is_deterministic():
    model = make_model(ALIGNED).eval()
    inputs = make_inputs(ALIGNED, batch=4)
    with torch.no_grad():
        a, b = model(*inputs, distill=True), model(*inputs, distill=True)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_train_mode_with_dropout_differs_between_calls():
    cfg = dataclasses.replace(ALIGNED, attn_dropout=(0.3, 0.2, 0.1), embed_dropout=0.2, output_dropout=0.5,
                              text_dropout=0.5)
    model = make_model(cfg).train()
    inputs = make_inputs(cfg, batch=4)
    a, b = model(*inputs), model(*inputs)
    assert not torch.equal(a["output_logit"], b["output_logit"])
    assert not torch.equal(a["origin_l"], b["origin_l"])  # text dropout


def test_train_mode_without_dropout_equals_eval_mode():
    cfg = dataclasses.replace(UNALIGNED, **NO_DROPOUT)
    model = make_model(cfg)
    inputs = make_inputs(cfg, batch=3)
    train_out = model.train()(*inputs, distill=True)
    with torch.no_grad():
        eval_out = model.eval()(*inputs, distill=True)
    for name in eval_out:
        torch.testing.assert_close(train_out[name].detach(), eval_out[name], rtol=1e-5, atol=1e-5, msg=name)


# -- the official parameter count -------------------------------------------------------------------------
def test_mosi_aligned_without_bert_has_the_official_parameter_count():
    cfg = DMDConfig.from_yaml(configs.path("mosi_aligned"), ["model.use_bert=false"])
    model = DMD(cfg.model)
    network = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("homo_gd.", "hetero_gd.")))
    assert network == 4_743_658
    gd = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("homo_gd.", "hetero_gd.")))
    assert model.num_parameters() == network + gd


# -- bf16 autocast -----------------------------------------------------------------------------------------
def test_bf16_autocast_forward_on_cpu_is_finite_and_close_to_fp32():
    model = make_model(UNALIGNED).eval()
    inputs = make_inputs(UNALIGNED, batch=4)
    with torch.no_grad():
        reference = model(*inputs, distill=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(*inputs, distill=True)
    assert set(out) == set(reference)
    for name in ("output_logit", "logits_c", "logits_l_hetero", "logits_a_homo", "repr_v_hetero", "edges_homo"):
        assert torch.isfinite(out[name]).all(), name
        torch.testing.assert_close(out[name].float(), reference[name], rtol=0.05, atol=0.05, msg=name)


def test_bf16_autocast_training_step_gives_finite_gradients():
    model = make_model(ALIGNED).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(*make_inputs(ALIGNED, batch=4))
    out["output_logit"].float().sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.encoders.layers[0].in_proj_weight.grad.abs().sum() > 0


# -- EncoderStack -------------------------------------------------------------------------------------------
def make_stack(members: int, attn_dropout=None, layers: int = 2, causal: bool = True, seed: int = 0) -> EncoderStack:
    torch.manual_seed(seed)
    stack = EncoderStack(members, dim=12, num_heads=3, layers=layers,
                         attn_dropout=attn_dropout or [0.0] * members, causal=causal)
    # non-trivial norms and biases, so that a member that read another member's row would show
    with torch.no_grad():
        for name, p in stack.named_parameters():
            if "bias" in name or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return stack.eval()


def single_members(stack: EncoderStack) -> list[EncoderStack]:
    """One single-member stack per member of `stack`, with that member's weights copied."""
    singles = []
    for g in range(stack.members):
        one = EncoderStack(1, dim=stack.dim, num_heads=stack.num_heads, layers=len(stack.layers),
                           attn_dropout=[stack._attn_dropout_list[g]], causal=stack.causal)
        params = dict(stack.named_parameters())
        with torch.no_grad():
            for name, p in one.named_parameters():
                p.copy_(params[name][g: g + 1])
        singles.append(one.train(stack.training))
    return singles


def run_alone(stack: EncoderStack, queries, sources, last_only=False) -> list[torch.Tensor]:
    last = [last_only] * stack.members if isinstance(last_only, bool) else last_only
    return [one([q], [kv], last_only=lo)[0] for one, q, kv, lo in zip(single_members(stack), queries, sources, last)]


def test_members_run_together_give_what_each_member_gives_alone():
    stack = make_stack(3)
    torch.manual_seed(3)
    queries = [torch.randn(2, 7, 12) for _ in range(3)]
    sources = [torch.randn(2, 5, 12) for _ in range(3)]
    together = stack(queries, sources)
    for got, want in zip(together, run_alone(stack, queries, sources)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_members_with_different_lengths_split_into_groups_with_the_same_result():
    # members 0 and 2 share lengths (a non-contiguous group), 1 differs, 3 is self-attention
    stack = make_stack(4)
    torch.manual_seed(4)
    queries = [torch.randn(2, 7, 12), torch.randn(2, 9, 12), torch.randn(2, 7, 12), torch.randn(2, 6, 12)]
    sources = [torch.randn(2, 5, 12), torch.randn(2, 4, 12), torch.randn(2, 5, 12), None]
    grouped = stack(queries, sources)
    assert [tuple(o.shape) for o in grouped] == [(2, 7, 12), (2, 9, 12), (2, 7, 12), (2, 6, 12)]
    for got, want in zip(grouped, run_alone(stack, queries, sources)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_grouping_does_not_change_a_members_output():
    # the same member 0 input, once grouped with members of equal length and once left alone
    stack = make_stack(3)
    torch.manual_seed(5)
    q0, kv0 = torch.randn(2, 7, 12), torch.randn(2, 5, 12)
    kv = [kv0, torch.randn(2, 5, 12), torch.randn(2, 5, 12)]
    grouped = stack([q0, torch.randn(2, 7, 12), torch.randn(2, 7, 12)], kv)  # one group of three
    apart = stack([q0, torch.randn(2, 8, 12), torch.randn(2, 3, 12)], kv)  # three groups of one
    torch.testing.assert_close(grouped[0], apart[0], rtol=1e-5, atol=1e-5)


def test_gradients_of_grouped_members_equal_those_of_members_run_alone():
    stack = make_stack(3).train()  # no dropout configured: deterministic in train mode
    torch.manual_seed(6)
    queries = [torch.randn(2, 6, 12) for _ in range(3)]
    sources = [torch.randn(2, 4, 12), torch.randn(2, 4, 12), None]
    weights = [torch.randn(2, 6, 12) for _ in range(3)]
    sum(((o * w).sum() for o, w in zip(stack(queries, sources), weights)), torch.tensor(0.0)).backward()
    singles = single_members(stack)
    for g, one in enumerate(singles):
        (one([queries[g]], [sources[g]])[0] * weights[g]).sum().backward()
    params = dict(stack.named_parameters())
    for g, one in enumerate(singles):
        for name, p in one.named_parameters():
            torch.testing.assert_close(params[name].grad[g: g + 1], p.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("members", [3, 4], ids=["three_members", "four_members"])
def test_members_with_and_without_attention_dropout_in_one_group_keep_their_outputs_and_gradients(members):
    # p = 1e-9 keeps every weight (its 16-bit threshold is all levels) but still counts as attention
    # dropout, so in training member 1's rows, between the others', draw masks: outputs and gradients
    # must not notice
    stack = make_stack(members, attn_dropout=[0.0, 1e-9, 0.0, 0.0][:members]).train()
    torch.manual_seed(10)
    queries = [torch.randn(2, 6, 12) for _ in range(members)]
    sources = [torch.randn(2, 4, 12) for _ in range(3)] + [None] * (members - 3)
    weights = [torch.randn(2, 6, 12) for _ in range(members)]
    outs = stack(queries, sources)
    sum(((o * w).sum() for o, w in zip(outs, weights)), torch.tensor(0.0)).backward()
    singles = single_members(stack)
    for g, one in enumerate(singles):
        alone = one([queries[g]], [sources[g]])[0]
        torch.testing.assert_close(outs[g], alone, rtol=1e-5, atol=1e-5)
        (alone * weights[g]).sum().backward()
    params = dict(stack.named_parameters())
    for g, one in enumerate(singles):
        for name, p in one.named_parameters():
            torch.testing.assert_close(params[name].grad[g: g + 1], p.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("causal", [True, False])
def test_last_only_equals_the_last_step_of_the_full_output(causal):
    stack = make_stack(3, causal=causal)
    torch.manual_seed(7)
    queries = [torch.randn(2, 7, 12) for _ in range(3)]
    sources = [torch.randn(2, 5, 12), None, torch.randn(2, 9, 12)]
    full = stack(queries, sources)
    last = stack(queries, sources, last_only=True)
    mixed = stack(queries, sources, last_only=[False, True, False])
    for g in range(3):
        assert last[g].shape == (2, 1, 12)
        torch.testing.assert_close(last[g], full[g][:, -1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed[0], full[0])
    torch.testing.assert_close(mixed[1], full[1][:, -1:], rtol=1e-5, atol=1e-5)


def test_per_member_products_without_gradients_equal_the_batched_products():
    # 64 x 8 = 512 tokens per member: without gradients the linear layers loop over members
    stack = make_stack(3)
    torch.manual_seed(8)
    queries = [torch.randn(64, 8, 12) for _ in range(3)]
    sources = [torch.randn(64, 8, 12) for _ in range(3)]
    with torch.no_grad():
        looped = stack(queries, sources)
    batched = stack(queries, sources)  # parameters require gradients: one batched product
    for a, b in zip(looped, batched):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-5)


def test_inference_feed_forward_in_chunks_equals_the_batched_products(monkeypatch):
    # 64 x 8 = 512 tokens in chunks of 100: five full chunks and a short one, written over x in place
    monkeypatch.setattr(stacked, "_FFN_CHUNK", 100)
    stack = make_stack(3)
    torch.manual_seed(9)
    queries = [torch.randn(64, 8, 12) for _ in range(3)]
    sources = [torch.randn(64, 8, 12), None, torch.randn(64, 8, 12)]
    with torch.inference_mode():
        chunked = stack(queries, sources)
    batched = stack(queries, sources)  # with gradients: the plain batched products
    for a, b in zip(chunked, batched):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-5)


def test_per_member_projection_equals_the_batched_product_forward_and_backward():
    torch.manual_seed(10)
    x = torch.randn(3, 40, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 5, 6, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    got = stacked._PerMemberLinear.apply(x, weight, bias)
    want = torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
    torch.testing.assert_close(got, want)
    g_out = torch.randn_like(want)
    for a, b in zip(torch.autograd.grad(got, (x, weight, bias), g_out),
                    torch.autograd.grad(want, (x, weight, bias), g_out)):
        torch.testing.assert_close(a, b)


def test_per_member_projections_only_where_threads_would_idle(monkeypatch):
    x = torch.zeros(1)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert stacked._per_member_training(x, members=3, tokens=1024)
    assert not stacked._per_member_training(x, members=6, tokens=1024)  # 3 members per thread
    assert not stacked._per_member_training(x, members=3, tokens=64)  # too few tokens to pay
    assert not stacked._per_member_training(x, members=1, tokens=1024)


def test_a_stack_trains_alike_with_per_member_and_batched_projections(monkeypatch):
    stack = make_stack(3)
    stack.train()
    torch.manual_seed(12)
    queries = [torch.randn(64, 8, 12) for _ in range(3)]
    sources = [torch.randn(64, 8, 12), None, torch.randn(64, 8, 12)]

    def run(per_member: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        monkeypatch.setattr(stacked, "_per_member_training", lambda *a: per_member)
        stack.zero_grad()
        torch.manual_seed(13)  # the same dropout masks in both runs
        outs = stack(queries, sources)
        sum(o.square().sum() for o in outs).backward()
        return [o.detach() for o in outs], [p.grad.clone() for p in stack.parameters()]

    (out_a, grad_a), (out_b, grad_b) = run(True), run(False)
    for a, b in zip(out_a + grad_a, out_b + grad_b):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_steps_whose_first_channel_is_zero_get_no_position_embedding():
    stack = make_stack(1)
    x = torch.randn(1, 1, 4, 12)
    x[..., 1, 0] = 0.0  # step 1 looks like official padding
    embedded = stack._embed(x)
    torch.testing.assert_close(embedded[..., 1, :], x[..., 1, :] * 12 ** 0.5)
    assert not torch.allclose(embedded[..., 2, :], x[..., 2, :] * 12 ** 0.5)


def test_allowed_positions_match_the_official_shifted_causal_mask():
    for q_len, k_len in ((5, 5), (4, 7), (7, 4)):
        # official buffered_future_mask: triu(-inf, 1 + |k_len - q_len|)
        official = torch.triu(torch.full((q_len, k_len), float("-inf")), 1 + abs(k_len - q_len))
        assert torch.equal(allowed_positions(q_len, k_len), official == 0)


def test_a_stack_rejects_the_wrong_number_of_members():
    stack = make_stack(3)
    with pytest.raises(ValueError, match="expected 3 members, got 2 queries"):
        stack([torch.randn(1, 4, 12)] * 2, [None] * 2)
    with pytest.raises(ValueError, match="attn_dropout has 2 values for 3 members"):
        EncoderStack(3, dim=12, num_heads=3, layers=1, attn_dropout=[0.0, 0.0])


# -- the hand-written attention backward ---------------------------------------------------------------------
N, LQ, LK, HD = 6, 5, 7, 3


def attention_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(N, LQ, HD, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(N, LK, HD, generator=g, dtype=torch.float64, requires_grad=True)
    vt = torch.randn(N, HD, LK, generator=g, dtype=torch.float64, requires_grad=True)
    return q, k, vt


def causal_bias(q_len: int = LQ, k_len: int = LK) -> torch.Tensor:
    allowed = allowed_positions(q_len, k_len)
    return torch.zeros(q_len, k_len, dtype=torch.float64).masked_fill(~allowed, float("-inf"))


def reference_attention(q, k, vt, bias, scale, mask=None, row_scale=None):
    """softmax(q k^T * scale + bias) v, with an optional keep mask on the weights, returned (n, hd, Lq)."""
    scores = q @ k.transpose(1, 2) * scale
    if bias is not None:
        scores = scores + bias
    weights = torch.softmax(scores, dim=-1)
    if mask is not None:
        weights = weights * mask
    out = weights @ vt.transpose(1, 2)
    if row_scale is not None:
        out = out * row_scale
    return out.transpose(1, 2)


def compare_with_reference(q, k, vt, bias, mask=None, row_scale=None, thresholds=None, seed=None):
    scale = HD ** -0.5
    g_out = torch.randn(N, HD, LQ, dtype=torch.float64)
    if seed is not None:
        torch.manual_seed(seed)
    out = attention(q, k, vt, bias, scale, thresholds, row_scale)
    grads = torch.autograd.grad(out, (q, k, vt), g_out)
    want = reference_attention(q, k, vt, bias, scale, mask, row_scale)
    want_grads = torch.autograd.grad(want, (q, k, vt), g_out)
    torch.testing.assert_close(out, want)
    for got, expected in zip(grads, want_grads):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("causal", [False, True], ids=["no_mask", "causal"])
def test_attention_backward_passes_gradcheck_in_float64(causal):
    q, k, vt = attention_inputs()
    bias = causal_bias() if causal else None
    assert torch.autograd.gradcheck(lambda q, k, vt: attention(q, k, vt, bias, HD ** -0.5), (q, k, vt))


@pytest.mark.parametrize("causal", [False, True], ids=["no_mask", "causal"])
def test_attention_and_its_gradient_equal_the_plain_softmax_reference(causal):
    compare_with_reference(*attention_inputs(1), causal_bias() if causal else None)


def test_attention_in_several_chunks_equals_the_reference(monkeypatch):
    monkeypatch.setattr(attention_module, "CHUNK_ELEMENTS", 2 * LQ * LK)  # two heads per chunk
    compare_with_reference(*attention_inputs(2), causal_bias())


def test_attention_with_queries_longer_than_keys_equals_the_reference():
    g = torch.Generator().manual_seed(3)
    q = torch.randn(N, 9, HD, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(N, 4, HD, generator=g, dtype=torch.float64, requires_grad=True)
    vt = torch.randn(N, HD, 4, generator=g, dtype=torch.float64, requires_grad=True)
    bias = causal_bias(9, 4)
    out = attention(q, k, vt, bias, 0.5)
    want = reference_attention(q, k, vt, bias, 0.5)
    torch.testing.assert_close(out, want)
    g_out = torch.randn_like(out)
    for got, expected in zip(torch.autograd.grad(out, (q, k, vt), g_out), torch.autograd.grad(want, (q, k, vt), g_out)):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("chunked", [False, True], ids=["one_chunk", "chunks"])
def test_attention_dropout_equals_the_reference_with_the_same_keep_mask(chunked, monkeypatch):
    """The masks come from the global generator; re-seeding and drawing them the same way (one draw
    per chunk of heads, in order) recovers the exact mask the forward used."""
    per_chunk = 2 if chunked else N
    monkeypatch.setattr(attention_module, "CHUNK_ELEMENTS", per_chunk * LQ * LK)
    thresholds, row_scale = row_thresholds([0.7, 0.5, 0.9], repeat=2, device=torch.device("cpu"))
    row_scale = row_scale.to(torch.float64).view(N, 1, 1)
    torch.manual_seed(11)
    mask = torch.cat([keep_mask_rows((min(N, i + per_chunk) - i, LQ, LK), thresholds[i: i + per_chunk])
                      for i in range(0, N, per_chunk)])
    assert 0 < mask.float().mean() < 1  # some weights really are dropped
    compare_with_reference(*attention_inputs(4), causal_bias(), mask=mask.to(torch.float64), row_scale=row_scale,
                           thresholds=thresholds, seed=11)


def test_attention_dropout_on_the_leading_rows_leaves_the_other_rows_untouched():
    # thresholds for the first 2 of N rows: those draw masks, the others keep every weight
    thresholds, row_scale = row_thresholds([0.6], repeat=2, device=torch.device("cpu"))
    torch.manual_seed(12)
    mask = keep_mask_rows((2, LQ, LK), thresholds)
    assert 0 < mask.float().mean() < 1
    mask = torch.cat([mask.to(torch.float64), torch.ones(N - 2, LQ, LK, dtype=torch.float64)])
    full_scale = torch.cat([row_scale.to(torch.float64), torch.ones(N - 2, dtype=torch.float64)]).view(N, 1, 1)
    q, k, vt = attention_inputs(5)
    scale = HD ** -0.5
    g_out = torch.randn(N, HD, LQ, dtype=torch.float64)
    torch.manual_seed(12)
    out = attention(q, k, vt, causal_bias(), scale, thresholds, row_scale.to(torch.float64).view(2, 1, 1))
    want = reference_attention(q, k, vt, causal_bias(), scale, mask, full_scale)
    torch.testing.assert_close(out, want)
    for got, expected in zip(torch.autograd.grad(out, (q, k, vt), g_out), torch.autograd.grad(want, (q, k, vt), g_out)):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("ranges", [[(2, 4)], [(0, 1), (3, 5)], [(4, 6)]], ids=["middle", "two", "last"])
def test_attention_dropout_on_row_ranges_leaves_the_other_rows_untouched(ranges, monkeypatch):
    monkeypatch.setattr(attention_module, "CHUNK_ELEMENTS", 3 * LQ * LK)  # chunks of three heads
    rows = sum(e - s for s, e in ranges)
    thresholds, row_scale = row_thresholds([0.6], repeat=rows, device=torch.device("cpu"))
    chunks = attention_module._chunks(N, ranges, 3)
    # the masks are drawn chunk by chunk, in order, for the chunks inside the ranges
    torch.manual_seed(14)
    drawn = {i: keep_mask_rows((j - i, LQ, LK), thresholds[o: o + j - i]) for i, j, o in chunks if o >= 0}
    assert 0 < torch.cat(list(drawn.values())).float().mean() < 1
    mask = torch.ones(N, LQ, LK, dtype=torch.float64)
    full_scale = torch.ones(N, 1, 1, dtype=torch.float64)
    for i, j, o in chunks:
        if o >= 0:
            mask[i:j] = drawn[i].to(torch.float64)
            full_scale[i:j] = row_scale[o: o + j - i].to(torch.float64).view(-1, 1, 1)
    q, k, vt = attention_inputs(6)
    scale = HD ** -0.5
    g_out = torch.randn(N, HD, LQ, dtype=torch.float64)
    torch.manual_seed(14)
    out = attention(q, k, vt, causal_bias(), scale, thresholds, row_scale.to(torch.float64).view(-1, 1, 1), ranges)
    want = reference_attention(q, k, vt, causal_bias(), scale, mask, full_scale)
    torch.testing.assert_close(out, want)
    for got, expected in zip(torch.autograd.grad(out, (q, k, vt), g_out), torch.autograd.grad(want, (q, k, vt), g_out)):
        torch.testing.assert_close(got, expected)


def test_attention_chunks_never_straddle_a_dropout_range():
    assert attention_module._chunks(10, [(2, 7)], 4) == [(0, 2, -1), (2, 6, 0), (6, 7, 4), (7, 10, -1)]
    assert attention_module._chunks(6, [(0, 2), (4, 6)], 8) == [(0, 2, 0), (2, 4, -1), (4, 6, 2)]
    assert attention_module._chunks(4, [], 3) == [(0, 3, -1), (3, 4, -1)]


def test_attention_rejects_dropout_ranges_that_do_not_fit_the_thresholds():
    q, k, vt = attention_inputs(7)
    thresholds, row_scale = row_thresholds([0.5], repeat=2, device=torch.device("cpu"))
    row_scale = row_scale.to(torch.float64).view(-1, 1, 1)
    with pytest.raises(ValueError, match="2 dropout thresholds for 3 rows"):
        attention(q, k, vt, None, 1.0, thresholds, row_scale, [(1, 4)])
    with pytest.raises(ValueError, match=r"sorted, disjoint and within 0\.\.6"):
        attention(q, k, vt, None, 1.0, thresholds, row_scale, [(3, 4), (1, 2)])
    with pytest.raises(ValueError, match=r"sorted, disjoint and within 0\.\.6"):
        attention(q, k, vt, None, 1.0, thresholds, row_scale, [(5, 7)])


def test_attention_dropout_scales_kept_weights_by_the_inverse_keep_rate():
    thresholds, row_scale = row_thresholds([0.5], repeat=1, device=torch.device("cpu"))
    assert row_scale.item() == pytest.approx(2.0)
    # one query attending to one key: the weight is 1, kept (output 2 v) or dropped (output 0)
    q, k = torch.ones(4096, 1, 1), torch.ones(4096, 1, 1)
    vt = torch.full((4096, 1, 1), 3.0)
    out = attention(q, k, vt, None, 1.0, thresholds.repeat(4096), row_scale.repeat(4096).view(-1, 1, 1))
    values = set(out.flatten().tolist())
    assert values == {0.0, 6.0}
    assert out.mean().item() == pytest.approx(3.0, rel=0.1)


# -- the emotion task ---------------------------------------------------------------------------
def test_emotion_heads_give_e_logits_beside_every_sentiment_output_and_feed_the_gd_units() -> None:
    cfg = dataclasses.replace(ALIGNED, emotion_classes=7)
    model = make_model(cfg).eval()
    out = model(*make_inputs(cfg, 3), distill=True)
    for key, shape in expected_shapes(cfg, 3).items():
        assert tuple(out[key].shape) == shape, key
    emotion_keys = {f"emotion_{k}_{b}" for k in "lav" for b in ("homo", "hetero")} | {"emotion_c", "emotion_logit"}
    assert {k for k in out if k.startswith("emotion")} == emotion_keys
    assert all(tuple(out[k].shape) == (3, 7) for k in emotion_keys)
    logits, _ = model.gd_inputs(out, "hetero")
    assert tuple(logits.shape) == (3, 3, 8)  # [sentiment, 7 emotions] per modality
    assert torch.allclose(out["edges_homo"].sum(0), torch.ones(3))


def test_without_emotion_classes_the_model_is_the_single_task_one_parameter_for_parameter() -> None:
    single, multi = make_model(ALIGNED), make_model(dataclasses.replace(ALIGNED, emotion_classes=7))
    extra = set(multi.state_dict()) - set(single.state_dict())
    assert extra and all(".emotion." in k for k in extra), extra
    assert {k: v.shape for k, v in single.state_dict().items()} == {
        k: v.shape for k, v in multi.state_dict().items() if k not in extra and "_gd.W_logit" not in k
        } | {k: v.shape for k, v in single.state_dict().items() if "_gd.W_logit" in k}
    assert not any(k.startswith("emotion") for k in single.eval()(*make_inputs(ALIGNED, 2), distill=True))


def test_emotion_classes_of_one_is_refused_with_the_values_that_make_sense() -> None:
    from dmd_model.config import ConfigError

    with pytest.raises(ConfigError, match=r"model.emotion_classes = 1: use 0 \(sentiment only\)"):
        dataclasses.replace(ALIGNED, emotion_classes=1).validate()
