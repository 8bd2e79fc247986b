"""`dmd convert`, `dmd extract` and `dmd release`: the dataset and checkpoint-shipping commands.

    dmd convert ravdess ../shared/data/emotion_speech/ravdess --out data/ravdess   # -> label.csv + Raw/
    dmd convert emodb ../shared/data/emotion_speech/emodb --out data/emodb
    dmd convert meld ../shared/data/labels/meld --out data/meld                    # transcripts only

    dmd extract DATASET_DIR -o live.pkl [--workers 2]        # MMSA-FET folder: label.csv + Raw/
    dmd extract --text-only mosi_label.csv -o mosi_text.pkl  # transcripts only (MOSI or MOSEI layout)
    dmd extract --text-only mosi_label.csv mosei_label.csv --subspans 2 -o train_text.pkl
    dmd release runs/live_text/seed_1111/best.pt --out dmd_model/checkpoints/default.pt \\
        --eval mosi=mosi_text.pkl --eval mosei=mosei_text.pkl

Progress goes to standard error, the JSON result to standard output.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .common import print_json

# The recogniser for clips without a transcript: the ASR worker's engine (`--asr auto`: Vosk when a
# model is configured, else the embedded Whisper tiny.en), run over the whole clip.
DEFAULT_RECOGNISER = "workers.asr.factory:recognise_pcm"


def _word_range(text: str) -> tuple[int, int]:
    try:
        lo, _, hi = text.partition("-")
        lo_i, hi_i = int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give MIN-MAX words, e.g. 4-10") from None
    if not 1 <= lo_i <= hi_i:
        raise argparse.ArgumentTypeError(f"{text!r}: need 1 <= MIN <= MAX")
    return lo_i, hi_i


# -- extract ------------------------------------------------------------------------------------------
def add_extract_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", nargs="+",
                        help="a dataset folder in the MMSA-FET layout (label.csv, Raw/<video_id>/<clip_id>.mp4), "
                        "or with --text-only one or more label files")
    parser.add_argument("-o", "--out", required=True, help="the MMSA-format pickle to write")
    parser.add_argument("--text-only", action="store_true",
                        help="label files without media: text features only, audio and visual absent")
    parser.add_argument("--workers", type=int, default=1, help="extraction processes (default 1)")
    parser.add_argument("--cache", help="cache folder (default ~/.cache/live-dmd/extract): token embeddings by "
                        "text, one file per clip; an interrupted run resumes from it")
    parser.add_argument("--asr", default=None, metavar="MODULE:FUNCTION",
                        help=f"recogniser for clips without a transcript (default: {DEFAULT_RECOGNISER} when it "
                        "exists)")
    parser.add_argument("--profile", default="live-v1", help="feature profile (default live-v1)")
    parser.add_argument("--splits", nargs="+", default=["train", "valid", "test"], choices=["train", "valid", "test"],
                        help="extract only these splits (the others are written empty)")
    parser.add_argument("--subspans", type=int, default=0, metavar="K",
                        help="text-only: add K random word runs of each training utterance (same label) to train")
    parser.add_argument("--subspan-words", type=_word_range, default=(4, 10), metavar="MIN-MAX",
                        help="words per run (default 4-10: a live 3 s window)")
    parser.add_argument("--windows-only", action="store_true",
                        help="text-only: every split holds word runs instead of utterances (live-length text)")
    parser.add_argument("--limit", type=int, help="the first N clips only")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _recogniser(choice: str | None) -> str | None:
    """The recogniser to use, as 'module:function', or None when none can be found."""
    import importlib

    spec = choice or DEFAULT_RECOGNISER
    module, _, name = spec.partition(":")
    try:
        found = hasattr(importlib.import_module(module), name)
    except ImportError:
        found = False
    if not found and choice:
        raise SystemExit(f"dmd extract: recogniser {choice!r} cannot be imported: give MODULE:FUNCTION")
    return spec if found else None


def cmd_extract(args: argparse.Namespace) -> int:
    from dmd_model.datasets import ExtractError, extract
    from dmd_model.features import FeatureError, get_profile

    try:
        profile = get_profile(args.profile)
        report = extract(
            args.source if args.text_only else args.source[0] if len(args.source) == 1 else args.source,
            args.out, text_only=args.text_only, profile=profile, cache_dir=args.cache, workers=args.workers,
            recogniser=None if args.text_only else _recogniser(args.asr), subspans=args.subspans,
            subspan_words=args.subspan_words, windows_only=args.windows_only, splits=args.splits, limit=args.limit,
            progress=not args.quiet,
        )
    except (ExtractError, FeatureError) as e:
        print(f"dmd extract: {e}", file=sys.stderr)
        return 2
    print(report.summary(), file=sys.stderr)
    print_json(report.to_dict())
    return 0 if report.total else 1


# -- convert ------------------------------------------------------------------------------------------
def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("corpus", choices=("ravdess", "emodb", "meld"), help="the corpus's naming to read")
    parser.add_argument("source", help="the folder holding the corpus's files (any depth)")
    parser.add_argument("--out", required=True, help="the dataset folder to write (label.csv, Raw/)")
    parser.add_argument("--copy", action="store_true", help="copy the media instead of linking to it")


def cmd_convert(args: argparse.Namespace) -> int:
    """A corpus's own naming -> the MMSA-FET layout `dmd extract` reads (dmd_model.datasets.corpora)."""
    from collections import Counter

    from dmd_model.datasets.corpora import corpus_clips, write_corpus

    clips = corpus_clips(args.corpus, args.source)
    path = write_corpus(clips, args.out, copy=args.copy)
    print_json({"label_file": str(path), "clips": len(clips), "with_media": sum(c.media is not None for c in clips),
                "splits": dict(Counter(c.mode for c in clips)),
                "emotions": dict(Counter(c.emotion for c in clips)),
                "speakers": {mode: sorted({c.speaker for c in clips if c.mode == mode})
                             for mode in ("train", "valid", "test")} if args.corpus != "meld" else None})
    return 0


