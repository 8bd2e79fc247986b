"""Scaled dot-product attention for many narrow heads, with its own backward pass.

DMD's attention heads are narrow (d / h = 5 channels) and short (about 46 steps), and there are many of
them: 12 transformers x 10 heads x batch. The cost is in the (L, L) weight matrices, not in the
products, so this module
- works through the heads in chunks whose weights stay in cache;
- orients every batched product so that its output is wide (a (5, L) or (L, L) result rather than
  (L, 5): on a CPU that is several times faster for these shapes), which is why values come in
  transposed, (n, hd, L), and the output goes out transposed, (n, hd, Lq);
- computes the gradient by hand from the saved weights, in the same orientations, instead of
  letting autograd record a dozen small operations per chunk.
Attention dropout keeps one probability per head row (members of a stack differ); its masks come
from `dmd_model.kernels.dropout` as keep bits, and its 1 / keep scale is applied to the (smaller) output.
Only the rows in the given dropout ranges draw masks: members of a stack without attention dropout
share the batched products of the others without paying for random numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .dropout import apply_keep_bits, keep_bits_rows

# score elements per chunk: 2 MB of float32, which stays in a core's cache
CHUNK_ELEMENTS = 1 << 19


def attention(q: Tensor, k: Tensor, vt: Tensor, bias: Tensor | None, scale: float,
              thresholds: Tensor | None = None, row_scale: Tensor | None = None,
              dropout_rows: Sequence[tuple[int, int]] | None = None) -> Tensor:
    """softmax(scale * q k^T + bias) v for n heads, returned transposed.

    q (n, Lq, hd), k (n, Lk, hd), vt (n, hd, Lk) (values transposed); bias (Lq, Lk) additive
    (-inf hides a key) or None. Attention dropout: `dropout_rows`, sorted disjoint row ranges
    [start, end), default the first m rows; thresholds (m,) int16 and row_scale (m, 1, 1), one per
    row of those ranges in order (see `dmd_model.kernels.dropout.row_thresholds`); the other rows keep every
    weight. Returns (n, hd, Lq).
    """
    n = q.shape[0]
    m = 0 if thresholds is None else thresholds.shape[0]
    ranges = [(0, m)] if dropout_rows is None else [(int(s), int(e)) for s, e in dropout_rows]
    _check_ranges(ranges, n, m)
    device_type = q.device.type
    if torch.is_autocast_enabled(device_type):
        # under autocast the products arrive in half precision; the weights and their softmax are
        # kept in float32, as the official code keeps its softmax in float32
        with torch.autocast(device_type, enabled=False):
            q, k, vt = q.float(), k.float(), vt.float()
            bias = None if bias is None else bias.float()
            row_scale = None if row_scale is None else row_scale.float()
            return _Attention.apply(q, k, vt, bias, scale, thresholds, row_scale, ranges)
    return _Attention.apply(q, k, vt, bias, scale, thresholds, row_scale, ranges)


def _check_ranges(ranges: list[tuple[int, int]], n: int, m: int) -> None:
    end = 0
    for s, e in ranges:
        if s < end or e < s or e > n:
            raise ValueError(f"dropout row ranges must be sorted, disjoint and within 0..{n}, got {ranges}")
        end = e
    rows = sum(e - s for s, e in ranges)
    if rows != m:
        raise ValueError(f"{m} dropout thresholds for {rows} rows in the dropout ranges {ranges} "
                         f"(of {n} attention rows)")


def _chunks(n: int, ranges: list[tuple[int, int]], chunk: int) -> list[tuple[int, int, int]]:
    """(start, end, offset) row chunks of at most `chunk` rows; none straddles a range boundary.
    offset is the chunk's first row among the dropout rows (its thresholds), or -1 outside them."""
    segments, pos, offset = [], 0, 0
    for s, e in ranges:
        if pos < s:
            segments.append((pos, s, -1))
        if s < e:
            segments.append((s, e, offset))
        offset, pos = offset + e - s, e
    if pos < n:
        segments.append((pos, n, -1))
    return [(i, min(e, i + chunk), -1 if o < 0 else o + i - s)
            for s, e, o in segments for i in range(s, e, chunk)]


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, vt: Tensor, bias: Tensor | None, scale: float,  # type: ignore[override]
                thresholds: Tensor | None, row_scale: Tensor | None, ranges: list[tuple[int, int]]) -> Tensor:
        n, Lq, hd = q.shape
        Lk = k.shape[1]
        m = 0 if thresholds is None else thresholds.shape[0]  # rows with attention dropout
        chunks = _chunks(n, ranges, max(1, CHUNK_ELEMENTS // (Lq * Lk)))
        save = any(ctx.needs_input_grad[:3])
        weights = q.new_empty(n, Lq, Lk) if save else None  # softmax output, for the backward
        dropped = q.new_empty(m, Lq, Lk) if save and m else None  # weights after dropout, dropout rows
        out = q.new_empty(n, hd, Lq)
        for i, j, o in chunks:
            kt = k[i:j].transpose(1, 2)
            if bias is None:
                scores = torch.bmm(q[i:j], kt).mul_(scale)
            else:
                scores = torch.baddbmm(bias, q[i:j], kt, alpha=scale)
            if weights is None:
                p = torch.softmax(scores, dim=-1)
            else:
                p = torch._softmax(scores, -1, False, out=weights[i:j])
            if o >= 0:
                # the keep bits are only needed here: the backward recovers the mask's effect from
                # the dropped-out weights (see `backward`), so no mask is kept
                rows = slice(o, o + j - i)
                bits = keep_bits_rows(p.shape, thresholds[rows])  # type: ignore[index]
                p = apply_keep_bits(p, bits, out=None if dropped is None else dropped[rows])
            torch.bmm(vt[i:j], p.transpose(1, 2), out=out[i:j])
            if o >= 0 and row_scale is not None:
                out[i:j].mul_(row_scale[o: o + j - i])
        if save:
            ctx.save_for_backward(q, k, vt, weights, dropped, row_scale)
            ctx.scale, ctx.chunks = scale, chunks
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        q, k, vt, weights, dropped, row_scale = ctx.saved_tensors
        scale = ctx.scale
        g_out = grad_out.contiguous()
        n = q.shape[0]
        g_qt = torch.empty(n, q.shape[2], q.shape[1], dtype=q.dtype, device=q.device)
        g_kt = torch.empty(n, k.shape[2], k.shape[1], dtype=k.dtype, device=k.device)
        g_vt = torch.empty_like(vt)
        for i, j, o in ctx.chunks:
            go = g_out[i:j]  # (c, hd, Lq)
            dropped_chunk = o >= 0  # `dropped` holds these rows: the forward saved it
            if dropped_chunk and row_scale is not None:
                go = go * row_scale[o: o + j - i]
            p_used = dropped[o: o + j - i] if dropped_chunk else weights[i:j]
            torch.bmm(go, p_used, out=g_vt[i:j])  # dV^T = dO^T P'
            g_p = torch.bmm(go.transpose(1, 2), vt[i:j])  # dP' = dO V^T: (c, Lq, Lk)
            if dropped_chunk:
                # softmax backward of the masked gradient, g = dP' * M:  dS = P * (g - rowsum(g * P)).
                # P * M is the dropped-out P' (exactly: M is 0 or 1), so
                # dS = P' * dP' - P * rowsum(P' * dP'), with no mask
                g_s = g_p.mul_(p_used)
                g_s.addcmul_(weights[i:j], g_s.sum(-1, keepdim=True), value=-1)
            else:
                g_s = torch._softmax_backward_data(g_p, weights[i:j], -1, g_p.dtype)
            # dQ^T = K^T dS^T and dK^T = Q^T dS, both with a wide output
            torch.baddbmm(g_qt[i:j], k[i:j].transpose(1, 2), g_s.transpose(1, 2), beta=0, alpha=scale,
                          out=g_qt[i:j])
            torch.baddbmm(g_kt[i:j], q[i:j].transpose(1, 2), g_s, beta=0, alpha=scale, out=g_kt[i:j])
        return g_qt.transpose(1, 2), g_kt.transpose(1, 2), g_vt, None, None, None, None, None
