"""The live pipeline's commands: demo, run, capture, asr, infer, watch.

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
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from ..metrics import Metrics
from .common import ASR_ENGINES, add_pipeline_options, run_stoppable, settings_from

log = logging.getLogger("dmd")


# -- run / demo ------------------------------------------------------------------------------------
def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, help="a media file, webcam, mic or webcam+mic")
    p.add_argument("--camera", help="camera index or device/file (default 0)")
    p.add_argument("--microphone", help="sounddevice input device (index or name)")
    p.add_argument("--session", help="session id (default: live-<random>)")
    _add_model_and_asr(p)
    p.add_argument("--speed", type=float, help="file sources: 1 real time (default), 2 twice as fast, 0 flat out")
    p.add_argument("--json", action="store_true", help="estimates as JSON lines on standard output")
    p.add_argument("--quiet", action="store_true", help="no live view")
    p.add_argument("--timeline", help="write the session timeline to PATH.png and PATH.html at the end")
    add_pipeline_options(p)


def _add_model_and_asr(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="model checkpoint (default: the bundled one)")
    p.add_argument("--device", help="model device: auto, cpu, cuda")
    p.add_argument("--asr", choices=ASR_ENGINES, help="speech recognition engine")
    p.add_argument("--vosk-model", help="Vosk model folder (asr auto/vosk)")


async def _run(args: argparse.Namespace, source_spec: str, timeline: str | None, stop: asyncio.Event) -> int:
    from ..capture import make_source
    from ..pipeline import run_pipeline

    settings = settings_from(args)
    Metrics.serve(settings.metrics.port, settings.metrics.host)
    source = make_source(source_spec, settings, camera=args.camera, microphone=args.microphone)
    output = "json" if args.json else ("none" if args.quiet else "view")
    summary = await run_pipeline(source, settings, session=args.session, checkpoint=args.checkpoint,
                                 output=output, timeline=timeline, stop=stop)
    report = {"session": summary.session, "windows": summary.windows, "estimates": len(summary.estimates),
              "missing": summary.missing, "seconds": round(summary.seconds, 1), "capture": summary.capture,
              "asr": {k: v for k, v in summary.asr.items() if k != "words"}, "timeline": summary.timeline,
              "failed": summary.failed}
    print(json.dumps(report, default=str), file=sys.stderr if args.json else sys.stdout)
    return 0 if not summary.missing and not summary.failed else 1


def cmd_run(args: argparse.Namespace) -> int:
    return run_stoppable(lambda stop: _run(args, args.source, args.timeline, stop))


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", default=None, help="media file (default: the bundled demo clip)")
    p.add_argument("--out", default="runs/demo", help="folder for the timeline (PNG and HTML)")
    _add_model_and_asr(p)
    p.add_argument("--speed", type=float, help="1 real time (default), 0 as fast as possible")
    p.add_argument("--json", action="store_true", help="estimates as JSON lines instead of the live view")
    p.add_argument("--quiet", action="store_true", help="no live view")
    add_pipeline_options(p)


def cmd_demo(args: argparse.Namespace) -> int:
    from ..settings import DEMO_CLIP

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
    code = run_stoppable(lambda stop: _run(args, source, str(out / "timeline"), stop))
    print(f"timeline: {out / 'timeline.png'} and {out / 'timeline.html'}", file=sys.stderr)
    return code


# -- capture -------------------------------------------------------------------------------------------
def add_capture_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, help="a media file, webcam, mic or webcam+mic")
    p.add_argument("--session", required=True, help="session id")
    p.add_argument("--camera", help="camera index or device/file (default 0)")
    p.add_argument("--microphone", help="sounddevice input device")
    p.add_argument("--speed", type=float, help="file sources: 1 real time, 0 as fast as possible")
    p.add_argument("--asr", choices=ASR_ENGINES, default="auto",
                   help="tell inference workers whether text will come (none: they do not wait for words)")
    add_pipeline_options(p)


async def _capture(args: argparse.Namespace, stop: asyncio.Event) -> int:
    import torch

    from ..capture import Capture, make_source
    from ..wiring import open_redis, require_redis_url, until_done_or_stopped

    # torch runs only the face expert here, one face at a time: a second thread doubled its CPU for no
    # speed (1.2 against 2.3 ms a face), and a capture process shares its cores with the other sessions
    torch.set_num_threads(1)
    settings = settings_from(args)
    url = require_redis_url(settings, "dmd capture")
    metrics = Metrics("capture")
    Metrics.serve(settings.metrics.port, settings.metrics.host)
    source = make_source(args.source, settings, camera=args.camera, microphone=args.microphone, metrics=metrics)
    async with open_redis(url) as redis:
        capture = Capture(redis, args.session, source, settings, metrics=metrics)
        task = asyncio.create_task(capture.run(asr=args.asr))
        if not await until_done_or_stopped(task, stop):
            await capture.stop()  # graceful: the source ends, features are flushed, last notices sent
        stats = await task
    print(json.dumps({"session": args.session, **vars(stats)}, default=str))
    return 0


def cmd_capture(args: argparse.Namespace) -> int:
    return run_stoppable(lambda stop: _capture(args, stop))


# -- asr -------------------------------------------------------------------------------------------------
def add_asr_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--redis", default=None, help="Redis URL (default: $REDIS_URL, else redis://127.0.0.1:6379/0)")
    p.add_argument("--asr", default="auto", choices=ASR_ENGINES,
                   help="engine: vosk (needs --vosk-model), whisper (embedded English), none, or auto "
                        "(vosk when a model is configured, else whisper)")
    p.add_argument("--vosk-model", default=None,
                   help="Vosk model folder, or the name of one installed by `dmd models` ($DMD_VOSK_MODEL)")
    p.add_argument("--whisper-model", default=None,
                   help="a CTranslate2 Whisper folder instead of the embedded tiny.en (not hash-checked)")
    p.add_argument("--session", default=None, help="run this one session to its end, without the group")
    p.add_argument("--max-sessions", type=int, default=max(1, (os.cpu_count() or 1) * 2),
                   help="sessions at once (default: two per core, so that each may use --max-cpu while it catches "
                        "up; in steady speech Whisper took 0.10-0.19 core a session: docs/DEPLOY.md)")
    p.add_argument("--max-cpu", type=float, default=0.5, help="Whisper: share of a core per session (default 0.5)")
    p.add_argument("--name", default=None, help="consumer name (default: host-pid-random); keep it across "
                                                "restarts to take this worker's sessions back at once")
    p.add_argument("--claim-idle", type=float, default=15.0,
                   help="seconds before a dead worker's sessions are claimed (default 15)")
    p.add_argument("--idle-timeout", type=float, default=120.0,
                   help="end a session's ASR after this many seconds without audio or end event (default 120)")
    p.add_argument("--ended-ttl", type=float, default=3600.0,
                   help="an ended session's words stream is deleted this many seconds later (default 3600; 0: kept)")


async def _asr(args: argparse.Namespace, stop: asyncio.Event) -> int:
    from stream.keys import ASR_GROUP, SESSIONS

    from ..asr.factory import make_engine_factory
    from ..asr.worker import AsrSession, AsrWorker
    from ..wiring import describe_redis, open_redis, until_done_or_stopped

    url = args.redis or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    name, factory = make_engine_factory(args.asr, vosk_model=args.vosk_model, whisper_model=args.whisper_model,
                                        max_cpu=args.max_cpu, sessions=1 if args.session else args.max_sessions)
    options = {"idle_timeout_s": args.idle_timeout, "ended_ttl_s": args.ended_ttl}
    log.info("ASR worker: engine %s, Redis %s", name, describe_redis(url))
    async with open_redis(url) as redis:
        if args.session:
            task = asyncio.create_task(AsrSession(redis, args.session, factory(), **options).run())
            if not await until_done_or_stopped(task, stop):
                task.cancel()
                return 130
            result = task.result()
            print(json.dumps({"session": result.session, "reason": result.reason, "resumed_from": result.resumed_from,
                              "watermark": result.watermark, "words": result.words, "entries": result.entries,
                              **result.stats}))
            return 0
        worker = AsrWorker(redis, factory, name=args.name, max_sessions=args.max_sessions,
                           claim_idle_ms=int(args.claim_idle * 1000), session_options=options)
        log.info("ASR worker %s serving %s (group %s), up to %d sessions", worker.name, SESSIONS, ASR_GROUP,
                 args.max_sessions)
        await worker.run(stop)
        return 0


def cmd_asr(args: argparse.Namespace) -> int:
    return run_stoppable(lambda stop: _asr(args, stop))


# -- infer -------------------------------------------------------------------------------------------------
def add_infer_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="model checkpoint (default: the bundled one)")
    p.add_argument("--device", help="auto, cpu, cuda")
    p.add_argument("--max-batch", type=int, help="windows per forward pass")
    p.add_argument("--max-wait-ms", type=float, help="how long a batch waits to fill")
    p.add_argument("--name", help="consumer name (keep it across restarts)")
    add_pipeline_options(p)


async def _infer(args: argparse.Namespace, stop: asyncio.Event) -> int:
    from stream.keys import INFER_GROUP

    from ..metrics import sample_group
    from ..wiring import (
        describe_redis,
        inference_worker,
        load_predictor,
        open_redis,
        require_redis_url,
        until_done_or_stopped,
    )

    settings = settings_from(args)
    url = require_redis_url(settings, "dmd infer")
    metrics = Metrics("infer")
    Metrics.serve(settings.metrics.port, settings.metrics.host)
    predictor = load_predictor(settings.inference)
    async with open_redis(url) as redis:
        worker = inference_worker(redis, settings, predictor, metrics=metrics, name=args.name)
        log.info("inference worker %s: %s on %s, Redis %s", worker.name, predictor.name, predictor.device,
                 describe_redis(url))
        task = asyncio.create_task(worker.run())

        async def sampler() -> None:
            while True:
                await sample_group(redis, metrics, worker.consumer.streams, INFER_GROUP)  # every partition
                await asyncio.sleep(2)

        sampling = asyncio.create_task(sampler())
        # the worker may also end by itself (it could not start: a text encoder that does not load, a
        # dmd:windows key of another type): then leave with its error instead of waiting for a signal
        await until_done_or_stopped(task, stop)
        worker.stop()  # SIGTERM: finish the windows in flight, acknowledge them, then leave
        code = 0
        try:
            await task
        except Exception as exc:  # noqa: BLE001 - reported, and the exit status says so
            log.error("inference worker %s stopped: %s: %s", worker.name, type(exc).__name__, exc)
            code = 1
        finally:
            sampling.cancel()
    log.info("inference worker %s: %d published, %d duplicates", worker.name, worker.published, worker.duplicates)
    return code


def cmd_infer(args: argparse.Namespace) -> int:
    return run_stoppable(lambda stop: _infer(args, stop))


# -- watch -------------------------------------------------------------------------------------------------
def add_watch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("session", nargs="?", help="one session (default: every session)")
    p.add_argument("--json", action="store_true", help="JSON lines, for piping")
    p.add_argument("--history", type=int, default=10, help="recent estimates to show first (default 10)")
    p.add_argument("--count", type=int, help="exit after this many estimates")
    p.add_argument("--timeout", type=float, help="exit after this many seconds")
    add_pipeline_options(p)


async def _watch(args: argparse.Namespace, stop: asyncio.Event) -> int:
    from ..view.watch import watch
    from ..wiring import open_redis, require_redis_url, until_done_or_stopped

    settings = settings_from(args)
    url = require_redis_url(settings, "dmd watch")
    count = [0]

    def until(_: Any) -> bool:
        count[0] += 1
        return args.count is not None and count[0] >= args.count

    async with open_redis(url) as redis:
        watching = asyncio.ensure_future(watch(redis, args.session, as_json=args.json, history=args.history,
                                               until=until, timeout=args.timeout))
        if not await until_done_or_stopped(watching, stop):
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
            return 130
        await watching
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    return run_stoppable(lambda stop: _watch(args, stop))


def register(sub: argparse._SubParsersAction) -> None:
    """Add the live commands to the `dmd` parser."""
    for name, helptext, add, func in (
        ("demo", "the live pipeline on the bundled clip, embedded Redis, terminal view and timeline",
         add_demo_arguments, cmd_demo),
        ("run", "all stages on this machine for one source (a file, webcam, mic)", add_run_arguments, cmd_run),
        ("capture", "capture a source into a session's Redis streams", add_capture_arguments, cmd_capture),
        ("asr", "speech recognition worker: a session's audio in, its words out", add_asr_arguments, cmd_asr),
        ("infer", "inference worker: window notices in, estimates out", add_infer_arguments, cmd_infer),
        ("watch", "live view of the estimates (or --json lines)", add_watch_arguments, cmd_watch),
    ):
        p = sub.add_parser(name, help=helptext)
        add(p)
        p.set_defaults(func=func)
