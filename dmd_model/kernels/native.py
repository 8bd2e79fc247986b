"""The fused CPU attention kernel (`csrc/attention.cpp`): built at first use, loaded with ctypes.

DMD's attention heads are 5 or 10 channels wide and about 50 steps long. Composed of PyTorch operations,
each head writes its (L, L) scores, weights and dropout mask to memory and reads them back several
times, and its inputs first have to be copied into a head-major layout; most of an attention layer's
time goes there, not into arithmetic. The kernel does a head's whole attention, forward or backward,
in vector registers and the L1 cache, reading the projections through their strides.

It is compiled on the machine that runs it (`-O3 -march=native -fopenmp`, dropping `-fopenmp` and then
`-march=native` where the compiler refuses them) with the C++ compiler found as
`$CXX`, `c++`, `g++` or `clang++`, once per source, compiler and CPU, into a cache directory:
`$DMD_NATIVE_CACHE`, else `$XDG_CACHE_HOME/live-dmd`, else `~/.cache/live-dmd`. It takes about a second.
Where there is no compiler, or the build fails, or `DMD_NATIVE=0` is set, `available()` is false,
one warning says why, and the model uses the PyTorch implementation (`dmd_model.kernels.attention`), which
computes the same function. Attention dropout draws its own masks here (SplitMix64 of the element
index, seeded from PyTorch's generator), so a fixed seed gives the same training run on the same
path, but not the same masks on both paths.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "attention.cpp"
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fopenmp-simd", "-std=c++17", "-shared", "-fPIC", "-pthread")
OPENMP = ("-fopenmp",)  # added when the compiler takes it: threads from the OpenMP runtime PyTorch loaded
BUILD_TIMEOUT_S = 300

_I64P = ctypes.POINTER(ctypes.c_int64)
_VP = ctypes.c_void_p
_I64 = ctypes.c_int64

_state: dict[str, object] = {}


class NativeBuildError(RuntimeError):
    """The kernel could not be built or loaded; the message says why and how to fix it."""


def enabled() -> bool:
    """False when the environment turns the kernel off (DMD_NATIVE=0)."""
    return os.environ.get("DMD_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> Path:
    if os.environ.get("DMD_NATIVE_CACHE"):
        return Path(os.environ["DMD_NATIVE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "live-dmd"


def compiler() -> str | None:
    """The C++ compiler to use: $CXX, else the first of c++, g++, clang++ on the PATH."""
    if os.environ.get("CXX"):
        return os.environ["CXX"]
    for name in ("c++", "g++", "clang++"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _cpu_identity() -> str:
    """What `-march=native` depends on: the machine and, on Linux, the CPU's feature flags."""
    ident = [platform.machine(), platform.system()]
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features", "model name")):
                ident.append(line)
                if line.startswith(("flags", "Features")):
                    break
    except OSError:
        ident.append(platform.processor())
    return "\n".join(ident)


