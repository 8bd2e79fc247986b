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
    python bench/voice_expert.py runs/default-checkpoint/ravdess runs/default-checkpoint/emodb --save \
        dmd_model/features/models/voice_expert.npz

`--save`: the voice expert the inference worker pools (`dmd_model.features.voice_expert`): the
logistic regression on the session-normalised vectors of every dataset given, trained on their train
speakers together, C chosen on their valid speakers together, with its test accuracy and UAR (all
test speakers, and each corpus's).

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
from dmd_model.features.voice_expert import DIM, VoiceExpert, voice_statistics, voice_vector  # noqa: E402
from dmd_model.features.voice_norm import session_order  # noqa: E402
from dmd_types import EMOTIONS  # noqa: E402

CS = (0.3, 1.0, 3.0, 10.0, 30.0)
GAMMAS = ("scale", 0.003, 0.01, 0.03)


def clip_vector(frames, t0: float, t1: float) -> np.ndarray:
    """The "global" vector: the expert's statistics of the clip's frames, not normalised."""
    frames = frames.between(t0, t1)
    return voice_statistics(frames, LIVE_V4) if int(frames.present.sum()) >= 2 else np.zeros(DIM)


WINDOWS: list[tuple[np.ndarray, int, str]] = []  # (vector, emotion, split) of every clip's live windows


def vectors(datasets: list[Path]) -> tuple:
    """Per clip of the datasets: id, global vectors, session vectors (the speaker's clips as one
    session), alone vectors (the clip as a session of its own), emotion, split, session (the dataset's
    name and the speaker), corpus. Session and alone vectors are `voice_vector`'s (zeros where it
    gives none: fewer voiced frames than the expert reads)."""
    extractor = Extractor(LIVE_V4, Path.home() / ".cache" / "live-dmd" / "extract")
    ids, xg, xs, xa, ys, modes, sessions, corpora = [], [], [], [], [], [], [], []
    for dataset in datasets:
        specs = [s for s in read_labels(dataset / "label.csv", dataset / "Raw") if s.emotion >= 0]
        samples = [extractor.sample(s) for s in specs]
        names = [s.id for s in specs]
        session_of = np.array([s.session for s in specs])
        local = np.zeros((len(specs), DIM))
        for spec, sample in zip(specs, samples):  # each clip a session of its own: what a one-clip live run has
            t0, t1 = sample.span
            voice = SessionVoice(LIVE_V4.voice_prior_frames)
            voice.add(voiced_moments(sample.afeat, LIVE_V4, after=t0 - 1e-9, before=t1))
            v = voice_vector(sample.afeat, t0, t1, voice, LIVE_V4)
            xa.append(v if v is not None else np.zeros(DIM))
            # and its live windows: 3 s at a 0.5 s hop, the statistic growing with the frames up to each end
            voice = SessionVoice(LIVE_V4.voice_prior_frames)
            start = t0
            while True:
                end = start + 3.0
                voice.add(voiced_moments(sample.afeat, LIVE_V4, after=voice.until, before=end))
                v = voice_vector(sample.afeat, start, end, voice, LIVE_V4)
                if v is not None:
                    WINDOWS.append((v, spec.emotion, spec.split))
                if end >= t1:
                    break
                start += 0.5
        for name in sorted(set(session_of)):
            rows = np.flatnonzero(session_of == name)
            voice = SessionVoice(LIVE_V4.voice_prior_frames)
            for k in session_order([names[r] for r in rows], name):
                r = rows[k]
                t0, t1 = samples[r].span
                voice.add(voiced_moments(samples[r].afeat, LIVE_V4, after=t0 - 1e-9, before=t1))
                v = voice_vector(samples[r].afeat, t0, t1, voice, LIVE_V4)
                local[r] = v if v is not None else 0.0
        ids += names
        xg += [clip_vector(s.afeat, *s.span) for s in samples]
        xs.append(local)
        ys += [s.emotion for s in specs]
        modes += [s.split for s in specs]
        sessions += [f"{dataset.name}:{s.session}" for s in specs]
        corpora += [dataset.name] * len(specs)
    return (ids, np.stack(xg), np.concatenate(xs), np.stack(xa), np.array(ys), np.array(modes), np.array(sessions),
            np.array(corpora))


def save_expert(x: np.ndarray, x_alone: np.ndarray, y: np.ndarray, modes: np.ndarray, corpora: np.ndarray,
                path: Path, windows: bool = False) -> dict:
    """Train the carried expert (see the module docstring) and write it; returns its figures. It
    learns from each clip twice: read within its speaker's session (a long live session) and as a
    session of its own (a short one, barely normalised), so that it serves both."""
    both_x, both_y = np.concatenate([x, x_alone]), np.concatenate([y, y])
    both_modes = np.concatenate([modes, modes])
    if windows:  # also each clip's live windows, as a one-clip live run reads them
        both_x = np.concatenate([both_x, np.stack([w[0] for w in WINDOWS])])
        both_y = np.concatenate([both_y, [w[1] for w in WINDOWS]])
        both_modes = np.concatenate([both_modes, [w[2] for w in WINDOWS]])
    model, xs, best = fit_linear(both_x, both_y, both_modes)
    train = both_modes == "train"
    scaler_mean, scaler_scale = both_x[train].mean(0), both_x[train].std(0)
    scaler_scale = np.where(scaler_scale > 0, scaler_scale, 1.0)
    coef = np.full((len(EMOTIONS), x.shape[1]), 0.0)
    intercept = np.full(len(EMOTIONS), -30.0)  # a class the training data lacks is never predicted
    coef[model.classes_], intercept[model.classes_] = model.coef_, model.intercept_
    expert = VoiceExpert(scaler_mean, scaler_scale, coef, intercept, {})
    te = modes == "test"
    figures: dict = {}
    for name, rows in (("session", x), ("alone", x_alone)):
        pred = np.array([int(np.argmax(expert.probabilities(v))) for v in rows])
        figures[name] = {"accuracy": round(float((pred[te] == y[te]).mean()), 4), "uar": round(uar(y[te], pred[te]), 4)}
        for corpus in sorted(set(corpora)):
            m = te & (corpora == corpus)
            figures[name][corpus] = {"accuracy": round(float((pred[m] == y[m]).mean()), 4),
                                     "uar": round(uar(y[m], pred[m]), 4), "n": int(m.sum())}
    figures["accuracy"] = round((figures["session"]["accuracy"] + figures["alone"]["accuracy"]) / 2, 4)
    meta = {"model": "multinomial logistic regression, balanced classes", "C": best[1],
            "inputs": "voice_vector: per-session normalised voiced eGeMAPS frames, 25 x (mean, sd, p10, p50, p90) "
                      "+ voiced share; each train clip read in its speaker's session and alone"
                      + (", and its live 3 s windows" if windows else ""),
            "trained_on": sorted(set(corpora)), "train_clips": int((modes == "train").sum()),
            "valid_uar": round(best[0], 4), "test": figures,
            "licence": "derived from RAVDESS (CC BY-NC-SA 4.0) and EmoDB (research use): non-commercial"}
    expert = VoiceExpert(scaler_mean, scaler_scale, coef, intercept, meta)
    expert.save(path)
    if len(model.classes_) == len(EMOTIONS):  # the carried arithmetic is scikit-learn's
        assert np.allclose([expert.probabilities(v) for v in both_x[:20]], model.predict_proba(xs[:20]), atol=1e-6)
    return meta


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


def pipeline_rule(checkpoint: Path, data_path: Path, ids: list[str], x: np.ndarray, y: np.ndarray,
                  modes: np.ndarray) -> dict:
    """The carried expert (`models/voice_expert.npz`) pooled with the checkpoint's emotions by the
    inference worker's rule (`fusion.window_emotions`, the weights it uses), clip by clip: where the
    expert reads no vector (too few voiced frames) the checkpoint's emotions stand."""
    import pickle

    from dmd_model.artefacts.predict import Predictor
    from dmd_model.features.voice_expert import load_voice_expert
    from workers.infer.fusion import FusionWeights, window_emotions

    expert = load_voice_expert()
    predictor = Predictor(checkpoint, device="cpu", threads=2)
    weights = FusionWeights.from_metrics(predictor.checkpoint.metrics).with_voice(expert.accuracy, "voice expert")
    with open(data_path, "rb") as f:
        data = pickle.load(f)
    out: dict = {"weights": weights.describe()}
    for split in ("valid", "test"):
        d = data[split]
        row_of = {i: r for r, i in enumerate(ids)}
        predictions = predictor.predict(d["text"], d["audio"], d["vision"], present=d["present"])
        truth, alone, pooled, voice_only = [], [], [], []
        for i, p in zip(d["id"], predictions):
            r = row_of[str(i)]
            heard = expert.probabilities(x[r]) if x[r].any() else None
            fused = window_emotions(p.emotions, p.modality_emotions, None, face_present=False, visual_used=False,
                                    weights=weights, voice=heard).fused
            truth.append(y[r])
            alone.append(int(np.argmax(p.emotions)))
            pooled.append(int(np.argmax(fused)))
            voice_only.append(int(np.argmax(heard)) if heard is not None else alone[-1])
        truth_a = np.array(truth)
        out[split] = {"n": len(truth), "checkpoint_uar": round(uar(truth_a, np.array(alone)), 4),
                      "expert_uar": round(uar(truth_a, np.array(voice_only)), 4),
                      "pooled_uar": round(uar(truth_a, np.array(pooled)), 4),
                      "pooled_accuracy": round(float((np.array(pooled) == truth_a).mean()), 4),
                      "checkpoint_accuracy": round(float((np.array(alone) == truth_a).mean()), 4)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path, nargs="+", help="folders of `dmd convert` (label.csv and Raw/)")
    ap.add_argument("--save", type=Path, help="train the carried expert on all datasets and write it here")
    ap.add_argument("--windows", action="store_true", help="--save: also train on each clip's live windows")
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--data", type=Path, help="the corpus's pickle for --checkpoint (its profile)")
    ap.add_argument("--folds", action="store_true")
    ap.add_argument("--pooled", action="store_true",
                    help="with --checkpoint/--data: the carried expert pooled as the inference worker pools it")
    args = ap.parse_args()
    started = time.monotonic()
    ids, x_global, x_session, x_alone, y, modes, sessions, corpora = vectors(args.dataset)
    out: dict = {"bench": "voice_expert", "dataset": [str(d) for d in args.dataset], "clips": len(ids),
                 "features": x_global.shape[1]}
    if args.save:
        out["saved"] = {"path": str(args.save),
                        **save_expert(x_session, x_alone, y, modes, corpora, args.save, windows=args.windows)}
        print(json.dumps(out, indent=1))
        return
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
    if args.pooled and args.checkpoint and args.data:
        out["pipeline_rule"] = {
            "in_session": pipeline_rule(args.checkpoint, args.data, ids, x_session, y, modes),
            "alone": pipeline_rule(args.checkpoint, args.data, ids, x_alone, y, modes)}
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
