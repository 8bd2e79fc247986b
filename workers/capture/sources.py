"""Capture sources: a media file, a webcam, a microphone, or several at once.

A source yields timestamped video frames (`dmd_types.VideoFrame`) and 16 kHz mono PCM chunks (`PcmChunk`) on the
session clock from `media()`, an async iterator (aiortc's `MediaStreamTrack.recv()` shape); `close()`
ends it early. A WebRTC peer is a source too (`workers.web.source.PeerSource`). `make_source` turns
what a user types (`--source clip.mp4`, `webcam`, `mic`, `webcam+mic`) into one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from dmd_types import SAMPLE_RATE, PcmChunk, VideoFrame

from ..metrics import Metrics
from ..settings import PipelineSettings

log = logging.getLogger("dmd.capture")

class SourceError(ValueError):
    """A source cannot be used (no such camera or file, no PortAudio, no sound card): the message
    names it and what to do."""


def media_time(item: VideoFrame | PcmChunk) -> float:
    """When an item of a source begins on the session clock: a frame's time, a chunk's first sample."""
    return item.t if isinstance(item, VideoFrame) else item.t0


class Source:
    """Base of capture sources: `media()` yields VideoFrame and PcmChunk items in (about) time order."""

    has_video: bool = True
    has_audio: bool = True
    live: bool = True  # a live source cannot wait: full queues drop (video) or overrun (audio)
    description: str = "source"

    def media(self) -> AsyncIterator[VideoFrame | PcmChunk]:
        raise NotImplementedError

    def check(self) -> None:
        """Raise SourceError if the source cannot be used (called before the pipeline starts)."""

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
            raise SourceError(f"{self.path} has neither video nor sound to play: give a media file with a picture or "
                              "sound")
        self.speed = float(speed)
        self.live = self.speed > 0
        self.chunk_s = chunk_s
        self.description = f"file {self.path.name}"
        self.duration = info.duration
        self._stop = threading.Event()

    async def media(self) -> AsyncIterator[VideoFrame | PcmChunk]:
        from dmd_model.features import decode_media
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

        # a thread of the source's own for the whole file: in the loop's default executor (a handful
        # of threads for the process) the sessions beyond its size waited for others to end
        decoder = ThreadPoolExecutor(1, thread_name_prefix="dmd-decode")
        thread = loop.run_in_executor(decoder, decode)
        decoder.shutdown(wait=False)  # the thread ends with `decode`
        start = 0.0
        first_t: float | None = None
        try:
            while not stop.is_set():
                item = await queue.get()
                if item is done:
                    break
                if isinstance(item, BaseException):
                    raise item
                t = media_time(item)
                if first_t is None:  # the pace counts from the first item, not from the call
                    first_t, start = t, time.monotonic()
                if self.speed > 0:  # pace: the item is due at its media time, scaled
                    due = start + (t - first_t) / self.speed
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                if stop.is_set():
                    break
                yield item
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

    def check(self) -> None:
        """Open the camera once and let it go: SourceError now, not after the models have loaded."""
        self._open().release()

    def _open(self) -> Any:
        """The opened cv2.VideoCapture, or SourceError."""
        import cv2

        cap = cv2.VideoCapture(self.device)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open camera {self.device!r}: check the device index or path "
                              "(`dmd run --source webcam --camera 1`) and that no other program holds it")
        return cap

    async def media(self) -> AsyncIterator[VideoFrame | PcmChunk]:
        import cv2

        loop = asyncio.get_running_loop()
        cap = await loop.run_in_executor(None, self._open)
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
                    raise SourceError(f"camera {self.device!r} stopped delivering frames: is it still connected?")
                if is_file:  # deliver at the file's frame rate, as a camera would
                    due = start + n / rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    t = n / rate
                else:
                    t = time.monotonic() - start
                n += 1
                yield VideoFrame(t, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
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

    def check(self) -> None:
        """PortAudio is there and so is an input device: SourceError naming what is missing."""
        sd = _sounddevice()
        try:
            sd.query_devices(self.device, kind="input")
        except (ValueError, sd.PortAudioError) as exc:
            raise SourceError(f"no microphone {self.device if self.device is not None else '(default)'} ({exc}): "
                              "list the input devices with `python -m sounddevice` and pass --microphone") from None

    async def media(self) -> AsyncIterator[VideoFrame | PcmChunk]:
        sd = _sounddevice()
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
                yield PcmChunk(samples / SAMPLE_RATE, block)
                samples += block.size

    async def close(self) -> None:
        self._stop.set()


def _sounddevice() -> Any:
    """The sounddevice module, or SourceError when PortAudio is missing."""
    try:
        import sounddevice
    except OSError as exc:  # PortAudio missing
        raise SourceError(f"the microphone needs PortAudio ({exc}): install libportaudio2 "
                          "(Debian/Ubuntu: apt-get install libportaudio2)") from None
    return sounddevice


class MergedSource(Source):
    """Several sources as one (a camera and a microphone), interleaved as they deliver."""

    def __init__(self, *sources: Source) -> None:
        self.sources = sources
        self.has_video = any(s.has_video for s in sources)
        self.has_audio = any(s.has_audio for s in sources)
        self.live = any(s.live for s in sources)
        self.description = " + ".join(s.description for s in sources)

    async def media(self) -> AsyncIterator[VideoFrame | PcmChunk]:
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


def make_source(spec: str, settings: PipelineSettings, *, camera: str | None = None, microphone: str | None = None,
                metrics: Metrics | None = None) -> Source:
    """"webcam", "mic", "webcam+mic", or a media file path."""
    cap = settings.capture

    def device(value: str | None) -> int | str | None:
        if value is None:
            return None
        return int(value) if value.isdigit() else value

    sources: list[Source] = []
    if spec in ("webcam", "camera", "webcam+mic", "camera+mic"):
        sources.append(CameraSource(device(camera) if camera is not None else 0))
    if spec in ("mic", "microphone", "webcam+mic", "camera+mic"):
        sources.append(MicrophoneSource(device(microphone), cap.chunk_ms, cap.audio_queue, metrics))
    if sources:
        for source in sources:
            source.check()
        return sources[0] if len(sources) == 1 else MergedSource(*sources)
    path = Path(spec)
    if not path.is_file():
        raise SourceError(f"source {spec!r} is neither webcam, mic, webcam+mic nor an existing media file: give one "
                          "of those")
    return FileSource(path, speed=cap.speed, chunk_s=cap.chunk_ms / 1000)
