"""Generated media for the tests: small mp4/m4a files like the MOSI clips (H.264 + AAC 44.1 kHz
stereo), made with PyAV. Shared by the feature, extraction and pipeline tests."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

AAC_RATE = 44100


def bars(i: int, height: int = 120, width: int = 160) -> np.ndarray:
    """Frame `i` of moving colour bars (RGB, no face)."""
    img = np.zeros((height, width, 3), np.uint8)
    img[:, :, 0] = (np.arange(width)[None, :] * 2 + i * 8) % 256
    img[:, :, 1] = np.arange(height)[:, None] * 2
    return img


def harmonic_tone(seconds: float, rate: int, freq: float, pause: tuple[float, float]) -> np.ndarray:
    """A harmonic tone (voice-like for openSMILE), float in [-1, 1], silent between `pause` seconds."""
    t = np.arange(int(seconds * rate)) / rate
    x = sum(np.sin(2 * np.pi * freq * k * t) / k for k in range(1, 8)) * 0.2
    x[(t > pause[0]) & (t < pause[1])] = 0
    return x


def mux_audio(out: Any, stream: Any, x: np.ndarray, rate: int = AAC_RATE) -> None:
    """Encode the mono float signal `x` as stereo on `stream` (AAC) and mux it, flushing the encoder."""
    stereo = np.stack([x, x]).astype(np.float32)
    for i in range(0, stereo.shape[1], 1024):
        frame = _audio_frame(stereo[:, i:i + 1024])
        frame.sample_rate, frame.pts, frame.time_base = rate, i, Fraction(1, rate)
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)


def _audio_frame(block: np.ndarray) -> Any:
    import av

    return av.AudioFrame.from_ndarray(np.ascontiguousarray(block), format="fltp", layout="stereo")


def mux_video(out: Any, stream: Any, images: Any) -> None:
    """Encode the RGB images on `stream` and mux them, flushing the encoder."""
    import av

    for img in images:
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)


def write_media(path: Path, seconds: float = 3.0, *, video: bool = True, audio: bool = True, fps: int = 15,
                freq: float = 200.0, pause: tuple[float, float] = (1.2, 1.8)) -> Path:
    """A small mp4 (or m4a without video): moving colour bars (no face) at `fps`, and a harmonic
    tone at `freq` Hz, silent between `pause` seconds."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        if video:
            vs = out.add_stream("libx264", rate=fps)
            vs.width, vs.height, vs.pix_fmt = 160, 120, "yuv420p"
        aus = out.add_stream("aac", rate=AAC_RATE, layout="stereo") if audio else None
        if video:
            mux_video(out, vs, (bars(i) for i in range(int(seconds * fps))))
        if aus is not None:
            mux_audio(out, aus, harmonic_tone(seconds, AAC_RATE, freq, pause))
    return path
