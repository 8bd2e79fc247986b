"""The fused CPU attention kernel (dmd_model/kernels/native.py, dmd_model/kernels/csrc): built here with the machine's
compiler and checked against a float64 reference, forward and backward, with and without causal masks
and dropout."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

from dmd_model.config import DMDConfig
from dmd_model.kernels import native
from dmd_model.kernels.dropout import row_thresholds, splitmix64
from dmd_model.network.dmd import DMD

HAVE_COMPILER = native.compiler() is not None


def test_kernel_builds_where_a_compiler_exists():
    # on these machines (and CI) g++ is installed: the fast path must be there, not silently off
    if not HAVE_COMPILER:
        pytest.skip("no C++ compiler on this machine: the model runs the PyTorch attention")
    assert native.available(), "the fused attention kernel failed to build; see the warning logged"


needs_kernel = pytest.mark.skipif(not (HAVE_COMPILER and native.available()),
                                  reason="fused attention kernel not built (no C++ compiler)")


def _projections(B, Lq, Lk, heads, D, seed=0, self_attention=False):
    """q (B, Lq, H*D) and k, v (B, Lk, H*D) as strided views of wider projections, like the model's."""
    gen = torch.Generator().manual_seed(seed)
    d = heads * D
    if self_attention:
        q, k, v = torch.randn(B, Lq, 3 * d, generator=gen).split(d, dim=-1)
    else:
        q = torch.randn(B, Lq, d, generator=gen)
        k, v = torch.randn(B, Lk, 2 * d, generator=gen).split(d, dim=-1)
    return q, k, v


def _reference(q, k, v, heads, shift, keep=None, row_scale=None):
    """float64 attention: q (B, Lq, H*D) ... -> (B, Lq, H*D); keep (B*H, Lq, Lk) bool mask or None."""
    B, Lq, d = q.shape
    Lk = k.shape[1]
    D = d // heads

    def split(x):
        return x.double().reshape(B, x.shape[1], heads, D).transpose(1, 2)

    s = (split(q) * D ** -0.5) @ split(k).transpose(-1, -2)
    if shift is not None:
        i = torch.arange(Lq).unsqueeze(1)
        j = torch.arange(Lk).unsqueeze(0)
        s = s.masked_fill(j > i + shift, float("-inf"))
    p = torch.softmax(s, dim=-1)
    if keep is not None:
        p = p * keep.view(B, heads, Lq, Lk) * row_scale.double().view(B, heads, 1, 1)
    return (p @ split(v)).transpose(1, 2).reshape(B, Lq, d)


def _assert_gradients_match(out, want, inputs, references, seed):
    """Gradients of the kernel's output and of the float64 reference for the same random output
    gradient agree within 1e-5 of the largest reference gradient (or 1e-5 absolute)."""
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    got = torch.autograd.grad(out, inputs, grad)
    ref = torch.autograd.grad(want, references, grad.double())
    for name, a, b in zip("qkv", got, ref):
        assert (a.double() - b).abs().max().item() < 1e-5 * max(1.0, b.abs().max().item()), name


CASES = [
    # B, heads, Lq, Lk, D, shift, self-attention
    (3, 10, 46, 46, 5, 0, True),     # DMD aligned: causal self-attention
    (2, 10, 46, 46, 10, 0, False),   # memory width
    (2, 3, 20, 30, 5, 10, False),    # crossmodal, different lengths: shifted causal mask
    (2, 3, 30, 20, 5, 10, False),
    (4, 2, 1, 46, 5, 45, False),     # last step only
    (2, 4, 17, 33, 7, None, False),  # no mask, lengths off the 16-lane blocks
    (1, 1, 1, 1, 1, 0, False),
    (2, 1, 5, 40, 64, None, False),  # widest head
]


