"""MMSA's regression metrics: hand-computed cases and agreement with scikit-learn."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from dmd_model.training.metrics import METRIC_KEYS, format_metrics, regression_metrics, weighted_f1


def mmsa_reference(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """MMSA's `__eval_mosei_regression`, written as MMSA writes it (with scikit-learn)."""
    test_preds, test_truth = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    a7p, a7t = np.clip(test_preds, -3.0, 3.0), np.clip(test_truth, -3.0, 3.0)
    a5p, a5t = np.clip(test_preds, -2.0, 2.0), np.clip(test_truth, -2.0, 2.0)
    mae = np.mean(np.absolute(test_preds - test_truth)).astype(np.float64)
    with np.errstate(invalid="ignore"):  # constant predictions
        corr = np.corrcoef(test_preds, test_truth)[0][1]
    mult_a7 = np.sum(np.round(a7p) == np.round(a7t)) / float(len(a7t))
    mult_a5 = np.sum(np.round(a5p) == np.round(a5t)) / float(len(a5t))
    non_zeros = np.array([i for i, e in enumerate(test_truth) if e != 0])
    nz_truth, nz_preds = test_truth[non_zeros] > 0, test_preds[non_zeros] > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        non0_acc = accuracy_score(nz_preds, nz_truth)
        non0_f1 = f1_score(nz_truth, nz_preds, average="weighted")
        acc2 = accuracy_score(test_preds >= 0, test_truth >= 0)
        f_score = f1_score(test_truth >= 0, test_preds >= 0, average="weighted")
    return {
        "Has0_acc_2": round(acc2, 4), "Has0_F1_score": round(f_score, 4),
        "Non0_acc_2": round(non0_acc, 4), "Non0_F1_score": round(non0_f1, 4),
        "Mult_acc_5": round(mult_a5, 4), "Mult_acc_7": round(mult_a7, 4),
        "MAE": round(mae, 4), "Corr": round(corr, 4),
    }


def test_returns_exactly_the_mmsa_keys_as_floats():
    m = regression_metrics([0.1, -1.0, 2.0], [0.3, -0.5, 1.0])
    assert tuple(m) == METRIC_KEYS
    assert all(type(v) is float for v in m.values())


def test_acc7_rounds_half_to_even_like_numpy():
    # 0.5 -> 0, 1.5 -> 2, -0.5 -> -0, 2.5 -> 2: all match; rounding half up would miss three
    m = regression_metrics([0.5, 1.5, -0.5, 2.5], [0.0, 2.0, 0.0, 2.0])
    assert m["Mult_acc_7"] == 1.0
    assert m["Mult_acc_5"] == 1.0
    m = regression_metrics([0.5, 1.5, -0.5, 2.5], [1.0, 1.0, -1.0, 3.0])
    assert m["Mult_acc_7"] == 0.0


def test_zero_labels_are_excluded_from_non0_and_positive_in_has0():
    pred = np.array([0.2, 0.5, 0.3, -0.1])
    true = np.array([0.0, 1.0, -1.0, 0.0])
    m = regression_metrics(pred, true)
    # Non0 keeps samples 1 and 2: truth (+, -), predictions (+, +)
    assert m["Non0_acc_2"] == 0.5
    assert m["Non0_F1_score"] == round(1 / 3, 4)  # class +: F1 2/3, class -: 0, equal supports
    # Has0: truth (+, +, -, +), predictions (+, +, +, -)
    assert m["Has0_acc_2"] == 0.5
    assert m["Has0_F1_score"] == round(0.75 * (2 / 3) + 0.25 * 0.0, 4)


def test_multiclass_accuracies_clip_at_three_and_two_but_mae_does_not():
    m = regression_metrics([3.6, -2.7], [3.0, -3.0])
    assert m["Mult_acc_7"] == 1.0  # 3.6 -> 3, -2.7 -> -3
    assert m["MAE"] == 0.45
    m = regression_metrics([2.4, -2.6], [3.0, -3.0])
    assert m["Mult_acc_7"] == 0.5  # round(2.4) = 2 misses 3; round(-2.6) = -3 hits
    m = regression_metrics([2.4], [3.0])
    assert m["Mult_acc_7"] == 0.0
    assert m["Mult_acc_5"] == 1.0  # both clip to 2


def test_two_dimensional_inputs_are_flattened():
    pred, true = np.array([[0.4], [-1.2], [2.2]]), np.array([0.0, -1.0, 2.5])
    assert regression_metrics(pred, true) == regression_metrics(pred.ravel(), true)


