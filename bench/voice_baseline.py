"""The issue's anchors for the voice, measured here: eGeMAPS functionals + an SVM on unseen speakers,
with and without per-speaker normalisation (issue 14).

Each clip of a corpus (`dmd_model.datasets.corpora`: RAVDESS speech or EmoDB, the project's own
speaker splits: RAVDESS actors 01-16 train, 17-18 valid, 19-20 test; EmoDB by speaker likewise) goes
through openSMILE's eGeMAPSv02 functionals (88 values a clip, the stock configuration). An RBF SVM
is trained on the train speakers, C and gamma chosen on the valid speakers by UAR, the test speakers
used once. Two normalisations of the functionals:

- `global`: z-scored with the train speakers' mean and spread;
- `per_speaker`: z-scored with each speaker's own mean and spread over all of that speaker's clips
  (the test speakers' too, without their labels: what a live session could approach with a running
  statistic once it has heard enough of its speaker);
- `running` (with `--folds`): that running statistic, each speaker's clips in a random order as one
  session, each clip z-scored by the speaker's clips so far (itself included), shrunk towards the
  train speakers' statistics by five clips' worth: the same code for every speaker, train and test.

Classes: the seven of the project (`dmd_types.emotions`: RAVDESS calm -> neutral, EmoDB boredom ->
neutral) and, for RAVDESS, the corpus's own eight. Scored by `dmd_model.training.metrics.emotion_metrics`
where the seven apply (UAR = mean recall over the classes present).

    python bench/voice_baseline.py [--corpus ravdess|emodb] [--source DIR] [--workers 2] [--folds]

`--folds`: two test speakers are few (RAVDESS: 120 clips), so also every speaker in turn: the
speakers in pairs (in order), each pair the test speakers of one fold, the next pair its valid
speakers, the rest train; mean and spread of the folds' test UAR.

The functionals are cached in runs/voice_baseline/. Prints JSON; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dmd_model.datasets.corpora import corpus_clips  # noqa: E402
from dmd_types import EMOTIONS  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "emotion_speech"
CS = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
GAMMAS = ("scale", 0.003, 0.01, 0.03)


def _functionals(path: str) -> np.ndarray:
    import opensmile

    smile = opensmile.Smile(opensmile.FeatureSet.eGeMAPSv02, opensmile.FeatureLevel.Functionals)
    return smile.process_file(path).to_numpy()[0].astype(np.float64)


def functionals(paths: list[str], cache: Path, workers: int) -> np.ndarray:
    if cache.is_file():
        data = np.load(cache, allow_pickle=False)
        if list(data["paths"]) == paths:
            return data["x"]
    with ProcessPoolExecutor(workers) as pool:
        x = np.stack(list(pool.map(_functionals, paths, chunksize=16)))
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, x=x, paths=np.array(paths))
    return x


def normalised(x: np.ndarray, speakers: np.ndarray, train: np.ndarray, how: str) -> np.ndarray:
    if how == "global":
        mean, std = x[train].mean(0), x[train].std(0)
        return (x - mean) / np.where(std > 0, std, 1.0)
    out = np.empty_like(x)
    for s in np.unique(speakers):
        rows = speakers == s
        mean, std = x[rows].mean(0), x[rows].std(0)
        out[rows] = (x[rows] - mean) / np.where(std > 0, std, 1.0)
    return out


def running(x: np.ndarray, speakers: np.ndarray, train: np.ndarray, prior: float = 5.0,
            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Each speaker's clips in a random order, as one live session: a clip z-scored with the mean and
    spread of that speaker's clips so far (itself included), shrunk towards the train speakers' by
    `prior` clips' worth. Also each clip's position in its session (0 = the first)."""
    g_mean, g_var = x[train].mean(0), x[train].var(0)
    out, position = np.empty_like(x), np.zeros(len(x), np.int64)
    rng = np.random.default_rng(seed)
    for s in np.unique(speakers):
        rows = rng.permutation(np.flatnonzero(speakers == s))
        n, total, squares = 0, np.zeros(x.shape[1]), np.zeros(x.shape[1])
        for i, row in enumerate(rows):
            n, total, squares = n + 1, total + x[row], squares + x[row] ** 2
            mean = (total + prior * g_mean) / (n + prior)
            var = (squares + prior * (g_var + g_mean ** 2)) / (n + prior) - mean ** 2
            std = np.sqrt(np.maximum(var, 0))
            out[row] = (x[row] - mean) / np.where(std > 0, std, 1.0)
            position[row] = i
    return out, position


def uar(true: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean([(pred[true == c] == c).mean() for c in np.unique(true)]))


