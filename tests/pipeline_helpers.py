"""Helpers of the live pipeline tests (tests/test_pipeline_*.py): a small random-init checkpoint in
the live profile, generated media, the `dmd` workers as OS processes, and reading back what they
wrote to Redis.

Media are generated here, never taken from ../shared/data: a face comes from the bundled demo clip
(`workers/assets/demo.mp4`: NASA's public-domain portrait of Eileen Collins, with LibriVox speech),
cut to a few seconds and re-encoded like the MOSI clips (H.264 + AAC); a clip without a face has
moving colour bars; the sound is that speech, a harmonic tone, or nothing.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from media_helpers import bars, mux_audio, mux_video

ROOT = Path(__file__).resolve().parents[1]
DMD = Path(sys.executable).with_name("dmd")
DEMO_CLIP = ROOT / "workers" / "assets" / "demo.mp4"
DATA = ROOT.parent / "shared" / "data"
MOSI = DATA / "clips" / "mosi"
SPEECH = DATA / "speech"
LATENCY_PARTS = ("asr_wait", "read", "align", "model", "notice_to_publish", "notice_sent_to_publish")
LIVE_TEST_MODEL = {"name": "live_test", "model": {"feature_dims": [384, 25, 55], "seq_lens": [50, 50, 50],
                                                   "d_model": 16, "num_heads": 4, "layers": 1}}


# -- face frames ---------------------------------------------------------------------------------------
def face_frames(times: np.ndarray, rng: np.random.Generator, expert: bool = True) -> Any:
    """Face frames as capture writes them, a face in each: 55 random tracker values, then the face
    expert's 7 probabilities (a random distribution; zeros with `expert` false: not run)."""
    from dmd_types import Frames

    values = np.zeros((len(times), 62), np.float32)
    values[:, :55] = rng.uniform(size=(len(times), 55))
    if expert:
        values[:, 55:] = rng.dirichlet(np.ones(7), size=len(times))
    return Frames(times, values, np.ones(len(times), bool))


# -- a checkpoint ----------------------------------------------------------------------------------
def write_checkpoint(path: Path, *, nan: bool = False, seed: int = 0) -> Path:
    """A small random-init DMD in the live profile (the bundled default.pt is someone else's to
    train). `nan`: one weight of the fusion head is NaN, so every output is NaN."""
    import torch

    import dmd_model.features
    from dmd_model.artefacts.checkpoint import save_checkpoint
    from dmd_model.config import DMDConfig
    from dmd_model.network.dmd import DMD as Network

    torch.manual_seed(seed)
    cfg = DMDConfig.from_dict(json.loads(json.dumps(LIVE_TEST_MODEL)))
    model = Network(cfg.model)
    if nan:
        with torch.no_grad():
            model.fusion_head.out.bias[0] = float("nan")  # the fused sentiment's last layer
    return save_checkpoint(path, model, cfg, profile=dmd_model.features.PROFILE.describe())


def shared_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A folder shared by every test module of this run (session fixtures imported into several
    modules are built once per module; what they make goes here, once)."""
    path = tmp_path_factory.getbasetemp() / f"pipeline-{name}"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = shared_dir(tmp_path_factory, "checkpoints") / "live_test.pt"
    if not path.is_file():
        write_checkpoint(path)
    return path


# -- media -------------------------------------------------------------------------------------------
def _demo_media(seconds: float) -> tuple[list[tuple[float, np.ndarray]], np.ndarray]:
    """The demo clip's first `seconds`: (time, RGB) frames and its 16 kHz mono int16 sound."""
    import av

    frames, sound = [], []
    with av.open(str(DEMO_CLIP)) as box:
        for frame in box.decode(video=0):
            if frame.time >= seconds:
                break
            frames.append((float(frame.time), frame.to_ndarray(format="rgb24")))
    with av.open(str(DEMO_CLIP)) as box:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
        for frame in box.decode(audio=0):
            for out in resampler.resample(frame):
                sound.append(out.to_ndarray().reshape(-1))
    pcm = np.concatenate(sound)[: int(seconds * 16000)]
    return frames, pcm


