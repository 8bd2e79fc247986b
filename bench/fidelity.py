"""Our DMD beside the official code (github.com/mdswyz/DMD) with the same weights and the same inputs.

For each configuration (MOSI aligned, MOSI unaligned, MOSEI aligned; text as 768-d features) this
builds our model from a seed, exports its weights with `dmd_model.artefacts.official.export_official`, loads them
into the official network and GD kernels, and runs both on the same seeded inputs:

- eval mode: the largest absolute difference of every output (the official names), and of both GD
  kernels' edges;
- train mode with every dropout at 0: every loss term (ours: `dmd_loss`; official: composed as its
  trainer does, see bench/official_dmd.py), for both readings of the orthogonality loss, then the
  gradients of the total, per official module: largest absolute difference and that difference
  relative to the largest official gradient of the module.

Inputs are zero-padded at the end of each sequence, as MMSA data is: the official positional embedding
treats a step whose first channel is exactly 0 as padding, and this exercises that rule. Labels take
repeated one-decimal values, like MOSI's, so the margin loss has positives across samples.

One configuration is run again in float64 to show that the float32 differences are rounding. The
official attention softmax casts to float32 even then (and its GD prior is a float32 attribute), so
float64 agreement stops near 1e-7.

    python bench/fidelity.py --official /path/to/DMD [--json-out fidelity.json]

Prints a JSON report, with "pass" against the goals: outputs within 1e-5, losses within 1e-4 (float32).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from official_dmd import (  # noqa: E402
    OfficialCodeError,
    OfficialDMD,
    add_official_argument,
    build_official,
    official_path,
)

from dmd_model.artefacts.official import export_official, official_key_map  # noqa: E402
from dmd_model.config import DMDConfig, ModelConfig  # noqa: E402
from dmd_model.network.dmd import DMD  # noqa: E402
from dmd_model.training.losses import dmd_loss  # noqa: E402

CONFIGS = {
    "mosi_aligned": ROOT / "configs/model/mosi_aligned.yaml",
    "mosi_unaligned": ROOT / "configs/model/mosi_unaligned.yaml",
    "mosei_aligned": ROOT / "configs/model/mosei_aligned.yaml",
}
GOALS = {"outputs": 1e-5, "losses": 1e-4}  # float32, CPU


def load_config(path: Path) -> DMDConfig:
    return DMDConfig.from_yaml(path, overrides=["model.use_bert=false"])


def without_dropout(cfg: ModelConfig) -> ModelConfig:
    return dataclasses.replace(cfg, attn_dropout=(0.0, 0.0, 0.0), relu_dropout=0.0, res_dropout=0.0,
                               embed_dropout=0.0, output_dropout=0.0, text_dropout=0.0)


def make_inputs(cfg: ModelConfig, batch: int, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Random features zero-padded at the end (sample 0 full length, others 50-100 % real steps) and
    MOSI-like labels: one-decimal values in [-3, 3] drawn from a small pool, so values repeat."""
    gen = torch.Generator().manual_seed(seed)
    feats = []
    real = torch.rand(batch, generator=gen) * 0.5 + 0.5
    real[0] = 1.0
    for dim, length in zip(cfg.feature_dims, cfg.seq_lens):
        x = torch.randn(batch, length, dim, generator=gen)
        steps = torch.ceil(real * length).long()
        x[torch.arange(length).unsqueeze(0) >= steps.unsqueeze(1)] = 0.0
        feats.append(x)
    pool = torch.round((torch.rand(max(2, batch // 3), generator=gen) * 6 - 3) * 10) / 10
    labels = pool[torch.randint(len(pool), (batch,), generator=gen)]
    return feats[0], feats[1], feats[2], labels


def max_abs(a: Tensor, b: Tensor) -> float:
    return (a.detach().double() - b.detach().double()).abs().max().item()


def compare_outputs(ours: dict[str, Tensor], official: dict[str, Tensor]) -> dict[str, float | str]:
    """Every official output (and edge tensor) against ours of the same name."""
    res: dict[str, float | str] = {}
    for name, theirs in official.items():
        if name.endswith("_origin"):  # official edges_origin: raw edge scores summed over the batch
            mine = ours[name.replace("_origin", "_raw")].sum(1, keepdim=True)
        else:
            mine = ours[name]
        if mine.shape != theirs.shape:
            res[name] = f"shape {tuple(mine.shape)} vs official {tuple(theirs.shape)}"
        else:
            res[name] = max_abs(mine, theirs)
    return res


def compare_losses(ours: dict[str, Tensor], official: dict[str, Tensor]) -> dict[str, dict[str, float]]:
    res = {}
    for name, theirs in official.items():
        a, b = float(ours[name].detach()), float(theirs.detach())
        res[name] = {"ours": a, "official": b, "abs_diff": abs(a - b)}
    return res


def compare_grads(model: DMD, official: OfficialDMD) -> dict[str, object]:
    """Gradient differences per official module (first component of the official name)."""
    ours = dict(model.named_parameters())
    theirs = dict(official.net.named_parameters())
    pairs: list[tuple[str, str, Tensor | None, Tensor | None]] = []
    covered = set()
    for m in official_key_map(model):
        covered.add(m.ours)
        g = ours[m.ours].grad
        if g is not None and m.member is not None:
            g = g[m.member]
        og = theirs[m.official].grad
        if og is not None and m.squeeze_last:
            og = og.squeeze(-1)
        pairs.append((m.official.split(".")[0], m.official, g, og))
    for unit, kernel in (("homo_gd", official.homo), ("hetero_gd", official.hetero)):
        for name, p in kernel.named_parameters():
            covered.add(f"{unit}.{name}")
            pairs.append((unit, f"{unit}.{name}", ours[f"{unit}.{name}"].grad, p.grad))
    groups: dict[str, dict[str, float]] = {}
    problems = [f"our parameter {n} has no official counterpart" for n in ours
                if n not in covered and not n.startswith("text_encoder.")]
    per_param: list[tuple[str, float, float]] = []  # name, largest |difference|, largest |official grad|
    for group, name, g, og in pairs:
        if g is None or og is None:
            if (g is None) != (og is None):
                problems.append(f"{name}: gradient present on one side only")
            continue
        diff, scale = max_abs(g, og), og.detach().abs().max().item()
        entry = groups.setdefault(group, {"max_abs_diff": 0.0, "max_abs_grad": 0.0})
        entry["max_abs_diff"] = max(entry["max_abs_diff"], diff)
        entry["max_abs_grad"] = max(entry["max_abs_grad"], scale)
        per_param.append((name, diff, scale))
    # A parameter's difference relative to its own largest gradient, over parameters whose gradient is
    # not ~0. Some are 0 in exact arithmetic (the GD units' biases shift all six edge scores of a sample
    # alike, and the edge softmax ignores that), so both sides hold rounding noise there.
    floor = 1e-6 * max(scale for _, _, scale in per_param)
    worst_param = max(((n, d / s) for n, d, s in per_param if s >= floor), key=lambda x: x[1])
    near_zero = {n: s for n, _, s in per_param if s < floor}
    for entry in groups.values():
        entry["rel_diff"] = entry["max_abs_diff"] / entry["max_abs_grad"] if entry["max_abs_grad"] else 0.0
    worst_abs = max(groups.items(), key=lambda kv: kv[1]["max_abs_diff"])
    worst_rel = max(groups.items(), key=lambda kv: kv[1]["rel_diff"])
    return {
        "max_abs_diff": worst_abs[1]["max_abs_diff"], "max_abs_diff_in": worst_abs[0],
        "max_rel_diff": worst_rel[1]["rel_diff"], "max_rel_diff_in": worst_rel[0],
        "max_rel_diff_per_parameter": worst_param[1], "max_rel_diff_per_parameter_in": worst_param[0],
        "near_zero_gradients": near_zero,
        "problems": problems, "groups": groups,
    }


def _worst(values: dict) -> float:
    """Largest numeric difference; a shape mismatch counts as infinite."""
    worst = 0.0
    for v in values.values():
        v = v["abs_diff"] if isinstance(v, dict) else v
        worst = max(worst, math.inf if isinstance(v, str) else v)
    return worst


def run_config(cfg: DMDConfig, official_root: str | None, batch: int, seed: int, dtype: torch.dtype) -> dict:
    torch.manual_seed(seed)
    ours = DMD(cfg.model)
    exported = export_official(ours)
    text, audio, visual, labels = (t.to(dtype) for t in make_inputs(cfg.model, batch, seed + 1))
    res: dict[str, object] = {"dtype": str(dtype).removeprefix("torch."), "batch": batch}

    # eval mode, the configuration's dropouts (inactive)
    official = build_official(cfg, official_root)
    official.load_exported(exported)
    ours.to(dtype).eval()
    official.to(dtype).eval()
    with torch.no_grad():
        mine = ours(text, audio, visual, distill=True)
        theirs = official.forward(text, audio, visual)
        theirs.update(official.edges(theirs))
    res["outputs"] = compare_outputs(mine, theirs)
    res["outputs_worst"] = _worst(res["outputs"])

    # train mode, every dropout 0: loss terms and gradients
    quiet = dataclasses.replace(cfg, model=without_dropout(cfg.model))
    ours0 = DMD(quiet.model)
    ours0.load_state_dict(ours.state_dict())
    official0 = build_official(quiet, official_root)
    official0.load_exported(exported)
    ours0.to(dtype).train()
    official0.to(dtype).train()
    mine = ours0(text, audio, visual, distill=True)
    theirs = official0.forward(text, audio, visual)
    res["train_outputs_worst"] = _worst(compare_outputs(mine, theirs))
    axes = {"batch": cfg.loss, "feature": dataclasses.replace(cfg.loss, orthogonality_axis="feature")}
    totals = {}
    for axis, loss_cfg in axes.items():
        our_terms = dmd_loss(ours0, mine, labels, loss_cfg)
        their_terms = official0.loss_terms(theirs, labels, orthogonality_axis=axis)
        key = "losses" if axis == cfg.loss.orthogonality_axis else f"losses_orthogonality_{axis}"
        res[key] = compare_losses(our_terms, their_terms)
        res[f"{key}_worst"] = _worst(res[key])
        totals[axis] = (our_terms["total"], their_terms["total"])
    mine_total, their_total = totals[cfg.loss.orthogonality_axis]
    mine_total.backward()
    their_total.backward()
    res["gradients"] = compare_grads(ours0, official0)
    return res


def main(argv: list[str] | None = None) -> int:
    # the official make_positions resizes its cached range buffer with arange(out=...): harmless
    warnings.filterwarnings("ignore", message="The number of elements in the out tensor")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_official_argument(parser)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--float64", nargs="*", default=["mosi_aligned"], choices=list(CONFIGS),
                        help="configurations to run again in float64 (none: give the flag alone)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", help="also write the report to this file")
    args = parser.parse_args(argv)
    try:
        args.official = str(official_path(args.official))
    except OfficialCodeError as exc:
        parser.error(str(exc))

    report: dict[str, object] = {
        "command": "python bench/fidelity.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "device": "cpu",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "goals": GOALS, "configs": {},
    }
    passed = True
    for name in args.configs:
        cfg = load_config(CONFIGS[name])
        runs = {"float32": run_config(cfg, args.official, args.batch, args.seed, torch.float32)}
        if name in args.float64:
            runs["float64"] = run_config(cfg, args.official, args.batch, args.seed, torch.float64)
        f32 = runs["float32"]
        loss_worst = max(v for k, v in f32.items() if k.startswith("losses") and k.endswith("_worst"))
        ok = f32["outputs_worst"] <= GOALS["outputs"] and loss_worst <= GOALS["losses"]
        ok = ok and not f32["gradients"]["problems"]
        passed = passed and ok
        report["configs"][name] = {"pass": ok, **runs}
        print(f"{name}: outputs {f32['outputs_worst']:.2e}, losses {loss_worst:.2e}, gradients abs "
              f"{f32['gradients']['max_abs_diff']:.2e} rel {f32['gradients']['max_rel_diff']:.2e}"
              + (f"; float64 outputs {runs['float64']['outputs_worst']:.2e}, losses "
                 f"{runs['float64']['losses_worst']:.2e}" if "float64" in runs else "")
              + f" -> {'pass' if ok else 'FAIL'}", file=sys.stderr)
    report["pass"] = passed
    text = json.dumps(report, indent=1)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