@needs_kernel
@pytest.mark.parametrize("B,heads,Lq,Lk,D,shift,self_attn", CASES)
def test_forward_and_backward_match_float64(B, heads, Lq, Lk, D, shift, self_attn):
    q, k, v = _projections(B, Lq, Lk, heads, D, seed=B * 100 + Lq, self_attention=self_attn and Lq == Lk)
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    out = native.FusedAttention.apply(q, k, v, heads, D ** -0.5, shift, None, None)
    qd, kd, vd = (x.detach().double().requires_grad_() for x in (q, k, v))
    want = _reference(qd, kd, vd, heads, shift)
    assert out.shape == want.shape and out.is_contiguous()
    assert (out.double() - want).abs().max().item() < 2e-6
    _assert_gradients_match(out, want, (q, k, v), (qd, kd, vd), seed=7)


@needs_kernel
def test_inference_saves_nothing_and_matches():
    q, k, v = _projections(2, 46, 46, 10, 5, self_attention=True)
    with torch.inference_mode():
        out = native.FusedAttention.apply(q, k, v, 10, 5 ** -0.5, 0, None, None)
    assert (out.double() - _reference(q, k, v, 10, 0)).abs().max().item() < 2e-6


@needs_kernel
def test_dropout_draws_are_splitmix64():
    seed = 0x1234_5678_9ABC_DEF0
    draws = native.dropout_draws(seed, 0, 1000)
    signed_seed = seed - (1 << 64) if seed >= 1 << 63 else seed
    words = splitmix64(signed_seed, 1000)  # output i is the state after i + 1 steps: counter i + 1
    top16 = (words >> 48) & 0xFFFF
    assert torch.equal(draws, (top16 - 32768).to(torch.int32))
    later = native.dropout_draws(seed, 500, 10)
    assert torch.equal(later, draws[500:510])


@needs_kernel
def test_dropout_forward_and_backward_use_the_drawn_masks():
    B, heads, L, D = 3, 4, 46, 5
    q, k, v = (x.detach().requires_grad_() for x in _projections(B, L, L, heads, D, seed=3, self_attention=True))
    keep = [0.7, 1.0, 0.8]  # one member per batch item here; 1.0 keeps everything
    thresholds, row_scale = row_thresholds(keep, heads, torch.device("cpu"))
    thresholds = thresholds.to(torch.int32)
    torch.manual_seed(11)
    seed = native.seed_from_torch()
    torch.manual_seed(11)
    out = native.FusedAttention.apply(q, k, v, heads, D ** -0.5, 0, thresholds, row_scale)
    draws = native.dropout_draws(seed, 0, B * heads * L * L).view(B * heads, L, L)
    mask = draws <= thresholds.view(-1, 1, 1)
    qd, kd, vd = (x.detach().double().requires_grad_() for x in (q, k, v))
    want = _reference(qd, kd, vd, heads, 0, keep=mask, row_scale=row_scale)
    assert (out.double() - want).abs().max().item() < 2e-6
    _assert_gradients_match(out, want, (q, k, v), (qd, kd, vd), seed=5)
    # the kept fraction follows each row's probability (member 1 keeps all)
    causal = torch.ones(L, L).tril().bool()
    rates = [mask.view(B, heads, L, L)[b][:, causal].float().mean().item() for b in range(B)]
    assert abs(rates[0] - 0.7) < 0.03 and rates[1] == 1.0 and abs(rates[2] - 0.8) < 0.03
    # a fixed seed repeats the masks
    torch.manual_seed(11)
    again = native.FusedAttention.apply(q, k, v, heads, D ** -0.5, 0, thresholds, row_scale)
    assert torch.equal(out, again)


@needs_kernel
def test_rejects_wrong_dtype_with_a_clear_error():
    q = torch.randn(2, 4, 10, dtype=torch.float64)
    with pytest.raises(ValueError, match="float32 CPU tensors"):
        native.FusedAttention.apply(q, q, q, 2, 0.5, None, None, None)


def _model_outputs(monkeypatch, fused: bool, train_grad: bool):
    import dmd_model.kernels.stacked as stacked

    if not fused:
        monkeypatch.setattr(stacked.native, "usable", lambda q, hd: False)
    cfg = DMDConfig.from_yaml("configs/model/mosi_aligned.yaml", overrides=["model.use_bert=false"])
    torch.manual_seed(0)
    model = DMD(cfg.model).eval()
    gen = torch.Generator().manual_seed(1)
    text = torch.randn(3, 50, 768, generator=gen)
    audio = torch.randn(3, 50, 5, generator=gen)
    visual = torch.randn(3, 50, 20, generator=gen)
    text[1, 40:] = 0
    audio[1, 40:] = 0
    visual[1, 40:] = 0
    out = model(text, audio, visual, distill=True)
    grads = None
    if train_grad:
        out["output_logit"].sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in out.items() if torch.is_tensor(v)}, grads


