"""What the `dmd` commands share: the options every pipeline command takes, the settings they
make, and JSON on standard output."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..settings import PipelineSettings, load_settings

ASR_ENGINES = ("auto", "vosk", "whisper", "none")

# option name on the command line -> (settings section, key)
_SETTING_OPTIONS = {
    "asr": ("asr", "engine"), "vosk_model": ("asr", "vosk_model"), "checkpoint": ("inference", "checkpoint"),
    "device": ("inference", "device"), "speed": ("capture", "speed"), "max_batch": ("inference", "max_batch"),
    "max_wait_ms": ("inference", "max_wait_ms"), "metrics_port": ("metrics", "port"),
}


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def add_pipeline_options(p: argparse.ArgumentParser, *, redis_help: str | None = None) -> None:
    """--settings, --redis and --metrics-port."""
    p.add_argument("--settings", help="pipeline settings YAML (default configs/pipeline/default.yaml)")
    p.add_argument("--redis", help=redis_help or "Redis URL (default $REDIS_URL; `dmd run`/`demo`/`serve`: an embedded "
                   "Redis)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")


def settings_from(args: argparse.Namespace) -> PipelineSettings:
    """The pipeline settings: the defaults, --settings, the environment, then the options given."""
    overrides: dict[str, dict[str, Any]] = {}
    if getattr(args, "redis", None):
        overrides.setdefault("redis", {})["url"] = args.redis
    for name, (section, key) in _SETTING_OPTIONS.items():
        value = getattr(args, name, None)
        if value is not None:
            overrides.setdefault(section, {})[key] = value
    return load_settings(getattr(args, "settings", None), overrides)
