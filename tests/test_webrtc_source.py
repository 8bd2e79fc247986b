"""The WebRTC capture source without a network: the session clock, 48 kHz to 16 kHz chunks, and the
latest-frame policy, on aiortc tracks made in the test (real `MediaStreamTrack`s and PyAV frames)."""

from __future__ import annotations

import asyncio
import fractions
import time
from typing import Any

import numpy as np
import pytest

av = pytest.importorskip("av")
aiortc = pytest.importorskip("aiortc")

from dmd_types import PcmChunk, VideoFrame  # noqa: E402
from workers.web.source import AudioRechunker, PeerSource, SessionClock  # noqa: E402

VIDEO_TB = fractions.Fraction(1, 90_000)
AUDIO_TB = fractions.Fraction(1, 48_000)


class Ticker:
    """A clock the test moves by hand (arrival times)."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def browser_audio_frame(n: int, freq: float = 440.0, samples: int = 960) -> av.AudioFrame:
    """Frame n of what aiortc gives for a browser's Opus: 48 kHz stereo s16, 960 samples."""
    t = (np.arange(samples) + n * samples) / 48_000
    tone = (8000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)
    frame = av.AudioFrame.from_ndarray(np.stack([tone, tone], axis=1).reshape(1, -1), format="s16", layout="stereo")
    frame.sample_rate = 48_000
    frame.pts = n * samples
    frame.time_base = AUDIO_TB
    return frame


def video_frame(n: int, fps: int = 30, size: tuple[int, int] = (64, 48)) -> av.VideoFrame:
    rgb = np.full((size[1], size[0], 3), n % 256, np.uint8)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    frame.pts = n * 90_000 // fps
    frame.time_base = VIDEO_TB
    return frame


# -- the session clock ------------------------------------------------------------------------------------
def test_session_clock_starts_at_the_first_frame_and_follows_each_tracks_timestamps() -> None:
    now = Ticker()
    clock = SessionClock(now)
    assert clock.time("video", 0, VIDEO_TB) == 0.0
    now.t += 0.25  # audio's first frame arrives a quarter second later
    assert clock.time("audio", 0, AUDIO_TB) == pytest.approx(0.25)
    now.t += 0.15  # late arrival (jitter) does not move a frame: its timestamp places it
    assert clock.time("video", 9000, VIDEO_TB) == pytest.approx(0.1)
    assert clock.time("audio", 4800, AUDIO_TB) == pytest.approx(0.35)


def test_a_backlog_at_the_start_gets_arrival_times_not_times_ahead_of_real_time() -> None:
    """Frames that come out of aiortc at once (read late): with the first frame's arrival as the
    zero, the track would run ahead of real time by the backlog's length."""
    now = Ticker()
    clock = SessionClock(now)
    burst = [clock.time("video", n * 6000, VIDEO_TB) for n in range(21)]  # 1.4 s of frames, all at once
    assert max(burst) == pytest.approx(0.0)  # each at its arrival, none in the future
    times = []
    for n in range(21, 36):  # then frames at their pace
        now.t += 1 / 15
        times.append(clock.time("video", n * 6000, VIDEO_TB))
    arrival = now.t - 100.0
    assert times[-1] == pytest.approx(arrival, abs=1e-6)
    assert times == sorted(times)


def test_session_clock_never_goes_back() -> None:
    now = Ticker()
    clock = SessionClock(now)
    clock.time("video", 9000, VIDEO_TB)
    now.t += 0.1
    first = clock.time("video", 18000, VIDEO_TB)
    assert clock.time("video", 12000, VIDEO_TB) >= first  # a frame out of order


# -- audio: 48 kHz stereo frames to 16 kHz mono chunks ------------------------------------------------------
def test_browser_audio_becomes_100_ms_chunks_of_16_khz_mono_on_the_session_clock() -> None:
    rechunker = AudioRechunker(chunk_ms=100)
    chunks: list[PcmChunk] = []
    for n in range(50):  # one second of 20 ms frames
        rechunker.feed(browser_audio_frame(n), 2.0 + n * 0.02)
        chunks += rechunker.take()
    chunks += rechunker.finish()
    assert all(c.pcm.dtype == np.int16 and c.pcm.ndim == 1 for c in chunks)
    assert [len(c.pcm) for c in chunks[:-1]] == [1600] * (len(chunks) - 1)
    total = sum(len(c.pcm) for c in chunks)
    assert abs(total - 16_000) <= 64  # 1 s of sound in, 1 s out (the resampler's filter delay aside)
    assert [c.t0 for c in chunks[:5]] == pytest.approx([2.0, 2.1, 2.2, 2.3, 2.4])
    pcm = np.concatenate([c.pcm for c in chunks]).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(pcm[1000:15000]))
    peak = np.argmax(spectrum) * 16_000 / len(pcm[1000:15000])
    assert peak == pytest.approx(440, abs=5)  # the tone survives resampling


