"""The fast paths of the stacked transformer members (`dmd_model.network.transformer`): the per-member
projections, the attention of all members at once, and the in-place inference feed-forward. Each
computes what the plain formula says; the choices between paths are measured on CPUs (BENCHMARKS.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import native
from .attention import attention
from .dropout import row_thresholds


def stacked_linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """x (G, B, L, in) times per-member weight (G, out, in) plus bias (G, out).

    Few tokens, or training: one batched product. Many tokens without gradients, or in training
    a member count that leaves threads idle (`_per_member_training`): one GEMM per member written
    in place, which on a CPU is faster than the batched GEMM.
    """
    G, B, L, _ = x.shape
    tokens = B * L
    x2 = x.reshape(G, tokens, -1)
    grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    if grad and _per_member_training(x, G, tokens):
        return _PerMemberLinear.apply(x2, weight, bias).view(G, B, L, -1)
    if tokens < _LOOP_TOKENS or G == 1 or grad or torch.is_autocast_enabled(x.device.type):
        return torch.baddbmm(bias.unsqueeze(1), x2, weight.transpose(1, 2)).view(G, B, L, -1)
    return _addmm_per_member(x2, weight, bias).view(G, B, L, -1)


def stacked_attention(q: Tensor, k: Tensor, v: Tensor, num_heads: int, mask: Tensor | None, shift: int | None,
                      p_attn: list[float], training: bool) -> Tensor:
    """Multi-head attention over all members, batch items and heads at once: q, k, v (G, B, L, d). On
    a CPU the fused kernel of `native` where it is built, else `attention` (see there for why it is
    shaped this way). `mask` and `shift` describe the same causal mask (key j visible to query i when
    j <= i + shift); `p_attn`: one attention dropout per member."""
    G, B, Lq, d = q.shape
    Lk = k.shape[2]
    h = num_heads
    hd = d // h
    n = G * B * h
    if native.usable(q, hd):
        return _fused_attention(q, k, v, h, hd, shift, p_attn if training else [])
    # (G, B, L, h*hd) -> (G*B*h, L, hd); values transposed, (G*B*h, hd, L)
    q = q.reshape(G * B, Lq, h, hd).transpose(1, 2).reshape(n, Lq, hd)
    k = k.reshape(G * B, Lk, h, hd).transpose(1, 2).reshape(n, Lk, hd)
    vt = v.reshape(G * B, Lk, h, hd).permute(0, 2, 3, 1).reshape(n, hd, Lk)
    bias = None
    if mask is not None:
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, float("-inf"))
    thresholds = row_scale = None
    ranges: list[tuple[int, int]] = []
    dropping = [p for p in p_attn if p > 0] if training else []
    if dropping:
        # attention dropout differs between members: one keep threshold per (member, item, head),
        # for the rows of the members that have it (the others draw no masks)
        rows = B * h
        for g, p in enumerate(p_attn):
            if p <= 0:
                continue
            if ranges and ranges[-1][1] == g * rows:
                ranges[-1] = (ranges[-1][0], (g + 1) * rows)
            else:
                ranges.append((g * rows, (g + 1) * rows))
        thresholds, row_scale = row_thresholds([1.0 - p for p in dropping], rows, q.device)
        row_scale = row_scale.to(q.dtype).view(-1, 1, 1)
    out = attention(q, k, vt, bias, hd ** -0.5, thresholds, row_scale, ranges)
    # (G*B*h, hd, Lq) -> (G, B, Lq, h*hd)
    return out.view(G * B, h, hd, Lq).permute(0, 3, 1, 2).reshape(G, B, Lq, d)


def _fused_attention(q: Tensor, k: Tensor, v: Tensor, heads: int, head_dim: int, shift: int | None,
                     p_attn: list[float]) -> Tensor:
    """`stacked_attention` through the fused CPU kernel: q, k, v (G, B, L, d) are read in place;
    p_attn, one attention dropout per member (empty: none)."""
    G, B, Lq, d = q.shape
    thresholds = row_scale = None
    if any(p > 0 for p in p_attn):
        thresholds, row_scale = row_thresholds([1.0 - p for p in p_attn], B * heads, q.device)
        thresholds = thresholds.to(torch.int32)
    out = native.FusedAttention.apply(q.reshape(G * B, Lq, d), k.reshape(G * B, -1, d), v.reshape(G * B, -1, d),
                                      heads, head_dim ** -0.5, shift, thresholds, row_scale)
    return out.view(G, B, Lq, d)


# tokens per member from which a per-member GEMM beats one batched GEMM (measured on CPU)
_LOOP_TOKENS = 512


def _per_member_training(x: Tensor, members: int, tokens: int) -> bool:
    """Whether a training-time projection runs as one GEMM per member (`_PerMemberLinear`).

    A batched CPU GEMM shares its threads out over the members, so a member count that is not a
    multiple of the thread count leaves threads idle for part of it (3 members on 2 threads: one
    thread does two); one GEMM per member keeps every thread on each.
    """
    return (x.device.type == "cpu" and members > 1 and members % torch.get_num_threads() != 0
            and tokens >= _LOOP_TOKENS and not torch.is_autocast_enabled("cpu"))


def _addmm_per_member(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """x (G, T, in) times weight (G, out, in) transposed, plus bias (G, out), one GEMM per member."""
    out = x.new_empty(x.shape[0], x.shape[1], weight.shape[1])
    for g in range(x.shape[0]):
        torch.addmm(bias[g], x[g], weight[g].t(), out=out[g])
    return out


class _PerMemberLinear(torch.autograd.Function):
    """x (G, T, in) times weight (G, out, in) transposed, plus bias (G, out): one GEMM per member,
    forward and backward."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        return _addmm_per_member(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        need_x, need_w, need_b = ctx.needs_input_grad
        g_x = None
        if need_x:
            g_x = torch.empty_like(x, memory_format=torch.contiguous_format)
            for g in range(x.shape[0]):
                torch.mm(grad[g], weight[g], out=g_x[g])  # (T, out) (out, in)
        # the weight gradient's reduction over the tokens runs as fast batched as per member
        g_w = torch.bmm(grad.transpose(1, 2), x) if need_w else None  # (G, out, T) (G, T, in)
        return g_x, g_w, grad.sum(1) if need_b else None