def tone(seconds: float, rate: int = 16000, freq: float = 200.0) -> np.ndarray:
    """A harmonic tone (voice-like for openSMILE) that pauses for 0.6 s every 2 s, int16."""
    t = np.arange(int(seconds * rate)) / rate
    x = sum(np.sin(2 * np.pi * freq * k * t) / k for k in range(1, 8)) * 0.2
    x[(t % 2.0) > 1.4] = 0
    return (x * 32767).astype(np.int16)


def speech(seconds: float) -> np.ndarray:
    """Real speech (LibriVox, public domain) from the bundled demo clip, 16 kHz mono int16."""
    return _demo_media(seconds)[1]


def write_clip(path: Path, seconds: float = 6.0, *, face: bool = True, sound: str | None = "speech",
               fps: int = 10) -> Path:
    """An mp4 like the MOSI clips (H.264 + AAC 44.1 kHz stereo). `face`: the demo clip's face, else
    colour bars; `sound`: "speech", "tone" or None."""
    import av

    demo_frames, demo_pcm = _demo_media(seconds) if face or sound == "speech" else ([], np.zeros(0, np.int16))
    sr = 44100

    def images() -> Iterator[np.ndarray]:
        j = 0
        for i in range(int(seconds * fps)):
            if not face:
                yield bars(i)
                continue
            while j + 1 < len(demo_frames) and demo_frames[j + 1][0] <= i / fps + 1e-6:
                j += 1
            yield demo_frames[j][1]

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        size = demo_frames[0][1].shape[:2] if face else (120, 160)
        vs.height, vs.width = size
        vs.pix_fmt = "yuv420p"
        aus = out.add_stream("aac", rate=sr, layout="stereo") if sound else None
        mux_video(out, vs, images())
        if aus is not None:
            pcm16 = demo_pcm if sound == "speech" else tone(seconds)
            x16 = pcm16.astype(np.float32) / 32768
            x = np.interp(np.arange(int(len(x16) * sr / 16000)) / sr, np.arange(len(x16)) / 16000, x16)
            mux_audio(out, aus, x, sr)
    return path


@pytest.fixture(scope="session")
def face_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 s: the demo clip's face and speech."""
    path = shared_dir(tmp_path_factory, "media") / "face_speech.mp4"
    if not path.is_file():
        write_clip(path.with_suffix(".part.mp4"), 6.0).rename(path)
    return path


@pytest.fixture(scope="session")
def bars_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 s: colour bars (no face) and a tone."""
    path = shared_dir(tmp_path_factory, "media") / "bars_tone.mp4"
    if not path.is_file():
        write_clip(path.with_suffix(".part.mp4"), 6.0, face=False, sound="tone").rename(path)
    return path


# -- the workers as processes ------------------------------------------------------------------------
def pipeline_env(checkpoint: Path | None = None, redis_url: str | None = None, **settings: Any) -> dict[str, str]:
    """The environment of a `dmd` process: no inherited pipeline settings, offline model hubs, one
    torch thread, face tracking at 5 frames a second, and `settings` as DMD_<SECTION>_<KEY>."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMD_") and k != "REDIS_URL"}
    env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               DMD_INFERENCE_THREADS="1", DMD_CAPTURE_VIDEO_FPS="5", GLOG_minloglevel="2", TF_CPP_MIN_LOG_LEVEL="2")
    if checkpoint is not None:
        env["DMD_INFERENCE_CHECKPOINT"] = str(checkpoint)
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    for key, value in settings.items():
        env[f"DMD_{key.upper()}"] = str(value)
    return env


@dataclass
class Proc:
    """A `dmd` process of a test: its output goes to files beside the test's other files."""

    name: str
    popen: subprocess.Popen
    stdout: Path
    stderr: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def out(self) -> str:
        return self.stdout.read_text(errors="replace")

    def err(self) -> str:
        return self.stderr.read_text(errors="replace")

    def tail(self, chars: int = 3000) -> str:
        return f"--- {self.name} (pid {self.pid}, exit {self.poll()}) ---\n{self.err()[-chars:]}{self.out()[-chars:]}"

    def signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} did not exit within {timeout} s\n{self.tail()}") from None

    def json_lines(self, text: str | None = None) -> list[dict[str, Any]]:
        """The JSON objects among the lines of standard output (or `text`)."""
        found = []
        for line in (self.out() if text is None else text).splitlines():
            line = line.strip()
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    found.append(json.loads(line))
        return found


