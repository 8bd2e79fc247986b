"""`dmd models`: speech models on this machine (list, install, path).

    dmd models list                                   # what is installed, and the embedded Whisper
    dmd models install vosk-model-small-en-us-0.15    # from alphacephei.com/vosk/models (needs internet)
    dmd models install my-model --url https://host/model.zip   (or file:///path/model.zip)
    dmd models path vosk-model-small-en-us-0.15       # the folder to give to `dmd asr --vosk-model`

What an install checks and where models live: `workers.asr.models`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from ..asr.models import (
    DEFAULT_MODELS_DIR,
    MODELS_ENV,
    ModelInstallError,
    embedded_whisper_status,
    find_model,
    install_model,
    list_models,
    model_kind,
    models_dir,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `dmd models` (list, install, path)."""
    parser.add_argument("--dir", type=Path, default=None,
                        help=f"models folder (default: ${MODELS_ENV}, else {DEFAULT_MODELS_DIR})")
    sub = parser.add_subparsers(dest="models_command", required=True)
    p = sub.add_parser("list", help="installed models, and the embedded Whisper")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("install", help="download and install a model (Vosk's by name, or any zip by --url)")
    p.add_argument("name", help="model name, e.g. vosk-model-small-en-us-0.15 (see alphacephei.com/vosk/models)")
    p.add_argument("--url", help="zip to install instead of Vosk's NAME.zip (http, https or file://)")
    p.add_argument("--sha256", help="refuse the zip unless it has this sha256")
    p.add_argument("--force", action="store_true", help="replace an installed model of the same name")
    p.add_argument("--quiet", action="store_true", help="no progress")
    p = sub.add_parser("path", help="the folder of an installed model")
    p.add_argument("name")


def cmd_models(args: argparse.Namespace) -> int:
    directory = (args.dir or models_dir()).expanduser()
    try:
        if args.models_command == "list":
            models = list_models(directory)
            embedded = embedded_whisper_status()
            if args.json:
                print(json.dumps({"dir": str(directory), "models": [asdict(m) for m in models],
                                  "embedded": embedded}, indent=2))
                return 0
            print(f"models in {directory}:" if models else f"no models installed in {directory}")
            for m in models:
                print(f"  {m.name:<40} {m.kind:<8} {m.bytes / 1e6:8.1f} MB  {m.path}")
            print(f"embedded: {embedded['name']} ({embedded['source']}): {embedded['status']}")
            return 0
        if args.models_command == "install":
            path = install_model(args.name, args.url, directory=directory, sha256=args.sha256, force=args.force,
                                 progress=not args.quiet)
            print(f"installed {args.name} ({model_kind(path)}) in {path}", file=sys.stderr)
            if model_kind(path) == "vosk":
                print(f"use it with: dmd asr --vosk-model {path}   (or export DMD_VOSK_MODEL={path})", file=sys.stderr)
            print(path)
            return 0
        if args.models_command == "path":
            path = find_model(args.name, directory)
            if path is None:
                print(f"dmd models: {args.name!r} is not installed in {directory}: dmd models install {args.name}",
                      file=sys.stderr)
                return 1
            print(path)
            return 0
    except ModelInstallError as exc:
        print(f"dmd models: {exc}", file=sys.stderr)
        return 2
    raise ValueError(f"unknown models command {args.models_command!r}")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `dmd models` to the `dmd` parser."""
    p = sub.add_parser("models", help="speech models: list, install (Vosk; needs internet), path")
    add_arguments(p)
    p.set_defaults(func=cmd_models)
