"""The messages on a session's streams and on `dmd:windows`: schemas, codecs, validation.

A stream entry has two fields: `v`, the schema version as ASCII digits, and `m`, the message as a
msgpack map (arrays as raw little-endian bytes with dtype and shape, see `stream.codec`). A reader
checks `v` before it unpacks, so a newer writer is refused with a clear message rather than
misread. Messages validate when they are built, so a producer learns of a bad value where it made
it, and when they are decoded, because an entry can come from any process.

Times are session seconds (`stream.window`). Each message has a `t_end`: the session time up to
which it carries data. The session streams use it as the entry id (see `stream.session`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from dmd_types import SAMPLE_RATE, Frames, PcmChunk, Word

from .codec import MessageError, pack, unpack
from .keys import validate_session_id

SCHEMA = 1
# Session time never reaches this (about 115 days): entry ids are session milliseconds, and a time
# past it is a corrupt or hostile value, refused where it is decoded rather than by Redis later.
MAX_SESSION_S = 1e7
MAX_WINDOW_S = 3600.0  # the longest window span a notice may name
MAX_WINDOW_INDEX = int(MAX_SESSION_S / 0.01)  # at the shortest hop anyone would set (10 ms)
AUDIO_FEATURES = 25  # eGeMAPSv02 low-level descriptors
FACE_FEATURES = 62  # 52 blendshapes + yaw, pitch, roll, then the face expert's 7 emotion probabilities
FACE_FEATURES_BEFORE_EXPERT = 55  # what a capture of an earlier version writes: read with the expert's 7 as zeros


# --- field checks: each raises MessageError naming the field --------------------------------------

def _number(value: Any, name: str, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise MessageError(f"{value!r} is not a number", name)
    value = float(value)
    if not math.isfinite(value):
        raise MessageError(f"{value} is not finite", name)
    if low is not None and value < low:
        raise MessageError(f"{value} is below {low}", name)
    if high is not None and value > high:
        raise MessageError(f"{value} is above {high}", name)
    return value


def _integer(value: Any, name: str, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise MessageError(f"{value!r} is not an integer", name)
    value = int(value)
    if low is not None and value < low:
        raise MessageError(f"{value} is below {low}", name)
    if high is not None and value > high:
        raise MessageError(f"{value} is above {high}", name)
    return value


def _array(value: Any, name: str) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise MessageError(f"expected an array, got {type(value).__name__}", name)
    return value


def _finite(arr: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise MessageError(f"has {int(bad.sum())} non-finite values (first at index {first}): replace them "
                           f"before sending", name)


def _times(value: Any, name: str) -> np.ndarray:
    """Frame times: a 1-D array of finite, non-negative, non-decreasing session seconds (float64)."""
    arr = np.asarray(value) if isinstance(value, (list, tuple)) else _array(value, name)
    if arr.dtype.kind not in "iuf":
        raise MessageError(f"dtype {arr.dtype} is not numeric: times are session seconds", name)
    arr = arr.astype(np.float64, copy=False)
    if arr.ndim != 1:
        raise MessageError(f"has shape {arr.shape}, expected (n,)", name)
    _finite(arr, name)
    if len(arr) and arr[0] < 0:
        raise MessageError(f"starts at {arr[0]}, before the session started (0)", name)
    if len(arr) and arr[-1] > MAX_SESSION_S:
        raise MessageError(f"ends at {arr[-1]}, past the longest session time ({MAX_SESSION_S:g} s)", name)
    if np.any(np.diff(arr) < 0):
        i = int(np.argmax(np.diff(arr) < 0))
        raise MessageError(f"goes backwards at frame {i + 1} ({arr[i]} then {arr[i + 1]}): frames must be in time "
                           f"order", name)
    return arr


def _frames(value: Any, name: str, n: int, width: int) -> np.ndarray:
    arr = _array(value, name)
    if arr.dtype != np.float32:
        raise MessageError(f"dtype is {arr.dtype}, expected float32: convert with .astype(np.float32)", name)
    if arr.shape != (n, width):
        raise MessageError(f"has shape {arr.shape}, expected ({n}, {width}): one row of {width} features per "
                           f"timestamp", name)
    _finite(arr, name)
    return arr


# --- messages ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Codec:
    """How one kind of value travels on a stream: its message `type` (also the session stream it
    goes to: audio, afeat, vfeat, words), its body as a map, and back (checked)."""

    type: str
    body: Callable[[Any], dict[str, Any]]
    from_body: Callable[[Mapping[str, Any]], Any]


_CODECS: dict[type, Codec] = {}


Kind = Any  # a message class, PcmChunk, or a FrameKind (ACOUSTIC, FACE)


def codec(kind: Kind) -> Codec | FrameKind:
    """The codec of values of `kind`: a message class, a `dmd_types` value sent as it is, or a
    `FrameKind` (which is its own codec)."""
    if isinstance(kind, FrameKind):
        return kind
    if kind is Frames:
        raise TypeError("Frames go to one of two streams: give the kind, ACOUSTIC (afeat) or FACE (vfeat)")
    try:
        return _CODECS[kind]
    except (KeyError, TypeError):
        name = getattr(kind, "__name__", repr(kind))
        raise TypeError(f"{name} is not a message of the streams: send one of "
                        f"{', '.join(sorted(k.__name__ for k in _CODECS))}, or Frames as ACOUSTIC or FACE") from None


def to_fields(value: Any, kind: Kind | None = None) -> dict[str, bytes]:
    """The stream entry of `value` (of `kind`, by default its class): `{"v": b"1", "m": msgpack}`;
    MessageError if it cannot be sent."""
    c = codec(type(value) if kind is None else kind)
    return {"v": str(SCHEMA).encode(), "m": pack({"type": c.type, **c.body(value)})}


def from_fields(fields: Mapping[Any, Any], kind: Kind) -> Any:
    """Decode and check a stream entry holding a `kind`; MessageError with the reason if it cannot."""
    c = codec(kind)
    body = _entry_body(fields)
    if body.get("type") != c.type:
        raise MessageError(f"entry holds a {body.get('type')!r} message, expected {c.type!r}", "type")
    try:
        return c.from_body(body)
    except MessageError:
        raise
    except KeyError as exc:
        raise MessageError(f"{c.type} message has no field {exc.args[0]!r}", str(exc.args[0])) from None
    except (TypeError, ValueError, AttributeError, OverflowError, IndexError) as exc:
        # a value of a type or size no check foresaw: still the entry's fault, never the reader's
        raise MessageError(f"{c.type} message cannot be read ({type(exc).__name__}: {exc})") from None


class Message:
    """Base of the messages that exist only on the streams (the values of `dmd_types` are sent as
    they are): `to_fields` / `from_fields` for XADD and XRANGE."""

    type: ClassVar[str]  # also the session stream the message goes to (afeat, vfeat, words)
    # Every message has `t_end`, the session time up to which it carries data (a property or a field).

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _CODECS[cls] = Codec(cls.type, cls.body, cls.from_body)

    def body(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Message:
        raise NotImplementedError

    def to_fields(self) -> dict[str, bytes]:
        """The stream entry: `{"v": b"1", "m": msgpack}`."""
        return to_fields(self)

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> Message:
        """Decode and validate a stream entry; raises MessageError with the reason."""
        return from_fields(fields, cls)


def _field_name(name: Any) -> str:
    if isinstance(name, bytes):
        try:
            return name.decode()
        except UnicodeDecodeError:
            raise MessageError(f"field name {name[:20]!r} is not UTF-8: an entry has the fields 'v' and 'm'") from None
    return str(name)


def _entry_body(fields: Mapping[Any, Any]) -> dict[str, Any]:
    if not isinstance(fields, Mapping):
        raise MessageError(f"entry is a {type(fields).__name__}, expected a map of fields")
    fields = {_field_name(k): v for k, v in fields.items()}
    if "v" not in fields or "m" not in fields:
        raise MessageError(f"entry has fields {sorted(fields)}, expected 'v' (schema version) and 'm' (message)")
    raw_version = fields["v"]
    try:
        version = int(raw_version)
    except (TypeError, ValueError):
        raise MessageError(f"schema version {raw_version!r} is not an integer", "v") from None
    if version > SCHEMA:
        raise MessageError(f"schema version {version} is newer than this reader ({SCHEMA}): upgrade live-dmd", "v")
    if version < 1:
        raise MessageError(f"schema version {version} does not exist", "v")
    body = unpack(fields["m"])
    if not isinstance(body, dict):
        raise MessageError(f"message is a msgpack {type(body).__name__}, expected a map", "m")
    return body


def _pcm_body(chunk: PcmChunk) -> dict[str, Any]:
    """A PCM chunk on the audio stream: 16 kHz mono int16 samples from session time `t0`."""
    t0 = _number(chunk.t0, "audio.t0", low=0.0, high=MAX_SESSION_S)
    pcm = _array(chunk.pcm, "audio.pcm")
    if pcm.ndim == 2 and pcm.shape[1] > 1:
        raise MessageError(f"has shape {pcm.shape}: {pcm.shape[1]} channels, expected mono: mix down first",
                           "audio.pcm")
    if pcm.ndim != 1:
        raise MessageError(f"has shape {pcm.shape}, expected (samples,)", "audio.pcm")
    if pcm.dtype != np.int16:
        raise MessageError(f"dtype is {pcm.dtype}, expected int16 PCM", "audio.pcm")
    if len(pcm) == 0:
        raise MessageError("is empty: send chunks with at least one sample", "audio.pcm")
    return {"t0": t0, "samples": len(pcm), "sample_rate": SAMPLE_RATE, "pcm": pcm}


def _pcm_from_body(body: Mapping[str, Any]) -> PcmChunk:
    rate = _integer(body["sample_rate"], "audio.sample_rate")
    if rate != SAMPLE_RATE:
        raise MessageError(f"audio chunk has {rate} Hz, expected {SAMPLE_RATE}: resample to 16 kHz before "
                           f"sending", "audio.sample_rate")
    checked = _pcm_body(PcmChunk(body["t0"], body["pcm"]))
    samples = _integer(body["samples"], "audio.samples", low=1)
    if samples != checked["samples"]:
        raise MessageError(f"says {samples} samples but the PCM holds {checked['samples']}", "audio.samples")
    return PcmChunk(checked["t0"], checked["pcm"])


_CODECS[PcmChunk] = Codec("audio", _pcm_body, _pcm_from_body)


@dataclass(frozen=True)
class FrameKind:
    """A stream of feature frames (`dmd_types.Frames`): its name (afeat, vfeat), how many features a
    frame has, and the name its presence flag has on the wire. It is the codec of those frames:
    `Session.add(frames, ACOUSTIC)`, `Session.read_frames(FACE, t0, t1)`."""

    type: str
    width: int
    flag: str
    # a narrower width an earlier writer used, read with zeros in the columns it lacks (None: only `width`)
    legacy_width: int | None = None

    def body(self, frames: Frames) -> dict[str, Any]:
        if not isinstance(frames, Frames):
            raise MessageError(f"expected Frames, got {type(frames).__name__}", self.type)
        t = _times(frames.times, f"{self.type}.t")
        if len(t) == 0:
            raise MessageError("is empty: send at least one frame", f"{self.type}.t")
        _frames(frames.values, f"{self.type}.features", len(t), self.width)
        return {"t": t, "features": frames.values, self.flag: frames.present}

    def from_body(self, body: Mapping[str, Any]) -> Frames:
        t = _times(body["t"], f"{self.type}.t")
        if len(t) == 0:
            raise MessageError("is empty: send at least one frame", f"{self.type}.t")
        features = body["features"]
        if self.legacy_width is not None and isinstance(features, np.ndarray) and features.shape == (
                len(t), self.legacy_width):
            features = np.concatenate([features, np.zeros((len(t), self.width - self.legacy_width), features.dtype)], 1)
        values = _frames(features, f"{self.type}.features", len(t), self.width)
        flag = _array(body[self.flag], f"{self.type}.{self.flag}")
        if flag.dtype != np.bool_ or flag.shape != (len(t),):
            raise MessageError(f"is {flag.dtype} {flag.shape}, expected bool ({len(t)},): one flag per frame",
                               f"{self.type}.{self.flag}")
        return Frames(t, values, flag)


# Acoustic frames (eGeMAPS low-level descriptors, 100 Hz), flagged where the speech is voiced; face
# frames (52 blendshapes, yaw, pitch, roll, then the face expert's 7 probabilities in EMOTIONS order,
# zeros where the expert was not run; rows without a face are zeros), flagged where a face was found.
# Face frames of 55 (a capture from before the expert) are read with the expert's columns zero.
ACOUSTIC = FrameKind("afeat", AUDIO_FEATURES, "voiced")
FACE = FrameKind("vfeat", FACE_FEATURES, "face", legacy_width=FACE_FEATURES_BEFORE_EXPERT)


def checked_word(word: Any) -> Word:
    """`word` if it can be sent: a `Word` with non-empty text, a start >= 0, an end not before the
    start and a confidence in [0, 1], all finite; MessageError naming the field otherwise."""
    if not isinstance(word, Word):
        raise MessageError(f"{word!r} is not a Word", "words")
    if not isinstance(word.text, str) or not word.text.strip():
        raise MessageError(f"{word.text!r} is not a non-empty string", "words.word")
    start = _number(word.start, "words.start", low=0.0, high=MAX_SESSION_S)
    end = _number(word.end, "words.end", high=MAX_SESSION_S)
    if end < start:
        raise MessageError(f"word {word.text!r} ends at {end}, before it starts ({start})", "words.end")
    confidence = _number(word.confidence, "words.confidence", 0.0, 1.0)
    if (start, end, confidence) == (word.start, word.end, word.confidence):
        return word
    return Word(word.text, start, end, confidence)


def word_to_dict(word: Word) -> dict[str, Any]:
    """A word as the wire and the estimate carry it: {"word", "start", "end", "confidence"}."""
    return {"word": word.text, "start": word.start, "end": word.end, "confidence": word.confidence}


def word_from_dict(d: Any) -> Word:
    """Inverse of `word_to_dict`, checked (`checked_word`)."""
    if not isinstance(d, Mapping):
        raise MessageError(f"{d!r} is not a map with word, start, end, confidence", "words")
    try:
        return checked_word(Word(d["word"], d["start"], d["end"], d["confidence"]))
    except KeyError as exc:
        raise MessageError(f"a word has no {exc.args[0]!r}", f"words.{exc.args[0]}") from None


@dataclass(frozen=True)
class AsrWords(Message):
    """Words the ASR has committed, and its watermark: every word starting before `watermark` has been
    sent, so a window ending at or before the watermark has all its words. An entry with no words
    and a later watermark says "silence up to here"."""

    type: ClassVar[str] = "words"
    words: tuple[Word, ...]
    watermark: float

    def __post_init__(self) -> None:
        words = tuple(checked_word(w) if isinstance(w, Word) else word_from_dict(w) for w in self.words)
        object.__setattr__(self, "words", words)
        watermark = _number(self.watermark, "words.watermark", low=0.0, high=MAX_SESSION_S)
        object.__setattr__(self, "watermark", watermark)
        for i, w in enumerate(words):
            if w.end > watermark:
                raise MessageError(f"word {i} ({w.text!r}) ends at {w.end}, after the watermark {watermark}: "
                                   f"commit words only up to the watermark", "words.end")
            if i and w.start < words[i - 1].start:
                raise MessageError(f"word {i} ({w.text!r}) starts at {w.start}, before word {i - 1}: words must "
                                   f"be in time order", "words.start")

    @property
    def t_end(self) -> float:
        return self.watermark

    def body(self) -> dict[str, Any]:
        return {"words": [word_to_dict(w) for w in self.words], "watermark": self.watermark}

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> AsrWords:
        words = body["words"]
        if not isinstance(words, list):
            raise MessageError(f"is a {type(words).__name__}, expected a list", "words.words")
        return cls(words=tuple(word_from_dict(w) for w in words), watermark=body["watermark"])


@dataclass(frozen=True)
class WindowNotice(Message):
    """A window is ready: the job an inference worker takes from `dmd:windows`. `notice_time` is the
    wall-clock time (Unix seconds) the notice was sent, for the latency parts of the estimate."""

    type: ClassVar[str] = "window"
    session: str
    window: int
    t_start: float
    t_end: float
    notice_time: float

    def __post_init__(self) -> None:
        try:
            validate_session_id(self.session)
        except ValueError as exc:
            raise MessageError(str(exc), "window.session") from None
        object.__setattr__(self, "window", _integer(self.window, "window.window", low=0, high=MAX_WINDOW_INDEX))
        object.__setattr__(self, "t_end", _number(self.t_end, "window.t_end", low=0.0, high=MAX_SESSION_S))
        object.__setattr__(self, "t_start", _number(self.t_start, "window.t_start", low=-MAX_WINDOW_S))
        if self.t_end <= self.t_start:
            raise MessageError(f"{self.t_end} is not after t_start {self.t_start}", "window.t_end")
        if self.t_end - self.t_start > MAX_WINDOW_S:
            raise MessageError(f"the window spans {self.t_end - self.t_start:g} s, more than {MAX_WINDOW_S:g} s",
                               "window.t_start")
        object.__setattr__(self, "notice_time", _number(self.notice_time, "window.notice_time", low=0.0))

    def body(self) -> dict[str, Any]:
        return {"session": self.session, "window": self.window, "t_start": self.t_start, "t_end": self.t_end,
                "notice_time": self.notice_time}

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> WindowNotice:
        return cls(session=body["session"], window=body["window"], t_start=body["t_start"], t_end=body["t_end"],
                   notice_time=body["notice_time"])


SESSION_EVENTS = ("start", "end")
_INFO_SCALARS = (str, int, float, bool, type(None))


def _info(value: Any, name: str, depth: int = 0) -> Any:
    """A JSON-like value (str, int, float, bool, None, lists and string-keyed maps of them)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise MessageError(f"{value} is not finite", name)
    if isinstance(value, _INFO_SCALARS):
        return value
    if depth >= 4:
        raise MessageError("is nested too deep (at most 4 levels)", name)
    if isinstance(value, (list, tuple)):
        return [_info(v, f"{name}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise MessageError(f"has key {k!r}, expected strings", name)
            out[k] = _info(v, f"{name}.{k}", depth + 1)
        return out
    raise MessageError(f"holds a {type(value).__name__} ({value!r}): use str, int, float, bool, None, lists and maps",
                       name)


@dataclass(frozen=True)
class SessionEvent(Message):
    """A session starts or ends: the entries of `dmd:sessions` and `dmd:{sid}:events` (see
    `stream.keys`). `t_wall` is the wall-clock time (Unix seconds) of the event, `source` what
    produced the session ("file", "webcam", "mic", "webrtc", ...), `info` anything else a reader may
    want (JSON-like values). `t_end`, for an end event, is the session time up to which audio was
    sent, when the sender knows it."""

    type: ClassVar[str] = "session"
    session: str
    event: str
    t_wall: float
    source: str = ""
    info: Mapping[str, Any] = field(default_factory=dict)
    t_end: float | None = None

    def __post_init__(self) -> None:
        try:
            validate_session_id(self.session)
        except ValueError as exc:
            raise MessageError(str(exc), "session.session") from None
        if self.event not in SESSION_EVENTS:
            raise MessageError(f"{self.event!r} is not a session event: use one of {', '.join(SESSION_EVENTS)}",
                               "session.event")
        object.__setattr__(self, "t_wall", _number(self.t_wall, "session.t_wall", low=0.0))
        if not isinstance(self.source, str):
            raise MessageError(f"{self.source!r} is not a string", "session.source")
        if not isinstance(self.info, Mapping):
            raise MessageError(f"is a {type(self.info).__name__}, expected a map", "session.info")
        object.__setattr__(self, "info", _info(self.info, "session.info"))
        if self.t_end is not None:
            object.__setattr__(self, "t_end", _number(self.t_end, "session.t_end", low=0.0, high=MAX_SESSION_S))

    def body(self) -> dict[str, Any]:
        return {"session": self.session, "event": self.event, "t_wall": self.t_wall, "source": self.source,
                "info": dict(self.info), "t_end": self.t_end}

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> SessionEvent:
        return cls(session=body["session"], event=body["event"], t_wall=body["t_wall"],
                   source=body.get("source", ""), info=body.get("info") or {}, t_end=body.get("t_end"))


def decode(fields: Mapping[Any, Any], expected: Kind | None = None) -> Any:
    """Decode a stream entry into its value (of kind `expected` if given); MessageError if malformed."""
    if expected is not None:
        return from_fields(fields, expected)
    body = _entry_body(fields)
    kinds = {**{c.type: k for k, c in _CODECS.items()}, ACOUSTIC.type: ACOUSTIC, FACE.type: FACE}
    kind = kinds.get(body.get("type"))
    if kind is None:
        raise MessageError(f"unknown message type {body.get('type')!r}", "type")
    return from_fields(fields, kind)


def concat_audio(chunks: Sequence[PcmChunk], t_start: float, t_end: float) -> tuple[float, np.ndarray]:
    """The PCM of `chunks` between `t_start` and `t_end`: (time of the first sample, int16 samples).
    Gaps between chunks are kept as they are (no padding); chunks are assumed in time order."""
    if not chunks:
        return max(t_start, 0.0), np.zeros(0, np.int16)
    parts, first = [], None
    for c in chunks:
        i0 = max(0, math.ceil((t_start - c.t0) * SAMPLE_RATE - 1e-6))
        i1 = min(c.samples, math.ceil((t_end - c.t0) * SAMPLE_RATE - 1e-6))
        if i1 > i0:
            parts.append(c.pcm[i0:i1])
            if first is None:
                first = c.t0 + i0 / SAMPLE_RATE
    if not parts:
        return max(t_start, 0.0), np.zeros(0, np.int16)
    return first, np.concatenate(parts)  # type: ignore[return-value]
