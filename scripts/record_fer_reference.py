"""Record what the original `fer` package computes, for tests/test_face_expert.py.

The recorded file, tests/data/fer_reference.npz (about 40 KB), holds no pixels of the shared clips:
their terms (RAVDESS CC BY-NC-SA 4.0, CMU-MOSI research only) keep them out of the repository. For
the real faces it holds where they are (clip, frame index, box), the sha256 of fer's 64x64 crop
and fer's probabilities; the test cuts the crops again from ../shared/data and skips without it.
For a check that runs everywhere it also holds 12 synthetic crops, made here from a seed (drawn
faces and smooth random textures), with fer's probabilities for them.

Two steps in two Python environments, since the reference needs TensorFlow and the project does not:

1. frames (the project's venv): read the shared clips (../shared/data/clips/{ravdess,mosi}/*.mp4)
   with OpenCV, track the face with the project's FaceTracker, and on every third frame also run
   OpenCV's Haar cascade with fer's settings (scaleFactor 1.1, minNeighbors 5, minSize 50x50).
   Prints the fit of `face_expert.landmark_box` to the Haar boxes (the source of BOX_SCALE and
   BOX_RAISE) and its IoU with them; keeps 4 frames per clip, evenly spaced among those where both
   found one face, with both boxes, the project's crops of them, and the synthetic crops:

       .venv/bin/python scripts/record_fer_reference.py frames --out /tmp/fer_frames.npz

2. reference (a throwaway venv with fer 25.10.3 and TensorFlow, nothing of the project):

       python3 -m venv /tmp/ferref
       /tmp/ferref/bin/pip install tensorflow-cpu h5py numpy "opencv-python-headless<5" requests pillow
       /tmp/ferref/bin/pip install --no-deps fer==25.10.3
       /tmp/ferref/bin/python scripts/record_fer_reference.py reference --frames /tmp/fer_frames.npz \
           --out tests/data/fer_reference.npz

   runs fer's own `FER(use_tflite=False).detect_emotions(frame, face_rectangles=[box])` on each kept
   frame, for the landmark box and for the Haar box, catching the grey faces fer builds and the
   Keras model's unrounded probabilities (fer rounds what it returns to 2 decimals) on their way
   into and out of `FER._classify_emotions`; the synthetic crops go through the same
   `_classify_emotions` after fer's scaling. It checks that fer's crops are the project's crops
   pixel for pixel, and records, for information, the probabilities of fer's default quantized
   TFLite model too. OpenCV 4 here: fer 25.10.3 calls cv2.CascadeClassifier, which OpenCV 5 moved
   out of the main module.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CLIPS = ("ravdess/01-01-01-01-01-01-01.mp4", "mosi/0h-zjBukYpk_1.mp4", "mosi/0h-zjBukYpk_2.mp4",
         "mosi/Sqr0AcuoNnk_12.mp4")
PER_CLIP = 4
EVERY = 3  # Haar on every third frame: enough frames for the fit at a third of the cost


def person(clip: str) -> str:
    """Who is in a clip: a MOSI video id (its segments are one speaker), a RAVDESS actor."""
    name = Path(clip).stem
    return name.rsplit("_", 1)[0] if clip.startswith("mosi/") else "ravdess-actor-" + name.split("-")[-1]


def read_clip(path: Path, haar) -> list[tuple[int, np.ndarray, np.ndarray, tuple]]:
    """(frame index, BGR frame, landmarks, Haar box) of every third frame where both found one face."""
    import cv2

    from dmd_model.features import FaceTracker

    capture = cv2.VideoCapture(str(path))
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    found, index = [], 0
    with FaceTracker() as tracker:
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            tracker.process(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), index / fps)
            landmarks = tracker.last_landmarks
            if index % EVERY == 0 and landmarks is not None:
                grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
                faces = haar.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, flags=cv2.CASCADE_SCALE_IMAGE,
                                              minSize=(50, 50))
                if len(faces) == 1:
                    found.append((index, bgr, landmarks, tuple(int(v) for v in faces[0])))
            index += 1
    capture.release()
    return found


def iou(a: tuple, b: tuple) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def fit_box(samples: list[tuple[str, np.ndarray, tuple, int, int]]) -> None:
    """Print the Haar box against the landmarks' bounding box, per person, and the equal-weight fit."""
    from dmd_model.features import face_expert

    by_person: dict[str, list] = {}
    for who, landmarks, (x, y, w, h), width, height in samples:
        xy = landmarks[:, :2] * (width, height)
        (x0, y0), (x1, y1) = xy.min(axis=0), xy.max(axis=0)
        scale = w / (((x1 - x0) + (y1 - y0)) / 2)
        raise_ = ((y0 + y1) / 2 - (y + h / 2)) / w
        fitted = face_expert.landmark_box(landmarks, width, height)
        by_person.setdefault(who, []).append((scale, raise_, iou(fitted, (x, y, w, h))))
    for who, rows in by_person.items():
        s, r, o = np.median(np.array(rows), axis=0)
        print(f"  {who:24s} {len(rows):4d} frames: scale {s:.3f}, raise {r:.3f}, IoU of landmark_box {o:.3f}")
    medians = np.array([np.median(np.array(rows)[:, :2], axis=0) for rows in by_person.values()])
    ious = np.concatenate([np.array(rows)[:, 2] for rows in by_person.values()])
    print(f"  each person weighted equally: BOX_SCALE {medians[:, 0].mean():.3f}, BOX_RAISE {medians[:, 1].mean():.3f}"
          f" (face_expert has {face_expert.BOX_SCALE}, {face_expert.BOX_RAISE}); "
          f"IoU mean {ious.mean():.3f}, min {ious.min():.3f} over {ious.size} frames")


