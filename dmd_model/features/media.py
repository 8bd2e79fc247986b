"""Media files: decode with PyAV into timestamped video frames and 16 kHz mono audio chunks, and
extract a whole file's audio and face frames.

`decode_media` is the one place a file's pictures and sound are read: dataset extraction
(`extract_media`, later `dmd extract`) and a file played into a live session (the capture worker,
the replay tests) both iterate it, so they see the same RGB frames at the same times and the same
resampled samples. Times are the file's presentation times in seconds (`pts * time_base`); the
audio's start at its first frame's time, and after that count samples, so chunks join without gaps.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dmd_types import Frames, PcmChunk, VideoFrame

from .audio import AudioFeatureStream
from .errors import FeatureError
from .profile import AUDIO_NAMES, FACE_FRAME_NAMES, SAMPLE_RATE
from .visual import FaceFeatureStream


@dataclass(frozen=True)
class MediaInfo:
    """What a media file holds."""

    path: Path
    duration: float  # seconds (container's, else the longest stream's)
    has_video: bool
    has_audio: bool
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    audio_rate: int | None = None
    audio_channels: int | None = None


@dataclass(frozen=True)
class MediaFeatures:
    """A whole file's frames: audio (100 Hz eGeMAPS LLDs), visual (one face frame of 62 per video
    frame: `FaceFeatureStream`), and the 16 kHz mono PCM (for forced alignment or a recogniser)."""

    info: MediaInfo
    audio: Frames
    visual: Frames
    pcm: np.ndarray
    t0: float  # time of the first audio sample

    @property
    def duration(self) -> float:
        return self.info.duration


def _open(path: str | Path) -> Any:
    try:
        import av
    except ImportError as e:
        from .errors import missing_package

        raise missing_package("av", "reading media files (PyAV)") from e
    path = Path(path)
    if not path.exists():
        raise FeatureError(f"media file {str(path)!r} does not exist: check the path")
    if path.is_dir():
        raise FeatureError(f"{str(path)!r} is a folder, not a media file: give a video or audio file")
    try:
        return av.open(str(path))
    except av.error.FFmpegError as e:
        raise FeatureError(
            f"cannot read {str(path)!r} as media ({e.strerror or e}): give a video or audio file ffmpeg can "
            "decode (ffprobe FILE shows what it holds)"
        ) from e


def probe_media(path: str | Path) -> MediaInfo:
    """The streams and duration of a file, without decoding it."""
    with _open(path) as container:
        return _info(Path(path), container)


def _info(path: Path, container: Any) -> MediaInfo:
    video = container.streams.video[0] if container.streams.video else None
    audio = container.streams.audio[0] if container.streams.audio else None
    duration = container.duration / 1e6 if container.duration else 0.0
    for stream in (video, audio):
        if stream is not None and stream.duration and stream.time_base:
            duration = max(duration, float(stream.duration * stream.time_base))
    return MediaInfo(
        path=path,
        duration=duration,
        has_video=video is not None,
        has_audio=audio is not None,
        fps=float(video.average_rate) if video is not None and video.average_rate else None,
        width=video.codec_context.width if video is not None else None,
        height=video.codec_context.height if video is not None else None,
        audio_rate=audio.rate if audio is not None else None,
        audio_channels=audio.channels if audio is not None else None,
    )


def decode_media(
    path: str | Path, video: bool = True, audio: bool = True, chunk_s: float = 0.1
) -> Iterator[VideoFrame | PcmChunk]:
    """The file's video frames (RGB) and audio chunks (16 kHz int16 mono, `chunk_s` long, the last
    one shorter) in the order the file stores them, which is close to time order.

    A requested stream that the file lacks is an error: pass video=False or audio=False to go
    without it.
    """
    container = _open(path)
    info = _info(Path(path), container)
    if video and not info.has_video:
        container.close()
        raise FeatureError(f"{str(path)!r} has no video stream: pass video=False to use its sound only")
    if audio and not info.has_audio:
        container.close()
        raise FeatureError(
            f"{str(path)!r} has no audio stream: pass audio=False to extract the face only, "
            "or use a recording with sound"
        )
    if not (video or audio):
        container.close()
        raise FeatureError("decode_media with video=False and audio=False has nothing to decode: ask for one")
    return _decode(container, str(path), video, audio, chunk_s)


def _decode(container: Any, path: str, video: bool, audio: bool, chunk_s: float) -> Iterator[VideoFrame | PcmChunk]:
    import av

    with container:
        streams = []
        if video:
            vstream = container.streams.video[0]
            vstream.thread_type = "AUTO"
            streams.append(vstream)
        if audio:
            streams.append(container.streams.audio[0])
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE) if audio else None
        chunk = max(1, round(chunk_s * SAMPLE_RATE))
        pending: list[np.ndarray] = []
        n_pending = 0
        t0: float | None = None
        sent = 0  # samples already yielded

        def chunks(final: bool) -> Iterator[PcmChunk]:
            nonlocal pending, n_pending, sent
            if not pending:
                return
            buf = np.concatenate(pending)
            cut = (buf.size // chunk) * chunk if not final else buf.size
            for i in range(0, cut, chunk):
                piece = buf[i : min(i + chunk, cut)]
                yield PcmChunk(t0 + sent / SAMPLE_RATE, piece)
                sent += piece.size
            pending, n_pending = ([buf[cut:]] if cut < buf.size else []), buf.size - cut

        try:
            for packet in container.demux(*streams):
                for frame in packet.decode():
                    if isinstance(frame, av.VideoFrame):
                        yield VideoFrame(float(frame.time or 0.0), frame.to_ndarray(format="rgb24"))
                    else:
                        if t0 is None:
                            t0 = float(frame.time or 0.0)
                        for out in resampler.resample(frame):
                            pcm = out.to_ndarray().reshape(-1).astype(np.int16)
                            pending.append(pcm)
                            n_pending += pcm.size
                        if n_pending >= chunk:
                            yield from chunks(final=False)
            if resampler is not None and t0 is not None:
                for out in resampler.resample(None):
                    pending.append(out.to_ndarray().reshape(-1).astype(np.int16))
                yield from chunks(final=True)
        except av.error.FFmpegError as e:
            raise FeatureError(f"decoding {path!r} failed ({e.strerror or e}): the file may be damaged") from e


def extract_media(
    path: str | Path, video: bool = True, audio: bool = True, face: FaceFeatureStream | None = None,
    face_expert_every: int = 1,
) -> MediaFeatures:
    """A whole file's audio and face frames, the offline way: every video frame through one
    `FaceFeatureStream` (the face tracker and, on every `face_expert_every`-th frame with a face,
    the face expert: the same class live capture runs), all of the sound through openSMILE in one go.

    `face`: a fresh `FaceFeatureStream(face_expert_every)` is made (and closed) when none is given;
    a given one must not have seen other frames, since its tracking state carries over.
    """
    path = Path(path)
    info = probe_media(path)
    own_face = video and face is None
    if own_face:
        face = FaceFeatureStream(face_expert_every)
    pcm_parts: list[np.ndarray] = []
    t0 = None
    try:
        for item in decode_media(path, video=video, audio=audio):
            if isinstance(item, VideoFrame):
                face.feed(item.rgb, item.t)
            else:
                t0 = item.t0 if t0 is None else t0
                pcm_parts.append(item.pcm)
        visual = face.take() if video else Frames.empty(len(FACE_FRAME_NAMES))
    finally:
        if own_face:
            face.close()
    pcm = np.concatenate(pcm_parts) if pcm_parts else np.zeros(0, np.int16)
    t0 = 0.0 if t0 is None else t0
    if audio and pcm.size:
        stream = AudioFeatureStream(SAMPLE_RATE, 1, t0)
        stream.feed(pcm)
        audio_frames = Frames.concat([stream.take(), stream.finish()], dim=len(AUDIO_NAMES))
    else:
        audio_frames = Frames.empty(len(AUDIO_NAMES))
    return MediaFeatures(info=info, audio=audio_frames, visual=visual, pcm=pcm, t0=t0)


def read_audio(path: str | Path) -> tuple[np.ndarray, float]:
    """A file's sound as 16 kHz int16 mono PCM and the time of its first sample."""
    parts, t0 = [], None
    for item in decode_media(path, video=False, audio=True):
        t0 = item.t0 if t0 is None else t0
        parts.append(item.pcm)
    return (np.concatenate(parts) if parts else np.zeros(0, np.int16)), (t0 or 0.0)

