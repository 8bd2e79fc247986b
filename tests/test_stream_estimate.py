"""The estimate contract (JSON, schema 1) and the EMA in window order."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from dmd_types import Word
from stream.codec import MessageError
from stream.estimate import EmaState, Estimate, ModalityResult, ema_update, validate_estimate


def make_estimate(window: int = 12, sentiment: float = 0.84, session: str = "alice") -> Estimate:
    return Estimate(
        session=session, window=window, t_start=window * 0.5 - 3.0, t_end=window * 0.5, sentiment=sentiment,
        label="positive" if sentiment >= 0.5 else "neutral",
        modalities={"text": ModalityResult(True, 0.9, 0.7), "audio": ModalityResult(True, 0.4, 0.5),
                    "visual": ModalityResult(False, 0.0, 0.1)},
        edges_homo=[[0.0, 0.6, 0.4], [0.5, 0.0, 0.5], [0.3, 0.7, 0.0]],
        edges_hetero=np.eye(3, dtype=np.float32).tolist(),
        words=(Word("great", 3.4, 3.8, 0.93),), latency_ms={"asr_wait": 120.0, "model": 35.2, "total": 410.5},
        model="live", checkpoint="9f86d081884c7d65",
    )


def test_estimate_json_has_the_public_fields_and_round_trips() -> None:
    est = make_estimate().with_smoothed(0.61)
    d = json.loads(est.to_json())
    assert d["schema"] == 1
    assert list(d) == ["schema", "session", "window", "t_start", "t_end", "sentiment", "smoothed", "label",
                       "modalities", "edges", "words", "latency_ms", "model"]
    assert d["modalities"]["visual"] == {"present": False, "homo": 0.0, "hetero": 0.1}
    assert d["edges"]["hetero"][1] == [0.0, 1.0, 0.0]
    assert d["words"] == [{"word": "great", "start": 3.4, "end": 3.8, "confidence": 0.93}]
    assert d["model"] == {"name": "live", "checkpoint": "9f86d081884c7d65"}
    assert Estimate.from_json(est.to_json()) == Estimate.from_dict(d)
    assert Estimate.from_json(est.to_json()).to_json() == est.to_json()


def test_numpy_values_from_the_model_are_accepted() -> None:
    est = make_estimate(sentiment=np.float32(1.25)).with_smoothed(np.float64(0.5))
    assert json.loads(est.to_json())["sentiment"] == 1.25


def test_unpublished_estimate_has_no_json_yet() -> None:
    with pytest.raises(MessageError, match="smoothed: is not set"):
        make_estimate().to_json()


def good() -> dict:
    return make_estimate().with_smoothed(0.61).to_dict()


def changed(path: str, value) -> dict:
    d = copy.deepcopy(good())
    *parents, last = path.split(".")
    target = d
    for p in parents:
        target = target[int(p)] if isinstance(target, list) else target[p]
    if value is ...:
        del target[last]
    elif isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return d


@pytest.mark.parametrize(("path", "value", "field"), [
    ("sentiment", math.nan, "sentiment"),
    ("smoothed", math.inf, "smoothed"),
    ("modalities.audio.homo", math.nan, "modalities.audio.homo"),
    ("edges.homo.1.2", -math.inf, "edges.homo[1][2]"),
    ("latency_ms.model", math.nan, "latency_ms.model"),
    ("words.0.confidence", math.nan, "words[0].confidence"),
])
def test_a_nan_anywhere_never_reaches_a_subscriber(path, value, field) -> None:
    with pytest.raises(MessageError, match="not finite") as err:
        validate_estimate(changed(path, value))
    assert err.value.field == field


@pytest.mark.parametrize(("path", "value", "field", "words_in_reason"), [
    ("sentiment", 3.2, "sentiment", "3.2 is outside [-3.0, 3.0]"),
    ("smoothed", -4, "smoothed", "outside [-3.0, 3.0]"),
    ("sentiment", "high", "sentiment", "not a number"),
    ("sentiment", True, "sentiment", "not a number"),
    ("label", "happy", "label", "expected one of negative, neutral, positive"),
    ("schema", 2, "schema", "expected 1"),
    ("session", "a b", "session", "contains ' '"),
    ("window", -1, "window", "not a window index"),
    ("window", 1.5, "window", "not a window index"),
    ("t_end", -10.0, "t_end", "not after t_start"),
    ("modalities.visual", ..., "modalities", "expected exactly text, audio, visual"),
    ("modalities.text.present", 1, "modalities.text.present", "not true or false"),
    ("modalities.text.shared", 0.1, "modalities.text", "expected present, homo and hetero"),
    ("edges.homo.2", [0.1, 0.2], "edges.homo", "not a 3x3 matrix"),
    ("edges.hetero", ..., "edges", "expected homo and hetero"),
    ("words.0.word", "", "words.word", "non-empty"),
    ("model.checkpoint", None, "model.checkpoint", "not a string"),
    ("latency_ms", [1, 2], "latency_ms", "not an object"),
    ("label", ..., "label", "estimate has no label"),
    ("mood", "sunny", "mood", "schema 1 has no field 'mood'"),
])
def test_malformed_estimate_is_rejected_naming_the_field(path, value, field, words_in_reason) -> None:
    with pytest.raises(MessageError) as err:
        validate_estimate(changed(path, value))
    assert err.value.field == field
    assert words_in_reason in err.value.reason


def test_json_with_nan_literals_is_rejected() -> None:
    text = json.dumps(good()).replace('"sentiment": 0.84', '"sentiment": NaN')
    with pytest.raises(MessageError, match="NaN is not allowed"):
        Estimate.from_json(text)


def test_ema_starts_at_the_first_window_and_follows_with_alpha() -> None:
    state, s = ema_update(None, 6, 1.0, alpha=0.5)
    assert (state, s) == (EmaState(6, 1.0), 1.0)
    state, s = ema_update(state, 7, 3.0, alpha=0.5)
    assert s == pytest.approx(2.0) and state == EmaState(7, 2.0)


def test_ema_after_missing_windows_decays_for_the_time_that_passed() -> None:
    # two hops at alpha 0.5: the old value keeps (1 - 0.5)^2 = 0.25 of its weight
    _, s = ema_update(EmaState(7, 2.0), 9, -2.0, alpha=0.5)
    assert s == pytest.approx(0.25 * 2.0 + 0.75 * -2.0)


def test_late_window_is_smoothed_with_the_ema_as_it_stands_and_does_not_move_it() -> None:
    new_state, s = ema_update(EmaState(9, 1.5), 8, -3.0, alpha=0.5)
    assert new_state is None and s == 1.5
    new_state, s = ema_update(EmaState(9, 1.5), 9, -3.0, alpha=0.5)
    assert new_state is None and s == 1.5


@pytest.mark.parametrize("alpha", [0, -0.1, 1.5])
def test_ema_alpha_must_be_in_zero_one(alpha) -> None:
    with pytest.raises(ValueError, match="0 < alpha <= 1"):
        ema_update(None, 1, 0.0, alpha)
