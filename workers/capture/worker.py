"""Capture: a source's video and sound in, a session's streams out.

A source (a file, a webcam, a microphone, a WebRTC peer) yields timestamped video frames (RGB) and
16 kHz mono PCM chunks on the session clock. The capture worker

- pushes every PCM chunk to `dmd:{sid}:audio` (the ASR reads it) and computes the acoustic frames
  of the live profile (openSMILE eGeMAPS, 100 Hz) into `dmd:{sid}:afeat`;
- tracks the face in video frames (MediaPipe blendshapes + head pose, at `capture.video_fps`) and
  runs the facial-expression expert on the tracked face (every `capture.face_expert_every`-th frame
  with a face) into `dmd:{sid}:vfeat`: `FaceFeatureStream`, the class dataset extraction runs too;
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis.asyncio as aioredis

from dmd_model.features import AudioFeatureStream, FaceFeatureStream
from dmd_types import SAMPLE_RATE, Frames, PcmChunk, VideoFrame
from stream.lifecycle import end_session, start_session
from stream.messages import ACOUSTIC, FACE
from stream.session import Session
from stream.window import WindowPlanner, WindowSpec

from ..metrics import Metrics
from ..settings import PipelineSettings
from .sources import Source, media_time

log = logging.getLogger("dmd.capture")


def face_features(settings: PipelineSettings) -> FaceFeatureStream:
    """The face tracker and face expert of one video, at the settings' expert rate (blocking: MediaPipe
    and the expert's weights load, about a second)."""
    return FaceFeatureStream(settings.capture.face_expert_every)

# -- the capture worker ------------------------------------------------------------------------------
@dataclass
class CaptureStats:
    video_frames: int = 0
    video_tracked: int = 0
    video_skipped: int = 0  # not needed at the tracking rate
    video_dropped: int = 0  # the tracker fell behind
    face_expert_runs: int = 0  # tracked frames the face expert was run on
    audio_chunks: int = 0
    audio_seconds: float = 0.0
    windows: int = 0
    end_time: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class Capture:
    """Runs one session from one source into Redis (see the module docstring)."""

    def __init__(self, redis: aioredis.Redis, session: str, source: Source, settings: PipelineSettings, *,
                 metrics: Metrics | None = None, tracker: FaceFeatureStream | None = None) -> None:
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
        self._tracker_lock = threading.Lock()
        self._threads = ThreadPoolExecutor(2, thread_name_prefix=f"dmd-capture-{session}")
        self._audio_q: asyncio.Queue[PcmChunk | None] = asyncio.Queue(maxsize=settings.capture.audio_queue)
        self._video: collections.deque[VideoFrame] = collections.deque()
        self._video_ready = asyncio.Event()
        self._video_done = False
        self._notice_lock = asyncio.Lock()
        self._audio_stream: AudioFeatureStream | None = None  # made (and openSMILE started) by run()

    async def run(self, asr: str = "") -> CaptureStats:
        """Capture until the source ends (a file) or `stop()` (a live source); then flush the
        features and send the last window notices. The session is announced on `dmd:sessions` at
        the start (ASR workers pick it up; `asr` names the engine expected, "none" for no text) and
        ended after its last audio."""
        loop = asyncio.get_running_loop()
        self._asr = asr
        self.origin_wall: float | None = None
        # the face tracker and openSMILE load before the session's clock starts (at its first media),
        # side by side: loaded at the first frame or chunk, they held up the first windows
        loading = []
        need_tracker = self.source.has_video and self._tracker is None
        if need_tracker:
            loading.append(loop.run_in_executor(self._threads, face_features, self.settings))
        if self.source.has_audio:
            self._audio_stream = AudioFeatureStream(sample_rate=SAMPLE_RATE)
            loading.append(loop.run_in_executor(self._threads, self._audio_stream.start))
        loaded = await asyncio.gather(*loading, return_exceptions=True)
        failed = next((r for r in loaded if isinstance(r, BaseException)), None)
        if failed is not None:
            for opened in (*loaded, self._audio_stream):
                if isinstance(opened, (FaceFeatureStream, AudioFeatureStream)):
                    opened.close()
            raise failed
        if need_tracker:
            self._tracker = loaded[0]
        try:
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
            if self.settings.capture.ended_ttl_s > 0:
                await self.session.expire(int(self.settings.capture.ended_ttl_s))
        finally:
            # on every way out (a failed stage cancels this one too): a landmarker left to the
            # interpreter's teardown prints a traceback from MediaPipe's __del__
            if self._tracker is not None:
                await asyncio.wrap_future(self._threads.submit(self._close_tracker))
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
                await self._announce(media_time(item))
            if isinstance(item, PcmChunk):
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
        stream = self._audio_stream  # made, and openSMILE started, by run()
        assert stream is not None
        fed = False
        try:
            while True:
                item = await self._audio_q.get()
                if item is None:
                    if fed:
                        await self._send_afeat(await loop.run_in_executor(self._threads, stream.finish))
                    self.planner.end_stream("audio")
                    self.planner.end_stream("afeat")
                    break
                if not fed:  # the acoustic frames' clock starts at the first sample
                    stream.set_t0(item.t0)
                    fed = True
                chunk = PcmChunk(item.t0, item.pcm.astype(np.int16, copy=False))
                await self.session.add(chunk)
                self.stats.audio_chunks += 1
                self.stats.audio_seconds += item.pcm.size / SAMPLE_RATE
                self.stats.end_time = max(self.stats.end_time, chunk.t_end)
                self.planner.feed("audio", chunk.t_end)
                frames = await loop.run_in_executor(self._threads, self._feed_audio, stream, item.pcm)
                await self._send_afeat(frames)
                await self._notify_ready()
        finally:
            await loop.run_in_executor(self._threads, stream.close)

    @staticmethod
    def _feed_audio(stream: AudioFeatureStream, pcm: np.ndarray) -> Frames:
        stream.feed(pcm)
        return stream.take()

    async def _send_afeat(self, frames: Frames) -> None:
        if len(frames.times) == 0:
            return
        await self.session.add(frames, ACOUSTIC)
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
            values, present = await loop.run_in_executor(self._threads, self._track, tracker, item.rgb, item.t)
            self.stats.video_tracked += 1
            self.stats.face_expert_runs = tracker.expert_runs
            self.stats.end_time = max(self.stats.end_time, item.t)
            await self.session.add(Frames(np.asarray([item.t]), values.reshape(1, -1), np.asarray([present])), FACE)
            self.planner.feed("vfeat", item.t)
            await self._notify_ready()
        self.planner.end_stream("vfeat")

    def _track(self, tracker: FaceFeatureStream, rgb: np.ndarray, t: float) -> tuple[np.ndarray, bool]:
        with self._tracker_lock:  # never at the same time as `_close_tracker` (executor threads)
            return tracker.process(rgb, t)

    def _close_tracker(self) -> None:
        with self._tracker_lock:
            if self._tracker is not None:
                self._tracker.close()

    async def _notify_ready(self) -> None:
        async with self._notice_lock:
            for window in self.planner.take_ready():
                await self.session.notify_window(window)
                self.stats.windows += 1
