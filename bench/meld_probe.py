"""The bar for the words' emotions (issue 14): a linear probe on frozen MiniLM sentence embeddings
trained on MELD train, against a checkpoint's emotion head on MELD test.

The probe: multinomial logistic regression on the mean-pooled, L2-normalised all-MiniLM-L6-v2
sentence embeddings of `bench/text_probe.py` (`sentence_embeddings`, the same code), the text
normalised as live (`normalise_text`), MELD's emotions mapped into the seven (`dmd_types.emotions`);
C chosen on MELD dev by weighted F1, test used once. Both are scored by the one
`dmd_model.training.metrics.emotion_metrics` that `dmd eval` uses. With `--data PICKLE
--checkpoint CKPT` the checkpoint is evaluated on that pickle's test split (`dmd extract --text-only`
of the converted MELD, as the default checkpoint's recipe makes it) in the same run.

    python bench/meld_probe.py --labels runs/emo/meld/label.csv [--checkpoint CKPT --data meld.pkl]

`--labels` is the label file `dmd convert meld` writes. Prints JSON; asserts nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from text_probe import sentence_embeddings  # noqa: E402

from dmd_model.training.metrics import emotion_metrics  # noqa: E402
from dmd_types import EMOTIONS, normalise_text  # noqa: E402

CS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)


def read(path: Path) -> dict[str, tuple[list[str], np.ndarray]]:
    out: dict[str, tuple[list[str], list[int]]] = {"train": ([], []), "valid": ([], []), "test": ([], [])}
    with path.open(newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            texts, labels = out[r["mode"].strip()]
            texts.append(" ".join(normalise_text(r["text"])))
            labels.append(EMOTIONS.index(r["emotion"]))
    return {k: (t, np.asarray(y, np.int64)) for k, (t, y) in out.items()}


def probe(data: dict[str, tuple[list[str], np.ndarray]], cache: Path | None) -> dict:
    from sklearn.linear_model import LogisticRegression

    emb = {k: sentence_embeddings(t, cache) for k, (t, _) in data.items()}
    classes = len(EMOTIONS)

    def scores(model, split):
        logits = np.full((len(data[split][1]), classes), -np.inf)
        logits[:, model.classes_] = model.predict_log_proba(emb[split])
        return emotion_metrics(logits, data[split][1], classes)

    search = {}
    for c in CS:
        model = LogisticRegression(C=c, max_iter=2000).fit(emb["train"], data["train"][1])
        search[c] = scores(model, "valid")["weighted_f1"]
    best = max(search, key=search.get)
    model = LogisticRegression(C=best, max_iter=2000).fit(emb["train"], data["train"][1])
    return {"C": best, "valid_weighted_f1_by_C": search, "valid": scores(model, "valid"), "test": scores(model, "test")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=Path, required=True, help="MELD's label.csv as `dmd convert meld` writes it")
    parser.add_argument("--checkpoint", type=Path, help="also evaluate this checkpoint's emotion head")
    parser.add_argument("--data", type=Path, help="the MELD pickle to evaluate the checkpoint on (test split)")
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "text_probe_cache")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not args.labels.is_file():
        print(f"{args.labels} not found: run `dmd convert meld ../shared/data/labels/meld --out DIR` first",
              file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    started = time.time()
    result = {"machine": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d"),
              "probe": probe(read(args.labels), args.cache)}
    if args.checkpoint is not None:
        from dmd_model.training.train import evaluate_checkpoint

        if args.data is None:
            print("--checkpoint needs --data (the MELD pickle of `dmd extract --text-only`)", file=sys.stderr)
            return 2
        metrics = evaluate_checkpoint(str(args.checkpoint), str(args.data), split="test", device="cpu",
                                      progress=False)
        result["checkpoint"] = {"file": str(args.checkpoint), "test": metrics.get("emotion")}
        ours, bar = metrics["emotion"]["weighted_f1"], result["probe"]["test"]["weighted_f1"]
        result["weighted_f1_points_above_probe"] = round(100 * (ours - bar), 2)
    for part in ("valid", "test"):
        result["probe"][part].pop("confusion", None) if part == "valid" else None
    result["seconds"] = round(time.time() - started, 1)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
