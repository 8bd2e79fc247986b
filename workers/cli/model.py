"""`dmd train`, `dmd eval`, `dmd info` and `dmd import-official`: the model's commands.

    dmd train   --config configs/model/mosi_aligned.yaml --data aligned_50.pkl --out runs/mosi
    dmd train   --synthetic                      # a synthetic MMSA-format sample, seconds on a CPU
    dmd eval    runs/mosi/seed_1111/best.pt --data aligned_50.pkl [--split test]
    dmd info    runs/mosi/seed_1111/best.pt [--json]
    dmd import-official mosi-aligned.pth --config mosi_aligned --out mosi-aligned.dmd.pt
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from .common import print_json


def _config(name: str | None, overrides: list[str] | None, default: str = "mosi_aligned"):
    import configs
    from dmd_model.config import DMDConfig

    name = name or default
    path = Path(name)
    if not path.is_file():
        path = configs.path(name)
    return DMDConfig.from_yaml(path, overrides or [])


# -- train ---------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from dmd_model.training.data import DataError, load_mmsa, merge_mmsa, parse_data_sources
    from dmd_model.training.metrics import format_metrics
    from dmd_model.training.synthetic import write_synthetic_mmsa
    from dmd_model.training.train import train

    overrides = list(args.set or [])
    if args.epochs is not None:
        overrides.append(f"train.max_epochs={args.epochs}")
    if args.bf16:
        overrides.append("train.precision=bf16")
    if args.deterministic:
        overrides.append("train.deterministic=true")
    cfg = _config(args.config, overrides, default="synthetic" if args.synthetic else "mosi_aligned")
    tmp = None
    if args.synthetic:
        tmp = tempfile.TemporaryDirectory(prefix="dmd-synthetic-")
        data_path = Path(tmp.name) / "synthetic.pkl"
        m = cfg.model
        write_synthetic_mmsa(data_path, seq_lens=m.seq_lens, feature_dims=m.feature_dims,
                             aligned=cfg.data.aligned, with_bert=m.use_bert, seed=0)
        data_desc = {"path": "synthetic (dmd_model.training.synthetic.write_synthetic_mmsa, seed 0)"}
        profile = {"name": "synthetic", "text": "generated", "audio": "generated", "visual": "generated",
                   "live": False}
    else:
        specs = args.data or ([cfg.data.path] if cfg.data.path else [])
        try:
            sources = parse_data_sources(specs)
        except DataError as exc:
            print(f"dmd train: {exc}", file=sys.stderr)
            return 2
        for _, path, _ in sources:
            if not str(path) or not path.is_file():
                print(f"dmd train: data file {str(path)!r} not found: give --data PATH to an MMSA pickle "
                      "(aligned_50.pkl / unaligned_50.pkl, or one written by dmd extract) or use --synthetic",
                      file=sys.stderr)
                return 2
        if not sources:
            print("dmd train: no data: give --data PATH to an MMSA pickle or use --synthetic", file=sys.stderr)
            return 2
        data_desc = {"path": " + ".join(str(p) for _, p, _ in sources)}
        if len(sources) > 1 or sources[0][2] != 1.0:
            data_desc["mixed"] = [{"name": n, "path": str(p), "weight": w} for n, p, w in sources]
        profile = None  # the MMSA profile, unless the pickle says otherwise (below)
    if args.synthetic:
        splits = load_mmsa(data_path, use_bert=cfg.model.use_bert, feature_dims=cfg.model.feature_dims,
                           seq_lens=cfg.model.seq_lens)
    else:
        splits = merge_mmsa([(name, load_mmsa(path, use_bert=cfg.model.use_bert, feature_dims=cfg.model.feature_dims,
                                              seq_lens=cfg.model.seq_lens), weight)
                             for name, path, weight in sources])
    modalities = None
    if not args.synthetic:
        # a pickle written by `dmd extract` records its feature profile and the modalities it holds;
        # the checkpoint carries them so the pipeline serves it with the same features
        profile = splits.profile
        modalities = splits.modalities
        if splits.metadata.get("source"):
            data_desc["source"] = splits.metadata["source"]
    out = Path(args.out or f"runs/{cfg.name}")
    seeds = args.seeds or list(cfg.train.seeds)
    print(f"training {cfg.name} on {data_desc['path']} ({', '.join(f'{k} {len(v)}' for k, v in splits.items())}) "
          f"seeds {seeds} -> {out}", file=sys.stderr)
    summary = train(cfg, splits, out_dir=out, seeds=seeds, device=args.device, progress=not args.quiet,
                    data_info=data_desc, profile=profile, modalities=modalities)
    for run in summary.runs:
        print(f"seed {run.seed}: best epoch {run.best_epoch}/{run.epochs}, valid Loss {run.valid.get('Loss')}, "
              f"test {format_metrics(run.test or {})}", file=sys.stderr)
    result = {"out_dir": str(out), "test_mean_std": summary.table,
              "checkpoints": [str(r.checkpoint) for r in summary.runs]}
    print_json(result)
    if tmp is not None:
        tmp.cleanup()
    return 0


# -- eval ------------------------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    from dmd_model.training.train import evaluate_checkpoint

    metrics = evaluate_checkpoint(args.checkpoint, args.data, split=args.split, device=args.device,
                                  progress=not args.quiet)
    result: dict[str, Any] = {"checkpoint": args.checkpoint, "data": args.data, "split": args.split,
                              "metrics": metrics}
    emotion = metrics.pop("emotion", None)
    if emotion is not None:
        result["emotion"] = emotion
        if args.plot:
            title = f"{Path(args.checkpoint).name} on {Path(args.data).name} ({args.split})"
            result["plot"] = plot_confusion(emotion["confusion"], args.plot, title=title)
    elif args.plot:
        print(f"dmd eval: --plot {args.plot}: the checkpoint has no emotion heads, so there is no confusion matrix "
              "to plot", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print_json(result)
    return 0


def plot_confusion(confusion: list[list[int]], path: str, title: str = "") -> str:
    """The confusion matrix (rows true, columns predicted, emotions in dmd_types order) as a PNG,
    each cell its count and its share of the row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from dmd_types import EMOTIONS

    m = np.asarray(confusion, dtype=float)
    names = EMOTIONS[: len(m)]
    rows = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.1 * len(m) + 2, 1.0 * len(m) + 1.5))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(m)):
        for j in range(len(m)):
            ax.text(j, i, f"{int(m[i, j])}\n{rows[i, j]:.0%}", ha="center", va="center", fontsize=8,
                    color="white" if rows[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(m)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(m)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


# -- info ------------------------------------------------------------------------------------------
def cmd_info(args: argparse.Namespace) -> int:
    from dmd_model.artefacts.checkpoint import describe_checkpoint, load_checkpoint

    info = describe_checkpoint(load_checkpoint(args.checkpoint))
    if args.json:
        print_json(info)
        return 0
    print(_format_info(info))
    return 0


def _format_info(info: dict[str, Any]) -> str:
    m = info["model"]
    lines = [
        f"file        {info['file']} ({info['bytes']} bytes, sha256 {info['sha256'][:16]}...)",
        f"name        {info['name']}  ({info['precision']} weights, {info['parameters']:,} parameters"
        + (f" + {info['text_encoder_parameters']:,} in BERT" if info["text_encoder_parameters"] else "") + ")",
        f"model       d_model {m['d_model']}, {m['num_heads']} heads, {m['layers']} layers, "
        f"features {m['feature_dims']}, lengths {m['seq_lens']}, BERT {m['use_bert']}",
        f"modalities  {', '.join(info['modalities'])}",
        f"profile     {info['profile'].get('name', '?')}: " + ", ".join(
            f"{k} = {v}" for k, v in info["profile"].items() if k in ("text", "audio", "visual")),
    ]
    data = info.get("data") or {}
    if data:
        splits = data.get("splits", {})
        lines.append(f"data        {data.get('path', '?')} "
                     + ", ".join(f"{k} {v.get('n')}" for k, v in splits.items()))
    for split, metrics in (info.get("metrics") or {}).items():
        if metrics:
            lines.append(f"{split:<11} " + "  ".join(f"{k} {v}" for k, v in metrics.items()))
    tr = info.get("training") or {}
    if tr:
        lines.append("training    " + ", ".join(f"{k} {v}" for k, v in tr.items()))
    cv = info.get("code_version") or {}
    lines.append("code        " + ", ".join(f"{k} {v}" for k, v in cv.items()))
    return "\n".join(lines)


# -- import-official ---------------------------------------------------------------------------------
def cmd_import_official(args: argparse.Namespace) -> int:
    from dmd_model.artefacts.checkpoint import save_checkpoint
    from dmd_model.artefacts.official import import_official

    cfg = _config(args.config, args.set)
    model = import_official(args.state_dict, cfg)
    out = Path(args.out or Path(args.state_dict).with_suffix(".dmd.pt"))
    save_checkpoint(out, model, cfg, data={"path": cfg.data.path, "source": f"official checkpoint {args.state_dict}"},
                    training={"imported_from": str(args.state_dict)})
    print(f"wrote {out}", file=sys.stderr)
    print_json({"checkpoint": str(out), "parameters": model.num_parameters()})
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the model's commands to the `dmd` parser."""
    p = sub.add_parser("train", help="train DMD on an MMSA-format pickle (several seeds, mean +- std)")
    p.add_argument("--config", help="YAML file or shipped name (mosi_aligned, mosei_unaligned, synthetic, ...)")
    p.add_argument("--data", nargs="+", metavar="[NAME=]PATH[@WEIGHT]",
                   help="MMSA pickle(s) (default: data.path of the configuration); several are trained on together "
                   "(mixed corpora, one feature profile), each sample drawn with its pickle's WEIGHT (default 1)")
    p.add_argument("--synthetic", action="store_true", help="train on a generated MMSA-format sample")
    p.add_argument("--out", help="output folder (default runs/<name>)")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (default: train.seeds of the configuration)")
    p.add_argument("--epochs", type=int, help="at most this many epochs (train.max_epochs)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N (default: train.device)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (train.precision=bf16)")
    p.add_argument("--deterministic", action="store_true", help="deterministic kernels")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a configuration value")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="metrics of a checkpoint on a split of an MMSA pickle")
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True, help="MMSA pickle")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true", help="one JSON object on one line")
    p.add_argument("--plot", metavar="PNG", help="emotion heads: write the confusion matrix as a PNG")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("info", help="what a checkpoint holds")
    p.add_argument("checkpoint")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("import-official", help="convert an official DMD state dict (.pth) to a checkpoint")
    p.add_argument("state_dict", help="official .pth (e.g. the authors' mosi-aligned.pth)")
    p.add_argument("--config", default="mosi_aligned", help="the configuration it was trained with")
    p.add_argument("--out", help="output checkpoint (default: next to the input, .dmd.pt)")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a configuration value")
    p.set_defaults(func=cmd_import_official)
