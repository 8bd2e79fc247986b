"""msgpack with numpy arrays, and the error every decoder raises.

Arrays travel as msgpack extension type 1 holding `[dtype, shape, raw bytes]`: the dtype as numpy
spells it, always little-endian (`"<f4"`, `"<i2"`, `"|b1"`), the shape as a list, and the buffer in C
order. Only numeric and boolean dtypes are accepted; object arrays would need pickle, which a stream
that any process can write must never unpickle.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

ARRAY_EXT = 1
_KINDS = "biuf"  # bool, signed, unsigned, float


class MessageError(ValueError):
    """An entry or message is malformed. `reason` says what is wrong, naming the field and the value;
    `field` is the field's dotted name when one field is at fault."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        self.reason = f"{field}: {reason}" if field else reason
        self.field = field
        super().__init__(self.reason)


def _encode_array(arr: np.ndarray) -> msgpack.ExtType:
    if arr.dtype.kind not in _KINDS:
        raise MessageError(f"arrays of dtype {arr.dtype} cannot be sent: use a bool, integer or float dtype")
    arr = arr.astype(arr.dtype.newbyteorder("<"), order="C", copy=False)
    body = msgpack.packb([arr.dtype.str, list(arr.shape), arr.tobytes()], use_bin_type=True)
    return msgpack.ExtType(ARRAY_EXT, body)


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return _encode_array(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__} {obj!r}")


def _decode_array(body: bytes) -> np.ndarray:
    try:
        dtype_str, shape, data = msgpack.unpackb(body, raw=False)
        dtype = np.dtype(dtype_str)
    except Exception as exc:  # noqa: BLE001 - reported to the caller
        raise MessageError(f"array header cannot be read ({exc})") from None
    if dtype.kind not in _KINDS:
        raise MessageError(f"array dtype {dtype_str!r} is not allowed: expected a bool, integer or float dtype")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise MessageError(f"array shape {shape!r} is not a list of non-negative integers")
    expected = math.prod(shape) * dtype.itemsize
    if not isinstance(data, bytes) or len(data) != expected:
        got = len(data) if isinstance(data, bytes) else type(data).__name__
        raise MessageError(f"array of shape {tuple(shape)} and dtype {dtype_str} needs {expected} bytes, got {got}")
    # frombuffer gives a read-only view of the message: no copy for large PCM chunks
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _ext_hook(code: int, data: bytes) -> Any:
    if code == ARRAY_EXT:
        return _decode_array(data)
    raise MessageError(f"unknown msgpack extension type {code}")


def pack(obj: Any) -> bytes:
    """msgpack `obj` (dicts, lists, str, bytes, numbers, numpy arrays and scalars)."""
    try:
        return msgpack.packb(obj, default=_default, use_bin_type=True)
    except TypeError as exc:
        raise MessageError(str(exc)) from None


def unpack(data: bytes) -> Any:
    """Inverse of `pack`; a buffer that is not valid msgpack raises MessageError."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MessageError(f"expected msgpack bytes, got {type(data).__name__}")
    try:
        return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=True)
    except MessageError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported to the caller
        raise MessageError(f"not valid msgpack ({type(exc).__name__}: {exc})") from None
