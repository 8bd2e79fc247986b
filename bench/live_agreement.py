"""Live against offline emotions (issue 14): for test clips of an emotion corpus, the clip-level
emotion of `dmd run --source CLIP --json` beside the offline prediction of the same checkpoint on the
same clip's extracted features (`dmd extract`, the pickle `dmd eval` reads).

- Offline: the clip's sample in the pickle's test split through `Predictor.predict` with its presence
  flags, as `dmd eval` scores it; the top emotion of the fused head.
- Live: `dmd run --source CLIP --speed 0 --asr ASR --json` on the embedded Redis, one run per clip;
  the clip's emotion is the top one of the mean of its windows' published (smoothed) `emotions`.

`--per-emotion N` clips of each emotion present in the test split, in file order. Reports the share of
clips where the two agree, and how often each is right. With `--asr none` live windows have no words
while the offline sample has its forced-aligned transcript; `--asr whisper` (default) hears them.

    python bench/live_agreement.py --data runs/default-checkpoint/ravdess.pkl \\
        --dataset runs/default-checkpoint/ravdess [--checkpoint dmd_model/checkpoints/default.pt]

Prints JSON; asserts nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dmd_model.artefacts.predict import Predictor  # noqa: E402
from dmd_model.training.data import load_mmsa  # noqa: E402
from dmd_types import EMOTIONS  # noqa: E402

DEFAULT_CHECKPOINT = ROOT / "dmd_model" / "checkpoints" / "default.pt"


def media_of(dataset: Path) -> dict[str, Path]:
    """clip id as the pickle names it -> the clip's media file (Raw/<video_id>/<clip_id>.<ext>)."""
    out = {}
    with (dataset / "label.csv").open(newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            found = sorted((dataset / "Raw" / r["video_id"]).glob(f"{r['clip_id']}.*"))
            if found:
                # `dmd extract` names a clip video_id$_$clip_id (MMSA's ids); the others for older pickles
                for key in (f"{r['video_id']}$_${r['clip_id']}", f"{r['video_id']}${r['clip_id']}", r["clip_id"]):
                    out[key] = found[0]
    return out


def live_emotion(clip: Path, checkpoint: Path, asr: str, session: str) -> tuple[str | None, int]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}  # the embedded Redis
    done = subprocess.run([sys.executable, "-m", "workers.cli", "run", "--source", str(clip), "--speed", "0",
                           "--asr", asr, "--json", "--quiet", "--session", session, "--checkpoint", str(checkpoint)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    estimates = []
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            e = json.loads(line)
            if "window" in e and e.get("emotions"):
                estimates.append([e["emotions"][name] for name in EMOTIONS])
    if not estimates:
        print(f"{clip.name}: no estimates with emotions (exit {done.returncode}): {done.stderr[-500:]}",
              file=sys.stderr)
        return None, 0
    return EMOTIONS[int(np.argmax(np.mean(estimates, axis=0)))], len(estimates)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the corpus's pickle (dmd extract)")
    parser.add_argument("--dataset", type=Path, required=True, help="the converted corpus folder (dmd convert)")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--per-emotion", type=int, default=2)
    parser.add_argument("--asr", default="whisper", choices=("whisper", "none"))
    args = parser.parse_args()
    started = time.time()
    predictor = Predictor(args.checkpoint, device="cpu")
    split = load_mmsa(args.data, feature_dims=predictor.checkpoint.config.model.feature_dims,
                      seq_lens=predictor.checkpoint.config.model.seq_lens)["test"]
    media = media_of(args.dataset)
    taken: Counter[int] = Counter()
    rows = []
    for i, clip_id in enumerate(split.ids):
        truth = int(split.emotions[i])
        if truth < 0 or taken[truth] >= args.per_emotion or clip_id not in media:
            continue
        taken[truth] += 1
        present = split.present[i:i + 1] if split.present is not None else None
        offline = predictor.predict(split.text[i:i + 1], split.audio[i:i + 1], split.vision[i:i + 1], present)[0]
        live, windows = live_emotion(media[clip_id], args.checkpoint, args.asr, f"agree{i}")
        rows.append({"clip": clip_id, "truth": EMOTIONS[truth], "offline": EMOTIONS[int(np.argmax(offline.emotions))],
                     "live": live, "windows": windows})
        print(json.dumps(rows[-1]), file=sys.stderr)
    n = len(rows)
    report = {
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "checkpoint": str(args.checkpoint), "data": str(args.data), "asr": args.asr, "clips": n,
        "agreement": sum(r["live"] == r["offline"] for r in rows) / n if n else None,
        "offline_accuracy": sum(r["offline"] == r["truth"] for r in rows) / n if n else None,
        "live_accuracy": sum(r["live"] == r["truth"] for r in rows) / n if n else None,
        "rows": rows, "seconds": round(time.time() - started, 1),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
