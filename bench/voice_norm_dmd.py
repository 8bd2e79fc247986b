"""Does per-speaker normalisation of the voice help DMD, as it helps an SVM (bench/voice_baseline.py)?
Issue 14 asks for it "if it helps on valid"; one earlier DMD run said no (BENCHMARKS.md).

From one extracted emotion corpus (`dmd convert` + `dmd extract --profile live-v2`, e.g. RAVDESS),
every speaker pair in turn is the test speakers of a fold, the next pair its valid speakers, the rest
train (as bench/voice_baseline.py --folds); DMD is trained on each fold (`dmd train`, one seed, the
configuration below) with the voice positions of the pickle

- `none`: as extracted (the profile's global standardisation);
- `running`: each speaker's clips in a seeded random order as one session, every clip's voice
  positions z-scored with the running mean and spread of that speaker's positions so far (the clip's
  own included), shrunk towards the profile's (mean 0, spread 1) by `--prior` clips' worth: the
  statistic a live session can keep, the same for train, valid and test speakers;
- `speaker` (with `--whole`): each speaker's mean and spread over all of their clips;
- with `--against OTHER.pkl`: the voice positions of another extraction of the same clips, named by
  its profile (e.g. `live-v4`, whose per-session normalisation of the voiced frames is the one built
  into `dmd extract` and the inference worker).

`--variants none,live-v4` runs only those.

Positions without voice frames (zeros: padding) stay zero. The test UAR of each fold and variant is
printed as JSON with the mean over the folds.

    python bench/voice_norm_dmd.py runs/exp/ravdess.pkl --labels runs/exp/ravdess/label.csv [--folds 10] [--whole]
        [--against runs/exp/ravdess-v4.pkl] [--variants none,live-v4]

A fold takes about 80 s on 2 cores (RAVDESS, 24-40 epochs). Writes under runs/voice_norm_dmd/.
"""

from __future__ import annotations

import argparse
import csv
import json
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["--config", "live_text", "--set", "model.emotion_classes=7", "--set", "train.max_epochs=40",
         "--set", "train.early_stop=8", "--set", "train.patience=3", "--seeds", "1111", "--quiet"]
SPLITS = ("train", "valid", "test")


def pooled(data: dict, speaker_of: dict[str, str]) -> tuple[dict, np.ndarray]:
    """Every split's samples in one pool (array fields concatenated) and each sample's speaker."""
    fields = [k for k in data["train"] if isinstance(data["train"][k], np.ndarray)]
    pool = {k: np.concatenate([data[s][k] for s in SPLITS]) for k in fields}
    speakers = np.array([speaker_of[str(i)] for i in pool["id"]])
    return pool, speakers


def normalised(audio: np.ndarray, speakers: np.ndarray, how: str, prior: float, seed: int = 0) -> np.ndarray:
    """The voice positions z-scored per speaker (see the module docstring); zeros stay zero."""
    out = audio.astype(np.float64).copy()
    if how == "none":
        return audio
    rng = np.random.default_rng(seed)
    dim = audio.shape[-1]
    for s in np.unique(speakers):
        rows = np.flatnonzero(speakers == s)
        if how == "speaker":
            voiced = np.concatenate([audio[r][np.abs(audio[r]).sum(-1) > 0] for r in rows])
            mean, std = voiced.mean(0), np.maximum(voiced.std(0), 1e-3)
            for r in rows:
                used = np.abs(audio[r]).sum(-1) > 0
                out[r][used] = (audio[r][used] - mean) / std
            continue
        n, total, squares = 0.0, np.zeros(dim), np.zeros(dim)
        weight = prior * average_positions(audio, rows)  # the prior, in positions: mean 0, second moment 1
        for r in rng.permutation(rows):
            used = np.abs(audio[r]).sum(-1) > 0
            positions = audio[r][used].astype(np.float64)
            n, total, squares = n + len(positions), total + positions.sum(0), squares + (positions ** 2).sum(0)
            mean = total / (n + weight)
            var = (squares + weight * 1.0) / (n + weight) - mean ** 2
            out[r][used] = (positions - mean) / np.sqrt(np.maximum(var, 1e-6))
    return out.astype(np.float32)


