"""A WebRTC client of `dmd serve` in Python: what the session page does in a browser, with aiortc.

It offers a camera and a microphone track (here: a clip's frames and sound, looped and paced in
real time, as a device would deliver them) and a data channel, posts the offer to `/offer`, and
keeps what comes back over the channel. The tests and `bench/webrtc.py` use it; it also checks a
server from another machine without a browser:

    dmd webrtc-client http://host:8080 --token T --source clip.mp4 --seconds 20

Capture-to-page latency: the camera notes the wall-clock time of its first frame (`first_capture`),
and frame n is captured `n / fps` later. With each estimate the server sends `media_end`, the end of
the estimate's window on each track's media clock (`pts * time_base` since the first frame it
received), so the frame captured at the window's end is known exactly, and `latencies_ms()` is each
estimate's arrival minus that frame's capture time: encoding, network, decoding, the window's
features, inference and the way back, on this machine's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

VIDEO_CLOCK = 90_000
AUDIO_RATE = 48_000


def clip_frames(path: str | Path, seconds: float, size: tuple[int, int] | None = None) -> list[np.ndarray]:
    """The first `seconds` of a clip's picture as RGB arrays, scaled to `size` (w, h) if given."""
    import av

    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.video[0]):
            if frame.time is not None and frame.time >= seconds:
                break
            if size is not None:
                frame = frame.reformat(width=size[0], height=size[1])
            frames.append(frame.to_ndarray(format="rgb24"))
    if not frames:
        raise ValueError(f"{path} has no video frames in its first {seconds} s")
    return frames


def clip_sound(path: str | Path, rate: int = AUDIO_RATE, seconds: float | None = None) -> np.ndarray:
    """A clip's sound as int16 mono at `rate`, its first `seconds` if given."""
    import av

    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    parts = []
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.audio[0]):
            parts.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
        parts.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    pcm = np.concatenate(parts).astype(np.int16)
    return pcm[:int(seconds * rate)] if seconds else pcm


class LoopedCamera(MediaStreamTrack):
    """RGB frames looped at `fps`, paced in real time from the first frame asked for."""

    kind = "video"

    def __init__(self, frames: list[np.ndarray], fps: int = 15) -> None:
        super().__init__()
        self.frames, self.fps = frames, fps
        self.n = 0
        self.start: float | None = None
        self.first_capture: float | None = None  # time.time() of frame 0

    async def recv(self) -> Any:
        import av

        if self.start is None:
            self.start, self.first_capture = time.monotonic(), time.time()
        await asyncio.sleep(max(0.0, self.start + self.n / self.fps - time.monotonic()))
        frame = av.VideoFrame.from_ndarray(self.frames[self.n % len(self.frames)], format="rgb24")
        frame.pts = self.n * (VIDEO_CLOCK // self.fps)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.n += 1
        return frame


class LoopedMicrophone(MediaStreamTrack):
    """48 kHz int16 mono sound looped in 20 ms frames, paced in real time."""

    kind = "audio"
    samples = AUDIO_RATE // 50

    def __init__(self, pcm: np.ndarray) -> None:
        super().__init__()
        if len(pcm) < self.samples:
            raise ValueError(f"{len(pcm)} samples of sound: need at least {self.samples} (20 ms at 48 kHz)")
        self.pcm = pcm
        self.n = 0
        self.start: float | None = None
        self.first_capture: float | None = None

    async def recv(self) -> Any:
        import av

        if self.start is None:
            self.start, self.first_capture = time.monotonic(), time.time()
        await asyncio.sleep(max(0.0, self.start + self.n * self.samples / AUDIO_RATE - time.monotonic()))
        i = (self.n * self.samples) % (len(self.pcm) - self.samples + 1)
        frame = av.AudioFrame.from_ndarray(self.pcm[i:i + self.samples].reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = self.n * self.samples
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        self.n += 1
        return frame


def clip_tracks(path: str | Path, seconds: float = 4.0, fps: int = 15,
                size: tuple[int, int] | None = None) -> tuple[LoopedCamera, LoopedMicrophone]:
    """A camera and a microphone looping the first `seconds` of a clip."""
    return LoopedCamera(clip_frames(path, seconds, size), fps), LoopedMicrophone(clip_sound(path, seconds=seconds))


class ServeClient:
    """One WebRTC session with `dmd serve` (module docstring). `estimates` are the estimate objects
    received, `arrivals` their time.time(), `messages` everything the server sent on the channel."""

    def __init__(self, base_url: str, tracks: list[MediaStreamTrack], *, token: str = "",
                 session: str | None = None, ice_servers: list[Any] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.tracks, self.token, self.session = tracks, token, session
        self.ice_servers = ice_servers or []
        self.estimates: list[dict[str, Any]] = []
        self.arrivals: list[float] = []
        self.media_ends: list[dict[str, float]] = []
        self.messages: list[dict[str, Any]] = []
        self.pc: RTCPeerConnection | None = None
        self._arrived = asyncio.Event()

    async def connect(self, timeout: float = 30.0) -> dict[str, Any]:
        """Offer, get the answer; returns the answer (`sdp`, `type`, `session`)."""
        import aiohttp

        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=self.ice_servers))
        channel = self.pc.createDataChannel("estimates")

        @channel.on("message")
        def _message(text: str) -> None:
            message = json.loads(text)
            self.messages.append(message)
            if message.get("type") == "estimate":
                self.estimates.append(message["estimate"])
                self.arrivals.append(time.time())
                self.media_ends.append(message.get("media_end") or {})
                self._arrived.set()

        for track in self.tracks:
            self.pc.addTrack(track)
        await self.pc.setLocalDescription(await self.pc.createOffer())  # aiortc gathers every candidate here
        offer = {"sdp": self.pc.localDescription.sdp, "type": "offer"}
        if self.session:
            offer["session"] = self.session
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        async with aiohttp.ClientSession(timeout=client_timeout) as http, \
                http.post(f"{self.base_url}/offer", json=offer, headers=headers) as r:
            answer = await r.json(content_type=None)
            if r.status != 200:
                raise RuntimeError(f"{self.base_url}/offer answered {r.status}: {answer.get('error', answer)}")
        self.session = answer["session"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        return answer

    async def wait_estimates(self, count: int, timeout: float) -> None:
        """Until `count` estimates have arrived; AssertionError after `timeout` s."""
        deadline = time.monotonic() + timeout
        while len(self.estimates) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{len(self.estimates)} estimates after {timeout} s, expected {count}; last "
                                     f"messages: {self.messages[-3:]}")
            self._arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    def latencies_ms(self, since: float = 0.0) -> list[float]:
        """Capture-to-arrival latency of each estimate that arrived after `since` (time.time()): from
        the capture of the frame at the window's end (the camera's, else the microphone's) to now."""
        out = []
        for arrived, ends in zip(self.arrivals, self.media_ends):
            if arrived < since:
                continue
            for track in self.tracks:
                first = getattr(track, "first_capture", None)
                if first is not None and track.kind in ends:
                    out.append((arrived - (first + ends[track.kind])) * 1000)
                    break
        return out

    async def close(self) -> None:
        if self.pc is not None:
            await self.pc.close()
        for track in self.tracks:
            track.stop()
