"""Benchmark of WebRTC ingest: how many browser-like sessions one CPU core takes in with the edge
features on, and the latency from a frame's capture to its estimate arriving at the client.
Prints JSON; never asserts a time.

    python bench/webrtc.py --sessions 1 2 3 4 --seconds 20 [--size 640x480] [--checkpoint PATH]

Set-up, on one machine:

- `dmd serve --no-workers` (the web app, WebRTC, the capture of each session: VP8 and Opus decoding,
  48 -> 16 kHz resampling, MediaPipe face tracking at 15 fps, openSMILE at 100 Hz, Redis writes),
  pinned to one core (`--core`, default 0): that process is what is measured.
- `dmd infer` (the inference worker, `--asr none`: no speech recognition) and an embedded Redis,
  on the other cores, with the clients.
- N aiortc clients (`workers.web.client`), each looping the bundled demo clip (a face, speech)
  at 15 fps (scaled to `--size`, 640x480 by default as a webcam sends) and its sound at 48 kHz, all
  started together. After `--warmup` seconds, for `--seconds`:

Per N: the ingest process's CPU share of its core; frames the face tracker took per session per
second (the latest-frame policy drops the rest), frames the server received; audio overruns;
estimates per session per second (2 expected at a 0.5 s hop); capture-to-estimate latency at the
client (p50, p95; see `workers.web.client`) and the server's own `age_ms` (window end on the
session clock to sending). `sessions_one_core_ingests` is the largest N at which every session
was tracked at >= 13.5 fps (90 % of 15), no audio was lost, estimates kept pace (>= 1.8 per second)
and the ingest core was not saturated (< 95 %); `sessions_per_idle_core_by_cpu_time` divides 95 % of
a core by the CPU time per session of the rounds that kept up, which is what an idle core would take
when other work shares the measured one (`ingest_core_busy_all_processes` against
`ingest_cpu_share_of_one_core` shows how much it did; the load average is in `machine`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workers.wiring import EmbeddedRedis  # noqa: E402


def machine() -> dict:
    from hostinfo import cpu_model

    cpu = cpu_model()
    import platform

    import aiortc
    import av

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "aiortc": aiortc.__version__,
            "av": av.__version__, "load_avg_1min_at_start": round(os.getloadavg()[0], 2),
            "date": time.strftime("%Y-%m-%d")}


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 1)


def random_checkpoint(path: Path) -> Path:
    import dmd_model.features
    from dmd_model.artefacts.checkpoint import save_checkpoint
    from dmd_model.config import DMDConfig
    from dmd_model.network.dmd import DMD

    cfg = DMDConfig.from_dict({"name": "live_random", "model": {"feature_dims": [384, 25, 55],
                                                                "seq_lens": [50, 50, 50], "d_model": 16,
                                                                "num_heads": 4, "layers": 1}})
    return save_checkpoint(path, DMD(cfg.model), cfg, profile=dmd_model.features.PROFILE.describe())


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def core_busy_seconds(core: int) -> tuple[float, float]:
    """(busy, total) seconds of one core since boot, from /proc/stat: all processes, not only ours."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            ticks = [int(v) for v in line.split()[1:]]
            idle = ticks[3] + ticks[4]  # idle + iowait
            hz = os.sysconf("SC_CLK_TCK")
            return (sum(ticks) - idle) / hz, sum(ticks) / hz
    raise ValueError(f"no cpu{core} in /proc/stat")


def start(cmd: list[str], cores: set[int], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True, preexec_fn=lambda: os.sched_setaffinity(0, cores))