def average_positions(audio: np.ndarray, rows: np.ndarray) -> float:
    """Voice positions in one of these clips, on average: the prior's clips in positions."""
    return float(np.mean([(np.abs(audio[r]).sum(-1) > 0).sum() for r in rows]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pickle")
    ap.add_argument("--labels", required=True, help="the label.csv of `dmd convert` (its speaker column)")
    ap.add_argument("--folds", type=int, default=10, help="this many speaker pairs as test, in order")
    ap.add_argument("--prior", type=float, default=5.0, help="running: the prior's weight in clips (default 5)")
    ap.add_argument("--whole", action="store_true", help="also each speaker's whole set (not causal)")
    ap.add_argument("--against", help="another extraction of the same clips: its voice positions as a variant")
    ap.add_argument("--variants", help="comma-separated: only these variants")
    args = ap.parse_args()

    with open(args.labels, newline="") as f:
        speaker_of = {f"{row['video_id']}$_${row['clip_id']}": row["speaker"] for row in csv.DictReader(f)}
    with open(args.pickle, "rb") as f:
        data = pickle.load(f)
    pool, speakers = pooled(data, speaker_of)
    order = sorted(set(speakers.tolist()))
    pairs = [order[i:i + 2] for i in range(0, len(order) - 1, 2)][:args.folds]
    all_pairs = [order[i:i + 2] for i in range(0, len(order) - 1, 2)]
    variants = ["none", "running"] + (["speaker"] if args.whole else [])
    audio = {v: normalised(pool["audio"], speakers, v, args.prior) for v in variants}
    if args.against:
        with open(args.against, "rb") as f:
            other = pickle.load(f)
        name = other["meta"]["profile"]["name"]
        other_pool, _ = pooled(other, speaker_of)
        row_of = {str(i): r for r, i in enumerate(other_pool["id"])}
        audio[name] = other_pool["audio"][[row_of[str(i)] for i in pool["id"]]]
        variants.append(name)
    if args.variants:
        variants = [v for v in args.variants.split(",") if v in audio]
    work = ROOT / "runs" / "voice_norm_dmd"
    work.mkdir(parents=True, exist_ok=True)
    dmd = str(Path(sys.executable).with_name("dmd"))
    results: dict[str, list[dict]] = {v: [] for v in variants}
    started = time.monotonic()
    for k, test_pair in enumerate(pairs):
        valid_pair = all_pairs[(all_pairs.index(test_pair) + 1) % len(all_pairs)]
        mode = np.where(np.isin(speakers, test_pair), "test", np.where(np.isin(speakers, valid_pair), "valid", "train"))
        for v in variants:
            fold = {s: {key: (audio[v] if key == "audio" else values)[mode == s] for key, values in pool.items()}
                    for s in SPLITS}
            fold["meta"] = data["meta"]
            path = work / "fold.pkl"
            with open(path, "wb") as f:
                pickle.dump(fold, f)
            out = work / f"run-{v}"
            subprocess.run([dmd, "train", "--data", str(path), "--out", str(out), *TRAIN], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            run = json.loads((out / "summary.json").read_text())["runs"][0]
            results[v].append({"test": test_pair, "valid_uar": run["valid"]["emotion_uar"],
                               "test_uar": run["test"]["emotion"]["uar"], "best_epoch": run["best_epoch"]})
            print(f"fold {k} test {test_pair} {v}: valid UAR {run['valid']['emotion_uar']}, "
                  f"test UAR {run['test']['emotion']['uar']}", file=sys.stderr, flush=True)
    summary = {v: {"test_uar_mean": round(float(np.mean([r["test_uar"] for r in rs])), 4),
                   "test_uar_std": round(float(np.std([r["test_uar"] for r in rs])), 4),
                   "valid_uar_mean": round(float(np.mean([r["valid_uar"] for r in rs])), 4)}
               for v, rs in results.items()}
    print(json.dumps({"bench": "voice_norm_dmd", "pickle": args.pickle, "prior_clips": args.prior,
                      "train": " ".join(TRAIN), "summary": summary, "folds": results,
                      "seconds": round(time.monotonic() - started, 1)}, indent=1))


if __name__ == "__main__":
    main()
