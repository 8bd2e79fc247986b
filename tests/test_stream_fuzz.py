"""The stream decoders under generated garbage (Hypothesis): whatever an entry holds (bytes that are
not UTF-8, wrong types, arrays of any dtype and shape, values out of range, unknown extension
types), decoding it gives the value or raises MessageError with a reason, never another exception:
a reader dead-letters such an entry and goes on."""

from __future__ import annotations

import contextlib
import json
import math

import msgpack
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is a test dependency: pip install -e .[dev]")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from dmd_types import Frames, PcmChunk  # noqa: E402
from stream.codec import ARRAY_EXT, MessageError, pack  # noqa: E402
from stream.estimate import Estimate  # noqa: E402
from stream.messages import (  # noqa: E402
    ACOUSTIC,
    FACE,
    MAX_SESSION_S,
    AsrWords,
    SessionEvent,
    WindowNotice,
    codec,
    decode,
)

KINDS = [WindowNotice, SessionEvent, AsrWords, PcmChunk, ACOUSTIC, FACE]
FIELD_NAMES = {
    "window": ["session", "window", "t_start", "t_end", "notice_time"],
    "session": ["session", "event", "t_wall", "source", "info", "t_end"],
    "words": ["words", "watermark"],
    "audio": ["t0", "samples", "sample_rate", "pcm"],
    "afeat": ["t", "features", "voiced"],
    "vfeat": ["t", "features", "face"],
}

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**64), max_value=2**64)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12) | st.binary(max_size=12)
           | st.sampled_from([0, 1, 3.0, 1e18, -1e9, 2**64 - 1, MAX_SESSION_S * 2, "alice", "start", "end"]))
arrays = hnp.arrays(dtype=st.sampled_from([np.int16, np.float32, np.float64, np.bool_, np.int8, np.uint8,
                                           np.int64]),
                    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6))
raw_ext = st.builds(lambda code, data: msgpack.ExtType(code, data), st.sampled_from([ARRAY_EXT, 2, 7]),
                    st.binary(max_size=24))
values = st.recursive(scalars | arrays | raw_ext,
                      lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                   max_size=4),
                      max_leaves=8)


@st.composite
def bodies(draw: st.DrawFn) -> dict:
    """A message body: a type (mostly a real one), its field names with arbitrary values, some
    missing, some extra."""
    kind = draw(st.sampled_from([*FIELD_NAMES, "smell", ""]))
    body = {"type": kind}
    for name in FIELD_NAMES.get(kind, []):
        if draw(st.integers(0, 9)):  # now and then a field is missing
            body[name] = draw(values)
    body.update(draw(st.dictionaries(st.text(max_size=6), values, max_size=2)))
    return body


def packed(body: dict) -> bytes:
    try:
        return pack(body)
    except MessageError:  # a value pack refuses (an array of a dtype it does not send): send it raw
        return msgpack.packb(str(body))


entries = st.one_of(
    st.builds(lambda v, b: {b"v": v, b"m": packed(b)}, st.sampled_from([b"1", b"2", b"0", b"x", b"1" * 5000]),
              bodies()),
    st.dictionaries(st.binary(max_size=6), st.binary(max_size=40), max_size=4),  # names and values, any bytes
    st.builds(lambda m: {b"v": b"1", b"m": m}, st.binary(max_size=60)),  # a message that is not msgpack
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entry=entries, kind=st.sampled_from([*KINDS, None]))
def test_any_entry_decodes_or_raises_message_error(entry: dict, kind) -> None:
    try:
        value = decode(entry, kind)
    except MessageError as exc:
        assert exc.reason  # says what is wrong
        return
    expected = Frames if kind in (ACOUSTIC, FACE) else kind
    if expected is not None:
        assert isinstance(value, expected)


@settings(max_examples=300, deadline=None)
@given(body=bodies())
def test_a_decoded_message_holds_only_finite_in_range_values(body: dict) -> None:
    kind = next((k for k in KINDS if codec(k).type == body["type"]), None)
    if kind is None:
        return
    try:
        value = decode({b"v": b"1", b"m": packed(body)}, kind)
    except MessageError:
        return
    times: list[float] = []
    if isinstance(value, WindowNotice):
        times = [value.t_start, value.t_end]
    elif isinstance(value, PcmChunk):
        times = [value.t0, value.t_end]
    elif isinstance(value, Frames):
        times = list(value.times)
        assert np.isfinite(value.values).all()
    elif isinstance(value, AsrWords):
        times = [value.watermark, *(t for w in value.words for t in (w.start, w.end))]
    assert all(math.isfinite(t) and t <= MAX_SESSION_S + 1 for t in times)


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.binary(max_size=60), st.text(max_size=60),
                      st.builds(lambda v: json.dumps(v, default=str), values)))
def test_any_estimate_text_parses_or_raises_message_error(text) -> None:
    with contextlib.suppress(MessageError):
        Estimate.from_json(text)


def test_field_names_that_are_not_utf8_are_a_message_error_not_a_crash() -> None:
    with pytest.raises(MessageError, match="not UTF-8"):
        decode({b"\xf5\x80": b"x"}, WindowNotice)


@pytest.mark.parametrize(("change", "words"), [
    ({"window": 2**64 - 1}, "window.window: 18446744073709551615 is above"),
    ({"t_start": -1e9}, "window.t_start: -1000000000.0 is below"),
    ({"t_end": 1e18}, "window.t_end: 1e+18 is above"),
    ({"t_start": -3000.0, "t_end": 3000.0}, "spans 6000 s"),
])
def test_out_of_range_notices_are_refused(change: dict, words: str) -> None:
    body = {"type": "window", "session": "alice", "window": 6, "t_start": 0.0, "t_end": 3.0, "notice_time": 1.7e9,
            **change}
    with pytest.raises(MessageError, match=words.replace("+", r"\+").replace("(", r"\(")):
        decode({b"v": b"1", b"m": pack(body)}, WindowNotice)