# -- release ------------------------------------------------------------------------------------------
def add_release_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a trained checkpoint (e.g. runs/NAME/seed_N/best.pt)")
    parser.add_argument("--out", required=True, help="the checkpoint to write (fp16 weights)")
    parser.add_argument("--eval", action="append", default=[], metavar="NAME=PICKLE",
                        help="evaluate on the test split of this pickle and record it as test_NAME (repeatable)")
    parser.add_argument("--full-precision", action="store_true", help="keep float32 weights")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quiet", action="store_true")


def cmd_release(args: argparse.Namespace) -> int:
    """Re-save a checkpoint for shipping: fp16 weights (read back as float32), its training record
    kept, and the test metrics of each `--eval` pickle (computed with the fp16 weights) added."""
    import torch

    from dmd_model.artefacts.checkpoint import file_sha256, load_checkpoint, save_checkpoint
    from dmd_model.training.train import evaluate_checkpoint

    src = load_checkpoint(args.checkpoint)
    model = src.build_model("cpu")
    out = Path(args.out)
    half = not args.full_precision
    training = {**src.training, "released_from": str(args.checkpoint), "released_from_sha256": src.sha256}
    save_checkpoint(out, model, src.config, profile=src.profile, modalities=src.modalities, data=src.data,
                    metrics=src.metrics, training=training, half=half)
    metrics = dict(src.metrics)
    results: dict[str, Any] = {}
    for item in args.eval:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            print(f"dmd release: --eval {item!r}: give NAME=PICKLE", file=sys.stderr)
            return 2
        test = evaluate_checkpoint(out, path, split="test", device=args.device, progress=not args.quiet)
        metrics[f"test_{name}"] = {**test, "data": str(path)}
        results[name] = test
    if results:
        # write again with the per-data-set metrics recorded (weights unchanged)
        save_checkpoint(out, model if not half else load_checkpoint(out).build_model("cpu"), src.config,
                        profile=src.profile, modalities=src.modalities, data=src.data, metrics=metrics,
                        training=training, half=half)
    print_json({"checkpoint": str(out), "bytes": out.stat().st_size, "sha256": file_sha256(out),
                 "precision": "float16" if half else "float32", "modalities": list(src.modalities),
                 "profile": src.profile.get("name"), "test": results,
                 "parameters": sum(v.numel() for v in src.state_dict.values() if torch.is_tensor(v))})
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `dmd convert`, `dmd extract` and `dmd release` to the `dmd` parser."""
    p = sub.add_parser("convert", help="an emotion corpus (RAVDESS, EmoDB, MELD) -> the MMSA-FET layout of "
                       "`dmd extract`, split by speaker")
    add_convert_arguments(p)
    p.set_defaults(func=cmd_convert)
    p = sub.add_parser("extract", help="a dataset folder (MMSA-FET layout) or label files -> an MMSA-format "
                       "pickle in the live feature profile")
    add_extract_arguments(p)
    p.set_defaults(func=cmd_extract)
    p = sub.add_parser("release", help="a trained checkpoint -> a shippable one (fp16, per-data-set test metrics)")
    add_release_arguments(p)
    p.set_defaults(func=cmd_release)
