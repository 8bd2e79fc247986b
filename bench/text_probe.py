"""The bar for the default checkpoint: a linear probe on frozen MiniLM sentence embeddings.

Ridge regression on mean-pooled all-MiniLM-L6-v2 sentence embeddings (the sentence-transformers
recipe: mean over the tokens, [CLS] and [SEP] included, then L2-normalised), trained on the CMU-MOSI
and CMU-MOSEI train splits together, with the text normalised as the live path normalises it
(lower case, no punctuation: `normalise_text`). The ridge alpha is chosen on the two valid splits
together (lowest MAE); test is used once. Metrics are MMSA's (`dmd_model.training.metrics`), per test set.

With `--checkpoint`, the same run also evaluates a Live DMD checkpoint on the same test sets, its
input made from the transcripts by the text-only extraction path (`text_window`), so the two are
compared on one machine, in one run.

    python bench/text_probe.py [--labels ../shared/data/labels] [--checkpoint dmd_model/checkpoints/default.pt]

Prints JSON; asserts nothing. Needs scikit-learn and the features extra; the label files are
developer data (skips with a message when absent).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dmd_model.training.metrics import regression_metrics  # noqa: E402
from dmd_types import normalise_text  # noqa: E402

DEFAULT_LABELS = ROOT.parent / "shared" / "data" / "labels"
SPLIT = {"train": "train", "valid": "valid", "dev": "valid", "test": "test"}
ALPHAS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


def read(path: Path) -> list[tuple[str, str, float, str]]:
    """(id, normalised text, label, split) rows of a MOSI or MOSEI label file."""
    rows = []
    with path.open(newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            sid = r["id"] if "id" in r else f"{r['video_id']}$_${r['clip_id']}"
            rows.append((sid, " ".join(normalise_text(r["text"])), float(r["label"]), SPLIT[r["mode"].strip()]))
    return rows


def sentence_embeddings(texts: list[str], cache: Path | None, batch: int = 64) -> np.ndarray:
    """Mean-pooled, L2-normalised all-MiniLM-L6-v2 embeddings (sentence-transformers' recipe)."""
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    path = cache / f"minilm_sentence_{key}.npy" if cache else None
    if path is not None and path.is_file():
        return np.load(path)
    import torch

    from dmd_model.features.text import TextEncoder

    enc = TextEncoder()
    order = np.argsort([len(t) for t in texts])  # similar lengths together: little padding
    out = np.zeros((len(texts), enc.dim), np.float32)
    with torch.inference_mode():
        for i in range(0, len(texts), batch):
            idx = order[i:i + batch]
            tok = enc.tokenizer([texts[j] for j in idx], padding=True, truncation=True, max_length=256,
                                return_tensors="pt")
            hidden = enc.model(**tok).last_hidden_state
            mask = tok["attention_mask"].unsqueeze(-1).float()
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            out[idx] = torch.nn.functional.normalize(mean, dim=1).numpy()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, out)
    return out


def pick(metrics: dict) -> dict:
    keys = ("Non0_acc_2", "Non0_F1_score", "Has0_acc_2", "Has0_F1_score", "Mult_acc_7", "MAE", "Corr")
    return {k: metrics[k] for k in keys}


def probe(data: dict[str, list], cache: Path | None) -> dict:
    from sklearn.linear_model import Ridge

    rows = [r for name in data for r in data[name]]
    emb = sentence_embeddings([r[1] for r in rows], cache)
    names = np.asarray([name for name in data for _ in data[name]])
    labels = np.asarray([r[2] for r in rows], np.float64)
    splits = np.asarray([r[3] for r in rows])
    train, valid = splits == "train", splits == "valid"
    search = {}
    for alpha in ALPHAS:
        model = Ridge(alpha=alpha).fit(emb[train], labels[train])
        search[alpha] = float(np.abs(model.predict(emb[valid]) - labels[valid]).mean())
    best = min(search, key=search.get)
    model = Ridge(alpha=best).fit(emb[train], labels[train])
    result = {"alpha": best, "valid_MAE_by_alpha": search, "test": {}, "valid": {}}
    for name in data:
        for split in ("valid", "test"):
            sel = (names == name) & (splits == split)
            result[split][name] = pick(regression_metrics(model.predict(emb[sel]), labels[sel]))
    return result


def checkpoint_metrics(path: Path, data: dict[str, list], cache: Path | None) -> dict:
    """A checkpoint's metrics on each test set, its inputs made by the text-only extraction path."""
    from dmd_model.artefacts.predict import Predictor
    from dmd_model.datasets import CachedTextEncoder, text_window
    from dmd_model.features import check_profile

    predictor = Predictor(path, device="cpu")
    profile = check_profile(predictor.checkpoint.profile)
    encoder = CachedTextEncoder(profile.text_model, profile.text_dim, cache)
    out = {"file": str(path), "sha256": predictor.sha256, "modalities": list(predictor.modalities), "test": {}}
    for name, rows in data.items():
        test = [r for r in rows if r[3] == "test"]
        preds = []
        for i in range(0, len(test), 64):
            windows = [text_window(r[1].split(), encoder, profile) for r in test[i:i + 64]]
            present = np.asarray([[w.present[m] for m in ("text", "audio", "visual")] for w in windows])
            res = predictor.predict(np.stack([w.text for w in windows]), np.stack([w.audio for w in windows]),
                                    np.stack([w.visual for w in windows]), present)
            preds += [p.raw for p in res]
        out["test"][name] = pick(regression_metrics(np.asarray(preds), np.asarray([r[2] for r in test])))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=Path, default=DEFAULT_LABELS,
                        help="folder with mosi_label.csv and mosei_label.csv")
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "text_probe_cache",
                        help="where sentence embeddings are cached")
    parser.add_argument("--checkpoint", type=Path, help="also evaluate this Live DMD checkpoint on the test sets")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    files = {"mosi": args.labels / "mosi_label.csv", "mosei": args.labels / "mosei_label.csv"}
    if not all(p.is_file() for p in files.values()):
        print(json.dumps({"skipped": f"label files not found in {args.labels} (developer data)"}))
        return 0
    import torch

    torch.set_num_threads(args.threads)
    started = time.time()
    data = {name: read(path) for name, path in files.items()}
    result = {
        "bench": "text_probe",
        "probe": "ridge on mean-pooled, L2-normalised all-MiniLM-L6-v2 sentence embeddings; "
                 "train = MOSI train + MOSEI train; alpha by MAE on MOSI dev + MOSEI valid",
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                    "python": platform.python_version(), "torch": torch.__version__},
        "counts": {name: {s: sum(r[3] == s for r in rows) for s in ("train", "valid", "test")}
                   for name, rows in data.items()},
        "ridge": probe(data, args.cache),
    }
    if args.checkpoint is not None:
        result["checkpoint"] = checkpoint_metrics(args.checkpoint, data, args.cache)
    result["seconds"] = round(time.time() - started, 1)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
