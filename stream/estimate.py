"""The estimate: the public contract a dashboard, `dmd watch` or a WebRTC data channel receives.

One JSON object per window (`schema: 2`):

```
{"schema": 2, "session": "alice", "window": 12, "t_start": 3.0, "t_end": 6.0,
 "sentiment": 0.84, "smoothed": 0.61, "label": "positive",
 "emotions": {"neutral": 0.21, "happy": 0.62, "sad": 0.03, "angry": 0.02, "fearful": 0.02,
              "disgusted": 0.02, "surprised": 0.08},
 "emotion": "happy",
 "modalities": {"text":   {"present": true, "used": true,  "homo": 0.9, "hetero": 0.7,
                           "emotions": {"neutral": 0.3, ...}},
                "audio":  {"present": true, "used": true,  "homo": 0.4, "hetero": 0.5, "emotions": {...}},
                "visual": {"present": true, "used": false, "homo": 0.0, "hetero": 0.1, "emotions": {...}}},
 "edges": {"homo": [[...], [...], [...]], "hetero": [[...], [...], [...]]},
 "words": [{"word": "great", "start": 3.4, "end": 3.8, "confidence": 0.93}],
 "latency_ms": {"asr_wait": 120.0, "model": 35.2, "total": 410.5},
 "model": {"name": "live", "checkpoint": "9f86d081..."}}
```

- `sentiment` is the window's fused prediction in [-3, 3]; `smoothed` its exponential moving average
  over the session's windows in window order (see `ema_update`), also in [-3, 3]; `label` is one of
  negative / neutral / positive.
- `emotions`: the probabilities of the seven emotions of `dmd_types.EMOTIONS` (neutral, happy, sad,
  angry, fearful, disgusted, surprised), each in [0, 1], summing to 1 (within 1e-6): the window's
  fused emotions (the emotion head's, pooled with the face's emotion when the model does not read
  the face: docs/DESIGN.md, "The face's emotion"), smoothed over the session like `smoothed` (same
  EMA, same gap rule, renormalised; see `ema_update_emotions`). `emotion` is the name with the
  highest smoothed probability.
- `modalities` has text, audio and visual: `present`, what was observed in the window (a face in
  enough of its frames, voiced speech, recognised words), whatever the model; `used`, whether the
  model used the modality in this window (the checkpoint was trained with it and it was present:
  `used` implies `present`); the unimodal predictions of the homogeneous and heterogeneous heads;
  and `emotions`: the modality's own emotion probabilities for this window, not smoothed: the mean
  of its two heads' for a modality the model reads; for the face when the model does not read it
  (or has no emotion head), the facial-expression expert's probabilities averaged over the window's
  frames with a face (null when no face was present or the expert did not run).
- `emotions` and `emotion` are null exactly when every modality's `emotions` is null: a checkpoint
  without an emotion head (the bundled default is sentiment only) in a window without a face. With
  such a checkpoint and a face, the face's emotions are the visual entry's and the window's.
- `edges` are the two graph distillation units' 3x3 edge weights, rows and columns in the order
  text, audio, visual (row: the modality distilled from, column: the one distilled into).
- `latency_ms`: named parts of the latency, in milliseconds.

Changed from schema 1: the fields `emotions` and `emotion`, and `emotions` and `used` in each
modality's entry, were added; `present` now says what was observed (schema 1's `present` was false
for a modality the checkpoint was not trained with, a visible face included: that is schema 2's
`used`); `schema` is 2. Nothing was removed or renamed. A schema 1 estimate (one still in an
estimates stream written before the upgrade) is read as schema 2 with the emotion fields null and
`used` equal to its `present`; any other schema number is refused, naming it.

`validate_estimate` guards the contract: a NaN or infinity anywhere, a sentiment out of range, a
probability out of [0, 1], emotions that do not sum to 1, an unknown emotion, a modality used but
not present, a missing or unknown field is refused with the field's name, so a NaN never reaches a
subscriber.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from dmd_types import EMOTIONS, Word

from .codec import MessageError
from .keys import validate_session_id
from .messages import word_from_dict, word_to_dict

ESTIMATE_SCHEMA = 2
READABLE_SCHEMAS = (1, 2)  # schema 1 is read with the emotion fields null
MODALITIES: tuple[str, str, str] = ("text", "audio", "visual")
LABELS: tuple[str, str, str] = ("negative", "neutral", "positive")
SENTIMENT_RANGE = (-3.0, 3.0)
EMOTION_SUM_TOLERANCE = 1e-6
FIELDS = ("schema", "session", "window", "t_start", "t_end", "sentiment", "smoothed", "label", "emotions", "emotion",
          "modalities", "edges", "words", "latency_ms", "model")
SCHEMA_1_FIELDS = tuple(f for f in FIELDS if f not in ("emotions", "emotion"))
MODALITY_FIELDS = ("present", "used", "homo", "hetero", "emotions")
SCHEMA_1_MODALITY_FIELDS = ("present", "homo", "hetero")


@dataclass(frozen=True)
class ModalityResult:
    """One modality in one window: was it observed (`present`), did the model use it (`used`), and
    what did its unimodal heads predict. `emotions`: name -> probability (the two heads' softmaxes'
    mean, or the face expert's for a face the model does not read); None where there are none."""

    present: bool
    homo: float
    hetero: float
    emotions: Mapping[str, float] | None = None
    used: bool = False


@dataclass(frozen=True)
class Estimate:
    """One window's estimate. `smoothed` is None until the estimate is published (the publisher fills
    it from the session's EMA state); `to_json` requires it.

    Emotions (None without an emotion head): `window_emotions` is the window's own fused probabilities,
    what the publisher smooths; `emotions` the smoothed ones it publishes (name -> probability, in
    `EMOTIONS` order). An estimate read back from JSON has only `emotions`."""

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
    # not part of the JSON, so not of equality: an estimate read back equals the one published
    window_emotions: Mapping[str, float] | None = field(default=None, compare=False)
    emotions: Mapping[str, float] | None = None

    def with_smoothed(self, smoothed: float, emotions: Sequence[float] | Mapping[str, float] | None = None
                      ) -> Estimate:
        """The estimate as published: `smoothed` sentiment and smoothed `emotions` (a vector in
        `EMOTIONS` order or name -> probability; None: the window has none)."""
        if emotions is not None and not isinstance(emotions, Mapping):
            emotions = dict(zip(EMOTIONS, emotions, strict=True))
        return replace(self, smoothed=smoothed, emotions=emotions)

    @property
    def emotion(self) -> str | None:
        """The most probable of the smoothed emotions (the first in `EMOTIONS` order on a tie), or None."""
        if self.emotions is None:
            return None
        return max(EMOTIONS, key=lambda name: self.emotions[name])  # type: ignore[index]

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the contract, validated."""
        if self.smoothed is None:
            raise MessageError("is not set: an estimate gets its EMA when it is published", "smoothed")
        if self.window_emotions is not None and self.emotions is None:
            raise MessageError("are not set: an estimate gets its smoothed emotions when it is published", "emotions")
        d = {
            "schema": ESTIMATE_SCHEMA, "session": self.session, "window": self.window,
            "t_start": self.t_start, "t_end": self.t_end, "sentiment": self.sentiment, "smoothed": self.smoothed,
            "label": self.label,
            "emotions": _in_order(self.emotions), "emotion": self.emotion,
            "modalities": {m: {"present": r.present, "used": r.used, "homo": r.homo, "hetero": r.hetero,
                               "emotions": _in_order(r.emotions)} for m, r in self.modalities.items()},
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
        """An estimate of schema 2, or of schema 1 (its emotions null, `used` = its `present`);
        `validate_estimate` first."""
        validate_estimate(d)
        modalities = {m: ModalityResult(**d["modalities"][m]) for m in MODALITIES}
        if d["schema"] == 1:  # schema 1's `present` was "present and read by the model": schema 2's `used`
            modalities = {m: replace(r, used=r.present) for m, r in modalities.items()}
        return cls(
            session=d["session"], window=d["window"], t_start=d["t_start"], t_end=d["t_end"],
            sentiment=d["sentiment"], smoothed=d["smoothed"], label=d["label"], emotions=d.get("emotions"),
            modalities=modalities,
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


def _in_order(emotions: Mapping[str, float] | None) -> dict[str, float] | None:
    return None if emotions is None else {name: emotions[name] for name in EMOTIONS}


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


def _emotions(value: Any, name: str) -> None:
    """null, or an object of the seven emotions' probabilities, each in [0, 1], summing to 1."""
    if value is None:
        return
    value = _obj(value, name)
    unknown = [k for k in value if k not in EMOTIONS]
    if unknown:
        raise MessageError(f"{unknown[0]!r} is not an emotion: expected {', '.join(EMOTIONS)}", name)
    missing = [k for k in EMOTIONS if k not in value]
    if missing:
        raise MessageError(f"has no {', '.join(missing)}: expected all of {', '.join(EMOTIONS)}", name)
    check_probabilities([value[k] for k in EMOTIONS], name)


def _top_emotion(emotion: Any, emotions: Mapping[str, float] | None) -> None:
    """`emotion` is null with `emotions`, else the name of their highest probability (any of a tie)."""
    if emotions is None:
        if emotion is not None:
            raise MessageError(f"{emotion!r}, expected null: the estimate has no emotions", "emotion")
        return
    if emotion not in EMOTIONS:
        raise MessageError(f"{emotion!r} is not an emotion: expected {', '.join(EMOTIONS)}", "emotion")
    top = max(emotions.values())
    if emotions[emotion] < top:
        best = max(EMOTIONS, key=lambda k: emotions[k])
        raise MessageError(f"{emotion!r} ({emotions[emotion]:.4g}) is not the most probable of emotions: "
                           f"{best!r} ({top:.4g}) is", "emotion")


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


def _schema(d: Mapping[str, Any]) -> int:
    """The estimate's schema number, if this reader knows it; else a MessageError naming it."""
    schema = d.get("schema")
    if isinstance(schema, int) and not isinstance(schema, bool) and schema in READABLE_SCHEMAS:
        return schema
    if isinstance(schema, int) and not isinstance(schema, bool) and schema > ESTIMATE_SCHEMA:
        raise MessageError(f"{schema} is newer than this reader's estimate schema ({ESTIMATE_SCHEMA}): upgrade "
                           "live-dmd", "schema")
    raise MessageError(f"{schema!r}, expected {ESTIMATE_SCHEMA} (or 1, read with the emotion fields null)", "schema")


def validate_estimate(d: Mapping[str, Any]) -> None:
    """Check an estimate's JSON object against schema 2 (or 1, which has no emotion fields);
    MessageError names the first field at fault."""
    d = _obj(d, "estimate")
    bad = _non_finite(d, "")
    if bad:
        raise MessageError(f"{bad[1]} is not finite: a NaN or infinity never reaches a subscriber", bad[0])
    if "schema" not in d:
        raise MessageError("estimate has no schema", "schema")
    schema = _schema(d)
    fields = FIELDS if schema == 2 else SCHEMA_1_FIELDS
    missing = [f for f in fields if f not in d]
    if missing:
        raise MessageError(f"estimate has no {', '.join(missing)}", missing[0])
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise MessageError(f"estimate schema {schema} has no field {unknown[0]!r}", unknown[0])
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
    if schema == 2:
        _emotions(d["emotions"], "emotions")
        _top_emotion(d["emotion"], d["emotions"])

    modalities = _obj(d["modalities"], "modalities")
    if sorted(modalities) != sorted(MODALITIES):
        raise MessageError(f"has {sorted(modalities)}, expected exactly {', '.join(MODALITIES)}", "modalities")
    keys = MODALITY_FIELDS if schema == 2 else SCHEMA_1_MODALITY_FIELDS
    for m in MODALITIES:
        r = _obj(modalities[m], f"modalities.{m}")
        if sorted(r) != sorted(keys):
            raise MessageError(f"has {sorted(r)}, expected {', '.join(keys[:-1])} and {keys[-1]}", f"modalities.{m}")
        for flag in keys[:2] if schema == 2 else keys[:1]:
            if not isinstance(r[flag], bool):
                raise MessageError(f"{r[flag]!r} is not true or false", f"modalities.{m}.{flag}")
        if schema == 2 and r["used"] and not r["present"]:
            raise MessageError("is true while present is false: the model can only use what was observed",
                               f"modalities.{m}.used")
        _num(r["homo"], f"modalities.{m}.homo")
        _num(r["hetero"], f"modalities.{m}.hetero")
        if schema == 2:
            _emotions(r["emotions"], f"modalities.{m}.emotions")
    if schema == 2:
        felt = [m for m in MODALITIES if modalities[m]["emotions"] is not None]
        if (d["emotions"] is None) != (not felt):
            raise MessageError(
                "are null while " + ", ".join(f"modalities.{m}.emotions" for m in felt) + " are set" if felt else
                "are set while every modality's emotions are null: the window's emotions come from the "
                "modalities' (the emotion head's, or the face's)", "emotions")

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
    """A session's EMA: the last window folded in, the smoothed sentiment after it, and the smoothed
    emotion probabilities in `EMOTIONS` order (None: the session's windows have had none)."""

    window: int
    value: float
    emotions: tuple[float, ...] | None = None


def ema_weight(state: EmaState | None, window: int, alpha: float) -> float | None:
    """The weight window `window` is folded into the EMA with (the rule of `ema_update`): 1 for a
    session's first window, `1 - (1 - alpha) ** gap` for a later one, None for a late one (not folded)."""
    if not 0 < alpha <= 1:
        raise ValueError(f"EMA alpha = {alpha!r}: expected 0 < alpha <= 1")
    if state is None:
        return 1.0
    if window <= state.window:
        return None
    return 1.0 - (1.0 - alpha) ** (window - state.window)


def ema_update(state: EmaState | None, window: int, sentiment: float, alpha: float
               ) -> tuple[EmaState | None, float]:
    """Fold window `window` with `sentiment` into the EMA, in window order.

    Returns the new state (None: leave the state as it is) and the window's smoothed value. The new
    state has no emotions: `ema_update_emotions` gives them, by the same rule.

    - The first window of a session starts the EMA at its own sentiment.
    - A later window folds in with weight `1 - (1 - alpha) ** gap`, where gap is how many hops it is
      after the last window folded in: one hop later it is plain `alpha`; after missing windows (a
      window that went to dead letters, a pause) the old value has decayed for the time that passed,
      as an EMA over time would.
    - A window at or before the last one folded in arrives late (a crashed worker's window claimed
      after its successors were published). It is not folded in, because that would rewrite history
      that subscribers have already seen; it is published with the EMA as it stands.
    """
    weight = ema_weight(state, window, alpha)
    if state is None:
        return EmaState(window, sentiment), sentiment
    if weight is None:
        return None, state.value
    value = state.value + weight * (sentiment - state.value)
    return EmaState(window, value), value


def ema_update_emotions(state: EmaState | None, window: int, emotions: Sequence[float] | None, alpha: float
                        ) -> tuple[float, ...] | None:
    """The smoothed emotion probabilities of window `window` whose own are `emotions` (in `EMOTIONS`
    order), by the rule of `ema_update` (the same weight for the same gap), renormalised to sum to 1;
    None when the window has none (a checkpoint without an emotion head).

    The state's emotions are the EMA to fold into; a state without them (the session's first window
    with emotions) starts at the window's own. A late window gets the EMA as it stands. `emotions`
    that are not probabilities (a NaN, a value out of [0, 1], a sum other than 1) are refused with a
    MessageError, so a NaN never enters the EMA.
    """
    weight = ema_weight(state, window, alpha)
    if emotions is None:
        return None
    own = check_probabilities(emotions, "emotions")
    previous = None if state is None else state.emotions
    if previous is None:
        return own
    if weight is None:
        return previous
    return _normalised([p + weight * (q - p) for p, q in zip(previous, own)])


def check_probabilities(values: Sequence[float], name: str) -> tuple[float, ...]:
    """`values` as a tuple of floats when they are the seven emotions' probabilities; else a
    MessageError naming `name`."""
    values = tuple(_plain(list(values)))
    if len(values) != len(EMOTIONS):
        raise MessageError(f"has {len(values)} probabilities, expected {len(EMOTIONS)} ({', '.join(EMOTIONS)})", name)
    for emotion, v in zip(EMOTIONS, values):
        _num(v, f"{name}.{emotion}", 0.0, 1.0)
    values = tuple(float(v) for v in values)
    total = math.fsum(values)
    if abs(total - 1.0) > EMOTION_SUM_TOLERANCE:
        raise MessageError(f"sum to {total:.9g}, expected 1 (within {EMOTION_SUM_TOLERANCE:g})", name)
    return values


def _normalised(values: Sequence[float]) -> tuple[float, ...]:
    """Probabilities summing to 1 (rounding would otherwise drift over a long session), each in [0, 1]."""
    total = math.fsum(values)
    return tuple(min(1.0, max(0.0, v / total)) for v in values)
