"""The MulT transformer encoders DMD uses, run as a stack of independent members.

DMD has twelve transformer encoders: six crossmodal ones (L<-A, L<-V, A<-L, A<-V, V<-L, V<-A), three
self-attention ones on the modality-irrelevant features and three "memory" ones on the concatenated
crossmodal outputs. They share a width within each family, so `EncoderStack` holds the weights of G
members as stacked tensors (member first) and runs every member whose sequence lengths agree in one
batched operation. With aligned data the nine d-wide encoders run as one; with unaligned data the
members fall back to smaller groups, with the same result. Each member computes what the official
`TransformerEncoder` (MulT, fairseq lineage) computes:

    x = sqrt(d) * x_in + pos(x_in);  dropout
    per layer:  x = x + dropout(attn(LN0(x), LN0(kv), LN0(kv)))      (pre-norm, causal mask optional)
                x = x + dropout(fc2(dropout(relu(fc1(LN1(x))))))
    LN(x)

For a crossmodal member, kv is the other modality, embedded once before the first layer the same way
as x (with its own dropout for keys and for values in training, as the official code does); for a
self-attention member, kv is the layer's current input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..kernels import native
from ..kernels.attention import attention
from ..kernels.dropout import dropout, row_thresholds


def sinusoidal_table(num_positions: int, dim: int) -> Tensor:
    """tensor2tensor-style sinusoidal embeddings; row 0 is the padding row (zeros)."""
    half = dim // 2
    scale = math.log(10000) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float) * -scale)
    angles = torch.arange(num_positions, dtype=torch.float).unsqueeze(1) * freqs.unsqueeze(0)
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2 == 1:
        table = torch.cat([table, torch.zeros(num_positions, 1)], dim=1)
    table[0] = 0
    return table


def allowed_positions(q_len: int, k_len: int, device: torch.device | None = None) -> Tensor:
    """Boolean (q_len, k_len) mask of the positions a query may attend to.

    The official `buffered_future_mask` hides key j from query i when j > i + |k_len - q_len|: the
    causal mask, shifted when the two sequences differ in length.
    """
    i = torch.arange(q_len, device=device).unsqueeze(1)
    j = torch.arange(k_len, device=device).unsqueeze(0)
    return j <= i + abs(k_len - q_len)


class EncoderStack(nn.Module):
    """G independent MulT transformer encoders of one width and depth, with stacked weights.

    Parameters are named after the official ones with the member as first index, for example
    `layers.0.in_proj_weight[g]` is the official `trans_l_with_a.layers.0.self_attn.in_proj_weight`
    for member g (see `dmd_model.artefacts.official` for the key map).
    """

    def __init__(
        self,
        members: int,
        dim: int,
        num_heads: int,
        layers: int,
        attn_dropout: Sequence[float],
        relu_dropout: float = 0.0,
        res_dropout: float = 0.0,
        embed_dropout: float = 0.0,
        causal: bool = False,
    ) -> None:
        super().__init__()
        if len(attn_dropout) != members:
            raise ValueError(f"attn_dropout has {len(attn_dropout)} values for {members} members")
        self.members, self.dim, self.num_heads = members, dim, num_heads
        self.head_dim = dim // num_heads
        self.relu_dropout, self.res_dropout, self.embed_dropout = relu_dropout, res_dropout, embed_dropout
        self.causal = causal
        self._attn_dropout_list = [float(p) for p in attn_dropout]
        self.layers = nn.ModuleList(_StackedLayer(members, dim) for _ in range(layers))
        self.norm_weight = nn.Parameter(torch.ones(members, dim))
        self.norm_bias = nn.Parameter(torch.zeros(members, dim))
        self._positions: dict[tuple[int, torch.device, torch.dtype], Tensor] = {}

    # -- embedding -----------------------------------------------------------------------
    def _position_table(self, length: int, like: Tensor) -> Tensor:
        key = (length, like.device, like.dtype)
        table = self._positions.get(key)
        if table is None:
            table = sinusoidal_table(length + 1, self.dim)[1:].to(device=like.device, dtype=like.dtype)
            self._positions[key] = table
        return table

    def _embed(self, x: Tensor) -> Tensor:
        """sqrt(d) * x + positions; a step whose first channel is exactly 0 counts as padding.

        The official `make_positions` marks padding by `x[..., 0] == 0` and gives it the zero
        embedding; real steps get position t + 1. Zero-padded inputs stay zero through the bias-free
        convolutions, so this is how the official model tells padding apart.
        """
        positions = self._position_table(x.shape[-2], x)
        real = (x[..., :1] != 0).to(x.dtype)
        return torch.addcmul(x * math.sqrt(self.dim), real, positions)

    # -- forward -------------------------------------------------------------------------
    def forward(self, queries: Sequence[Tensor], sources: Sequence[Tensor | None],
                last_only: bool | Sequence[bool] = False) -> list[Tensor]:
        """Run every member: `queries[g]` is (B, Lq, d); `sources[g]` is (B, Lk, d) for a crossmodal
        member or None for self-attention. Returns the members' outputs, each (B, Lq, d), or for a
        member with `last_only` (B, 1, d): its last step, which is all DMD reads from some encoders,
        so their final layer computes queries for that step alone (same values, less work).

        Members of the same kind (crossmodal or self) whose lengths agree run together.
        """
        if len(queries) != self.members or len(sources) != self.members:
            raise ValueError(f"expected {self.members} members, got {len(queries)} queries")
        last = [last_only] * self.members if isinstance(last_only, bool) else list(last_only)
        groups: dict[tuple, list[int]] = {}
        for g, (q, kv) in enumerate(zip(queries, sources)):
            key = (q.shape[1], None if kv is None else kv.shape[1], last[g])
            groups.setdefault(key, []).append(g)
        outputs: list[Tensor | None] = [None] * self.members
        for (_, k_len, last_g), idx in groups.items():
            q = torch.stack([queries[g] for g in idx])
            kv = None if k_len is None else torch.stack([sources[g] for g in idx])  # type: ignore[misc]
            for g, out in zip(idx, self._run_group(idx, q, kv, last_g).unbind(0)):
                outputs[g] = out
        return outputs  # type: ignore[return-value]

    def _select(self, param: Tensor, idx: list[int]) -> Tensor:
        """The rows of a stacked parameter for the members idx, in that order (a view when they are
        a contiguous run, as every group of DMD's stacks is)."""
        if idx == list(range(idx[0], idx[0] + len(idx))):
            return param if len(idx) == self.members else param[idx[0]: idx[0] + len(idx)]
        return param[idx]

    def _run_group(self, idx: list[int], queries: Tensor, sources: Tensor | None, last_only: bool) -> Tensor:
        training = self.training
        x = dropout(self._embed(queries), self.embed_dropout, training)  # (G, B, Lq, d)
        # Keys and values of crossmodal members are embedded once; in training each gets its own
        # embedding dropout, as the official code embeds x_in_k and x_in_v separately. They stay the
        # same through the layers, so they are standardised here, once; each layer adds its own norm
        # affine (folded into its projection when gradients are on, see `_StackedLayer.forward`).
        k_src = v_src = None
        if sources is not None:
            kv = self._embed(sources)
            if training and self.embed_dropout > 0:
                k_src = _standardise(dropout(kv, self.embed_dropout))
                v_src = _standardise(dropout(kv, self.embed_dropout))
            else:
                k_src = v_src = _standardise(kv)
        q_len = x.shape[2]
        k_len = q_len if sources is None else sources.shape[2]
        mask = allowed_positions(q_len, k_len, x.device) if self.causal else None
        shift = abs(k_len - q_len) if self.causal else None  # the same mask for the fused kernel
        p_attn = [self._attn_dropout_list[g] for g in idx]
        final = len(self.layers) - 1
        for n, layer in enumerate(self.layers):
            x = layer(self, idx, x, k_src, v_src, mask, shift, p_attn, last_only and n == final)
        return _norm(x, self._select(self.norm_weight, idx), self._select(self.norm_bias, idx))


def _standardise(x: Tensor) -> Tensor:
    """Layer norm without its affine part."""
    return F.layer_norm(x, (x.shape[-1],))


def _affine(z: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """z * weight + bias with per-member parameters (G, d) on z (G, B, L, d)."""
    G = z.shape[0]
    return torch.addcmul(bias.view(G, 1, 1, -1), z, weight.view(G, 1, 1, -1))


def _norm(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Layer norm with per-member affine parameters (G, d)."""
    return _affine(_standardise(x), weight, bias)


def _fold_norm(weight: Tensor, bias: Tensor, norm_weight: Tensor, norm_bias: Tensor) -> tuple[Tensor, Tensor]:
    """A linear layer after a layer norm's affine, as one linear layer on the standardised input:

        (z * g + c) W^T + b  =  z (W diag(g))^T + (W c + b)

    per member: weight (G, out, in), bias (G, out), norm weight g and bias c (G, in). The fold touches
    the small weights instead of the (tokens, in) activations, forward and backward.
    """
    folded_bias = torch.baddbmm(bias.unsqueeze(2), weight, norm_bias.unsqueeze(2)).squeeze(2)
    return weight * norm_weight.unsqueeze(1), folded_bias


class _StackedLayer(nn.Module):
    """One pre-norm encoder layer for G members (official `TransformerEncoderLayer`)."""

    def __init__(self, members: int, dim: int) -> None:
        super().__init__()
        self.in_proj_weight = nn.Parameter(torch.empty(members, 3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(members, 3 * dim))
        self.out_proj_weight = nn.Parameter(torch.empty(members, dim, dim))
        self.out_proj_bias = nn.Parameter(torch.zeros(members, dim))
        self.fc1_weight = nn.Parameter(torch.empty(members, 4 * dim, dim))
        self.fc1_bias = nn.Parameter(torch.zeros(members, 4 * dim))
        self.fc2_weight = nn.Parameter(torch.empty(members, dim, 4 * dim))
        self.fc2_bias = nn.Parameter(torch.zeros(members, dim))
        self.norm0_weight = nn.Parameter(torch.ones(members, dim))
        self.norm0_bias = nn.Parameter(torch.zeros(members, dim))
        self.norm1_weight = nn.Parameter(torch.ones(members, dim))
        self.norm1_bias = nn.Parameter(torch.zeros(members, dim))
        # Official initialisation: xavier_uniform for the attention projections and fc1/fc2 (per
        # member, so fan-in/fan-out are those of one encoder), zero biases. The official out_proj is
        # an nn.Linear re-initialised with xavier_uniform and a zero bias.
        for w in (self.in_proj_weight, self.out_proj_weight, self.fc1_weight, self.fc2_weight):
            for g in range(members):
                nn.init.xavier_uniform_(w.data[g])

    @staticmethod
    def _linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
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

    def forward(self, stack: EncoderStack, idx: list[int], x: Tensor, k_src: Tensor | None,
                v_src: Tensor | None, mask: Tensor | None, shift: int | None, p_attn: list[float],
                last_only: bool) -> Tensor:
        sel = stack._select
        d = x.shape[-1]
        training = stack.training
        # With gradients the norms' affine parts are folded into the next projection (`_fold_norm`);
        # without, the few extra small products of the fold cost more than the affine pass they save.
        fold = torch.is_grad_enabled()
        n0w, n0b = sel(self.norm0_weight, idx), sel(self.norm0_bias, idx)
        w_in, b_in = sel(self.in_proj_weight, idx), sel(self.in_proj_bias, idx)
        if fold:
            w_in, b_in = _fold_norm(w_in, b_in, n0w, n0b)

        def norm0(z: Tensor) -> Tensor:  # norm0's affine, on standardised queries, keys and values
            return z if fold else _affine(z, n0w, n0b)

        # --- attention block -----------------------------------------------------------
        h = norm0(_standardise(x))
        hq = h
        if last_only:
            shift = None if shift is None else shift + x.shape[2] - 1  # the query is the last row
            x, hq = x[:, :, -1:], h[:, :, -1:]
            mask = None if mask is None else mask[-1:]
        if k_src is None and not last_only:
            q, k, v = self._linear(h, w_in, b_in).split(d, dim=-1)  # self-attention: one product
        elif k_src is None:
            q = self._linear(hq, w_in[:, :d], b_in[:, :d])
            k, v = self._linear(h, w_in[:, d:], b_in[:, d:]).split(d, dim=-1)
        else:
            q = self._linear(hq, w_in[:, :d], b_in[:, :d])
            if k_src is v_src:
                k, v = self._linear(norm0(k_src), w_in[:, d:], b_in[:, d:]).split(d, dim=-1)
            else:
                k = self._linear(norm0(k_src), w_in[:, d:2 * d], b_in[:, d:2 * d])
                v = self._linear(norm0(v_src), w_in[:, 2 * d:], b_in[:, 2 * d:])  # type: ignore[arg-type]
        attn = self._attention(stack, q, k, v, mask, shift, p_attn, training)
        attn = self._linear(attn, sel(self.out_proj_weight, idx), sel(self.out_proj_bias, idx))
        x = x + dropout(attn, stack.res_dropout, training)

        # --- position-wise feed-forward ----------------------------------------------------
        n1w, n1b = sel(self.norm1_weight, idx), sel(self.norm1_bias, idx)
        w1, b1 = sel(self.fc1_weight, idx), sel(self.fc1_bias, idx)
        if _chunked_inference(x, w1):
            return _feed_forward_chunked(x, n1w, n1b, w1, b1, sel(self.fc2_weight, idx), sel(self.fc2_bias, idx))
        if fold:
            h = _standardise(x)
            w1, b1 = _fold_norm(w1, b1, n1w, n1b)
        else:
            h = _norm(x, n1w, n1b)
        h = F.relu(self._linear(h, w1, b1))
        h = self._linear(dropout(h, stack.relu_dropout, training), sel(self.fc2_weight, idx), sel(self.fc2_bias, idx))
        return x + dropout(h, stack.res_dropout, training)

    @staticmethod
    def _attention(stack: EncoderStack, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                   shift: int | None, p_attn: list[float], training: bool) -> Tensor:
        """Multi-head attention over all members, batch items and heads at once: on a CPU the fused
        kernel of `dmd_model.kernels.native` where it is built, else `dmd_model.kernels.attention` (see there for why
        it is shaped this way). `mask` and `shift` describe the same causal mask (key j visible to
        query i when j <= i + shift)."""
        G, B, Lq, d = q.shape
        Lk = k.shape[2]
        h, hd = stack.num_heads, stack.head_dim
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
    """`_StackedLayer._attention` through the fused CPU kernel: q, k, v (G, B, L, d) are read in place;
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


def _chunked_inference(x: Tensor, weight: Tensor) -> bool:
    """Whether a position-wise block may run in cache-sized chunks, in place: no gradients, plain
    precision, a CPU, and enough tokens for chunks to pay."""
    return (x.device.type == "cpu" and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
            and x.shape[1] * x.shape[2] >= _LOOP_TOKENS and x.dtype == weight.dtype)


def _feed_forward_chunked(x: Tensor, norm_w: Tensor, norm_b: Tensor, w1: Tensor, b1: Tensor, w2: Tensor,
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
