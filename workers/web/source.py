"""A WebRTC peer as a capture source: the browser's camera and microphone, received by aiortc.

`PeerSource(video, audio)` takes the remote tracks of one `RTCPeerConnection` (either may be None)
and is a `workers.capture.Source`: `media()` yields `VideoFrame` and `PcmChunk` items on the session clock.

- Session clock (DESIGN.md): time 0 is the arrival of the peer's first frame, of either track, and a
  track's frames are at `zero + pts * time_base`: the sender's own pacing (the RTP clock), not the
  jitter of arrival. DESIGN.md takes the track's zero from its first frame's arrival; here it is the
  earliest arrival the timestamps allow, `min(arrival - pts * time_base)` over the frames so far, so
  that a first frame that arrived late does not shift its whole track. Measured: when the tracks were
  first read only after the face tracker had loaded (about 1 s), the first 1.4 s of video and 0.5 s
  of audio came out of aiortc at once, and with the first arrival as zero each track ran ahead of
  real time by its own backlog, the sound 0.9 s out of step with the picture. With the minimum, such
  frames get (about) their arrival time, stale video frames are skipped as too close together, and
  stale audio is dropped (`stats.audio_stale_s`). A track's times never go backwards. (The tracks
  are also read from the moment the offer is answered, `start()`, so that this does not happen.)
- Video, latest-frame policy: a reader drains the track as fast as aiortc decodes it and keeps only
  the newest frame. A consumer that falls behind gets the newest frame when it asks, never a backlog:
  overwritten frames are counted (`stats.video_replaced`). Frames faster than `video_fps` are skipped
  before any conversion (the face tracker would skip them anyway), and a frame is converted to RGB
  (scaled to at most `max_side` pixels) only when it is taken.
- Audio: aiortc delivers Opus as 48 kHz stereo s16 frames of 960 samples. They are resampled to
  16 kHz mono (`av.AudioResampler`) and grouped into chunks of `chunk_ms`; the chunk times count
  samples from the track's first frame, and a gap in the sender's timestamps (lost packets, a muted
  track) is filled with silence, so the audio clock stays on the session clock; audio whose time is
  already past (a backlog, above) is dropped and counted. Audio is never dropped silently: a full
  queue is counted (`stats.audio_overruns`) and logged as an error.
- The source ends when both tracks have ended (the peer left or `close()`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from dmd_types import SAMPLE_RATE, PcmChunk, VideoFrame

from ..capture.sources import Source

log = logging.getLogger("dmd.webrtc")

GAP_FILL_S = 0.05  # a gap in the audio timestamps longer than this is filled with silence
STALE_S = 0.1  # audio this far behind the audio already fed is dropped


@dataclass
class PeerStats:
    video_frames: int = 0  # received from the track
    video_skipped: int = 0  # faster than video_fps
    video_replaced: int = 0  # overwritten by a newer frame before it was taken (latest-frame policy)
    video_taken: int = 0
    audio_frames: int = 0  # received from the track (20 ms each from a browser)
    audio_chunks: int = 0
    audio_gap_s: float = 0.0  # silence inserted for gaps in the sender's timestamps
    audio_stale_s: float = 0.0  # sound dropped because its time had passed (a backlog from aiortc)
    audio_overruns: int = 0


class SessionClock:
    """The session clock of one peer (module docstring): time 0 at the first frame of any track; per
    track, `zero + pts * time_base` with `zero` the least `arrival - pts * time_base` so far."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self.now = now
        self.origin: float | None = None
        self.origin_wall: float | None = None  # time.time() at session time 0
        self._zero: dict[str, float] = {}
        self._last: dict[str, float] = {}

    def time(self, track: str, pts: int | None, time_base: Fraction | None) -> float:
        arrival = self.now()
        if self.origin is None:
            self.origin = arrival
            self.origin_wall = time.time()
        since = arrival - self.origin
        if pts is None or time_base is None:  # a frame without a timestamp: its arrival is all there is
            t = since
        else:
            media = float(pts * time_base)
            zero = self._zero.get(track)
            if zero is None or since - media < zero:
                zero = self._zero[track] = since - media
            t = zero + media
        t = max(t, self._last.get(track, t))
        self._last[track] = t
        return t

    def media_time(self, track: str, t: float) -> float | None:
        """Session time `t` on `track`'s own media clock (`pts * time_base`), None before its first frame:
        what lets a sender find the frame it captured at `t` (the latency benchmark does)."""
        zero = self._zero.get(track)
        return None if zero is None else t - zero


