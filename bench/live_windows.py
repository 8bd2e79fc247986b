"""Sentiment per live window against per utterance (issue 14): how often a single 3 s window of a test
utterance has the sign of the utterance's label, beside the whole utterance.

Each test utterance of the label file (MOSI by default) is given nominal word times, as the
text-only extraction does (`NOMINAL_WORD_S` per word, one after the other), and cut into the live
windows (`--window` 3 s, `--hop` 0.5 s, from 0 until a window reaches the last word). Every window
goes through the one `align_window` the inference worker calls, then the checkpoint; the whole
utterance goes through `text_window` as in the text-only pickles. Utterances labelled 0 are left
out (MMSA's "Non0"). A window without any word (none of the words lies at least half inside) is
counted apart, not scored.

    python bench/live_windows.py [--checkpoint dmd_model/checkpoints/default.pt] [--labels mosi_label.csv]

Prints JSON; asserts nothing. The label file is developer data (../shared/data/labels).
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

DEFAULT_LABELS = ROOT.parent / "shared" / "data" / "labels" / "mosi_label.csv"
DEFAULT_CHECKPOINT = ROOT / "dmd_model" / "checkpoints" / "default.pt"


def test_rows(path: Path) -> list[tuple[str, float]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        return [(r["text"], float(r["label"])) for r in csv.DictReader(f) if r["mode"].strip().lower() == "test"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--labels", type=Path, default=DEFAULT_LABELS, help="a label file with a test split")
    parser.add_argument("--window", type=float, default=3.0)
    parser.add_argument("--hop", type=float, default=0.5)
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "text_probe_cache")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not args.labels.is_file():
        print(f"{args.labels} not found: the label files are developer data (../shared/data/labels)", file=sys.stderr)
        return 2

    import torch

    from dmd_model.artefacts.predict import Predictor
    from dmd_model.datasets import CachedTextEncoder, text_window
    from dmd_model.datasets.samples import nominal_words
    from dmd_model.features import AUDIO_NAMES, VISUAL_NAMES, check_profile
    from dmd_model.features.alignment import align_window
    from dmd_types import Frames, normalise_text

    torch.set_num_threads(args.threads)
    started = time.time()
    predictor = Predictor(args.checkpoint, device="cpu")
    profile = check_profile(predictor.checkpoint.profile)
    encoder = CachedTextEncoder(profile.text_model, profile.text_dim, args.cache)
    no_audio, no_face = Frames.empty(len(AUDIO_NAMES)), Frames.empty(len(VISUAL_NAMES))

    def predict(windows: list) -> list[float]:
        out = []
        for i in range(0, len(windows), 64):
            part = windows[i:i + 64]
            present = np.asarray([[w.present[m] for m in ("text", "audio", "visual")] for w in part])
            res = predictor.predict(np.stack([w.text for w in part]), np.stack([w.audio for w in part]),
                                    np.stack([w.visual for w in part]), present)
            out += [p.raw for p in res]
        return out

    rows = [(normalise_text(text), label) for text, label in test_rows(args.labels) if label != 0]
    rows = [(words, label) for words, label in rows if words]
    utterances = predict([text_window(words, encoder, profile) for words, _ in rows])
    windows, owner, empty = [], [], 0
    for k, (words, _) in enumerate(rows):
        timed = nominal_words(words)
        end = timed[-1].end
        t = 0.0
        while True:
            window = align_window(timed, no_audio, no_face, t, t + args.window, encoder, profile)
            if window.n_tokens and window.present["text"]:
                windows.append(window)
                owner.append(k)
            else:
                empty += 1
            if t + args.window >= end:
                break
            t += args.hop
    per_window = predict(windows)
    labels = np.asarray([label for _, label in rows])
    utt_agree = float(np.mean((np.asarray(utterances) > 0) == (labels > 0)))
    win_agree = float(np.mean((np.asarray(per_window) > 0) == (labels[np.asarray(owner)] > 0)))
    print(json.dumps({
        "checkpoint": str(args.checkpoint), "sha256": predictor.sha256, "labels": str(args.labels),
        "utterances": len(rows), "windows": len(windows), "windows_without_words": empty,
        "window_s": args.window, "hop_s": args.hop,
        "utterance_sign_agreement": round(utt_agree, 4), "window_sign_agreement": round(win_agree, 4),
        "seconds": round(time.time() - started, 1),
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                    "torch": torch.__version__, "threads": args.threads},
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