def svm_run(x: np.ndarray, y: np.ndarray, modes: np.ndarray) -> dict:
    from sklearn.svm import SVC

    tr, va, te = (modes == m for m in ("train", "valid", "test"))
    best = None
    for c in CS:
        for gamma in GAMMAS:
            model = SVC(C=c, gamma=gamma, kernel="rbf", class_weight="balanced").fit(x[tr], y[tr])
            score = uar(y[va], model.predict(x[va]))
            if best is None or score > best[0]:
                best = (score, c, gamma)
    _, c, gamma = best
    model = SVC(C=c, gamma=gamma, kernel="rbf", class_weight="balanced").fit(x[tr], y[tr])
    pred = model.predict(x[te])
    return {"C": c, "gamma": gamma, "valid_uar": round(best[0], 4), "test_uar": round(uar(y[te], pred), 4),
            "test_accuracy": round(float((pred == y[te]).mean()), 4), "pred": pred}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="ravdess", choices=["ravdess", "emodb"])
    ap.add_argument("--source", help="the corpus folder (default ../shared/data/emotion_speech/CORPUS)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--folds", action="store_true", help="also every speaker pair in turn as the test speakers")
    args = ap.parse_args()
    from dmd_model.training.metrics import emotion_metrics

    started = time.monotonic()
    clips = corpus_clips(args.corpus, Path(args.source) if args.source else DATA / args.corpus)
    paths = [str(c.media) for c in clips]
    x = functionals(paths, ROOT / "runs" / "voice_baseline" / f"{args.corpus}.npz", args.workers)
    speakers = np.array([c.speaker for c in clips])
    modes = np.array([c.mode for c in clips])
    seven = np.array([EMOTIONS.index(c.emotion) for c in clips])
    own_names = sorted({c.corpus_label for c in clips})
    own = np.array([own_names.index(c.corpus_label) for c in clips])
    result: dict = {"bench": "voice_baseline", "corpus": args.corpus, "clips": len(clips),
                    "features": "eGeMAPSv02 functionals (88)", "split": {m: sorted(set(speakers[modes == m]))
                                                                      for m in ("train", "valid", "test")}}
    for how in ("global", "per_speaker"):
        xn = normalised(x, speakers, modes == "train", how)
        run7 = svm_run(xn, seven, modes)
        logits = np.eye(len(EMOTIONS))[run7.pop("pred")]
        metrics = emotion_metrics(logits, seven[modes == "test"], len(EMOTIONS))
        entry = {"seven": {**run7, "uar_by_emotion_metrics": metrics["uar"],
                           "weighted_f1": metrics["weighted_f1"]}}
        if len(own_names) != len(set(seven.tolist())):
            run_own = svm_run(xn, own, modes)
            run_own.pop("pred")
            entry["own_labels"] = {"classes": own_names, **run_own}
        result[how] = entry
    if args.folds:
        order = sorted(set(speakers.tolist()))
        pairs = [order[i:i + 2] for i in range(0, len(order) - 1, 2)]
        folds: dict[str, list[float]] = {"global": [], "per_speaker": [], "running": []}
        early_late: list[tuple[float, float]] = []
        for k, test_pair in enumerate(pairs):
            valid_pair = pairs[(k + 1) % len(pairs)]
            fold = np.where(np.isin(speakers, test_pair), "test", np.where(np.isin(speakers, valid_pair), "valid",
                                                                          "train"))
            for how in ("global", "per_speaker"):
                folds[how].append(svm_run(normalised(x, speakers, fold == "train", how), seven, fold)["test_uar"])
            xr, position = running(x, speakers, fold == "train")
            run = svm_run(xr, seven, fold)
            folds["running"].append(run["test_uar"])
            test = fold == "test"
            pred, true, pos = run["pred"], seven[test], position[test]
            early_late.append((uar(true[pos < 10], pred[pos < 10]), uar(true[pos >= 10], pred[pos >= 10])))
        result["folds"] = {"test_pairs": pairs, **{how: {"test_uar_each": v, "mean": round(float(np.mean(v)), 4),
                                                         "std": round(float(np.std(v)), 4)}
                                                   for how, v in folds.items()},
                           "per_speaker_minus_global_each": [round(b - a, 4) for a, b in
                                                             zip(folds["global"], folds["per_speaker"])],
                           "running_first_10_clips_uar_mean": round(float(np.mean([e for e, _ in early_late])), 4),
                           "running_after_10_clips_uar_mean": round(float(np.mean([v for _, v in early_late])), 4)}
    result["seconds"] = round(time.monotonic() - started, 1)
    result["machine"] = {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
