"""Build the bundled demo clip `workers/assets/demo.mp4` from public-domain material.

- Speech: five LibriVox utterances of "Sense and Sensibility" (public domain recordings), as the
  Debian package `pocketsphinx-testdata` carries them with their transcripts
  (`apt-get download pocketsphinx-testdata`, then `dpkg-deb -x`).
- Face: NASA's portrait of astronaut Eileen Collins (public domain), as the PyPI wheel of
  scikit-image carries it (`skimage/data/astronaut.png`; `pip download --no-deps scikit-image`).

The face is shown with a slow zoom and drift (a still photo would give identical frames), 15 frames
a second, 320x320, H.264; the sound is 16 kHz mono AAC with 0.7 s of silence between utterances.

    python scripts/make_demo_clip.py --speech DIR_WITH_WAVS --face astronaut.png --out workers/assets/demo.mp4
"""

from __future__ import annotations

import argparse
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

UTTERANCES = ("0880", "0890", "0930", "0870", "0920")  # a short one first
FPS = 15
SIZE = 320
RATE = 16000


def load_speech(folder: Path) -> np.ndarray:
    parts = []
    for n in UTTERANCES:
        with wave.open(str(folder / f"sense_and_sensibility_01_austen_64kb-{n}.wav")) as w:
            assert w.getframerate() == RATE and w.getnchannels() == 1
            parts.append(np.frombuffer(w.readframes(w.getnframes()), np.int16))
        parts.append(np.zeros(int(0.7 * RATE), np.int16))
    return np.concatenate([np.zeros(int(0.5 * RATE), np.int16), *parts])


def frames(face: np.ndarray, n: int):
    import cv2

    h, w = face.shape[:2]
    # the face of skimage's astronaut sits in the upper middle of the 512x512 picture
    cx, cy, base = 0.46 * w, 0.34 * h, 0.62 * min(h, w)
    for i in range(n):
        phase = i / n
        zoom = 1.0 - 0.12 * np.sin(np.pi * phase)
        side = base * zoom
        x0 = cx - side / 2 + 8 * np.sin(2 * np.pi * phase * 2)
        y0 = cy - side / 2 + 5 * np.sin(2 * np.pi * phase * 3)
        m = np.float32([[SIZE / side, 0, -x0 * SIZE / side], [0, SIZE / side, -y0 * SIZE / side]])
        yield cv2.warpAffine(face, m, (SIZE, SIZE), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--speech", type=Path, required=True, help="folder with the LibriVox wav files")
    ap.add_argument("--face", type=Path, required=True, help="astronaut.png")
    ap.add_argument("--out", type=Path, default=Path("workers/assets/demo.mp4"))
    args = ap.parse_args()
    import cv2

    pcm = load_speech(args.speech)
    face = cv2.cvtColor(cv2.imread(str(args.face)), cv2.COLOR_BGR2RGB)
    n_frames = int(len(pcm) / RATE * FPS)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(args.out), "w") as out:
        video = out.add_stream("libx264", rate=FPS)
        video.width = video.height = SIZE
        video.pix_fmt = "yuv420p"
        video.options = {"crf": "30", "preset": "slow", "bf": "0"}  # no B-frames: frames come out in order
        audio = out.add_stream("aac", rate=RATE)
        audio.layout = "mono"
        audio.bit_rate = 32000
        step = 1024
        sent = 0  # audio samples encoded so far

        def encode_audio(until: int) -> None:
            nonlocal sent
            while sent < min(until, len(pcm)):
                chunk = pcm[sent:sent + step].reshape(1, -1)
                frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="mono")
                frame.sample_rate = RATE
                frame.pts = sent
                frame.time_base = Fraction(1, RATE)
                for packet in audio.encode(frame):
                    out.mux(packet)
                sent += chunk.shape[1]

        # video and sound interleaved in time order, as a player (and a paced replay) reads them
        for i, rgb in enumerate(frames(face, n_frames)):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, FPS)
            for packet in video.encode(frame):
                out.mux(packet)
            encode_audio((i + 1) * RATE // FPS)
        for packet in video.encode():
            out.mux(packet)
        encode_audio(len(pcm))
        for packet in audio.encode():
            out.mux(packet)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, {len(pcm) / RATE:.1f} s)")


if __name__ == "__main__":
    main()