@pytest.mark.parametrize("seed", range(40))
def test_matches_mmsa_with_sklearn_on_random_data(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 300))
    true = np.round(rng.uniform(-3, 3, n), 1)
    true[rng.uniform(size=n) < 0.15] = 0.0
    pred = rng.normal(0.3 * true, 1.5)
    if seed % 4 == 0:  # predictions on the label grid: ties at exactly 0 and .5
        pred = np.round(pred * 2) / 2
    ours, ref = regression_metrics(pred, true), mmsa_reference(pred, true)
    assert ours.keys() == ref.keys()
    for key in ours:
        assert ours[key] == pytest.approx(float(ref[key]), abs=1e-12), key


@pytest.mark.parametrize(
    "pred,true",
    [
        ([1.0, 2.0, 0.5], [1.0, 2.0, 3.0]),  # everything positive
        ([-1.0, -2.0, -0.5], [1.0, 2.0, 3.0]),  # all predictions wrong
        ([1.0, -2.0, 0.5], [-1.0, -2.0, -3.0]),  # all labels negative
        ([1.0, 1.0, 1.0], [-1.0, 2.0, -3.0]),  # constant predictions
        ([0.0, 0.0, -1.0], [0.0, 1.0, -2.0]),  # predictions at exactly 0
    ],
)
def test_degenerate_classes_match_sklearn(pred, true):
    ours, ref = regression_metrics(pred, true), mmsa_reference(np.array(pred), np.array(true))
    for key in ("Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score", "Mult_acc_5", "Mult_acc_7",
                "MAE"):
        assert ours[key] == pytest.approx(float(ref[key]), abs=1e-12), key


@pytest.mark.parametrize("seed", range(30))
def test_weighted_f1_matches_sklearn_including_missing_classes(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 20))
    k_true, k_pred = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    true, pred = rng.integers(0, k_true, n), rng.integers(0, k_pred, n) + int(rng.integers(0, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = f1_score(true, pred, average="weighted")
    assert weighted_f1(true, pred) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "true,pred",
    [([1, 1, 1], [1, 1, 1]), ([1, 1, 1], [0, 0, 0]), ([0, 0, 0], [0, 0, 0]), ([1, 1, 0], [1, 1, 1]),
     ([0, 1], [1, 0]), ([True], [False])],
)
def test_weighted_f1_degenerate_cases_match_sklearn(true, pred):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = f1_score(true, pred, average="weighted")
    assert weighted_f1(np.array(true), np.array(pred)) == pytest.approx(expected, abs=1e-12)


def test_constant_predictions_give_nan_correlation_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = regression_metrics([0.5, 0.5, 0.5], [1.0, -1.0, 2.0])
    assert math.isnan(m["Corr"])
    assert m["MAE"] == round((0.5 + 1.5 + 1.5) / 3, 4)


def test_all_zero_labels_give_nan_non0_scores():
    m = regression_metrics([0.5, -0.5], [0.0, 0.0])
    assert math.isnan(m["Non0_acc_2"]) and math.isnan(m["Non0_F1_score"])
    assert m["Has0_acc_2"] == 0.5


def test_empty_or_mismatched_inputs_are_rejected():
    with pytest.raises(ValueError, match="no samples"):
        regression_metrics([], [])
    with pytest.raises(ValueError, match="3 predictions but 2 labels"):
        regression_metrics([1, 2, 3], [1, 2])


def test_format_metrics_is_one_line_in_order():
    line = format_metrics(regression_metrics([0.1, -1.0, 2.0], [0.3, -0.5, 1.0]))
    assert "\n" not in line
    assert line.startswith("Has0_acc_2: ")
    assert line.index("Mult_acc_7") < line.index("MAE") < line.index("Corr")


def test_emotion_metrics_count_only_samples_with_an_emotion_and_average_recall_over_present_classes() -> None:
    from dmd_model.training.metrics import emotion_metrics

    logits = np.eye(4)[[0, 0, 1, 2, 2, 2, 3]]  # predictions 0 0 1 2 2 2 3
    true = np.array([0, 1, 1, 2, 2, -1, -1])     # the last two have no emotion
    m = emotion_metrics(logits, true, classes=4)
    assert m["n"] == 5 and m["accuracy"] == 0.8
    assert m["uar"] == round((1.0 + 0.5 + 1.0) / 3, 4)  # class 3 is not in the truth: not averaged
    assert m["confusion"] == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 2, 0], [0, 0, 0, 0]]
    from sklearn.metrics import f1_score

    assert m["weighted_f1"] == round(f1_score([0, 1, 1, 2, 2], [0, 0, 1, 2, 2], average="weighted"), 4)
    assert emotion_metrics(logits, -np.ones(7, int), classes=4)["uar"] is None
