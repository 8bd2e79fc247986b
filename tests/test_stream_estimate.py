"""The estimate contract (JSON, schema 2: sentiment and emotions) and the EMA in window order."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from dmd_types import EMOTIONS, Word
from stream.codec import MessageError
from stream.estimate import (
    EmaState,
    Estimate,
    ModalityResult,
    ema_update,
    ema_update_emotions,
    validate_estimate,
)

HAPPY = (0.2, 0.5, 0.1, 0.05, 0.05, 0.05, 0.05)  # EMOTIONS order: neutral, happy, sad, ...
SAD = (0.1, 0.05, 0.7, 0.05, 0.05, 0.025, 0.025)


def named(probabilities) -> dict[str, float]:
    return dict(zip(EMOTIONS, probabilities))


def make_estimate(window: int = 12, sentiment: float = 0.84, session: str = "alice",
                  emotions: tuple[float, ...] | None = None) -> Estimate:
    """An estimate as a worker hands it to the publisher; `emotions`: the window's own probabilities
    (fused and, for the test, every modality's), None for a checkpoint without an emotion head."""
    own = None if emotions is None else named(emotions)
    return Estimate(
        session=session, window=window, t_start=window * 0.5 - 3.0, t_end=window * 0.5, sentiment=sentiment,
        label="positive" if sentiment >= 0.5 else "neutral",
        modalities={"text": ModalityResult(True, 0.9, 0.7, own, used=True),
                    "audio": ModalityResult(True, 0.4, 0.5, own, used=True),
                    "visual": ModalityResult(False, 0.0, 0.1, own)},
        edges_homo=[[0.0, 0.6, 0.4], [0.5, 0.0, 0.5], [0.3, 0.7, 0.0]],
        edges_hetero=np.eye(3, dtype=np.float32).tolist(),
        words=(Word("great", 3.4, 3.8, 0.93),), latency_ms={"asr_wait": 120.0, "model": 35.2, "total": 410.5},
        model="live", checkpoint="9f86d081884c7d65", window_emotions=own,
    )


def test_estimate_json_has_the_public_fields_and_round_trips() -> None:
    est = make_estimate().with_smoothed(0.61)
    d = json.loads(est.to_json())
    assert d["schema"] == 2
    assert list(d) == ["schema", "session", "window", "t_start", "t_end", "sentiment", "smoothed", "label",
                       "emotions", "emotion", "modalities", "edges", "words", "latency_ms", "model"]
    assert d["emotions"] is None and d["emotion"] is None  # a checkpoint without an emotion head
    assert d["modalities"]["visual"] == {"present": False, "used": False, "homo": 0.0, "hetero": 0.1,
                                         "emotions": None}
    assert d["modalities"]["text"]["present"] is True and d["modalities"]["text"]["used"] is True
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


def changed(path: str, value, base: dict | None = None) -> dict:
    d = copy.deepcopy(good() if base is None else base)
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
    ("schema", 3, "schema", "3 is newer than this reader's estimate schema (2): upgrade live-dmd"),
    ("schema", 0, "schema", "0, expected 2 (or 1, read with the emotion fields null)"),
    ("schema", "2", "schema", "expected 2"),
    ("emotion", "happy", "emotion", "'happy', expected null: the estimate has no emotions"),
    ("session", "a b", "session", "contains ' '"),
    ("window", -1, "window", "not a window index"),
    ("window", 1.5, "window", "not a window index"),
    ("t_end", -10.0, "t_end", "not after t_start"),
    ("modalities.visual", ..., "modalities", "expected exactly text, audio, visual"),
    ("modalities.text.present", 1, "modalities.text.present", "not true or false"),
    ("modalities.text.used", "yes", "modalities.text.used", "not true or false"),
    ("modalities.visual.used", True, "modalities.visual.used", "true while present is false: the model can only "
     "use what was observed"),
    ("modalities.text.shared", 0.1, "modalities.text", "expected present, used, homo, hetero and emotions"),
    ("modalities.text.emotions", ..., "modalities.text", "expected present, used, homo, hetero and emotions"),
    ("modalities.audio.used", ..., "modalities.audio", "expected present, used, homo, hetero and emotions"),
    ("edges.homo.2", [0.1, 0.2], "edges.homo", "not a 3x3 matrix"),
    ("edges.hetero", ..., "edges", "expected homo and hetero"),
    ("words.0.word", "", "words.word", "non-empty"),
    ("model.checkpoint", None, "model.checkpoint", "not a string"),
    ("latency_ms", [1, 2], "latency_ms", "not an object"),
    ("label", ..., "label", "estimate has no label"),
    ("mood", "sunny", "mood", "schema 2 has no field 'mood'"),
    ("emotion", ..., "emotion", "estimate has no emotion"),
])
def test_malformed_estimate_is_rejected_naming_the_field(path, value, field, words_in_reason) -> None:
    with pytest.raises(MessageError) as err:
        validate_estimate(changed(path, value))
    assert err.value.field == field
    assert words_in_reason in err.value.reason