def build(cxx: str | None = None, directory: Path | None = None) -> Path:
    """Compile the kernel (or find it already compiled) and return the shared library's path.

    Raises NativeBuildError naming the compiler and its error output when that fails.
    """
    cxx = cxx or compiler()
    if cxx is None:
        raise NativeBuildError("no C++ compiler found (set CXX, or install g++ or clang++, e.g. "
                               "`apt-get install g++`)")
    source = SOURCE.read_bytes()
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise NativeBuildError(f"C++ compiler {cxx!r} cannot be run: {exc}; set CXX to a working one") from exc
    key = hashlib.sha256(b"\0".join([source, version.encode(), " ".join(FLAGS + OPENMP).encode(),
                                     _cpu_identity().encode()])).hexdigest()[:20]
    directory = directory or cache_dir()
    target = directory / f"dmd_attention_{key}.so"
    if target.exists():
        return target
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NativeBuildError(f"cannot create the kernel cache {directory}: {exc}; "
                               "set DMD_NATIVE_CACHE to a writable directory") from exc
    # build beside the target and rename: concurrent builders never see a half-written library
    fd, partial = tempfile.mkstemp(prefix=target.stem, suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        # a compiler without OpenMP (Apple's clang) gets plain threads; one that refuses -march=native
        # builds for its default target (narrower vectors, still correct)
        portable = tuple(f for f in FLAGS if f != "-march=native")
        failures = []
        for flags in (FLAGS + OPENMP, FLAGS, portable + OPENMP, portable):
            done = subprocess.run([cxx, *flags, str(SOURCE), "-o", partial], capture_output=True, text=True,
                                  timeout=BUILD_TIMEOUT_S)
            if done.returncode == 0:
                break
            failures.append(done)
        else:  # report the attempt with every flag
            raise NativeBuildError(f"{cxx} failed to build {SOURCE.name} (exit {failures[0].returncode}):\n"
                                   f"{failures[0].stderr[-2000:]}")
        os.replace(partial, target)
    except subprocess.TimeoutExpired as exc:
        raise NativeBuildError(f"{cxx} took over {BUILD_TIMEOUT_S} s to build {SOURCE.name}") from exc
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    strided = [_VP, _I64P]
    lib.dmd_attention_forward.argtypes = [*strided, *strided, *strided, *strided, _VP, _I64, _I64, _I64, _I64,
                                          _I64, _I64, ctypes.c_float, _VP, _VP, ctypes.c_uint64, ctypes.c_int]
    lib.dmd_attention_backward.argtypes = [*strided, *strided, *strided, *strided, _VP, *strided, *strided,
                                           *strided, _I64, _I64, _I64, _I64, _I64, _I64, ctypes.c_float, _VP,
                                           _VP, ctypes.c_uint64, ctypes.c_int]
    lib.dmd_dropout_draws.argtypes = [ctypes.c_uint64, ctypes.c_uint64, _I64, _VP]
    for fn in (lib.dmd_attention_forward, lib.dmd_attention_backward, lib.dmd_attention_max_head_dim):
        fn.restype = ctypes.c_int
    lib.dmd_dropout_draws.restype = None
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernel, building it on first call; None (with one warning) when it is unavailable."""
    if "lib" not in _state:
        lib = None
        if enabled():
            try:
                lib = _load(build())
            except (NativeBuildError, OSError) as exc:
                log.warning("fused CPU attention unavailable, using the PyTorch implementation: %s", exc)
        _state["lib"] = lib
    return _state["lib"]  # type: ignore[return-value]


def available() -> bool:
    return enabled() and library() is not None


def reset() -> None:
    """Forget the loaded kernel (tests change the environment and load again)."""
    _state.clear()


def max_head_dim() -> int:
    lib = library()
    return 0 if lib is None else int(lib.dmd_attention_max_head_dim())


# -- calling it ------------------------------------------------------------------------------------------
def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _heads(x: Tensor, heads: int) -> tuple[int, ctypes.Array]:
    """(B, L, H * D) float32 -> its data pointer and (batch, head, position, channel) strides."""
    hd = x.shape[2] // heads
    sb, sl, se = x.stride()
    return x.data_ptr(), (ctypes.c_int64 * 4)(sb, hd * se, sl, se)


def seed_from_torch() -> int:
    """One 64-bit seed drawn from PyTorch's default generator (so `torch.manual_seed` fixes masks)."""
    return int(torch.empty((), dtype=torch.int64).random_(-(1 << 63), (1 << 63) - 1)) & ((1 << 64) - 1)


def dropout_draws(seed: int, start: int, count: int) -> Tensor:
    """The kernel's 16-bit dropout draws (int32 in -32768..32767) for elements start..start+count-1
    of the stream `seed`; element (head n, query i, key j) is n * Lq * Lk + i * Lk + j."""
    lib = library()
    if lib is None:
        raise NativeBuildError("the fused attention kernel is not available")
    out = torch.empty(count, dtype=torch.int32)
    lib.dmd_dropout_draws(seed, start, count, out.data_ptr())
    return out


def _check(x: Tensor, name: str) -> None:
    if x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 3:
        raise ValueError(f"fused attention takes float32 CPU tensors (B, L, H * D); {name} is "
                         f"{x.dtype} on {x.device} with shape {tuple(x.shape)}")


class FusedAttention(torch.autograd.Function):
    """softmax(scale q k^T + causal mask) v with attention dropout, for (B, L, H * D) projections.

    shift: None for no mask, else key j is visible to query i when j <= i + shift. thresholds (B * H,)
    int32 and row_scale (B * H,) float32 per head (b * H + h), or None for no dropout. Returns
    (B, Lq, H * D), contiguous.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, heads: int, scale: float,  # type: ignore[override]
                shift: int | None, thresholds: Tensor | None, row_scale: Tensor | None) -> Tensor:
        lib = library()
        if lib is None:
            raise NativeBuildError("the fused attention kernel is not available")
        for name, x in (("q", q), ("k", k), ("v", v)):
            _check(x, name)
        B, Lq, d = q.shape
        Lk = k.shape[1]
        hd = d // heads
        seed = seed_from_torch() if thresholds is not None else 0
        out = q.new_empty(B, Lq, d)
        save = any(ctx.needs_input_grad[:3])
        stats = q.new_empty(B * heads * Lq * 2) if save else None
        rc = lib.dmd_attention_forward(*_heads(q, heads), *_heads(k, heads), *_heads(v, heads), *_heads(out, heads),
                                       _ptr(stats), B, heads, Lq, Lk, hd, -1 if shift is None else shift, scale,
                                       _ptr(thresholds), _ptr(row_scale), seed, torch.get_num_threads())
        if rc != 0:
            raise ValueError(f"fused attention handles heads of at most {max_head_dim()} channels, got {hd}")
        if save:
            ctx.save_for_backward(q, k, v, stats, thresholds, row_scale)
            ctx.heads, ctx.scale, ctx.shift, ctx.seed = heads, scale, shift, seed
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        q, k, v, stats, thresholds, row_scale = ctx.saved_tensors
        heads = ctx.heads
        B, Lq, d = q.shape
        Lk = k.shape[1]
        grad = grad.contiguous()
        gq, gk, gv = (torch.empty(x.shape, dtype=x.dtype) for x in (q, k, v))
        library().dmd_attention_backward(  # type: ignore[union-attr]
            *_heads(q, heads), *_heads(k, heads), *_heads(v, heads), *_heads(grad, heads), _ptr(stats),
            *_heads(gq, heads), *_heads(gk, heads), *_heads(gv, heads), B, heads, Lq, Lk, d // heads,
            -1 if ctx.shift is None else ctx.shift, ctx.scale, _ptr(thresholds), _ptr(row_scale), ctx.seed,
            torch.get_num_threads())
        return gq, gk, gv, None, None, None, None, None


def usable(q: Tensor, head_dim: int) -> bool:
    """Whether the fused kernel runs this attention: a CPU, plain float32 (no autocast), the kernel
    built and a head width it handles."""
    return (q.device.type == "cpu" and q.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and available() and head_dim <= max_head_dim())