def wait_line(log: Path, prefix: str, proc: subprocess.Popen, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith(prefix):
                return line
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args[:4]} exited: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    raise SystemExit(f"no {prefix!r} from {proc.args[:4]} in {timeout} s: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


async def sessions_json(base: str) -> dict:
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(f"{base}/sessions") as r:
        return await r.json()


async def one_round(base: str, n: int, args: argparse.Namespace, serve_pid: int, frames: list, pcm: np.ndarray,
                    round_no: int) -> dict:
    from workers.web.client import LoopedCamera, LoopedMicrophone, ServeClient

    clients = [ServeClient(base, [LoopedCamera(frames, 15), LoopedMicrophone(pcm)], session=f"bench-{round_no}-{i}")
               for i in range(n)]
    await asyncio.gather(*(c.connect() for c in clients))
    await asyncio.sleep(args.warmup)
    before = {p["session"]: p for p in (await sessions_json(base))["live"]}
    cpu0, wall0, t0 = cpu_seconds(serve_pid), time.monotonic(), time.time()
    busy0, total0 = core_busy_seconds(args.core)
    await asyncio.sleep(args.seconds)
    cpu1, wall1 = cpu_seconds(serve_pid), time.monotonic()
    busy1, total1 = core_busy_seconds(args.core)
    after = {p["session"]: p for p in (await sessions_json(base))["live"]}
    elapsed = wall1 - wall0
    await asyncio.gather(*(c.close() for c in clients))
    for _ in range(150):  # the sessions end and flush their backlog before the next round
        if not (await sessions_json(base))["live"]:
            break
        await asyncio.sleep(0.2)

    tracked, received, overruns, replaced = [], [], 0, 0
    for c in clients:
        a, b = after.get(c.session), before.get(c.session)
        if not a or not b:
            continue
        tracked.append((a["capture"]["video_tracked"] - b["capture"]["video_tracked"]) / elapsed)
        received.append((a["source"]["video_frames"] - b["source"]["video_frames"]) / elapsed)
        overruns += a["source"]["audio_overruns"] + a["capture"].get("audio_overruns", 0)
        replaced += a["source"]["video_replaced"] + a["capture"]["video_dropped"]
    latency = [v for c in clients for v in c.latencies_ms(since=t0)]
    ages = [m["age_ms"] for c in clients for m, at in zip([m for m in c.messages if m["type"] == "estimate"],
                                                          c.arrivals) if at >= t0 and m["age_ms"] is not None]
    rates = [sum(1 for at in c.arrivals if at >= t0) / elapsed for c in clients]
    cpu = (cpu1 - cpu0) / elapsed
    result = {
        "sessions": n,
        "ingest_cpu_share_of_one_core": round(cpu, 3),
        "ingest_core_share_per_session": round(cpu / n, 3),
        "ingest_core_busy_all_processes": round((busy1 - busy0) / max(1e-9, total1 - total0), 3),
        "tracked_fps_per_session": {"min": round(min(tracked), 2) if tracked else None,
                                    "mean": round(float(np.mean(tracked)), 2) if tracked else None},
        "received_fps_per_session": round(float(np.mean(received)), 2) if received else None,
        "video_frames_dropped_for_newer": replaced,
        "audio_overruns": overruns,
        "estimates_per_session_per_second": {"min": round(min(rates), 2), "mean": round(float(np.mean(rates)), 2)},
        "capture_to_estimate_at_client_ms": {"p50": pct(latency, 0.5), "p95": pct(latency, 0.95),
                                             "n": len(latency)},
        "server_age_at_send_ms": {"p50": pct(ages, 0.5), "p95": pct(ages, 0.95)},
    }
    result["keeps_up"] = bool(tracked and min(tracked) >= 13.5 and overruns == 0 and min(rates) >= 1.8
                              and cpu < 0.95)
    result["core_shared_with_other_work"] = result["ingest_core_busy_all_processes"] - cpu > 0.15
    return result


async def bench(args: argparse.Namespace) -> dict:
    from workers.settings import DEMO_CLIP
    from workers.web.client import clip_frames, clip_sound

    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit("this benchmark needs 2 cores: one for the ingest, one for the rest")
    ingest = {args.core}
    rest = set(cores) - ingest
    os.sched_setaffinity(0, rest)  # the clients stay off the ingest core
    folder = Path(tempfile.mkdtemp(prefix="dmd-bench-webrtc-"))
    embedded = EmbeddedRedis()
    checkpoint, checkpoint_note = args.checkpoint, args.checkpoint
    if not checkpoint:
        from workers.wiring import default_checkpoint

        checkpoint = checkpoint_note = str(default_checkpoint())
        if not Path(checkpoint).is_file():  # inference runs off the measured core: any live-profile model will do
            checkpoint = str(random_checkpoint(folder / "random.pt"))
            checkpoint_note = "random live-profile model (d_model 16; no bundled checkpoint yet)"
    py = sys.executable
    infer = start([py, "-m", "workers.cli", "infer", "--redis", embedded.url, "--checkpoint", checkpoint],
                  rest, folder / "infer.log")
    serve = start([py, "-m", "workers.cli", "serve", "--no-workers", "--redis", embedded.url, "--port", "0",
                   "--asr", "none", "--max-sessions", str(2 * max(args.sessions))], ingest, folder / "serve.log")
    results = []
    try:
        line = wait_line(folder / "serve.log", "dmd serve: http", serve)
        base = line.split()[2].rstrip("/")
        if infer.poll() is not None:
            raise SystemExit(f"dmd infer exited: {(folder / 'infer.log').read_text()[-2000:]}")
        size = tuple(int(v) for v in args.size.split("x")) if args.size else None
        frames = clip_frames(DEMO_CLIP, 4.0, size)  # type: ignore[arg-type]
        pcm = clip_sound(DEMO_CLIP, seconds=8.0)
        await asyncio.sleep(5)  # the inference worker has its text encoder before the clocks start
        for i, n in enumerate(args.sessions):
            result = await one_round(base, n, args, serve.pid, frames, pcm, i)
            print(json.dumps(result), file=sys.stderr, flush=True)
            results.append(result)
    finally:
        stop(serve)
        stop(infer)
        embedded.close()
    ok = [r["sessions"] for r in results if r["keeps_up"]]
    shares = [r["ingest_core_share_per_session"] for r in results if r["keeps_up"]]
    return {"bench": "webrtc", "video": f"{args.size or '320x320'} at 15 fps (demo clip, a face)",
            "audio": "48 kHz (Opus in WebRTC)", "asr": "none", "window_s": 3.0, "hop_s": 0.5,
            "warmup_s": args.warmup, "measured_s": args.seconds, "ingest_core": args.core,
            "checkpoint": checkpoint_note, "rounds": results,
            "sessions_one_core_ingests": max(ok) if ok else 0,
            # what the CPU time of the sessions that kept up says an idle core would take (the measured
            # count is lower on a machine whose other work shares the ingest core: see load_avg)
            "sessions_per_idle_core_by_cpu_time": round(0.95 / max(shares), 1) if shares else None,
            "machine": machine()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 3, 4], help="session counts to try")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per round")
    ap.add_argument("--warmup", type=float, default=6.0, help="seconds before measuring (first windows)")
    ap.add_argument("--size", default="640x480", help="picture size sent (WxH; '' for the clip's 320x320)")
    ap.add_argument("--core", type=int, default=0, help="the core the ingest process runs on")
    ap.add_argument("--checkpoint", help="checkpoint for the inference worker (default: the bundled one)")
    args = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(asyncio.run(bench(args)), indent=2))


if __name__ == "__main__":
    main()
