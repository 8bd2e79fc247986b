"""Forward latency and training-step time of our DMD beside the official code, in the same run.

MOSI aligned configuration with text as 768-d features (use_bert false), the official dropouts:

- forward at batch 1, 16 and 64, eval mode: ours under torch.inference_mode, the official network under
  torch.no_grad;
- training step at batch 16 and 32, train mode: forward with distillation, every loss term, backward,
  clip_grad_value_ 0.6, Adam step. Ours: `dmd_loss`, Adam(fused=True) where the device supports it,
  clip_grad_value_(foreach=True). Official: the loss terms composed as its trainer does
  (bench/official_dmd.py), plain Adam and plain clip_grad_value_, as its trainer calls them.

Both start from the same weights (ours exported into the official modules); before timing, the eval
outputs are compared at every batch size. Calls alternate, ours then official, over the repetitions;
the report gives medians, the ratio ours / official of the medians and the median of the ratios of
neighbouring calls (steadier on a machine whose speed drifts); a target counts as met when both are
within it. Times are measured, never asserted.

    python bench/speed.py --official /path/to/DMD [--repeats 15] [--json-out speed.json]
    python bench/speed.py --official /path/to/DMD --device cuda --bf16
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from fidelity import make_inputs  # noqa: E402
from hostinfo import cpu_model  # noqa: E402
from official_dmd import (  # noqa: E402
    OfficialCodeError,
    OfficialDMD,
    add_official_argument,
    build_official,
    official_path,
)

from dmd_model.artefacts.official import export_official  # noqa: E402
from dmd_model.config import DMDConfig  # noqa: E402
from dmd_model.network.dmd import DMD  # noqa: E402
from dmd_model.training.losses import dmd_loss  # noqa: E402

FORWARD_BATCHES = (1, 16, 64)
TRAIN_BATCHES = (16, 32)
TARGETS = {"forward_ratio": 0.67, "train_step_ratio": 0.5}
EQUAL_OUTPUTS = 1e-5  # largest absolute output difference that counts as equal (float32)


def machine(device: torch.device) -> dict[str, object]:
    info: dict[str, object] = {
        "cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device,
                warmup: int, min_block_s: float) -> tuple[dict[str, float], int, float]:
    """Median seconds per call of each function, timed in turn (A, B, A, B, ...), the calls per
    timed block (enough to last about `min_block_s`, judged from one call of the first function), and
    the median over the repetitions of the first function's time over the second's within the same
    repetition: on a machine whose speed drifts (a shared VM), neighbouring blocks see the same
    conditions, so that median is steadier than the ratio of the two medians."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    first = next(iter(fns.values()))
    _sync(device)
    start = time.perf_counter()
    first()
    _sync(device)
    inner = max(1, math.ceil(min_block_s / max(time.perf_counter() - start, 1e-9)))
    times: dict[str, list[float]] = {name: [] for name in fns}
    gc.collect()
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            _sync(device)
            times[name].append((time.perf_counter() - start) / inner)
    first_times, second_times = list(times.values())[:2]
    paired = statistics.median(a / b for a, b in zip(first_times, second_times))
    return {name: statistics.median(values) for name, values in times.items()}, inner, paired