def test_estimate_with_emotions_publishes_the_smoothed_ones_and_the_top_emotion() -> None:
    est = make_estimate(emotions=SAD).with_smoothed(0.61, HAPPY)
    d = json.loads(est.to_json())
    assert d["emotions"] == named(HAPPY) and list(d["emotions"]) == list(EMOTIONS)
    assert d["emotion"] == "happy" and est.emotion == "happy"
    assert d["modalities"]["audio"]["emotions"] == named(SAD)  # unimodal, the window's own
    back = Estimate.from_json(est.to_json())
    assert back == est and back.emotions == named(HAPPY) and back.window_emotions is None
    assert back.to_json() == est.to_json()


def test_emotions_are_smoothed_when_published_not_before() -> None:
    with pytest.raises(MessageError, match="emotions: are not set"):
        make_estimate(emotions=HAPPY).with_smoothed(0.61).to_json()


def good_with_emotions() -> dict:
    return make_estimate(emotions=SAD).with_smoothed(0.61, HAPPY).to_dict()


@pytest.mark.parametrize(("path", "value", "field", "words_in_reason"), [
    ("emotions.happy", math.nan, "emotions.happy", "not finite"),
    ("modalities.audio.emotions.sad", math.inf, "modalities.audio.emotions.sad", "not finite"),
    ("emotions.happy", 1.2, "emotions.happy", "1.2 is outside [0.0, 1.0]"),
    ("emotions.sad", -0.1, "emotions.sad", "outside [0.0, 1.0]"),
    ("emotions.happy", 0.6, "emotions", "sum to 1.1"),
    ("modalities.text.emotions.neutral", 0.0, "modalities.text.emotions", "sum to 0.9"),
    ("emotions.happy", "0.5", "emotions.happy", "not a number"),
    ("emotions.joyful", 0.0, "emotions", "'joyful' is not an emotion: expected neutral, happy, sad"),
    ("emotions.surprised", ..., "emotions", "has no surprised"),
    ("emotions", [0.2, 0.8], "emotions", "not an object"),
    ("emotion", "sad", "emotion", "'sad' (0.1) is not the most probable of emotions: 'happy' (0.5) is"),
    ("emotion", "joyful", "emotion", "'joyful' is not an emotion"),
    ("emotion", None, "emotion", "None is not an emotion"),
])
def test_malformed_emotions_are_rejected_naming_the_field(path, value, field, words_in_reason) -> None:
    with pytest.raises(MessageError) as err:
        validate_estimate(changed(path, value, good_with_emotions()))
    assert err.value.field == field
    assert words_in_reason in err.value.reason


def face_only() -> dict:
    """A checkpoint without an emotion head and a face it does not read: the face's emotions alone."""
    d = good()
    d["modalities"]["visual"].update(present=True, used=False, emotions=named(HAPPY))
    d["emotions"], d["emotion"] = named(HAPPY), "happy"
    return d


def test_a_face_seen_but_not_used_carries_its_own_emotions_beside_null_text_and_voice() -> None:
    d = face_only()
    validate_estimate(d)
    est = Estimate.from_dict(d)
    assert est.modalities["visual"].present and not est.modalities["visual"].used
    assert est.modalities["text"].emotions is None and est.emotion == "happy"
    assert Estimate.from_json(est.to_json()) == est


def test_the_windows_emotions_are_null_exactly_when_every_modalitys_are() -> None:
    d = face_only()
    d["emotions"], d["emotion"] = None, None
    with pytest.raises(MessageError, match=r"are null while modalities\.visual\.emotions are set") as err:
        validate_estimate(d)
    assert err.value.field == "emotions"
    d = good_with_emotions()
    for m in d["modalities"].values():
        m["emotions"] = None
    with pytest.raises(MessageError, match="are set while every modality's emotions are null") as err:
        validate_estimate(d)
    assert err.value.field == "emotions"
    d = good_with_emotions()
    d["modalities"]["audio"]["emotions"] = None  # some modalities without their own: allowed
    validate_estimate(d)


