"""The estimate: the public contract a dashboard, `dmd watch` or a WebRTC data channel receives.

One JSON object per window (`schema: 1`):

```
{"schema": 1, "session": "alice", "window": 12, "t_start": 3.0, "t_end": 6.0,
 "sentiment": 0.84, "smoothed": 0.61, "label": "positive",
 "modalities": {"text":   {"present": true,  "homo": 0.9, "hetero": 0.7},
                "audio":  {"present": true,  "homo": 0.4, "hetero": 0.5},
                "visual": {"present": false, "homo": 0.0, "hetero": 0.1}},
 "edges": {"homo": [[...], [...], [...]], "hetero": [[...], [...], [...]]},
 "words": [{"word": "great", "start": 3.4, "end": 3.8, "confidence": 0.93}],
 "latency_ms": {"asr_wait": 120.0, "model": 35.2, "total": 410.5},
 "model": {"name": "live", "checkpoint": "9f86d081..."}}
```

- `sentiment` is the window's fused prediction in [-3, 3]; `smoothed` its exponential moving average
  over the session's windows in window order (see `ema_update`), also in [-3, 3]; `label` is one of
  negative / neutral / positive.
- `modalities` has text, audio and visual: `present` (a face was seen, there was voice, there were
  words) and the unimodal predictions of the homogeneous and heterogeneous heads.
- `edges` are the two graph distillation units' 3x3 edge weights, rows and columns in the order
  text, audio, visual (row: the modality distilled from, column: the one distilled into).
- `latency_ms`: named parts of the latency, in milliseconds.

`validate_estimate` guards the contract: a NaN or infinity anywhere, a sentiment out of range, a
missing or unknown field is refused with the field's name, so a NaN never reaches a subscriber.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from dmd_types import Word

from .codec import MessageError
from .keys import validate_session_id
from .messages import word_from_dict, word_to_dict

ESTIMATE_SCHEMA = 1
MODALITIES: tuple[str, str, str] = ("text", "audio", "visual")
LABELS: tuple[str, str, str] = ("negative", "neutral", "positive")
SENTIMENT_RANGE = (-3.0, 3.0)
FIELDS = ("schema", "session", "window", "t_start", "t_end", "sentiment", "smoothed", "label", "modalities",
          "edges", "words", "latency_ms", "model")


@dataclass(frozen=True)
class ModalityResult:
    """One modality in one window: was it present, and what did its unimodal heads predict."""

    present: bool
    homo: float
    hetero: float


@dataclass(frozen=True)
class Estimate:
    """One window's estimate. `smoothed` is None until the estimate is published (the publisher fills
    it from the session's EMA state); `to_json` requires it."""

    session: str
    window: int
    t_start: float
    t_end: float
    sentiment: float
    label: str
    modalities: Mapping[str, ModalityResult]
    edges_homo: Sequence[Sequence[float]]
    edges_hetero: Sequence[Sequence[float]]
    words: Sequence[Word] = ()
    latency_ms: Mapping[str, float] = field(default_factory=dict)
    model: str = ""
    checkpoint: str = ""
    smoothed: float | None = None

    def with_smoothed(self, smoothed: float) -> Estimate:
        return replace(self, smoothed=smoothed)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the contract, validated."""
        if self.smoothed is None:
            raise MessageError("is not set: an estimate gets its EMA when it is published", "smoothed")
        d = {
            "schema": ESTIMATE_SCHEMA, "session": self.session, "window": self.window,
            "t_start": self.t_start, "t_end": self.t_end, "sentiment": self.sentiment, "smoothed": self.smoothed,
            "label": self.label,
            "modalities": {m: {"present": r.present, "homo": r.homo, "hetero": r.hetero}
                           for m, r in self.modalities.items()},
            "edges": {"homo": [list(row) for row in self.edges_homo],
                      "hetero": [list(row) for row in self.edges_hetero]},
            "words": [word_to_dict(w) for w in self.words],
            "latency_ms": dict(self.latency_ms),
            "model": {"name": self.model, "checkpoint": self.checkpoint},
        }
        d = _plain(d)
        validate_estimate(d)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Estimate:
        validate_estimate(d)
        return cls(
            session=d["session"], window=d["window"], t_start=d["t_start"], t_end=d["t_end"],
            sentiment=d["sentiment"], smoothed=d["smoothed"], label=d["label"],
            modalities={m: ModalityResult(**d["modalities"][m]) for m in MODALITIES},
            edges_homo=d["edges"]["homo"], edges_hetero=d["edges"]["hetero"],
            words=tuple(word_from_dict(w) for w in d["words"]), latency_ms=dict(d["latency_ms"]),
            model=d["model"]["name"], checkpoint=d["model"]["checkpoint"],
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Estimate:
        try:
            # json accepts NaN and Infinity by default: turn them into an error naming the value
            d = json.loads(text, parse_constant=_refuse_constant)
        except ValueError as exc:
            raise MessageError(f"estimate is not valid JSON ({exc})") from None
        if not isinstance(d, dict):
            raise MessageError(f"estimate is a JSON {type(d).__name__}, expected an object")
        return cls.from_dict(d)


def _refuse_constant(name: str) -> float:
    raise MessageError(f"{name} is not allowed in an estimate")


def _plain(obj: Any) -> Any:
    """numpy scalars and tuples to JSON-ready Python values, so callers may pass model outputs as they are."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "item") and hasattr(obj, "dtype"):
        return obj.item()
    return obj


# --- validation ----------------------------------------------------------------------------------