@needs_kernel
def test_model_gives_the_same_outputs_and_gradients_on_both_paths(monkeypatch):
    fused, fused_grads = _model_outputs(monkeypatch, True, True)
    monkeypatch.undo()
    plain, plain_grads = _model_outputs(monkeypatch, False, True)
    for key, value in plain.items():
        assert (fused[key] - value).abs().max().item() < 1e-5, key
    for name, g in plain_grads.items():
        assert (fused_grads[name] - g).abs().max().item() <= 1e-4 * max(1.0, g.abs().max().item()), name


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("DMD_NATIVE", "0")
    native.reset()
    try:
        assert not native.available()
        q = torch.randn(1, 46, 50)
        assert not native.usable(q, 5)
    finally:
        monkeypatch.undo()
        native.reset()


def test_missing_compiler_is_a_clear_error_and_the_model_falls_back(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("DMD_NATIVE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(native.NativeBuildError, match="no-such-compiler"):
        native.build()
    native.reset()
    try:
        with caplog.at_level(logging.WARNING, logger="dmd_model.kernels.native"):
            assert not native.available()
        assert "using the PyTorch implementation" in caplog.text
        cfg = DMDConfig.from_yaml("configs/model/mosi_aligned.yaml", overrides=["model.use_bert=false"])
        model = DMD(cfg.model).eval()
        with torch.inference_mode():
            out = model(torch.randn(2, 50, 768), torch.randn(2, 50, 5), torch.randn(2, 50, 20))
        assert torch.isfinite(out["output_logit"]).all()
    finally:
        monkeypatch.undo()
        native.reset()


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_compiler_errors_are_reported(monkeypatch, tmp_path):
    broken = tmp_path / "attention.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(native, "SOURCE", broken)
    with pytest.raises(native.NativeBuildError, match=r"failed to build attention\.cpp"):
        native.build(cxx=shutil.which("g++"), directory=tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.so")) and not list((tmp_path / "cache").glob("*.tmp"))


@pytest.mark.skipif(not HAVE_COMPILER, reason="needs a C++ compiler")
def test_fresh_build_is_cached_and_loads(tmp_path):
    first = native.build(directory=tmp_path)
    assert first.parent == tmp_path and first.suffix == ".so"
    stamp = first.stat().st_mtime_ns
    assert native.build(directory=tmp_path) == first and first.stat().st_mtime_ns == stamp  # not rebuilt
    lib = native._load(first)
    assert lib.dmd_attention_max_head_dim() == 64
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
@pytest.mark.parametrize("refused", [["-fopenmp"], ["-march=native"], ["-fopenmp", "-march=native"]])
def test_a_compiler_refusing_flags_still_builds_a_working_kernel(tmp_path, refused):
    # like Apple's clang (no -fopenmp; some versions refuse -march=native): the build drops those flags
    wrapper = tmp_path / "picky-c++"
    tests = " ".join(f'[ "$a" = "{flag}" ] && {{ echo "unsupported option {flag}" >&2; exit 1; }};' for flag in refused)
    wrapper.write_text(f'#!/bin/sh\nfor a in "$@"; do {tests} done\nexec {shutil.which("g++")} "$@"\n')
    wrapper.chmod(0o755)
    lib = native._load(native.build(cxx=str(wrapper), directory=tmp_path / "cache"))
    q, k, v = _projections(2, 20, 20, 3, 5, self_attention=True)
    out = torch.empty(2, 20, 15)
    strides = [native._heads(x, 3) for x in (q, k, v, out)]
    rc = lib.dmd_attention_forward(*strides[0], *strides[1], *strides[2], *strides[3], None, 2, 3, 20, 20, 5, 0,
                                   5 ** -0.5, None, None, 0, 2)
    assert rc == 0
    assert (out.double() - _reference(q, k, v, 3, 0)).abs().max().item() < 2e-6
