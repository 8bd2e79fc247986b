"""The live commands of `dmd`: run, demo, capture, infer, watch (asr and models live in their modules).

    dmd demo                                   # embedded Redis, default checkpoint, bundled clip
    dmd run --source clip.mp4 --json           # estimates as JSON lines; exits when the file ends
    dmd run --source webcam+mic                # a live session on this machine
    REDIS_URL=redis://host:6379 dmd capture --source webcam --session alice
    REDIS_URL=redis://host:6379 dmd asr        # as many as needed, on any machines
    REDIS_URL=redis://host:6379 dmd infer      # likewise; GPU when present
    REDIS_URL=redis://host:6379 dmd watch      # every session, live
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from .settings import PipelineSettings, SettingsError, load_settings

log = logging.getLogger("dmd")


def _settings(args: argparse.Namespace, **extra: dict[str, Any]) -> PipelineSettings:
    overrides: dict[str, dict[str, Any]] = {k: dict(v) for k, v in extra.items()}
    if getattr(args, "redis", None):
        overrides.setdefault("redis", {})["url"] = args.redis
    for name, (section, key) in {"asr": ("asr", "engine"), "vosk_model": ("asr", "vosk_model"),
                                 "checkpoint": ("inference", "checkpoint"), "device": ("inference", "device"),
                                 "speed": ("capture", "speed"), "max_batch": ("inference", "max_batch"),
                                 "max_wait_ms": ("inference", "max_wait_ms"),
                                 "metrics_port": ("metrics", "port")}.items():
        value = getattr(args, name, None)
        if value is not None:
            overrides.setdefault(section, {})[key] = value
    return load_settings(getattr(args, "settings", None), overrides)


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


def _common(p: argparse.ArgumentParser, *, redis: bool = True) -> None:
    p.add_argument("--settings", help="pipeline settings YAML (default configs/pipeline/default.yaml)")
    if redis:
        p.add_argument("--redis", help="Redis URL (default $REDIS_URL; `dmd run`/`demo`: an embedded Redis)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")


# -- run / demo ------------------------------------------------------------------------------------
def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, help="a media file, webcam, mic or webcam+mic")
    p.add_argument("--camera", help="camera index or device/file (default 0)")
    p.add_argument("--microphone", help="sounddevice input device (index or name)")
    p.add_argument("--session", help="session id (default: live-<random>)")
    p.add_argument("--checkpoint", help="model checkpoint (default: the bundled one)")
    p.add_argument("--asr", choices=["auto", "vosk", "whisper", "none"], help="speech recognition engine")
    p.add_argument("--vosk-model", help="Vosk model folder (asr auto/vosk)")
    p.add_argument("--speed", type=float, help="file sources: 1 real time (default), 2 twice as fast, 0 flat out")
    p.add_argument("--device", help="model device: auto, cpu, cuda")
    p.add_argument("--json", action="store_true", help="estimates as JSON lines on standard output")
    p.add_argument("--quiet", action="store_true", help="no live view")
    p.add_argument("--timeline", help="write the session timeline to PATH.png and PATH.html at the end")
    _common(p)


async def _run(args: argparse.Namespace, source_spec: str, timeline: str | None) -> int:
    from .metrics import Metrics
    from .pipeline import make_source, run_pipeline

    settings = _settings(args)
    Metrics.serve(settings.metrics.port, settings.metrics.host)
    source = make_source(source_spec, settings, camera=args.camera, microphone=args.microphone)
    stop = asyncio.Event()
    _stop_on_signals(stop)
    output = "json" if args.json else ("none" if args.quiet else "view")
    summary = await run_pipeline(source, settings, session=args.session, checkpoint=args.checkpoint,
                                 output=output, timeline=timeline, stop=stop)
    report = {"session": summary.session, "windows": summary.windows, "estimates": len(summary.estimates),
              "missing": summary.missing, "seconds": round(summary.seconds, 1), "capture": summary.capture,
              "asr": {k: v for k, v in summary.asr.items() if k != "words"}, "timeline": summary.timeline}
    print(json.dumps(report, default=str), file=sys.stderr if args.json else sys.stdout)
    return 0 if not summary.missing else 1


def cmd_run(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args, args.source, args.timeline))


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", default=None, help="media file (default: the bundled demo clip)")
    p.add_argument("--out", default="runs/demo", help="folder for the timeline (PNG and HTML)")
    p.add_argument("--checkpoint", help="model checkpoint (default: the bundled one)")
    p.add_argument("--asr", choices=["auto", "vosk", "whisper", "none"], help="speech recognition engine")
    p.add_argument("--vosk-model", help="Vosk model folder")
    p.add_argument("--speed", type=float, help="1 real time (default), 0 as fast as possible")
    p.add_argument("--device", help="model device: auto, cpu, cuda")
    p.add_argument("--json", action="store_true", help="estimates as JSON lines instead of the live view")
    p.add_argument("--quiet", action="store_true", help="no live view")
    _common(p)


def cmd_demo(args: argparse.Namespace) -> int:
    from .pipeline import DEMO_CLIP

    source = args.source or str(DEMO_CLIP)
    if not Path(source).is_file():
        print(f"dmd demo: the demo clip {source} is missing: reinstall live-dmd or pass --source FILE",
              file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.session, args.camera, args.microphone = "demo", None, None
    print(f"Live DMD demo: {Path(source).name} played in real time through capture -> Redis -> ASR -> DMD "
          f"(Ctrl-C to stop)", file=sys.stderr)
    code = asyncio.run(_run(args, source, str(out / "timeline")))
    print(f"timeline: {out / 'timeline.png'} and {out / 'timeline.html'}", file=sys.stderr)
    return code


# -- separate stages -----------------------------------------------------------------------------------
def add_capture_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, help="a media file, webcam, mic or webcam+mic")
    p.add_argument("--session", required=True, help="session id")
    p.add_argument("--camera", help="camera index or device/file (default 0)")
    p.add_argument("--microphone", help="sounddevice input device")
    p.add_argument("--speed", type=float, help="file sources: 1 real time, 0 as fast as possible")
    p.add_argument("--asr", choices=["auto", "vosk", "whisper", "none"], default="auto",
                   help="tell inference workers whether text will come (none: they do not wait for ASR)")
    _common(p)


async def _capture(args: argparse.Namespace) -> int:
    from stream.connection import connect

    from .capture import Capture
    from .metrics import Metrics
    from .pipeline import make_source

    settings = _settings(args)
    if not settings.redis.url:
        print("dmd capture: set --redis or REDIS_URL: separate stages share a Redis server", file=sys.stderr)
        return 2
    metrics = Metrics("capture")
    Metrics.serve(settings.metrics.port, settings.metrics.host)
    source = make_source(args.source, settings, camera=args.camera, microphone=args.microphone, metrics=metrics)
    redis = connect(settings.redis.url)
    capture = Capture(redis, args.session, source, settings, metrics=metrics)
    stop = asyncio.Event()
    _stop_on_signals(stop)
    task = asyncio.create_task(capture.run(asr=args.asr))
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if not task.done():
        await capture.stop()  # graceful: the source ends, features are flushed, last notices sent
    stopper.cancel()
    stats = await task
    await redis.aclose()
    print(json.dumps({"session": args.session, **{k: v for k, v in vars(stats).items()}}, default=str))
    return 0


def cmd_capture(args: argparse.Namespace) -> int:
    return asyncio.run(_capture(args))


def add_infer_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="model checkpoint (default: the bundled one)")
    p.add_argument("--device", help="auto, cpu, cuda")
    p.add_argument("--max-batch", type=int, help="windows per forward pass")
    p.add_argument("--max-wait-ms", type=float, help="how long a batch waits to fill")
    p.add_argument("--name", help="consumer name (keep it across restarts)")
    _common(p)


async def _infer(args: argparse.Namespace) -> int:
    from dmd_model.features import check_profile
    from dmd_model.predict import Predictor
    from stream.connection import connect
    from stream.keys import INFER_GROUP, WINDOWS

    from .infer import InferenceWorker
    from .metrics import Metrics, sample_group
    from .pipeline import default_checkpoint

    settings = _settings(args)
    if not settings.redis.url:
        print("dmd infer: set --redis or REDIS_URL: separate stages share a Redis server", file=sys.stderr)
        return 2
    metrics = Metrics("infer")
    Metrics.serve(settings.metrics.port, settings.metrics.host)
    inf = settings.inference
    predictor = Predictor(inf.checkpoint or default_checkpoint(), device=inf.device, threads=inf.threads or None)
    check_profile(predictor.checkpoint.profile)
    redis = connect(settings.redis.url)
    worker = InferenceWorker(redis, predictor, inf, asr_grace_s=settings.asr.grace_s, name=args.name,
                             metrics=metrics)
    stop = asyncio.Event()
    _stop_on_signals(stop)
    log.info("inference worker %s: %s on %s, Redis %s", worker.name, predictor.name, predictor.device,
             settings.redis.url.split("@")[-1])
    task = asyncio.create_task(worker.run())

    async def sampler() -> None:
        while True:
            await sample_group(redis, metrics, WINDOWS, INFER_GROUP)
            await asyncio.sleep(2)

    sampling = asyncio.create_task(sampler())
    stopper = asyncio.create_task(stop.wait())
    # the worker may also end by itself (it could not start: a text encoder that does not load, a
    # dmd:windows key of another type): then leave with its error instead of waiting for a signal
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    worker.stop()  # SIGTERM: finish the windows in flight, acknowledge them, then leave
    code = 0
    try:
        await task
    except Exception as exc:  # noqa: BLE001 - reported, and the exit status says so
        log.error("inference worker %s stopped: %s: %s", worker.name, type(exc).__name__, exc)
        code = 1
    finally:
        sampling.cancel()
        await redis.aclose()
    log.info("inference worker %s: %d published, %d duplicates", worker.name, worker.published, worker.duplicates)
    return code


def cmd_infer(args: argparse.Namespace) -> int:
    return asyncio.run(_infer(args))


def add_watch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("session", nargs="?", help="one session (default: every session)")
    p.add_argument("--json", action="store_true", help="JSON lines, for piping")
    p.add_argument("--history", type=int, default=10, help="recent estimates to show first (default 10)")
    p.add_argument("--count", type=int, help="exit after this many estimates")
    p.add_argument("--timeout", type=float, help="exit after this many seconds")
    _common(p)


async def _watch(args: argparse.Namespace) -> int:
    from stream.connection import connect

    from .watch import watch

    settings = _settings(args)
    if not settings.redis.url:
        print("dmd watch: set --redis or REDIS_URL to the pipeline's Redis", file=sys.stderr)
        return 2
    redis = connect(settings.redis.url)
    count = [0]

    def until(_: Any) -> bool:
        count[0] += 1
        return args.count is not None and count[0] >= args.count

    try:
        await watch(redis, args.session, as_json=args.json, history=args.history, until=until, timeout=args.timeout)
    finally:
        await redis.aclose()
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_watch(args))
    return 130


def register(sub: argparse._SubParsersAction) -> None:
    """Add the live commands to the `dmd` parser."""
    for name, helptext, add, func in (
        ("demo", "the live pipeline on the bundled clip, embedded Redis, terminal view and timeline",
         add_demo_arguments, cmd_demo),
        ("run", "all stages on this machine for one source (a file, webcam, mic)", add_run_arguments, cmd_run),
        ("capture", "capture a source into a session's Redis streams", add_capture_arguments, cmd_capture),
        ("infer", "inference worker: window notices in, estimates out", add_infer_arguments, cmd_infer),
        ("watch", "live view of the estimates (or --json lines)", add_watch_arguments, cmd_watch),
    ):
        p = sub.add_parser(name, help=helptext)
        add(p)
        p.set_defaults(func=func)
    from . import asr, models

    p = sub.add_parser("asr", help="speech recognition worker: a session's audio in, its words out")
    asr.add_arguments(p)
    p.set_defaults(func=asr.main)
    p = sub.add_parser("models", help="speech models: list, install (Vosk; needs internet), path")
    models.add_arguments(p)
    p.set_defaults(func=models.main)
    from .serve import register_serve

    register_serve(sub)


ERRORS: tuple[type[BaseException], ...] = (SettingsError,)