class AudioRechunker:
    """48 kHz (any rate, any layout) frames in, 16 kHz mono int16 chunks of `chunk_ms` out, with the
    three-call shape of a streaming stage: `feed(frame, t)`, `take()`, `finish()`. `t` is the frame's
    session time; the first fixes the chunks' clock (they count samples from it), later ones only find
    gaps (filled with silence) and stale sound (dropped)."""

    def __init__(self, chunk_ms: int = 100, rate: int = SAMPLE_RATE) -> None:
        import av

        self.rate = rate
        self.chunk = rate * chunk_ms // 1000
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self._t0: float | None = None  # session time of sample 0
        self._emitted = 0  # samples handed out in chunks
        self._in_end: float | None = None  # session time at the end of the sound fed so far
        self.gap_s = 0.0
        self.stale_s = 0.0

    def feed(self, frame: Any, t: float) -> None:
        if self._t0 is None or self._in_end is None:
            self._t0 = self._in_end = t
        elif t - self._in_end > GAP_FILL_S:  # the sender skipped time: silence keeps the clock
            gap = round((t - self._in_end) * self.rate)
            self._append(np.zeros(gap, np.int16))
            self.gap_s += gap / self.rate
            self._in_end += gap / self.rate
        elif self._in_end - t > STALE_S:  # sound for a time already fed: late, dropped
            self.stale_s += frame.samples / frame.sample_rate
            return
        self._in_end += frame.samples / frame.sample_rate
        for out in self._resampler.resample(frame):
            self._append(out.to_ndarray().reshape(-1))

    def _append(self, pcm: np.ndarray) -> None:
        if pcm.size:
            self._buffer.append(pcm.astype(np.int16, copy=False))
            self._buffered += pcm.size

    def take(self) -> list[PcmChunk]:
        """The whole chunks ready so far."""
        if self._buffered < self.chunk or self._t0 is None:
            return []
        pcm = np.concatenate(self._buffer)
        n = (pcm.size // self.chunk) * self.chunk
        chunks = [PcmChunk(self._t0 + (self._emitted + i) / self.rate, pcm[i:i + self.chunk])
                  for i in range(0, n, self.chunk)]
        self._emitted += n
        rest = pcm[n:]
        self._buffer = [rest] if rest.size else []
        self._buffered = rest.size
        return chunks

    def finish(self) -> list[PcmChunk]:
        """The chunks left, the last one short, after flushing the resampler."""
        if self._t0 is None:
            return []
        for out in self._resampler.resample(None):
            self._append(out.to_ndarray().reshape(-1))
        chunks = self.take()
        if self._buffered:
            chunks.append(PcmChunk(self._t0 + self._emitted / self.rate, np.concatenate(self._buffer)))
            self._emitted += self._buffered
            self._buffer, self._buffered = [], 0
        return chunks


class PeerSource(Source):
    """The remote tracks of one peer connection as a capture source (see the module docstring)."""

    live = True

    def __init__(self, video: Any | None, audio: Any | None, *, name: str = "peer", video_fps: float = 15.0,
                 max_side: int = 640, chunk_ms: int = 100, audio_queue: int = 50,
                 clock: SessionClock | None = None) -> None:
        if video is None and audio is None:
            raise ValueError(f"WebRTC peer {name} sends neither video nor audio: the page must add a camera or "
                             "microphone track to its offer")
        self.video, self.audio = video, audio
        self.has_video, self.has_audio = video is not None, audio is not None
        self.description = f"webrtc {name}"
        self.video_interval = 1.0 / video_fps if video_fps > 0 else 0.0
        self.max_side = max_side
        self.chunk_ms = chunk_ms
        self.audio_queue = audio_queue
        self.clock = clock or SessionClock()
        self.stats = PeerStats()
        self._sounds: deque[PcmChunk] = deque()
        self._latest: tuple[float, Any] | None = None
        self._wake = asyncio.Event()
        self._closed = asyncio.Event()
        self._readers: list[asyncio.Task] = []

    # -- readers: drain the tracks ---------------------------------------------------------------------
    async def _read_video(self) -> None:
        next_due = float("-inf")
        while True:
            frame = await self.video.recv()
            t = self.clock.time("video", frame.pts, frame.time_base)
            self.stats.video_frames += 1
            if t + 1e-6 < next_due:
                self.stats.video_skipped += 1
                continue
            next_due = max(next_due + self.video_interval, t) if self.video_interval else t
            if self._latest is not None:
                self.stats.video_replaced += 1
            self._latest = (t, frame)
            self._wake.set()

    async def _read_audio(self) -> None:
        rechunker = AudioRechunker(self.chunk_ms)
        try:
            while True:
                frame = await self.audio.recv()
                t = self.clock.time("audio", frame.pts, frame.time_base)
                self.stats.audio_frames += 1
                rechunker.feed(frame, t)
                self._queue_sounds(rechunker.take())
                self.stats.audio_gap_s, self.stats.audio_stale_s = rechunker.gap_s, rechunker.stale_s
        finally:
            self._queue_sounds(rechunker.finish())

    def _queue_sounds(self, sounds: list[PcmChunk]) -> None:
        for sound in sounds:
            if len(self._sounds) >= self.audio_queue:
                # the capture worker is far behind: waiting here would back up aiortc's own queue
                self.stats.audio_overruns += 1
                log.error("%s: audio queue full (%d chunks): the capture is behind real time; a chunk was "
                          "dropped (%d so far)", self.description, self.audio_queue, self.stats.audio_overruns)
                self._sounds.popleft()
            self._sounds.append(sound)
            self.stats.audio_chunks += 1
        if sounds:
            self._wake.set()

    async def _guard(self, reader: Callable[[], Any], kind: str) -> None:
        from aiortc.mediastreams import MediaStreamError

        try:
            await reader()
        except MediaStreamError:  # the track ended: the peer left or the connection closed
            log.debug("%s: %s track ended", self.description, kind)
        finally:
            self._wake.set()

    # -- the source ----------------------------------------------------------------------------------------
    def _rgb(self, frame: Any) -> np.ndarray:
        w, h = frame.width, frame.height
        scale = min(1.0, self.max_side / max(w, h)) if self.max_side else 1.0
        if scale < 1.0:
            w, h = max(2, round(w * scale / 2) * 2), max(2, round(h * scale / 2) * 2)
            return frame.reformat(width=w, height=h, format="rgb24").to_ndarray()
        return frame.to_ndarray(format="rgb24")

    @property
    def origin_wall(self) -> float | None:
        """Wall-clock time (time.time()) of session time 0: the first frame's arrival."""
        return self.clock.origin_wall

    def start(self) -> None:
        """Start draining the tracks now (idempotent; `media()` calls it): frames are timed at their
        arrival even while the capture is still loading its models, instead of queueing in aiortc."""
        if self._readers:
            return
        if self.video is not None:
            self._readers.append(asyncio.create_task(self._guard(self._read_video, "video")))
        if self.audio is not None:
            self._readers.append(asyncio.create_task(self._guard(self._read_audio, "audio")))

    async def media(self) -> AsyncIterator[VideoFrame | PcmChunk]:
        loop = asyncio.get_running_loop()
        self.start()
        try:
            while True:
                if not self._sounds and self._latest is None:
                    if self._closed.is_set() or all(r.done() for r in self._readers):
                        break
                    self._wake.clear()
                    closing = asyncio.ensure_future(self._closed.wait())
                    waking = asyncio.ensure_future(self._wake.wait())
                    await asyncio.wait({closing, waking}, return_when=asyncio.FIRST_COMPLETED)
                    closing.cancel()
                    waking.cancel()
                    continue
                while self._sounds:
                    yield self._sounds.popleft()
                if self._latest is not None:
                    t, frame = self._latest
                    self._latest = None
                    self.stats.video_taken += 1
                    yield VideoFrame(t, await loop.run_in_executor(None, self._rgb, frame))
        finally:
            for reader in self._readers:
                reader.cancel()
            await asyncio.gather(*self._readers, return_exceptions=True)
            while self._sounds:  # the resampler's tail, flushed by the cancelled reader
                self._sounds.popleft()

    async def close(self) -> None:
        """End the source: `media()` stops after what it has already received."""
        self._closed.set()
        self._wake.set()
