"""Could a voice expert read emotions from the live acoustic frames, as the face expert does from the
face (issue 14)? Measured offline, nothing built.

Each clip of a converted emotion corpus (`dmd convert`, then `dmd extract --profile live-v4`, whose
clip cache keeps every clip's eGeMAPS frames) becomes one vector: over its voiced frames, each of the
25 descriptors' mean, spread and 10th, 50th and 90th percentiles, plus the share of voiced frames
(126 values; cheap enough for the inference worker to compute per window from the frames it already
reads). Two versions of the frames:

- `global`: the profile's standardisation only;
- `session`: each voiced frame z-scored by its session's running statistic (`voice_norm.SessionVoice`:
  the speaker's clips in the seeded order `dmd extract` replays them, each clip with the statistic
  after its own frames), as live-v4 does live.

An RBF SVM (balanced classes; C and gamma chosen on the valid speakers by UAR) on the train speakers,
seven classes, and a logistic regression (`linear_*`: what could be carried as a 126 x 7 matrix).
With `--checkpoint` and `--data` (the same corpus extracted for that checkpoint), also the
checkpoint's fused emotion probabilities pooled with the expert's (a Platt-scaled SVM): p = w * DMD
+ (1 - w) * expert, w chosen on the valid speakers; UAR on the test speakers. `--folds`: every
speaker pair in turn as the test speakers, the next pair valid (expert alone).

    python bench/voice_expert.py runs/default-checkpoint/ravdess [--checkpoint dmd_model/checkpoints/default.pt
        --data runs/exp/ravdess-v2.pkl] [--folds]

Reads the clips through `Extractor(live-v4)` from the default extraction cache (extracting what is not
cached). Prints JSON; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dmd_model.datasets.labels import read_labels  # noqa: E402
from dmd_model.datasets.samples import Extractor  # noqa: E402
from dmd_model.features import LIVE_V4, SessionVoice, voiced_moments  # noqa: E402
from dmd_model.features.voice_norm import session_order  # noqa: E402

CS = (0.3, 1.0, 3.0, 10.0, 30.0)
GAMMAS = ("scale", 0.003, 0.01, 0.03)


def clip_vector(frames, t0: float, t1: float, voice: SessionVoice | None) -> np.ndarray:
    frames = frames.between(t0, t1)
    if voice is not None:
        frames = voice.normalise_frames(frames, LIVE_V4)
    z = LIVE_V4.standardise_audio(frames.values[frames.present]).astype(np.float64)
    if len(z) < 2:
        return np.zeros(25 * 5 + 1)
    stats = [z.mean(0), z.std(0), *np.percentile(z, [10, 50, 90], axis=0)]
    return np.concatenate([*stats, [frames.present.mean()]])


def vectors(dataset: Path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    specs = [s for s in read_labels(dataset / "label.csv", dataset / "Raw") if s.emotion >= 0]
    extractor = Extractor(LIVE_V4, Path.home() / ".cache" / "live-dmd" / "extract")
    samples = [extractor.sample(s) for s in specs]
    ids = [s.id for s in specs]
    x_global = np.stack([clip_vector(s.afeat, *s.span, None) for s in samples])
    x_session = np.zeros_like(x_global)
    sessions = np.array([s.session for s in specs])
    for name in sorted(set(sessions)):
        rows = np.flatnonzero(sessions == name)
        voice = SessionVoice(LIVE_V4.voice_prior_frames)
        for k in session_order([ids[r] for r in rows], name):
            r = rows[k]
            voice.add(voiced_moments(samples[r].afeat, LIVE_V4, after=samples[r].span[0] - 1e-9,
                                     before=samples[r].span[1]))
            x_session[r] = clip_vector(samples[r].afeat, *samples[r].span, voice)
    y = np.array([s.emotion for s in specs])
    modes = np.array([s.split for s in specs])
    return ids, x_global, x_session, y, modes, sessions


def uar(true: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean([(pred[true == c] == c).mean() for c in np.unique(true)]))


def fit(x: np.ndarray, y: np.ndarray, modes: np.ndarray, probability: bool = False):
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    tr, va = modes == "train", modes == "valid"
    scaler = StandardScaler().fit(x[tr])
    xs = scaler.transform(x)
    best = None
    for c in CS:
        for gamma in GAMMAS:
            model = SVC(C=c, gamma=gamma, class_weight="balanced").fit(xs[tr], y[tr])
            score = uar(y[va], model.predict(xs[va]))
            if best is None or score > best[0]:
                best = (score, c, gamma)
    model = SVC(C=best[1], gamma=best[2], class_weight="balanced", probability=probability, random_state=0)
    model.fit(xs[tr], y[tr])
    return model, xs, best


def fit_linear(x: np.ndarray, y: np.ndarray, modes: np.ndarray):
    """A multinomial logistic regression (balanced classes, C chosen on valid): a 126 x 7 matrix that
    the inference worker could carry and apply without scikit-learn."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    tr, va = modes == "train", modes == "valid"
    scaler = StandardScaler().fit(x[tr])
    xs = scaler.transform(x)
    best = None
    for c in (0.01, 0.03, 0.1, 0.3, 1.0, 3.0):
        model = LogisticRegression(C=c, class_weight="balanced", max_iter=2000).fit(xs[tr], y[tr])
        score = uar(y[va], model.predict(xs[va]))
        if best is None or score > best[0]:
            best = (score, c, model)
    return best[2], xs, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path, help="a folder of `dmd convert` (label.csv and Raw/)")
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--data", type=Path, help="the corpus's pickle for --checkpoint (its profile)")
    ap.add_argument("--folds", action="store_true")
    args = ap.parse_args()
    started = time.monotonic()
    ids, x_global, x_session, y, modes, sessions = vectors(args.dataset)
    out: dict = {"bench": "voice_expert", "dataset": str(args.dataset), "clips": len(ids),
                 "features": x_global.shape[1]}
    te = modes == "test"
    for name, x in (("global", x_global), ("session", x_session)):
        model, xs, best = fit(x, y, modes)
        out[name] = {"valid_uar": round(best[0], 4), "test_uar": round(uar(y[te], model.predict(xs[te])), 4),
                     "C": best[1], "gamma": best[2]}
        model, xs, best = fit_linear(x, y, modes)
        out[f"linear_{name}"] = {"valid_uar": round(best[0], 4),
                                 "test_uar": round(uar(y[te], model.predict(xs[te])), 4), "C": best[1]}
    if args.checkpoint and args.data:
        import pickle

        from dmd_model.artefacts.predict import Predictor

        with open(args.data, "rb") as f:
            data = pickle.load(f)
        predictor = Predictor(args.checkpoint, device="cpu", threads=2)
        dmd_probs = {}
        for split in ("valid", "test"):
            d = data[split]
            for i, p in zip(d["id"], predictor.predict(d["text"], d["audio"], d["vision"], present=d["present"])):
                dmd_probs[str(i)] = np.asarray(p.emotions)
        va = modes == "valid"
        for name, x in (("global", x_global), ("session", x_session)):
            model, xs, _ = fit(x, y, modes, probability=True)
            expert = np.zeros((len(ids), 7))
            expert[:, model.classes_] = model.predict_proba(xs)
            dmd = np.stack([dmd_probs.get(i, np.full(7, 1 / 7)) for i in ids])
            scores = {}
            for w in np.linspace(0, 1, 11):
                pooled = w * dmd + (1 - w) * expert
                scores[round(float(w), 1)] = uar(y[va], pooled[va].argmax(1))
            w = max(scores, key=lambda k: (scores[k], k))
            pooled = w * dmd + (1 - w) * expert
            out[f"pooled_{name}"] = {"w_dmd": w, "valid_uar": round(scores[w], 4),
                                     "test_uar": round(uar(y[te], pooled[te].argmax(1)), 4),
                                     "dmd_alone_test_uar": round(uar(y[te], dmd[te].argmax(1)), 4),
                                     "dmd_alone_valid_uar": round(uar(y[va], dmd[va].argmax(1)), 4)}
    if args.folds:
        order = sorted(set(sessions.tolist()))
        pairs = [order[i:i + 2] for i in range(0, len(order) - 1, 2)]
        for name, x in (("global", x_global), ("session", x_session)):
            tests, linear = [], []
            for k, pair in enumerate(pairs):
                valid = pairs[(k + 1) % len(pairs)]
                m = np.where(np.isin(sessions, pair), "test", np.where(np.isin(sessions, valid), "valid", "train"))
                model, xs, _ = fit(x, y, m)
                tests.append(uar(y[m == "test"], model.predict(xs[m == "test"])))
                model, xs, _ = fit_linear(x, y, m)
                linear.append(uar(y[m == "test"], model.predict(xs[m == "test"])))
            out[f"folds_{name}"] = {"test_uar": [round(t, 4) for t in tests], "mean": round(float(np.mean(tests)), 4),
                                    "sd": round(float(np.std(tests)), 4),
                                    "linear_mean": round(float(np.mean(linear)), 4),
                                    "linear_sd": round(float(np.std(linear)), 4)}
    out["seconds"] = round(time.monotonic() - started, 1)
    out["machine"] = {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