@dataclass
class Processes:
    """Starts `dmd` subcommands as processes (each in a session of its own) and kills what is left
    of them at the end of the test (`close`, SIGKILL to each one's process group)."""

    directory: Path
    started: list[Proc] = field(default_factory=list)

    def start(self, name: str, *args: str | Path, env: dict[str, str]) -> Proc:
        stdout, stderr = self.directory / f"{name}.out", self.directory / f"{name}.err"
        with open(stdout, "wb") as out, open(stderr, "wb") as err:
            popen = subprocess.Popen([str(DMD), *map(str, args)], stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                     env=env, cwd=self.directory, start_new_session=True)
        proc = Proc(name, popen, stdout, stderr)
        self.started.append(proc)
        return proc

    def tails(self) -> str:
        return "\n".join(p.tail() for p in self.started)

    def close(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(10)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.close()


def wait_for(check: Callable[[], Any], timeout: float, what: str, procs: Processes | None = None,
             alive: Iterable[Proc] = (), interval: float = 0.1) -> Any:
    """Poll `check()` until it returns something true; fail after `timeout` seconds, or at once when
    a process in `alive` has exited, with the processes' logs."""
    deadline = time.monotonic() + timeout
    alive = list(alive)
    while True:
        result = check()
        if result:
            return result
        dead = [p for p in alive if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            why = f"{', '.join(p.name for p in dead)} exited" if dead else f"not within {timeout} s"
            raise AssertionError(f"{what}: {why}\n{procs.tails() if procs else ''}")
        time.sleep(interval)


def kill_a_worker_holding_windows(processes: Processes, r: Any, env: dict[str, str], clip: Path,
                                  session: str) -> tuple[Proc, Proc, list[bytes]]:
    """The first half of the SIGKILL tests (one Redis, a cluster): `dmd infer` w1, holding each batch
    30 s before the model, takes the windows of `session` (`clip` captured at twice real time) alone
    (with two workers reading, which one gets a notice is a race, and w1 could hold fewer than two);
    once it holds two, w2 starts and reads, and w1 is killed with SIGKILL. Returns w2, the capture and
    the entries w1 held."""
    w1 = processes.start("infer-w1", "infer", "--name", "w1", "--max-wait-ms", "30000", env=env)
    wait_for(lambda: "w1" in consumers(r), 60, "w1 reading", processes, alive=[w1])
    capture = processes.start("capture", "capture", "--source", clip, "--session", session, "--speed", "2",
                              "--asr", "none", env=env)
    held = wait_for(lambda: len(pending_of(r, "w1")) >= 2 and pending_of(r, "w1"), 60, "w1 holding windows",
                    processes, alive=[w1])
    w2 = processes.start("infer-w2", "infer", "--name", "w2", env=env)
    wait_for(lambda: "w2" in consumers(r), 60, "w2 reading", processes, alive=[w1, w2])
    assert pending_of(r, "w1"), "w1 published its windows before it could be killed"
    w1.signal(signal.SIGKILL)
    assert w1.wait(10) == -signal.SIGKILL
    return w2, capture, held


# -- reading back --------------------------------------------------------------------------------------
def client(url: str):
    """A synchronous client for `url`, any URL `dmd` takes (`redis+cluster://` gives a RedisCluster),
    which knows the URL's partitions of the shared streams (`?partitions=N`: `partitions_of`)."""
    import redis

    from stream.connection import parse_redis_url

    parsed = parse_redis_url(url)
    kwargs = parsed.client_kwargs()
    r = redis.RedisCluster(**kwargs) if parsed.cluster else redis.Redis(**kwargs)
    r.dmd_partitions = parsed.partitions
    return r


def partitions_of(r) -> Any:
    """The partitions of the shared streams a synchronous client's workers use, as
    `stream.connection.partitions_for` decides for theirs: its URL's `partitions`, else 1 on one Redis
    (the one key `dmd:windows`) and CLUSTER_PARTITIONS on a cluster."""
    import redis

    from stream.keys import CLUSTER_PARTITIONS, Partitions

    count = getattr(r, "dmd_partitions", 0)
    return Partitions(count or (CLUSTER_PARTITIONS if isinstance(r, redis.RedisCluster) else 1))


def notices(r, session: str) -> list[int]:
    """The window indexes of `session`'s notices in its partition of `dmd:windows`, in the order
    they were sent."""
    from stream.codec import MessageError
    from stream.messages import WindowNotice

    found = []
    for _, fields in r.xrange(partitions_of(r).for_session("windows", session)):
        try:
            notice = WindowNotice.from_fields(fields)
        except MessageError:
            continue
        if notice.session == session:
            found.append(notice.window)
    return found


def estimates(r, session: str) -> list[dict[str, Any]]:
    """`session`'s estimates from its estimates stream, in the order they were published."""
    from stream.keys import SessionKeys
    from stream.publish import ESTIMATE_FIELD

    return [json.loads(f[ESTIMATE_FIELD.encode()]) for _, f in r.xrange(SessionKeys(session).estimates)]


def pending(r) -> int:
    """Window notices delivered to the group "infer" and not yet acknowledged, in every partition."""
    from stream.keys import INFER_GROUP

    total = 0
    for key in partitions_of(r).keys("windows"):
        with contextlib.suppress(Exception):  # no group (or no stream) yet
            total += int(r.xpending(key, INFER_GROUP)["pending"])
    return total


def consumers(r) -> set[str]:
    """The names of the inference workers that have read from any partition of `dmd:windows`."""
    import redis

    from stream.keys import INFER_GROUP

    found: set[str] = set()
    for key in partitions_of(r).keys("windows"):
        with contextlib.suppress(redis.ResponseError):  # no group (or no stream) yet
            found |= {c["name"].decode() for c in r.xinfo_consumers(key, INFER_GROUP)}
    return found


def pending_of(r, consumer: str) -> list[bytes]:
    """The ids of the window notices `consumer` holds (delivered, not acknowledged), in every partition."""
    import redis

    from stream.keys import INFER_GROUP

    found: list[bytes] = []
    for key in partitions_of(r).keys("windows"):
        with contextlib.suppress(redis.ResponseError):  # no group (or no stream) yet
            found += [e["message_id"] for e in r.xpending_range(key, INFER_GROUP, "-", "+", 1000,
                                                                  consumername=consumer)]
    return found


def dead_letters(r) -> list[Any]:
    """The dead letters of every partition of `dmd:dead` (partition 0 first, each oldest first)."""
    from stream.consumer import DeadLetter

    return [DeadLetter.from_entry(i, f) for key in partitions_of(r).keys("dead") for i, f in r.xrange(key)]


async def run_worker_until_published(worker: Any, count: int, timeout: float = 60.0) -> None:
    """Run an in-process inference worker until it has published `count` estimates (or ended), then
    stop it and wait for it to finish."""
    import asyncio

    from redis_fixtures import eventually

    task = asyncio.create_task(worker.run())

    async def published() -> bool:
        await asyncio.sleep(0.05)
        return worker.published >= count or task.done()

    await eventually(published, timeout, "every window published")
    worker.stop()
    await asyncio.wait_for(task, 20)


def all_published(r, session: str, expected: int | None = None) -> bool:
    """Every notice of `session` has an estimate (and there are `expected` notices, if given)."""
    sent = notices(r, session)
    if not sent or (expected is not None and len(sent) < expected):
        return False
    return {e["window"] for e in estimates(r, session)} >= set(sent)


def check_estimates(found: list[dict[str, Any]], windows: Iterable[int], *, session: str | None = None,
                    in_order: bool = True, latency: bool = True) -> None:
    """Exactly one estimate per window of `windows` (in window order if `in_order`), each valid
    against the contract (schema 2), every number finite, with its latency parts."""
    from stream.estimate import validate_estimate

    windows = sorted(windows)
    got = [e["window"] for e in found]
    assert sorted(got) == windows, f"estimates for windows {got}, notices for {windows}"
    assert len(set(got)) == len(got), f"a window published twice: {got}"
    if in_order:
        assert got == windows, f"estimates out of window order: {got}"
    for e in found:
        validate_estimate(e)
        if session is not None:
            assert e["session"] == session
        assert e["schema"] == 2 and -3 <= e["sentiment"] <= 3 and -3 <= e["smoothed"] <= 3
        assert all(math.isfinite(v) for v in _numbers(e)), e
        if latency:
            missing = [k for k in LATENCY_PARTS if k not in e["latency_ms"]]
            assert not missing, f"window {e['window']} has no latency part {missing}: {e['latency_ms']}"
            assert all(v >= 0 for v in e["latency_ms"].values()), e["latency_ms"]
        assert e["model"]["name"] == "live_test"


def _numbers(obj: Any) -> Iterator[float]:
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        yield float(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _numbers(v)


# -- a microphone that reads a file: ALSA's file plugin over a FIFO ----------------------------------------
ALSA_CONF = "/usr/share/alsa/alsa.conf"
ALSA_DEVICE = "dmdfilemic"


def portaudio_problem() -> str | None:
    """Why PortAudio (sounddevice) cannot be used here, or None."""
    try:
        import sounddevice  # noqa: F401
    except OSError as exc:
        return f"PortAudio is missing ({exc}): apt-get install libportaudio2"
    except ImportError as exc:
        return f"sounddevice is not installed ({exc})"
    if not Path(ALSA_CONF).is_file():
        return f"{ALSA_CONF} is missing: ALSA (libasound2-data) is needed for the file microphone"
    return None


class FileMicrophone:
    """An ALSA capture device `dmdfilemic` that reads 16 kHz mono S16 PCM from a FIFO which this
    object feeds at real-time pace, as a sound card would deliver it.

    ALSA's `type file` plugin reads a capture stream's samples from `infile` instead of its slave
    (`null`, which has no clock of its own: from a plain file the samples come as fast as they are
    read, which no microphone does). From a FIFO, the reads wait for the feeder, which writes one
    `block_s` block per `block_s` of wall time: first `pcm`, then silence until `close()`. PortAudio
    opens and closes the device while listing devices, so the feeder opens the FIFO again whenever
    its reader goes away, and each time starts with `lead_s` of silence (what a probe reads is lost).

    `block_s` must be the recorder's block (`capture.chunk_ms`, 100 ms): PortAudio reads one block
    (3200 bytes) at a time, and where the FIFO holds less the plugin fills the rest of the read with
    stale samples instead of waiting, which would play the sound faster than real time. One write
    per block (under PIPE_BUF, so atomic) keeps every read whole. Pass `env()` to the process that
    records."""

    def __init__(self, directory: Path, pcm: np.ndarray, block_s: float = 0.1) -> None:
        self.fifo = directory / "mic.fifo"
        self.conf = directory / "asound.conf"
        self.pcm = pcm.astype("<i2")
        self.block = int(16000 * block_s)
        self.block_s = block_s
        self.fed_pcm = 0  # samples of `pcm` written
        self.opens = 0
        self.lead_s = 0.3  # silence first on each open: PortAudio's probes close the device within ms
        self._stop = threading.Event()
        os.mkfifo(self.fifo)
        self.conf.write_text(
            f'pcm.{ALSA_DEVICE} {{\n  type file\n  slave.pcm "null"\n  file "/dev/null"\n'
            f'  infile "{self.fifo}"\n  format "raw"\n}}\n')
        self._thread = threading.Thread(target=self._feed, name="file-microphone", daemon=True)
        self._thread.start()

    def env(self) -> dict[str, str]:
        return {"ALSA_CONFIG_PATH": f"{ALSA_CONF}:{self.conf}"}

    def _feed(self) -> None:
        silence = np.zeros(self.block, "<i2").tobytes()
        while not self._stop.is_set():
            try:
                fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # no reader yet
                time.sleep(0.01)
                continue
            os.set_blocking(fd, True)
            self.opens += 1
            start, n = time.monotonic(), 0
            try:
                while not self._stop.is_set():
                    delay = start + n * self.block_s - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    if n * self.block_s >= self.lead_s and self.fed_pcm < len(self.pcm):
                        chunk = self.pcm[self.fed_pcm:self.fed_pcm + self.block]
                        os.write(fd, chunk.tobytes())
                        self.fed_pcm += len(chunk)
                    else:
                        os.write(fd, silence)
                    n += 1
            except BrokenPipeError:
                pass
            finally:
                os.close(fd)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
