"""The `dmd` command line: the one place that parses arguments.

    dmd train | eval | info | import-official                 (the model: cli/model.py)
    dmd extract | release                                      (datasets and shipping: cli/data.py)
    dmd demo | run | capture | asr | infer | watch             (the live pipeline: cli/live.py)
    dmd serve | webrtc-client                                  (the web app: cli/web.py)
    dmd models                                                 (speech models: cli/models.py)

Every long job shows progress on standard error; results go to standard output. A setting, file or
model that cannot be used ends the command with its message and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import data, live, model, models, web
from .common import leave_now, stopped_by_signal


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dmd", description="Live DMD: emotion recognition with DMD, "
                                     "trained on CMU-MOSI/MOSEI and run on live streams.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (model, data, live, web, models):
        group.register(sub)
    return parser


def _usage_errors() -> tuple[type[BaseException], ...]:
    """The errors whose message says what to fix: shown without a traceback, exit status 2."""
    from dmd_model.artefacts.checkpoint import CheckpointError
    from dmd_model.artefacts.official import OfficialCheckpointError
    from dmd_model.config import ConfigError
    from dmd_model.datasets.labels import ExtractError
    from dmd_model.features import FeatureError
    from dmd_model.training.data import DataError
    from stream.connection import RedisURLError

    from ..asr.models import ModelInstallError
    from ..asr.vosk import VoskModelError
    from ..asr.whisper import WhisperModelError
    from ..capture.sources import SourceError
    from ..settings import SettingsError
    from ..wiring import RedisUnreachable

    return (ConfigError, DataError, CheckpointError, OfficialCheckpointError, FileNotFoundError, FeatureError,
            SettingsError, RedisURLError, RedisUnreachable, VoskModelError, WhisperModelError, ModelInstallError,
            SourceError, ExtractError)


def run() -> int:
    """The `dmd` program: `main` with native libraries' log noise filtered unless -v (cli/quiet.py)."""
    if not {"-v", "--verbose"} & set(sys.argv[1:]):
        from .quiet import quiet_native_logs

        quiet_native_logs()
    code = main()
    if stopped_by_signal():
        # stopped by a signal: leave without the interpreter's teardown, which takes a second or more
        # with torch and MediaPipe loaded (measured 1.3 s) and would break the promise of an end
        # within 5 s; what had to be written or acknowledged was, before `main` returned
        leave_now(code)
    return code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except _usage_errors() as exc:
        print(f"dmd {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dmd {args.command}: interrupted", file=sys.stderr)
        return 130
