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

from ..kernels.dropout import dropout
from ..kernels.stacked import feed_forward_chunked, feed_forward_in_place, stacked_attention, stacked_linear


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
            q, k, v = stacked_linear(h, w_in, b_in).split(d, dim=-1)  # self-attention: one product
        elif k_src is None:
            q = stacked_linear(hq, w_in[:, :d], b_in[:, :d])
            k, v = stacked_linear(h, w_in[:, d:], b_in[:, d:]).split(d, dim=-1)
        else:
            q = stacked_linear(hq, w_in[:, :d], b_in[:, :d])
            if k_src is v_src:
                k, v = stacked_linear(norm0(k_src), w_in[:, d:], b_in[:, d:]).split(d, dim=-1)
            else:
                k = stacked_linear(norm0(k_src), w_in[:, d:2 * d], b_in[:, d:2 * d])
                v = stacked_linear(norm0(v_src), w_in[:, 2 * d:], b_in[:, 2 * d:])  # type: ignore[arg-type]
        attn = stacked_attention(q, k, v, stack.num_heads, mask, shift, p_attn, training)
        attn = stacked_linear(attn, sel(self.out_proj_weight, idx), sel(self.out_proj_bias, idx))
        x = x + dropout(attn, stack.res_dropout, training)

        # --- position-wise feed-forward ----------------------------------------------------
        n1w, n1b = sel(self.norm1_weight, idx), sel(self.norm1_bias, idx)
        w1, b1 = sel(self.fc1_weight, idx), sel(self.fc1_bias, idx)
        if feed_forward_in_place(x, w1):
            return feed_forward_chunked(x, n1w, n1b, w1, b1, sel(self.fc2_weight, idx), sel(self.fc2_bias, idx))
        if fold:
            h = _standardise(x)
            w1, b1 = _fold_norm(w1, b1, n1w, n1b)
        else:
            h = _norm(x, n1w, n1b)
        h = F.relu(stacked_linear(h, w1, b1))
        h = stacked_linear(dropout(h, stack.relu_dropout, training), sel(self.fc2_weight, idx), sel(self.fc2_bias, idx))
        return x + dropout(h, stack.res_dropout, training)