def output_difference(ours: DMD, official: OfficialDMD, inputs: tuple,
                      autocast: Callable[[], contextlib.AbstractContextManager]) -> float:
    """Largest absolute difference over the official outputs, eval mode."""
    ours.eval()
    official.eval()
    with torch.no_grad(), autocast():
        mine = ours(*inputs)
        theirs = official.forward(*inputs)
    return max((mine[k].float() - v.float()).abs().max().item() for k, v in theirs.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_official_argument(parser)
    parser.add_argument("--config", default=str(ROOT / "configs/model/mosi_aligned.yaml"))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA only)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: leave as it is)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", help="also write the report to this file")
    args = parser.parse_args(argv)
    try:
        args.official = str(official_path(args.official))
    except OfficialCodeError as exc:
        parser.error(str(exc))
    if args.bf16 and args.device != "cuda":
        parser.error("--bf16 is for CUDA (bfloat16 autocast on the GPU); add --device cuda")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is false")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    def autocast() -> contextlib.AbstractContextManager:
        if args.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    cfg = DMDConfig.from_yaml(args.config, overrides=["model.use_bert=false"])
    torch.manual_seed(args.seed)
    ours = DMD(cfg.model)
    official = build_official(cfg, args.official, device)
    official.load_exported(export_official(ours))
    ours.to(device)

    batches = sorted(set(FORWARD_BATCHES) | set(TRAIN_BATCHES))
    data = {}
    for b in batches:
        text, audio, visual, labels = make_inputs(cfg.model, b, args.seed + b)
        data[b] = (tuple(t.to(device) for t in (text, audio, visual)), labels.to(device))
    # same weights: compare (in float32) before any training step changes them
    equal = {b: output_difference(ours, official, data[b][0], contextlib.nullcontext) for b in batches}
    equal_bf16 = {b: output_difference(ours, official, data[b][0], autocast) for b in batches} if args.bf16 else {}

    def equality(b: int) -> dict[str, object]:
        res: dict[str, object] = {"max_abs_output_diff": equal[b], "outputs_equal": equal[b] <= EQUAL_OUTPUTS}
        if args.bf16:
            res["max_abs_output_diff_bf16"] = equal_bf16[b]
        return res

    report: dict[str, object] = {
        "benchmark": "DMD core: ours beside the official code",
        "command": "python bench/speed.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(device),
        "settings": {
            "config": Path(args.config).name, "use_bert": False, "device": args.device,
            "precision": "bf16 autocast" if args.bf16 else "fp32", "repeats": args.repeats,
            "order": "interleaved: ours, official, ours, official, ...", "statistic": "median",
        },
        "targets": TARGETS, "forward": [], "train_step": [],
    }

    ours.eval()
    official.eval()
    for b in FORWARD_BATCHES:
        inputs = data[b][0]

        def ours_forward(inputs=inputs) -> object:
            with torch.inference_mode(), autocast():
                return ours(*inputs)

        def official_forward(inputs=inputs) -> object:
            with torch.no_grad(), autocast():
                return official.forward(*inputs)

        t, inner, paired = interleaved({"ours": ours_forward, "official": official_forward}, args.repeats,
                                       device, warmup=3, min_block_s=0.05)
        report["forward"].append({
            "batch": b, "ours_ms": 1e3 * t["ours"], "official_ms": 1e3 * t["official"],
            "ratio": t["ours"] / t["official"], "paired_ratio": paired, "calls_per_block": inner, **equality(b),
        })

    ours.train()
    official.train()
    try:
        ours_opt = torch.optim.Adam(ours.parameters(), lr=cfg.train.learning_rate, fused=True)
        fused = True
    except (RuntimeError, TypeError):
        ours_opt = torch.optim.Adam(ours.parameters(), lr=cfg.train.learning_rate)
        fused = False
    official_params = list(official.parameters())
    official_opt = torch.optim.Adam(official_params, lr=cfg.train.learning_rate)
    report["settings"]["ours_adam_fused"] = fused
    clip = cfg.train.grad_clip

    for b in TRAIN_BATCHES:
        inputs, labels = data[b]

        def ours_step(inputs=inputs, labels=labels) -> None:
            ours_opt.zero_grad()
            with autocast():
                out = ours(*inputs, distill=True)
                loss = dmd_loss(ours, out, labels, cfg.loss)["total"]
            loss.backward()
            nn.utils.clip_grad_value_(ours.parameters(), clip, foreach=True)
            ours_opt.step()

        def official_step(inputs=inputs, labels=labels) -> None:
            official_opt.zero_grad()
            with autocast():
                out = official.forward(*inputs)
                loss = official.loss_terms(out, labels)["total"]
            loss.backward()
            nn.utils.clip_grad_value_(official_params, clip)
            official_opt.step()

        t, inner, paired = interleaved({"ours": ours_step, "official": official_step}, args.repeats, device,
                                       warmup=2, min_block_s=0.0)
        report["train_step"].append({
            "batch": b, "ours_ms": 1e3 * t["ours"], "official_ms": 1e3 * t["official"],
            "ratio": t["ours"] / t["official"], "paired_ratio": paired, "calls_per_block": inner, **equality(b),
        })

    # met only when both estimates of the ratio are within the target
    report["meets_targets"] = {
        "forward": all(max(r["ratio"], r["paired_ratio"]) <= TARGETS["forward_ratio"] for r in report["forward"]),
        "train_step": all(max(r["ratio"], r["paired_ratio"]) <= TARGETS["train_step_ratio"]
                          for r in report["train_step"]),
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