def synthetic_pixels(seed: int = 15) -> np.ndarray:
    """12 (64, 64) uint8 grey crops that owe nothing to any data set: 4 drawn faces (neutral,
    smiling, frowning, mouth open) and 8 smooth random textures."""
    import cv2

    rng = np.random.default_rng(seed)
    crops = []
    for mouth in ("line", "smile", "frown", "open"):
        face = np.full((64, 64), rng.integers(20, 80), np.uint8)
        cv2.ellipse(face, (32, 34), (22, 28), 0, 0, 360, int(rng.integers(150, 210)), -1)
        for x in (23, 41):
            cv2.ellipse(face, (x, 28), (5, 3), 0, 0, 360, 40, -1)
            cv2.line(face, (x - 6, 20), (x + 6, 20 - (2 if mouth == "open" else 0)), 60, 2)
        if mouth == "line":
            cv2.line(face, (24, 48), (40, 48), 60, 2)
        elif mouth == "open":
            cv2.ellipse(face, (32, 49), (6, 7), 0, 0, 360, 30, -1)
        else:
            cv2.ellipse(face, (32, 44 if mouth == "smile" else 52), (9, 5), 0, 0 if mouth == "smile" else 180,
                        180 if mouth == "smile" else 360, 60, 2)
        crops.append(face)
    for _ in range(8):
        coarse = rng.uniform(0, 255, (8, 8)).astype(np.float32)
        crops.append(np.clip(cv2.resize(coarse, (64, 64), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8))
    return np.stack(crops)


def frames(out: Path) -> None:
    import cv2

    sys.path.insert(0, str(ROOT))
    from dmd_model.features.face_expert import face_pixels, landmark_box

    cv2.setNumThreads(1)
    haar = cv2.CascadeClassifier(str(DATA / "fer_model" / "haarcascade_frontalface_default.xml"))
    samples, kept = [], {"frame": [], "clip": [], "index": [], "box": [], "kind": [], "pixels": []}
    for clip in CLIPS:
        found = read_clip(DATA / "clips" / clip, haar)
        print(f"{clip}: {len(found)} frames with one face for both")
        height, width = found[0][1].shape[:2]
        samples += [(person(clip), lm, box, width, height) for _, _, lm, box in found]
        for k in np.linspace(0, len(found) - 1, PER_CLIP).round().astype(int):
            index, bgr, landmarks, haar_box = found[k]
            for kind, box in (("landmarks", landmark_box(landmarks, width, height)), ("haar", haar_box)):
                kept["frame"].append(len(kept["frame"]) // 2)
                kept["clip"].append(clip)
                kept["index"].append(index)
                kept["box"].append(box)
                kept["kind"].append(kind)
                kept["pixels"].append(face_pixels(bgr, box))
            kept.setdefault("images", []).append(bgr)
    fit_box(samples)
    images = kept.pop("images")
    np.savez_compressed(out, **{k: np.asarray(v) for k, v in kept.items()}, synthetic=synthetic_pixels(),
                        **{f"image_{i}": im for i, im in enumerate(images)})
    print(f"{out}: {len(images)} frames, {len(kept['pixels'])} crops")


def reference(frames_path: Path, out: Path) -> None:
    import fer
    import tensorflow as tf
    from fer.fer import FER

    seen: list[tuple[np.ndarray, np.ndarray]] = []
    detector = FER(use_tflite=False)
    classify = detector._classify_emotions

    def catch(grey_faces: np.ndarray) -> np.ndarray:
        probs = np.asarray(classify(grey_faces))
        seen.append((np.array(grey_faces, np.float32), probs))
        return probs

    detector._classify_emotions = catch
    data = np.load(frames_path)
    crops, probs = [], []
    for frame, box in zip(data["frame"], data["box"]):
        seen.clear()
        detector.detect_emotions(data[f"image_{frame}"], face_rectangles=[tuple(int(v) for v in box)])
        (faces, p), = seen
        crops.append(faces[0])
        probs.append(p[0])
    crops = np.stack(crops)
    pixels = np.rint((crops / 2.0 + 0.5) * 255.0).astype(np.uint8)
    back = (pixels.astype(np.float32) / 255.0 - 0.5) * 2.0
    print(f"fer's crops as uint8 and back: max difference {np.abs(back - crops).max():.2e}")
    differ = np.abs(pixels.astype(int) - data["pixels"].astype(int))
    print(f"fer's crops against the project's face_pixels: max {differ.max()} grey levels, "
          f"{(differ > 0).sum()} of {differ.size} pixels differ")
    if differ.max() > 0:
        raise SystemExit("the project's crop is not fer's: fix face_expert.face_pixels before recording")

    grey = (data["synthetic"].astype(np.float32) / 255.0 - 0.5) * 2.0  # fer's scaling, as in detect_emotions
    synthetic = np.asarray(classify(grey), np.float32)

    tflite = tf.lite.Interpreter(model_path=str(Path(fer.__file__).parent / "data" / "emotion_model_quantized.tflite"))
    tflite.allocate_tensors()
    inp, outp = tflite.get_input_details()[0]["index"], tflite.get_output_details()[0]["index"]
    quantized = []
    for face in crops:
        tflite.set_tensor(inp, face[None, :, :, None])
        tflite.invoke()
        quantized.append(tflite.get_tensor(outp)[0])
    probs, quantized = np.stack(probs).astype(np.float32), np.stack(quantized).astype(np.float32)
    print(f"Keras against fer's quantized TFLite model: max |difference| {np.abs(probs - quantized).max():.3f}, "
          f"same top class {(probs.argmax(1) == quantized.argmax(1)).mean():.0%}")
    by_landmarks, by_haar = probs[data["kind"] == "landmarks"], probs[data["kind"] == "haar"]
    print(f"landmark box against Haar box, same frame: mean |difference| {np.abs(by_landmarks - by_haar).mean():.3f}, "
          f"same top class {(by_landmarks.argmax(1) == by_haar.argmax(1)).mean():.0%}")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out, clip=data["clip"], index=data["index"], box=data["box"], kind=data["kind"],
        crop_sha256=np.array([hashlib.sha256(p.tobytes()).hexdigest() for p in pixels]),
        probs=probs, tflite_probs=quantized, synthetic_pixels=data["synthetic"], synthetic_probs=synthetic,
        fer_version=np.array(fer.__version__), tensorflow_version=np.array(tf.__version__),
    )
    print(f"{out}: {len(pixels)} real crops (their places and hashes) and {len(synthetic)} synthetic ones, "
          "Keras probabilities in fer's order (angry ... neutral)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steps = parser.add_subparsers(dest="step", required=True)
    one = steps.add_parser("frames", help="step 1, in the project's venv")
    one.add_argument("--out", type=Path, default=Path("/tmp/fer_frames.npz"))
    two = steps.add_parser("reference", help="step 2, in a venv with fer and TensorFlow")
    two.add_argument("--frames", type=Path, default=Path("/tmp/fer_frames.npz"))
    two.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "fer_reference.npz")
    args = parser.parse_args()
    if args.step == "frames":
        frames(args.out)
    else:
        reference(args.frames, args.out)


if __name__ == "__main__":
    main()
