"""Dropout whose masks are cheap to draw and apply on a CPU.

PyTorch's CPU dropout draws one Bernoulli sample per element from a sequential generator (about 13 ns
an element on the 2-core machines here), and DMD drops out large tensors: attention weights of twelve
transformers, the embedded sequences, the text features. That made random numbers about a sixth of a
training step. Here one 64-bit word gives four 16-bit uniforms, each compared with a threshold: the
keep probability is rounded to a multiple of 1/65536 (p = 0.3 keeps with 0.699997 instead of 0.7),
and kept values are scaled by the inverse of that rounded probability, so the expectation is exact.
On a CPU the words come from SplitMix64, computed for a whole tensor at once with integer tensor
operations and seeded by one draw from PyTorch's generator (`torch.manual_seed` fixes the masks);
PyTorch's own CPU generator produces them one after the other (1.4 ns per 16 bits against 0.9-1.0 ns
for these, in one run on a 2-core AMD EPYC).

Masks never pass through bool tensors, whose comparisons and conversions to float run several times
slower on a CPU than plain arithmetic: a mask is a word of "keep bits" per element, all ones (-1)
to keep it and zero to drop it, made with integer arithmetic from the draws (the sign of
draw - threshold - 1, spread over the word by an arithmetic shift), and applied as a bitwise and
with the value's representation. A kept value is unchanged, a dropped one becomes +0.0 (a product
with 0 would give -0.0 for a negative value and NaN for a NaN).
On other devices `torch.nn.functional.dropout` is used unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

_LEVELS = 1 << 16

# an integer type of each floating-point width, to apply keep bits to a value's representation
_WORD = {2: torch.int16, 4: torch.int32, 8: torch.int64}


# SplitMix64 (Steele, Lea, Flood 2014): the state advances by a fixed odd gamma and each state is
# mixed by two multiply-xorshift rounds; the constants as signed 64-bit integers
_GAMMA = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX = ((30, 0xBF58476D1CE4E5B9 - (1 << 64)), (27, 0x94D049BB133111EB - (1 << 64)), (31, None))
_steps = torch.empty(0, dtype=torch.int64)  # 1, 2, 3, ... times gamma, grown on demand


def splitmix64(seed: int, count: int) -> Tensor:
    """The first `count` outputs of SplitMix64 from state `seed` (int64 holding the 64 bits).

    Computed for all outputs at once with tensor operations, which use every thread (PyTorch's CPU
    generator is a sequential Mersenne Twister). Products wrap around as unsigned 64-bit arithmetic
    does; a logical right shift is the arithmetic shift with the sign-extended bits masked off.
    """
    global _steps
    if _steps.numel() < count:
        _steps = torch.arange(1, max(count, 2 * _steps.numel()) + 1, dtype=torch.int64).mul_(_GAMMA)
    z = torch.add(_steps[:count], seed)  # state after each step
    spill = torch.empty_like(z)
    for shift, multiplier in _MIX:
        torch.bitwise_right_shift(z, shift, out=spill).bitwise_and_((1 << (64 - shift)) - 1)
        z.bitwise_xor_(spill)
        if multiplier is not None:
            z.mul_(multiplier)
    return z


def _uniform16(numel: int, device: torch.device) -> Tensor:
    """`numel` independent uniform integers in [-32768, 32767] (int16), four from each 64-bit word.

    On a CPU the words come from SplitMix64 seeded by one draw from PyTorch's default generator (so
    `torch.manual_seed` fixes them); elsewhere from the device's own generator.
    """
    words = (numel + 3) // 4
    if device.type == "cpu":
        seed = int(torch.empty((), dtype=torch.int64).random_(-(1 << 63), (1 << 63) - 1))
        return splitmix64(seed, words).view(torch.int16)[:numel]
    draws = torch.empty(words, dtype=torch.int64, device=device)
    draws.random_(-(1 << 63), (1 << 63) - 1)
    return draws.view(torch.int16)[:numel]


def keep_threshold(keep: float) -> int:
    """Number of the 65536 levels that keep an element; at least 1."""
    return max(1, min(_LEVELS, round(keep * _LEVELS)))


def _keep_bits(shape: torch.Size | tuple[int, ...], thresholds: Tensor | int, device: torch.device) -> Tensor:
    """int32 keep bits of `shape` from fresh draws: -1 where draw <= threshold, else 0."""
    bits = _uniform16(math.prod(shape), device).view(shape).to(torch.int32)
    limit = thresholds + 1 if isinstance(thresholds, int) else thresholds.to(torch.int32) + 1
    # draw <= t  <=>  draw - (t + 1) < 0 (no overflow in int32); >> 31 spreads the sign bit
    return bits.sub_(limit).bitwise_right_shift_(31)


def apply_keep_bits(x: Tensor, bits: Tensor, out: Tensor | None = None) -> Tensor:
    """x where `bits` is -1 and +0.0 where it is 0 (bits broadcast to x; x floating point)."""
    word = _WORD[x.element_size()]
    if bits.dtype != word:
        bits = bits.to(word)
    if out is None:
        return torch.bitwise_and(x.view(word), bits).view(x.dtype)
    torch.bitwise_and(x.view(word), bits, out=out.view(word))
    return out


class _Dropout(torch.autograd.Function):
    """(x with the dropped elements zeroed) * scale; the gradient goes through the same keep bits."""

    @staticmethod
    def forward(ctx, x: Tensor, bits: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(bits)
        ctx.scale = scale
        return apply_keep_bits(x, bits).mul_(scale)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (bits,) = ctx.saved_tensors
        return apply_keep_bits(grad, bits).mul_(ctx.scale), None, None


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Inverted dropout with probability p (see the module docstring)."""
    if not training or p <= 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    if p >= 1.0:
        return x * 0.0
    thr = keep_threshold(1.0 - p)
    if thr == _LEVELS:
        return x
    bits = _keep_bits(x.shape, thr - 1 - _LEVELS // 2, x.device)
    return _Dropout.apply(x, bits, _LEVELS / thr)  # records no graph where x needs no gradient


def row_thresholds(keep: list[float], repeat: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Per-row int16 comparison thresholds and float scales: each of `keep` repeated `repeat`
    times. A row keeps an element when its 16-bit draw is at most the threshold."""
    levels = torch.tensor([keep_threshold(k) for k in keep], dtype=torch.int32, device=device)
    levels = levels.repeat_interleave(repeat)
    # keep when draw <= levels - 1 - 32768: all 65536 levels (keep = 1) fit int16 as 32767
    thresholds = (levels - 1 - _LEVELS // 2).to(torch.int16)
    return thresholds, _LEVELS / levels.to(torch.float32)


def keep_bits_rows(shape: torch.Size | tuple[int, ...], thresholds: Tensor) -> Tensor:
    """int32 keep bits (-1 keeps, 0 drops) of `shape` with one int16 threshold per leading row."""
    view = (shape[0], *([1] * (len(shape) - 1)))
    return _keep_bits(shape, thresholds.view(view), thresholds.device)


def keep_mask_rows(shape: torch.Size | tuple[int, ...], thresholds: Tensor) -> Tensor:
    """Bool keep mask of `shape` with one int16 threshold per leading row (the same draws as
    `keep_bits_rows`)."""
    return keep_bits_rows(shape, thresholds) != 0
