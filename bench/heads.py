"""What the emotion heads cost per live window: `Predictor.predict` (the inference worker's call: the
forward with distillation, the graph edges, unpacking to Python numbers) on a live-profile DMD
without emotion heads (`model.emotion_classes` 0, the official setting) and with seven, in the same
run. Both models share every weight but the emotion layers (the same seed builds both), take the
same random inputs, and are timed alternately, call by call; the report gives the medians and the
median of the ratios of neighbouring calls (steadier on a machine whose speed drifts). Issue 14's
target: the heads cost at most 5 % more per window. Times are measured, never asserted.

    python bench/heads.py [--config live_v2] [--batches 1 8] [--repeats 300] [--threads 1] [--json-out F]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from hostinfo import cpu_model  # noqa: E402

from dmd_model.artefacts.checkpoint import Checkpoint  # noqa: E402
from dmd_model.artefacts.predict import Predictor  # noqa: E402
from dmd_model.config import DMDConfig  # noqa: E402
from dmd_model.network.dmd import DMD  # noqa: E402

TARGET = 1.05


def predictor(config: str, emotions: int) -> Predictor:
    path = Path(config) if config.endswith((".yaml", ".yml")) else ROOT / "configs" / "model" / f"{config}.yaml"
    cfg = DMDConfig.from_yaml(path, [f"model.emotion_classes={emotions}"])
    torch.manual_seed(0)
    model = DMD(cfg.model)
    return Predictor(Checkpoint(config=cfg, state_dict=model.state_dict()), device="cpu")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="live_v2", help="shipped configuration name or YAML (default live_v2)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="windows per call (default 1 8)")
    parser.add_argument("--repeats", type=int, default=300, help="timed calls of each model per batch size")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the inference worker's default: 1)")
    parser.add_argument("--json-out", help="write the results here too")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    plain, heads = predictor(args.config, 0), predictor(args.config, 7)
    rng = np.random.default_rng(0)
    results = []
    for batch in args.batches:
        inputs = [rng.standard_normal((batch, *plain.input_shape(m)), dtype=np.float32)
                  for m in ("text", "audio", "visual")]
        for p in (plain, heads):  # warm-up
            for _ in range(10):
                p.predict(*inputs)
        times: dict[str, list[float]] = {"without": [], "with": []}
        for _ in range(args.repeats):
            for name, p in (("without", plain), ("with", heads)):
                start = time.perf_counter()
                p.predict(*inputs)
                times[name].append(time.perf_counter() - start)
        ratios = [b / a for a, b in zip(times["without"], times["with"])]
        row = {"batch": batch, "without_ms": 1000 * statistics.median(times["without"]),
               "with_ms": 1000 * statistics.median(times["with"]),
               "ratio_of_medians": statistics.median(times["with"]) / statistics.median(times["without"]),
               "median_ratio": statistics.median(ratios)}
        row["met"] = row["ratio_of_medians"] <= TARGET and row["median_ratio"] <= TARGET
        results.append(row)
    report = {"machine": f"{cpu_model()}, {args.threads} torch thread(s), {platform.python_version()}",
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "config": plain.name,
              "repeats": args.repeats, "target": TARGET, "results": results}
    print(f"{report['machine']}, {report['date']}, config {plain.name}, {args.repeats} calls each")
    print("| windows per call | without heads (ms) | with 7 emotions (ms) | ratio of medians | median ratio |")
    print("|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['batch']} | {r['without_ms']:.2f} | {r['with_ms']:.2f} | {r['ratio_of_medians']:.3f} | "
              f"{r['median_ratio']:.3f} |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
