"""Capture: a source's video and sound in, a session's streams out.

A source (a file, a webcam, a microphone, a WebRTC peer) yields timestamped video frames (RGB) and
16 kHz mono PCM chunks on the session clock. The capture worker

- pushes every PCM chunk to `dmd:{sid}:audio` (the ASR reads it) and computes the acoustic frames
  of the live profile (openSMILE eGeMAPS, 100 Hz) into `dmd:{sid}:afeat`;
- tracks the face in video frames (MediaPipe blendshapes + head pose, at `capture.video_fps`) into
  `dmd:{sid}:vfeat`;
- sends a window notice to `dmd:windows` once all of its streams have passed a window's end.

Raw video never crosses Redis. Queues are bounded: when the face tracker falls behind a live (or
real-time paced) source, the oldest waiting frames are dropped and counted; audio is never dropped
silently: a file source waits, and a live source that overruns its queue is counted and logged as
an error. Blocking work (feature extraction) runs in threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis.asyncio as aioredis

from dmd_model.features import AudioFeatureStream, FaceTracker, Frames
from stream.messages import AcousticFrames, AudioChunk, FaceFrames
from stream.session import Session
from stream.window import WindowPlanner, WindowSpec

from .asr_sessions import end_session, start_session
from .metrics import Metrics
from .settings import PipelineSettings

log = logging.getLogger("dmd.capture")

SAMPLE_RATE = 16_000


@dataclass
class Video:
    """One video frame: RGB (h, w, 3) uint8 at session time t."""

    t: float
    rgb: np.ndarray


@dataclass
class Sound:
    """One PCM chunk: int16 mono 16 kHz samples starting at session time t."""

    t: float
    pcm: np.ndarray


class EndOfStream(Exception):
    """A source has no more media."""


class Source:
    """Base of capture sources: `media()` yields Video and Sound items in (about) time order."""

    has_video: bool = True
    has_audio: bool = True
    live: bool = True  # a live source cannot wait: full queues drop (video) or overrun (audio)
    description: str = "source"

    def media(self) -> AsyncIterator[Video | Sound]:
        raise NotImplementedError

    async def close(self) -> None:
        return None


# -- sources ----------------------------------------------------------------------------------------
class FileSource(Source):
    """A media file played as a session: at real-time pace (`speed` 1), faster, or as fast as the
    pipeline takes it (`speed` 0). Times are the file's media timestamps. `close()` ends it early
    (Ctrl-C in `dmd run` / `dmd demo`), as the end of the file would."""

    def __init__(self, path: str | Path, speed: float = 1.0, video: bool | None = None,
                 audio: bool | None = None, chunk_s: float = 0.1) -> None:
        from dmd_model.features import probe_media

        self.path = Path(path)
        info = probe_media(self.path)
        self.has_video = info.has_video if video is None else video and info.has_video
        self.has_audio = info.has_audio if audio is None else audio and info.has_audio
        if not (self.has_video or self.has_audio):
            raise ValueError(f"{self.path} has neither video nor sound to play")
        self.speed = float(speed)
        self.live = self.speed > 0
        self.chunk_s = chunk_s
        self.description = f"file {self.path.name}"
        self.duration = info.duration
        self._stop = threading.Event()

    async def media(self) -> AsyncIterator[Video | Sound]:
        from dmd_model.features import decode_media
        from dmd_model.features.media import AudioChunk as FileChunk

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=64)
        done = object()
        stop = self._stop

        def decode() -> None:
            try:
                for item in decode_media(self.path, video=self.has_video, audio=self.has_audio, chunk_s=self.chunk_s):
                    if stop.is_set():
                        break
                    asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                asyncio.run_coroutine_threadsafe(queue.put(exc), loop).result()
            asyncio.run_coroutine_threadsafe(queue.put(done), loop).result()

        thread = loop.run_in_executor(None, decode)
        start = time.monotonic()
        first_t: float | None = None
        try:
            while not stop.is_set():
                item = await queue.get()
                if item is done:
                    break
                if isinstance(item, BaseException):
                    raise item
                t = item.t
                if first_t is None:
                    first_t = t
                if self.speed > 0:  # pace: the item is due at its media time, scaled
                    due = start + (t - first_t) / self.speed
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                if stop.is_set():
                    break
                if isinstance(item, FileChunk):
                    yield Sound(item.t, item.pcm)
                else:
                    yield Video(item.t, item.rgb)
        finally:
            # stopped early (close(), or the consumer left): the decoder thread may be blocked on a
            # full queue; empty it until the thread has ended, so no thread outlives the session
            stop.set()
            while not thread.done():
                while not queue.empty():
                    queue.get_nowait()
                await asyncio.wait({thread}, timeout=0.05)
            await thread

    async def close(self) -> None:
        self._stop.set()


class CameraSource(Source):
    """A webcam through OpenCV (`device` an index such as 0, or a video file / URL standing in for
    a camera). Times come from a monotonic clock read at capture; a file is read at its own frame
    rate, as a camera would deliver it."""

    has_audio = False

    def __init__(self, device: int | str = 0, fps: float | None = None) -> None:
        self.device = device
        self.fps = fps
        self.description = f"camera {device}"
        self._stop = False

    async def media(self) -> AsyncIterator[Video | Sound]:
        import cv2

        loop = asyncio.get_running_loop()
        cap = await loop.run_in_executor(None, cv2.VideoCapture, self.device)
        if not cap.isOpened():
            raise RuntimeError(f"cannot open camera {self.device!r}: check the device index or path "
                               "(`dmd run --source webcam --camera 1`) and that no other program holds it")
        is_file = isinstance(self.device, str) and Path(self.device).exists()
        rate = self.fps or (cap.get(cv2.CAP_PROP_FPS) if is_file else 0) or 30.0
        start = time.monotonic()
        n = 0
        try:
            while not self._stop:
                ok, bgr = await loop.run_in_executor(None, cap.read)
                if not ok:
                    if is_file:
                        break
                    raise RuntimeError(f"camera {self.device!r} stopped delivering frames")
                if is_file:  # deliver at the file's frame rate, as a camera would
                    due = start + n / rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    t = n / rate
                else:
                    t = time.monotonic() - start
                n += 1
                yield Video(t, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        finally:
            cap.release()

    async def close(self) -> None:
        self._stop = True


class MicrophoneSource(Source):
    """A microphone through PortAudio (sounddevice): 16 kHz mono int16 blocks of `chunk_ms`. Times
    count samples from the first block (the sound card's clock). A block that cannot be queued is
    an overrun: counted (`dmd_audio_overruns_total`) and logged as an error, never silent."""

    has_video = False

    def __init__(self, device: int | str | None = None, chunk_ms: int = 100, queue_size: int = 50,
                 metrics: Metrics | None = None) -> None:
        self.device = device
        self.block = SAMPLE_RATE * chunk_ms // 1000
        self.queue_size = queue_size
        self.metrics = metrics or Metrics()
        self.description = f"microphone {device if device is not None else '(default)'}"
        self.overruns = 0
        self._stop = asyncio.Event()

    async def media(self) -> AsyncIterator[Video | Sound]:
        try:
            import sounddevice as sd
        except OSError as exc:  # PortAudio missing
            raise RuntimeError(f"the microphone needs PortAudio ({exc}): install libportaudio2 "
                               "(Debian/Ubuntu: apt-get install libportaudio2)") from None
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[np.ndarray] = asyncio.Queue(maxsize=self.queue_size)
        last_report = [0.0]

        def put(block: np.ndarray) -> None:
            try:
                queue.put_nowait(block)
            except asyncio.QueueFull:
                self.overruns += 1
                self.metrics.audio_overruns.inc()
                if time.monotonic() - last_report[0] > 1.0:
                    last_report[0] = time.monotonic()
                    log.error("microphone overrun: %d audio block(s) lost so far; the pipeline is behind",
                              self.overruns)

        def callback(indata: np.ndarray, frames: int, t: Any, status: Any) -> None:
            if status:
                log.warning("microphone: %s", status)
            loop.call_soon_threadsafe(put, indata[:, 0].copy())

        stream = sd.InputStream(samplerate=SAMPLE_RATE, channels=1, dtype="int16", blocksize=self.block,
                                device=self.device, callback=callback)
        samples = 0
        with stream:
            while not self._stop.is_set():
                getter = asyncio.ensure_future(queue.get())
                stopper = asyncio.ensure_future(self._stop.wait())
                done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break
                stopper.cancel()
                block = getter.result()
                yield Sound(samples / SAMPLE_RATE, block)
                samples += block.size

    async def close(self) -> None:
        self._stop.set()


class MergedSource(Source):
    """Several sources as one (a camera and a microphone), interleaved as they deliver."""

    def __init__(self, *sources: Source) -> None:
        self.sources = sources
        self.has_video = any(s.has_video for s in sources)
        self.has_audio = any(s.has_audio for s in sources)
        self.live = any(s.live for s in sources)
        self.description = " + ".join(s.description for s in sources)

    async def media(self) -> AsyncIterator[Video | Sound]:
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=64)
        done = object()

        async def pump(source: Source) -> None:
            try:
                async for item in source.media():
                    await queue.put(item)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                await queue.put(exc)
            await queue.put(done)

        tasks = [asyncio.create_task(pump(s)) for s in self.sources]
        remaining = len(tasks)
        try:
            while remaining:
                item = await queue.get()
                if item is done:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            for task in tasks:
                task.cancel()

    async def close(self) -> None:
        for s in self.sources:
            await s.close()


# -- the capture worker ------------------------------------------------------------------------------
@dataclass
class CaptureStats:
    video_frames: int = 0
    video_tracked: int = 0
    video_skipped: int = 0  # not needed at the tracking rate
    video_dropped: int = 0  # the tracker fell behind
    audio_chunks: int = 0
    audio_seconds: float = 0.0
    windows: int = 0
    end_time: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class Capture:
    """Runs one session from one source into Redis (see the module docstring)."""

    def __init__(self, redis: aioredis.Redis, session: str, source: Source, settings: PipelineSettings, *,
                 metrics: Metrics | None = None, tracker: FaceTracker | None = None) -> None:
        self.redis = redis
        self.source = source
        self.settings = settings
        self.metrics = metrics or Metrics("capture")
        self.session = Session(redis, session, retention_s=settings.capture.retention_s)
        self.id = self.session.id
        streams = (["audio", "afeat"] if source.has_audio else []) + (["vfeat"] if source.has_video else [])
        self.planner = WindowPlanner(streams, WindowSpec(settings.windows.length, settings.windows.hop))
        self.stats = CaptureStats()
        self._tracker = tracker
        self._threads = ThreadPoolExecutor(2, thread_name_prefix=f"dmd-capture-{session}")
        self._audio_q: asyncio.Queue[Sound | None] = asyncio.Queue(maxsize=settings.capture.audio_queue)
        self._video: collections.deque[Video] = collections.deque()
        self._video_ready = asyncio.Event()
        self._video_done = False
        self._notice_lock = asyncio.Lock()

    async def run(self, asr: str = "") -> CaptureStats:
        """Capture until the source ends (a file) or `stop()` (a live source); then flush the
        features and send the last window notices. The session is announced on `dmd:sessions` at
        the start (ASR workers pick it up; `asr` names the engine expected, "none" for no text) and
        ended after its last audio."""
        loop = asyncio.get_running_loop()
        self._asr = asr
        self.origin_wall: float | None = None
        if self.source.has_video and self._tracker is None:
            self._tracker = await loop.run_in_executor(self._threads, FaceTracker)
        workers = []
        if self.source.has_audio:
            workers.append(asyncio.create_task(self._audio_worker(), name=f"capture-audio-{self.id}"))
        if self.source.has_video:
            workers.append(asyncio.create_task(self._video_worker(), name=f"capture-video-{self.id}"))
        try:
            await self._read_source()
        finally:
            if self.source.has_audio:
                await self._audio_q.put(None)
            self._video_done = True
            self._video_ready.set()
            results = await asyncio.gather(*workers, return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                    raise r
        if self.origin_wall is None:  # a source that gave nothing: still announce, then end
            await self._announce(0.0)
        await end_session(self.redis, self.id, t_end=self.stats.end_time, source=self.source.description,
                          info={"windows": self.stats.windows})
        async with self._notice_lock:
            for window in self.planner.finish():
                await self.session.notify_window(window)
                self.stats.windows += 1
        if self._tracker is not None:
            await loop.run_in_executor(self._threads, self._tracker.close)
        self._threads.shutdown(wait=False)
        return self.stats

    async def stop(self) -> None:
        await self.source.close()

    async def _read_source(self) -> None:
        drop_video = self.source.live
        interval = 1.0 / self.settings.capture.video_fps if self.settings.capture.video_fps > 0 else 0.0
        next_video = float("-inf")
        max_video = self.settings.capture.video_queue
        async for item in self.source.media():
            if self.origin_wall is None:
                await self._announce(item.t)
            if isinstance(item, Sound):
                if self.source.live:
                    try:
                        self._audio_q.put_nowait(item)
                    except asyncio.QueueFull:
                        self.metrics.audio_overruns.inc()
                        self.stats.extra["audio_overruns"] = self.stats.extra.get("audio_overruns", 0) + 1
                        log.error("session %s: audio queue full, waiting (the pipeline is behind real time)", self.id)
                        await self._audio_q.put(item)
                else:
                    await self._audio_q.put(item)
            else:
                self.stats.video_frames += 1
                if item.t + 1e-6 < next_video:
                    self.stats.video_skipped += 1
                    continue
                next_video = max(next_video + interval, item.t) if interval else item.t
                if len(self._video) >= max_video:
                    if drop_video:
                        self._video.popleft()
                        self.stats.video_dropped += 1
                        self.metrics.dropped_frames.inc()
                    else:
                        while len(self._video) >= max_video:
                            await asyncio.sleep(0.002)
                self._video.append(item)
                self._video_ready.set()

    async def _announce(self, t: float) -> None:
        """Announce the session with its first media: `origin_wall` is the wall-clock time of
        session time 0, for latency reports."""
        self.origin_wall = getattr(self.source, "origin_wall", None) or time.time() - t
        await start_session(self.redis, self.id, source=self.source.description,
                            info={"asr": self._asr, "has_audio": self.source.has_audio,
                                  "has_video": self.source.has_video, "origin_wall": self.origin_wall,
                                  "real_time": self.source.live and getattr(self.source, "speed", 1.0) == 1.0,
                                  "window_length": self.settings.windows.length,
                                  "window_hop": self.settings.windows.hop})

    async def _audio_worker(self) -> None:
        loop = asyncio.get_running_loop()
        stream: AudioFeatureStream | None = None
        try:
            while True:
                item = await self._audio_q.get()
                if item is None:
                    if stream is not None:
                        await self._send_afeat(await loop.run_in_executor(self._threads, stream.finish))
                    self.planner.end_stream("audio")
                    self.planner.end_stream("afeat")
                    break
                if stream is None:  # the acoustic frames' clock starts at the first sample
                    stream = AudioFeatureStream(sample_rate=SAMPLE_RATE, t0=item.t)
                chunk = AudioChunk(item.t, item.pcm.astype(np.int16, copy=False), SAMPLE_RATE)
                await self.session.add(chunk)
                self.stats.audio_chunks += 1
                self.stats.audio_seconds += item.pcm.size / SAMPLE_RATE
                self.stats.end_time = max(self.stats.end_time, chunk.t_end)
                self.planner.feed("audio", chunk.t_end)
                frames = await loop.run_in_executor(self._threads, self._feed_audio, stream, item.pcm)
                await self._send_afeat(frames)
                await self._notify_ready()
        finally:
            if stream is not None:
                await loop.run_in_executor(self._threads, stream.close)

    @staticmethod
    def _feed_audio(stream: AudioFeatureStream, pcm: np.ndarray) -> Frames:
        stream.feed(pcm)
        return stream.take()

    async def _send_afeat(self, frames: Frames) -> None:
        if len(frames.times) == 0:
            return
        await self.session.add(AcousticFrames(frames.times, frames.values))
        self.planner.feed("afeat", float(frames.times[-1]))

    async def _video_worker(self) -> None:
        loop = asyncio.get_running_loop()
        tracker = self._tracker
        assert tracker is not None
        while True:
            if not self._video:
                if self._video_done:
                    break
                self._video_ready.clear()
                await self._video_ready.wait()
                continue
            item = self._video.popleft()
            values, present = await loop.run_in_executor(self._threads, tracker.process, item.rgb, item.t)
            self.stats.video_tracked += 1
            self.stats.end_time = max(self.stats.end_time, item.t)
            await self.session.add(FaceFrames(np.asarray([item.t]), values.reshape(1, -1), np.asarray([present])))
            self.planner.feed("vfeat", item.t)
            await self._notify_ready()
        self.planner.end_stream("vfeat")

    async def _notify_ready(self) -> None:
        async with self._notice_lock:
            for window in self.planner.take_ready():
                await self.session.notify_window(window)
                self.stats.windows += 1
