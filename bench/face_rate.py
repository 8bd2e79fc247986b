"""What the face-tracking rate (`capture.video_fps`) costs in CPU and in the face features (issue 16).

Each clip's video frames go through a fresh `FaceFeatureStream` (the face tracker and the face expert
on every tracked frame with a face, as capture runs them) once with every frame (the reference: what
`dmd extract` gives a model to train on) and once per rate, keeping the frames capture keeps at that
rate (its rule: the next frame at or after the last kept one plus 1 / fps). Then, for every live
window (3 s, hop 0.5 s) the one `align_window` of the inference worker turns the frames into the
model's visual input (profile live-v3: 0.25 s slots, 62 values) and the face's emotion shares:

- `visual_error`: mean over windows and features of |slot values - reference| / (the feature's
  standard deviation over the reference's slots), slots where both saw a face; in `per_clip`
  against each clip's own spread (how much of a session's variation a rate loses), at the top
  against the spread of all clips' slots together (which the differences between clips inflate);
- `emotion_agree`: the share of windows with a face whose most likely face emotion is the
  reference's; `emotion_tv`: the mean total-variation distance of the two emotion distributions;
- `presence_agree`: windows whose visual presence flag equals the reference's;
- `ms_per_s`: the tracker's and expert's CPU time per second of video (one thread).

    python bench/face_rate.py [--rates 15 10 7.5 5 3] [--clips A.mp4 B.mp4 ...]

Prints JSON; asserts nothing. The default clips: the bundled demo clip and the talking-face clips of
../shared/data/clips (developer data, left out when absent).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SHARED_CLIPS = ROOT.parent / "shared" / "data" / "clips"


def default_clips() -> list[Path]:
    clips = [ROOT / "workers" / "assets" / "demo.mp4"]
    clips += sorted(SHARED_CLIPS.glob("mosi/*.mp4")) + sorted(SHARED_CLIPS.glob("ravdess/*.mp4"))
    return [c for c in clips if c.is_file()]


def kept(times: list[float], fps: float | None) -> list[int]:
    """The indexes of the frames capture keeps at `fps` (None: every frame), by its rule."""
    if fps is None:
        return list(range(len(times)))
    out, next_t, interval = [], float("-inf"), 1.0 / fps
    for i, t in enumerate(times):
        if t + 1e-6 < next_t:
            continue
        next_t = max(next_t + interval, t)
        out.append(i)
    return out


def track(path: Path, fps: float | None):
    """The clip's face frames at `fps` and the CPU seconds the face stream took."""
    from dmd_model.features.media import VideoFrame, decode_media
    from dmd_model.features.visual import FaceFeatureStream

    items = decode_media(path, video=True, audio=False)
    frames = [(item.t, item.rgb) for item in items if isinstance(item, VideoFrame)]
    keep = kept([t for t, _ in frames], fps)
    cpu = 0.0
    with FaceFeatureStream(1) as face:
        for i in keep:
            t, rgb = frames[i]
            c0 = time.process_time()
            face.feed(rgb, t)
            cpu += time.process_time() - c0
        result = face.take()
    duration = frames[-1][0] - frames[0][0] if len(frames) > 1 else 0.0
    return result, cpu, duration, len(frames)


def windows(visual, duration: float, window: float, hop: float, profile, encoder) -> list:
    from dmd_model.features import AUDIO_NAMES, Frames
    from dmd_model.features.alignment import align_window

    audio = Frames.empty(len(AUDIO_NAMES))
    out, t = [], 0.0
    while t + window <= duration + 1e-6:
        out.append(align_window([], audio, visual, t, t + window, text_encoder=encoder, profile=profile))
        t += hop
    return out


def compare(ref: list, got: list) -> dict:
    from dmd_model.features import VISUAL_NAMES

    ref_slots = np.concatenate([w.visual[: w.length] for w in ref])
    ref_faces = np.concatenate([w.face_present[: w.length] for w in ref]).astype(bool)
    scale = ref_slots[ref_faces, : len(VISUAL_NAMES)].std(axis=0)
    scale[scale < 1e-6] = 1.0
    errors, agree, tv, n_emotion, presence = [], 0, [], 0, 0
    for a, b in zip(ref, got, strict=True):
        both = a.face_present[: a.length].astype(bool) & b.face_present[: b.length].astype(bool)
        if both.any():
            n = len(VISUAL_NAMES)
            diff = np.abs(a.visual[: a.length][both, :n] - b.visual[: b.length][both, :n])
            errors.append(float((diff / scale).mean()))
        presence += a.present["visual"] == b.present["visual"]
        if a.face_emotions is not None and b.face_emotions is not None:
            n_emotion += 1
            agree += int(np.argmax(a.face_emotions) == np.argmax(b.face_emotions))
            tv.append(0.5 * float(np.abs(a.face_emotions - b.face_emotions).sum()))
    return {"windows": len(ref), "visual_error": round(float(np.mean(errors)), 4) if errors else None,
            "emotion_windows": n_emotion, "emotion_agree": round(agree / n_emotion, 4) if n_emotion else None,
            "emotion_tv": round(float(np.mean(tv)), 4) if tv else None,
            "presence_agree": round(presence / len(ref), 4) if ref else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[15, 10, 7.5, 5, 3])
    parser.add_argument("--clips", type=Path, nargs="+", default=None)
    parser.add_argument("--window", type=float, default=3.0)
    parser.add_argument("--hop", type=float, default=0.5)
    args = parser.parse_args()
    clips = args.clips or default_clips()
    if not clips:
        print("no clips: pass --clips", file=sys.stderr)
        return 2

    import torch
    from hostinfo import cpu_model

    from dmd_model.features import get_profile

    torch.set_num_threads(1)
    profile = get_profile("live-v3")
    encoder = None  # no words: the profile's own encoder, loaded once
    rows = {}
    for fps in [None, *args.rates]:
        name = "all" if fps is None else f"{fps:g}"
        per_clip, cpu_total, seconds_total = [], 0.0, 0.0
        for clip in clips:
            visual, cpu, duration, n_frames = track(clip, fps)
            wins = windows(visual, duration, args.window, args.hop, profile, encoder)
            per_clip.append({"clip": clip.name, "frames": len(visual), "of": n_frames, "wins": wins})
            cpu_total += cpu
            seconds_total += duration
        rows[name] = {"clips": per_clip, "ms_per_s": round(1000 * cpu_total / seconds_total, 1),
                      "fps": fps}
    reference = rows["all"]["clips"]
    result = {"bench": "face_rate", "machine": cpu_model(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "clips": [c.name for c in clips], "rates": []}
    for name, row in rows.items():
        ref = [w for c in reference for w in c["wins"]]
        got = [w for c in row["clips"] for w in c["wins"]]
        per_clip = {}  # the error against the clip's own spread of values (the whole's mixes the clips')
        for r, c in zip(reference, row["clips"], strict=True):
            if c["wins"]:
                found = compare(r["wins"], c["wins"])
                per_clip[c["clip"]] = {"windows": found["windows"], "visual_error": found["visual_error"]}
        result["rates"].append({"fps": name, "ms_per_s": row["ms_per_s"],
                                "frames": sum(c["frames"] for c in row["clips"]), **compare(ref, got),
                                "per_clip": per_clip})
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
