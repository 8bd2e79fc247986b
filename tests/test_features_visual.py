"""Face frames: MediaPipe Face Landmarker blendshapes and head pose, with a face-present flag."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest

from dmd_model.features import VISUAL_NAMES, FaceTracker, FeatureError, head_pose
from dmd_model.features.profile import FACE_MODEL_SHA256
from dmd_model.features.visual import DEFAULT_FACE_MODEL

pytest.importorskip("mediapipe")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MOSI = DATA / "clips" / "mosi"
ABSENT = "real clips not here (../shared/data/clips): developer data only"
needs_clips = pytest.mark.skipif(not MOSI.is_dir(), reason=ABSENT)


def gradient_image(h: int = 240, w: int = 320, seed: int = 0) -> np.ndarray:
    """A synthetic picture with texture but no face."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], axis=-1)
    return np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """The 4x4 matrix of R = Ry(yaw) @ Rx(pitch) @ Rz(roll), the order the formula inverts."""
    cy, sy, cp, sp, cr, sr = (math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch),
                              math.cos(roll), math.sin(roll))
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    m = np.eye(4)
    m[:3, :3] = ry @ rx @ rz
    return m


def test_the_bundled_face_model_is_the_profiles():
    assert hashlib.sha256(DEFAULT_FACE_MODEL.read_bytes()).hexdigest() == FACE_MODEL_SHA256
    assert FACE_MODEL_SHA256.startswith("64184e22") and FACE_MODEL_SHA256.endswith("0bc9ff")


def test_an_image_without_a_face_gives_zeros_and_no_face():
    with FaceTracker() as tracker:
        for i in range(3):
            tracker.feed(gradient_image(seed=i), i / 30)
        frames = tracker.take()
    assert len(frames) == 3 and frames.dim == len(VISUAL_NAMES) == 55
    assert not frames.present.any()
    assert not frames.values.any()
    np.testing.assert_allclose(frames.times, [0, 1 / 30, 2 / 30])


def test_repeated_and_backward_timestamps_do_not_break_video_mode():
    with FaceTracker() as tracker:
        for t in (1.0, 1.0, 1.0004, 0.5):  # MediaPipe itself would refuse all but the first
            values, present = tracker.process(gradient_image(), t)
            assert values.shape == (55,) and not present
        tracker.feed(gradient_image(), 2.0)
        tracker.feed(gradient_image(), 2.0)
        with pytest.raises(FeatureError, match=r"t=1.5 s comes after one at t=2.0 s: feed frames in time order"):
            tracker.feed(gradient_image(), 1.5)
        assert len(tracker.take()) == 2


def test_head_pose_follows_the_documented_formula():
    for angles in [(0.3, 0.0, 0.0), (0.0, -0.2, 0.0), (0.0, 0.0, 0.25), (0.2, 0.1, -0.15)]:
        assert head_pose(rotation(*angles)) == pytest.approx(angles, abs=1e-9)


def test_a_frame_that_is_not_an_rgb_uint8_image_is_refused_with_the_fix():
    with FaceTracker() as tracker:
        with pytest.raises(FeatureError, match=r"shape \(240, 320\) dtype uint8, expected an RGB uint8 image.*rgb24"):
            tracker.process(np.zeros((240, 320), np.uint8), 0.0)
        with pytest.raises(FeatureError, match="dtype float32"):
            tracker.process(np.zeros((240, 320, 3), np.float32), 0.0)


def test_a_missing_face_model_is_named_with_the_fix(tmp_path):
    with pytest.raises(FeatureError, match=r"face model .*nothere.task does not exist: pass the path"):
        FaceTracker(tmp_path / "nothere.task")
    bad = tmp_path / "broken.task"
    bad.write_bytes(b"not a model")
    with pytest.raises(FeatureError, match="could not load the face model"):
        FaceTracker(bad)


@needs_clips
@pytest.mark.parametrize("clip", ["Sqr0AcuoNnk_12.mp4", "0h-zjBukYpk_1.mp4"])
def test_a_face_is_found_in_most_frames_of_a_mosi_clip(clip):
    from dmd_model.features import decode_media

    with FaceTracker() as tracker:
        for frame in decode_media(MOSI / clip, audio=False):
            tracker.feed(frame.rgb, frame.t)
        frames = tracker.take()
    assert len(frames) > 60
    assert frames.present.mean() >= 0.9
    assert np.isfinite(frames.values).all()
    shapes = frames.values[frames.present, :52]
    assert shapes.min() >= 0 and shapes.max() <= 1 and shapes.std(0).max() > 0.01  # the face moves
    pose = frames.values[frames.present, 52:]
    assert np.abs(pose).max() < math.pi / 2  # a talking head faces the camera