# tokens per chunk of the inference feed-forward (1024 and 4096 measured alike on the AMD EPYC)
_FFN_CHUNK = 1024


def feed_forward_in_place(x: Tensor, weight: Tensor) -> bool:
    """Whether a position-wise block may run in cache-sized chunks, in place: no gradients, plain
    precision, a CPU, and enough tokens for chunks to pay."""
    return (x.device.type == "cpu" and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
            and x.shape[1] * x.shape[2] >= _LOOP_TOKENS and x.dtype == weight.dtype)


def feed_forward_chunked(x: Tensor, norm_w: Tensor, norm_b: Tensor, w1: Tensor, b1: Tensor, w2: Tensor,
                          b2: Tensor) -> Tensor:
    """x + fc2(relu(fc1(LN1(x)))) for each member, `_FFN_CHUNK` tokens at a time, written over x.

    Against the batched path this saves the separate affine pass (it is part of the layer norm), the
    out-of-place ReLU and the residual addition (fc2 accumulates into x); the chunks bound the hidden
    buffer, (chunk, 4d), which is reused. Only for inference: x is a fresh tensor here and is
    overwritten.
    """
    G, B, L, d = x.shape
    x2 = x.view(G, B * L, d)
    hidden = x.new_empty(_FFN_CHUNK, w1.shape[1])
    for g in range(G):
        w1t, w2t = w1[g].t(), w2[g].t()
        for i in range(0, B * L, _FFN_CHUNK):
            xc = x2[g, i: i + _FFN_CHUNK]
            h = F.layer_norm(xc, (d,), norm_w[g], norm_b[g])
            hc = torch.addmm(b1[g], h, w1t, out=hidden[: xc.shape[0]]).relu_()
            xc.add_(b2[g]).addmm_(hc, w2t)
    return x