def test_emotions_of_a_tie_may_name_either() -> None:
    tie = (0.4, 0.4, 0.05, 0.05, 0.05, 0.025, 0.025)
    d = make_estimate(emotions=tie).with_smoothed(0.61, tie).to_dict()
    assert d["emotion"] == "neutral"  # the first in EMOTIONS order
    validate_estimate(changed("emotion", "happy", d))


def test_a_schema_1_estimate_is_read_with_null_emotions() -> None:
    d = good()
    d["schema"] = 1
    del d["emotions"], d["emotion"]
    for m in d["modalities"].values():
        del m["emotions"], m["used"]
    est = Estimate.from_dict(d)
    assert est.emotions is None and est.modalities["text"].emotions is None
    # schema 1's present was "present and read by the model": schema 2's used
    assert est.modalities["text"].used and not est.modalities["visual"].used
    assert est.to_dict() == good()  # written back as schema 2
    with pytest.raises(MessageError, match="expected present, homo and hetero"):
        validate_estimate(changed("modalities.text.used", True, d))  # schema 1 has no used
    with pytest.raises(MessageError, match="schema 1 has no field 'emotions'") as err:
        validate_estimate({**d, "emotions": None})
    assert err.value.field == "emotions"


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


def test_emotions_ema_starts_at_the_first_window_and_follows_with_alpha() -> None:
    assert ema_update_emotions(None, 6, HAPPY, alpha=0.5) == pytest.approx(HAPPY)
    smoothed = ema_update_emotions(EmaState(6, 1.0, HAPPY), 7, SAD, alpha=0.5)
    assert smoothed == pytest.approx([(h + s) / 2 for h, s in zip(HAPPY, SAD)])


def test_emotions_ema_after_missing_windows_decays_for_the_time_that_passed() -> None:
    # the gap rule of the sentiment's EMA: two hops at alpha 0.5, the old value keeps 0.25
    smoothed = ema_update_emotions(EmaState(7, 0.0, HAPPY), 9, SAD, alpha=0.5)
    assert smoothed == pytest.approx([0.25 * h + 0.75 * s for h, s in zip(HAPPY, SAD)])
    _, sentiment = ema_update(EmaState(7, 1.0, HAPPY), 9, 0.0, alpha=0.5)
    assert sentiment == pytest.approx(0.25)


def test_emotions_ema_is_renormalised_and_stays_probabilities_over_a_long_session() -> None:
    rng = np.random.default_rng(0)
    state = None
    for window in range(2000):
        own = rng.dirichlet(np.ones(len(EMOTIONS)) * 0.3)
        own = tuple(float(p) for p in own / own.sum())
        emotions = ema_update_emotions(state, window, own, alpha=0.3)
        state, _ = ema_update(state, window, 0.0, alpha=0.3)
        state = EmaState(state.window, state.value, emotions)
        assert all(0.0 <= p <= 1.0 for p in emotions)
        assert abs(math.fsum(emotions) - 1.0) < 1e-12
    # a state slightly off (written by another version, rounded) comes back summing to 1
    off = tuple(p * (1 + 5e-7) for p in HAPPY)
    assert abs(math.fsum(ema_update_emotions(EmaState(1, 0.0, off), 2, SAD, alpha=0.5)) - 1.0) < 1e-12


def test_late_window_gets_the_emotions_ema_as_it_stands() -> None:
    assert ema_update_emotions(EmaState(9, 1.5, HAPPY), 8, SAD, alpha=0.5) == HAPPY
    # an EMA without emotions yet (a state from before the checkpoint had them): the window's own
    assert ema_update_emotions(EmaState(9, 1.5), 8, SAD, alpha=0.5) == pytest.approx(SAD)


def test_a_window_without_emotions_has_no_smoothed_emotions() -> None:
    assert ema_update_emotions(EmaState(9, 1.5, HAPPY), 10, None, alpha=0.5) is None


@pytest.mark.parametrize(("emotions", "words_in_reason"), [
    ((math.nan, 1.0, 0, 0, 0, 0, 0), "emotions.neutral: nan is not finite"),
    ((0.5, 0.6, 0, 0, 0, 0, 0), "emotions: sum to 1.1"),
    ((1.0, 0, 0, 0), "has 4 probabilities, expected 7"),
    ((-0.5, 1.5, 0, 0, 0, 0, 0), "outside [0.0, 1.0]"),
])
def test_emotions_that_are_not_probabilities_never_enter_the_ema(emotions, words_in_reason) -> None:
    with pytest.raises(MessageError) as err:
        ema_update_emotions(EmaState(9, 1.5, HAPPY), 10, emotions, alpha=0.5)
    assert words_in_reason in str(err.value)