def test_a_gap_in_the_audio_timestamps_is_filled_with_silence() -> None:
    rechunker = AudioRechunker(chunk_ms=100)
    for n in range(10):  # 0.0 .. 0.2 s
        rechunker.feed(browser_audio_frame(n), n * 0.02)
    for n in range(25, 35):  # lost packets: 0.2 .. 0.5 s missing
        rechunker.feed(browser_audio_frame(n), n * 0.02)
    chunks = rechunker.take() + rechunker.finish()
    assert rechunker.gap_s == pytest.approx(0.3, abs=0.001)
    pcm = np.concatenate([c.pcm for c in chunks])
    assert len(pcm) == pytest.approx(0.7 * 16_000, abs=64)  # the sound keeps its place on the clock
    assert np.abs(pcm[int(0.25 * 16_000):int(0.45 * 16_000)]).max() == 0


def test_stale_audio_is_dropped_instead_of_shifting_the_sound() -> None:
    rechunker = AudioRechunker(chunk_ms=100)
    for n in range(30):  # 0.6 s of sound arriving at once, all with the same time
        rechunker.feed(browser_audio_frame(n), 0.0)
    assert rechunker.stale_s == pytest.approx(0.6 - 0.12, abs=0.021)  # what fits in the 0.1 s slack is kept


# -- the source: latest-frame video, audio, the end ------------------------------------------------------------
class FrameTrack(aiortc.MediaStreamTrack):
    """A remote track stand-in: hands out the given frames at `rate` per second, then ends."""

    def __init__(self, kind: str, frames: list, rate: float) -> None:
        super().__init__()
        self.kind = kind
        self.frames = list(frames)
        self.rate = rate
        self.start: float | None = None
        self.n = 0

    async def recv(self) -> Any:
        if self.start is None:
            self.start = time.monotonic()
        if self.n >= len(self.frames):
            self.stop()
            raise aiortc.mediastreams.MediaStreamError
        await asyncio.sleep(max(0.0, self.start + self.n / self.rate - time.monotonic()))
        self.n += 1
        return self.frames[self.n - 1]


async def _collect(source: PeerSource, delay_per_video: float = 0.0) -> list:
    items = []
    async for item in source.media():
        items.append(item)
        if isinstance(item, VideoFrame) and delay_per_video:
            await asyncio.sleep(delay_per_video)  # a slow face tracker
    return items


def test_video_is_taken_at_the_tracking_rate_and_a_slow_consumer_gets_the_newest_frame() -> None:
    frames = [video_frame(n, fps=30) for n in range(45)]  # 1.5 s at 30 fps

    fast = PeerSource(FrameTrack("video", frames, 30), None, video_fps=15)
    items = asyncio.run(_collect(fast))
    assert all(isinstance(i, VideoFrame) and i.rgb.shape == (48, 64, 3) for i in items)
    assert fast.stats.video_frames == 45 and 20 <= len(items) <= 24  # every other frame: 15 fps
    assert fast.stats.video_skipped == 45 - len(items) - fast.stats.video_replaced

    slow = PeerSource(FrameTrack("video", frames, 30), None, video_fps=30)
    items = asyncio.run(_collect(slow, delay_per_video=0.2))  # takes 5 frames a second of 30
    assert slow.stats.video_replaced > 20  # dropped, not queued
    values = [int(i.rgb[0, 0, 0]) for i in items]
    assert values == sorted(values) and len(items) <= 10
    assert values[-1] >= 40  # near the end of the stream: no backlog built up


def test_audio_track_is_resampled_and_the_source_ends_with_its_tracks() -> None:
    audio = [browser_audio_frame(n) for n in range(25)]  # 0.5 s
    frames = [video_frame(n, fps=15) for n in range(8)]
    source = PeerSource(FrameTrack("video", frames, 15), FrameTrack("audio", audio, 50), video_fps=15)
    assert source.has_video and source.has_audio and source.live
    items = asyncio.run(asyncio.wait_for(_collect(source), 10))
    sounds = [i for i in items if isinstance(i, PcmChunk)]
    assert sum(len(s.pcm) for s in sounds) == pytest.approx(8000, abs=64)
    assert [s.t0 for s in sounds] == sorted(s.t0 for s in sounds)
    assert sounds[0].t0 == pytest.approx(0.0, abs=0.05)
    assert source.stats.audio_overruns == 0


def test_close_ends_the_source_while_its_tracks_still_run() -> None:
    frames = [video_frame(n, fps=15) for n in range(300)]  # 20 s

    async def run() -> int:
        source = PeerSource(FrameTrack("video", frames, 15), None)
        task = asyncio.create_task(_collect(source))
        await asyncio.sleep(0.3)
        await source.close()
        items = await asyncio.wait_for(task, 5)
        return len(items)

    assert 1 <= asyncio.run(run()) <= 10


def test_a_peer_without_tracks_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="neither video nor audio"):
        PeerSource(None, None)
