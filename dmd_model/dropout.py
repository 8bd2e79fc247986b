"""Dropout whose masks are cheap to draw on a CPU.

PyTorch's CPU dropout draws one Bernoulli sample per element from a sequential generator (about 13 ns
an element on the 2-core machines here), and DMD drops out large tensors: attention weights of twelve
transformers, the embedded sequences, the text features. That made random numbers about a sixth of a
training step. Here one 64-bit draw gives four 16-bit uniforms, each compared with a threshold: the
keep probability is rounded to a multiple of 1/65536 (p = 0.3 keeps with 0.699997 instead of 0.7),
and kept values are scaled by the inverse of that rounded probability, so the expectation is exact.
On other devices `torch.nn.functional.dropout` is used unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

_LEVELS = 1 << 16


def _uniform16(numel: int, device: torch.device) -> Tensor:
    """`numel` independent uniform integers in [-32768, 32767] (int16)."""
    draws = torch.empty((numel + 3) // 4, dtype=torch.int64, device=device)
    draws.random_(-(1 << 63), (1 << 63) - 1)
    return draws.view(torch.int16)[:numel]


def keep_threshold(keep: float) -> int:
    """Number of the 65536 levels that keep an element; at least 1."""
    return max(1, min(_LEVELS, round(keep * _LEVELS)))


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
    # int16 draws against an int16 threshold (no converting copy); a product with the bool mask is
    # several times cheaper than where() on a CPU, forward and backward
    mask = _uniform16(x.numel(), x.device).view(x.shape) < (thr - _LEVELS // 2)
    return (x * mask).mul_(_LEVELS / thr)


def row_thresholds(keep: list[float], repeat: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Per-row int16 comparison thresholds and float scales: each of `keep` repeated `repeat`
    times. A row keeps an element when its 16-bit draw is at most the threshold."""
    levels = torch.tensor([keep_threshold(k) for k in keep], dtype=torch.int32, device=device)
    levels = levels.repeat_interleave(repeat)
    # keep when draw <= levels - 1 - 32768: all 65536 levels (keep = 1) fit int16 as 32767
    thresholds = (levels - 1 - _LEVELS // 2).to(torch.int16)
    return thresholds, _LEVELS / levels.to(torch.float32)


def keep_mask_rows(shape: torch.Size | tuple[int, ...], thresholds: Tensor) -> Tensor:
    """Bool keep mask of `shape` with one int16 threshold per leading row."""
    view = (shape[0], *([1] * (len(shape) - 1)))
    return _uniform16(math.prod(shape), thresholds.device).view(shape) <= thresholds.view(view)