def _num(value: Any, name: str, low: float | None = None, high: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MessageError(f"{value!r} is not a number", name)
    if not math.isfinite(value):
        raise MessageError(f"{value} is not finite", name)
    if (low is not None and value < low) or (high is not None and value > high):
        raise MessageError(f"{value} is outside [{low}, {high}]", name)


def _obj(value: Any, name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise MessageError(f"{value!r} is not an object", name)
    return value


def _non_finite(obj: Any, path: str) -> tuple[str, float] | None:
    """Path and value of the first NaN or infinity anywhere inside `obj`, or None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return path, obj
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            found = _non_finite(v, f"{path}.{k}" if path else str(k))
            if found:
                return found
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found = _non_finite(v, f"{path}[{i}]")
            if found:
                return found
    return None


def validate_estimate(d: Mapping[str, Any]) -> None:
    """Check an estimate's JSON object against schema 1; MessageError names the first field at fault."""
    d = _obj(d, "estimate")
    bad = _non_finite(d, "")
    if bad:
        raise MessageError(f"{bad[1]} is not finite: a NaN or infinity never reaches a subscriber", bad[0])
    missing = [f for f in FIELDS if f not in d]
    if missing:
        raise MessageError(f"estimate has no {', '.join(missing)}", missing[0])
    unknown = sorted(set(d) - set(FIELDS))
    if unknown:
        raise MessageError(f"estimate schema {ESTIMATE_SCHEMA} has no field {unknown[0]!r}", unknown[0])
    if d["schema"] != ESTIMATE_SCHEMA or isinstance(d["schema"], bool):
        raise MessageError(f"{d['schema']!r}, expected {ESTIMATE_SCHEMA}", "schema")
    try:
        validate_session_id(d["session"])
    except ValueError as exc:
        raise MessageError(str(exc), "session") from None
    window = d["window"]
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise MessageError(f"{window!r} is not a window index (an integer >= 0)", "window")
    _num(d["t_start"], "t_start")
    _num(d["t_end"], "t_end")
    if d["t_end"] <= d["t_start"]:
        raise MessageError(f"{d['t_end']} is not after t_start {d['t_start']}", "t_end")
    _num(d["sentiment"], "sentiment", *SENTIMENT_RANGE)
    _num(d["smoothed"], "smoothed", *SENTIMENT_RANGE)
    if d["label"] not in LABELS:
        raise MessageError(f"{d['label']!r}, expected one of {', '.join(LABELS)}", "label")

    modalities = _obj(d["modalities"], "modalities")
    if sorted(modalities) != sorted(MODALITIES):
        raise MessageError(f"has {sorted(modalities)}, expected exactly {', '.join(MODALITIES)}", "modalities")
    for m in MODALITIES:
        r = _obj(modalities[m], f"modalities.{m}")
        if sorted(r) != ["hetero", "homo", "present"]:
            raise MessageError(f"has {sorted(r)}, expected present, homo and hetero", f"modalities.{m}")
        if not isinstance(r["present"], bool):
            raise MessageError(f"{r['present']!r} is not true or false", f"modalities.{m}.present")
        _num(r["homo"], f"modalities.{m}.homo")
        _num(r["hetero"], f"modalities.{m}.hetero")

    edges = _obj(d["edges"], "edges")
    if sorted(edges) != ["hetero", "homo"]:
        raise MessageError(f"has {sorted(edges)}, expected homo and hetero", "edges")
    for unit in ("homo", "hetero"):
        matrix = edges[unit]
        if not isinstance(matrix, list) or len(matrix) != 3 or \
                not all(isinstance(row, list) and len(row) == 3 for row in matrix):
            raise MessageError("is not a 3x3 matrix (rows and columns text, audio, visual)", f"edges.{unit}")
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                _num(v, f"edges.{unit}[{i}][{j}]")

    if not isinstance(d["words"], list):
        raise MessageError(f"{d['words']!r} is not a list", "words")
    for w in d["words"]:
        word_from_dict(w)
    latency = _obj(d["latency_ms"], "latency_ms")
    for part, ms in latency.items():
        if not isinstance(part, str):
            raise MessageError(f"part name {part!r} is not a string", "latency_ms")
        _num(ms, f"latency_ms.{part}")
    model = _obj(d["model"], "model")
    for key in ("name", "checkpoint"):
        if not isinstance(model.get(key), str):
            raise MessageError(f"{model.get(key)!r} is not a string", f"model.{key}")


# --- smoothing -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class EmaState:
    """A session's EMA: the last window folded in and the smoothed value after it."""

    window: int
    value: float


def ema_update(state: EmaState | None, window: int, sentiment: float, alpha: float
               ) -> tuple[EmaState | None, float]:
    """Fold window `window` with `sentiment` into the EMA, in window order.

    Returns the new state (None: leave the state as it is) and the window's smoothed value.

    - The first window of a session starts the EMA at its own sentiment.
    - A later window folds in with weight `1 - (1 - alpha) ** gap`, where gap is how many hops it is
      after the last window folded in: one hop later it is plain `alpha`; after missing windows (a
      window that went to dead letters, a pause) the old value has decayed for the time that passed,
      as an EMA over time would.
    - A window at or before the last one folded in arrives late (a crashed worker's window claimed
      after its successors were published). It is not folded in, because that would rewrite history
      that subscribers have already seen; it is published with the EMA as it stands.
    """
    if not 0 < alpha <= 1:
        raise ValueError(f"EMA alpha = {alpha!r}: expected 0 < alpha <= 1")
    if state is None:
        return EmaState(window, sentiment), sentiment
    if window <= state.window:
        return None, state.value
    weight = 1.0 - (1.0 - alpha) ** (window - state.window)
    value = state.value + weight * (sentiment - state.value)
    return EmaState(window, value), value
