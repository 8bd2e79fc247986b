"""MMSA's regression metrics for MOSI and MOSEI (`MetricsTop.__eval_mosei_regression`).

DMD, like every MMSA model, reports these numbers; reproducing the paper's table means computing
them exactly as MMSA does, quirks included:

- Acc-7 / Acc-5 clip predictions and labels to [-3, 3] / [-2, 2] and compare `np.round` of both.
  NumPy rounds half to even (0.5 -> 0, 1.5 -> 2, -2.5 -> -2); MMSA relies on that, so do we.
- "Non0" drops the samples whose label is exactly 0 and calls `x > 0` positive; "Has0" keeps every
  sample and calls `x >= 0` positive, so a zero label counts as positive there.
- F1 is scikit-learn's `f1_score(truth, preds, average='weighted')`, re-implemented here in NumPy
  so that the model package does not depend on scikit-learn.
- Every value is rounded to 4 decimals, as MMSA does: accuracies and F1 (Python floats in
  scikit-learn) with Python's `round`, Mult/MAE/Corr (NumPy floats in MMSA) with `np.round`.

NaN in two cases. "Corr" is NaN, as in MMSA, when predictions or labels are exactly constant (or
there is one sample): `np.corrcoef` divides by a zero deviation. Constant only up to floating-point
error (three times 0.7, whose mean is not exactly 0.7) gives a meaningless value near 0 instead,
also as in MMSA. The two "Non0" values are NaN when every label is 0, where MMSA crashes.
"""

from __future__ import annotations

import warnings

import numpy as np

METRIC_KEYS: tuple[str, ...] = (
    "Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score", "Mult_acc_5", "Mult_acc_7", "MAE", "Corr",
)


def weighted_f1(true: np.ndarray, pred: np.ndarray) -> float:
    """scikit-learn's `f1_score(true, pred, average='weighted')`, for any discrete labels.

    The classes are those seen in either array. A class with no true or no predicted samples has
    F1 0 (scikit-learn's `zero_division` default, without its warning); each class's F1 is weighted
    by its true support, so a class that appears only in the predictions weighs nothing.
    """
    true = np.asarray(true).reshape(-1)
    pred = np.asarray(pred).reshape(-1)
    if true.shape != pred.shape:
        raise ValueError(f"weighted_f1: {true.size} labels but {pred.size} predictions; give one per sample")
    if true.size == 0:
        raise ValueError("weighted_f1: no samples; give at least one label and prediction")
    scores, supports = [], []
    for c in np.union1d(true, pred):
        is_true, is_pred = true == c, pred == c
        tp = np.count_nonzero(is_true & is_pred)
        denom = np.count_nonzero(is_true) + np.count_nonzero(is_pred)  # = 2tp + fp + fn
        scores.append(2.0 * tp / denom if denom else 0.0)
        supports.append(np.count_nonzero(is_true))
    return float(np.average(scores, weights=supports))


def _multiclass_acc(pred: np.ndarray, true: np.ndarray) -> float:
    return np.sum(np.round(pred) == np.round(true)) / float(len(true))


def regression_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """MMSA's MOSI/MOSEI regression metrics of predictions against labels (sentiment in [-3, 3]).

    Both inputs are flattened, so (N,), (N, 1) and tensors converted with `.numpy()` all work.
    Returns the keys of `METRIC_KEYS`, each a float rounded to 4 decimals; see the module
    docstring for the definitions and the two NaN cases.
    """
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    true = np.asarray(true, dtype=np.float64).reshape(-1)
    if pred.shape != true.shape:
        raise ValueError(
            f"regression_metrics: {pred.size} predictions but {true.size} labels; "
            "give one prediction per label"
        )
    if pred.size == 0:
        raise ValueError("regression_metrics: no samples; evaluate on at least one")

    mae = np.mean(np.abs(pred - true))
    # constant input or a single sample: NaN, documented above, without NumPy's warnings
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        corr = np.corrcoef(pred, true)[0][1]
    mult_a7 = _multiclass_acc(np.clip(pred, -3.0, 3.0), np.clip(true, -3.0, 3.0))
    mult_a5 = _multiclass_acc(np.clip(pred, -2.0, 2.0), np.clip(true, -2.0, 2.0))

    non_zero = true != 0
    if non_zero.any():
        nz_true, nz_pred = true[non_zero] > 0, pred[non_zero] > 0
        non0_acc = float(np.mean(nz_true == nz_pred))
        non0_f1 = weighted_f1(nz_true, nz_pred)
    else:
        non0_acc = non0_f1 = float("nan")

    has0_true, has0_pred = true >= 0, pred >= 0
    has0_acc = float(np.mean(has0_true == has0_pred))
    has0_f1 = weighted_f1(has0_true, has0_pred)

    return {
        "Has0_acc_2": round(has0_acc, 4),
        "Has0_F1_score": round(has0_f1, 4),
        "Non0_acc_2": round(non0_acc, 4),
        "Non0_F1_score": round(non0_f1, 4),
        "Mult_acc_5": float(np.round(np.float64(mult_a5), 4)),
        "Mult_acc_7": float(np.round(np.float64(mult_a7), 4)),
        "MAE": float(np.round(np.float64(mae), 4)),
        "Corr": float(np.round(np.float64(corr), 4)),
    }


def format_metrics(metrics: dict[str, float]) -> str:
    """One line for logs: `Has0_acc_2: 0.8123  Has0_F1_score: 0.8120  ...`, in the given order; an
    `emotion` member shows as its accuracy and UAR, other values that are not numbers are left out."""
    parts = []
    for k, v in metrics.items():
        if isinstance(v, dict) and k == "emotion":
            parts += [f"emotion_{m}: {v[m]:.4f}" for m in ("accuracy", "uar") if v.get(m) is not None]
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            parts.append(f"{k}: {v:.4f}")
    return "  ".join(parts)


def emotion_metrics(logits: np.ndarray, true: np.ndarray, classes: int) -> dict[str, object]:
    """The emotion task on the samples that have an emotion (`true` >= 0): `accuracy`, `uar` (the
    mean recall over the classes present in `true`: unweighted average recall, the usual figure for
    speech emotion, fair to rare classes), `weighted_f1` (as scikit-learn's) and `confusion`
    (rows true, columns predicted, `classes` x `classes`, class order of dmd_types.EMOTIONS), `n`.
    Values rounded to 4 decimals; None (and an empty confusion) when no sample has an emotion."""
    true = np.asarray(true).reshape(-1)
    keep = true >= 0
    pred = np.asarray(logits).reshape(len(true), -1)[keep].argmax(1)
    true = true[keep]
    confusion = np.zeros((classes, classes), np.int64)
    np.add.at(confusion, (true, pred), 1)
    if not true.size:
        return {"n": 0, "accuracy": None, "uar": None, "weighted_f1": None, "confusion": confusion.tolist()}
    support = confusion.sum(1)
    recalls = np.diag(confusion)[support > 0] / support[support > 0]
    return {"n": int(true.size), "accuracy": round(float((pred == true).mean()), 4),
            "uar": round(float(recalls.mean()), 4), "weighted_f1": round(weighted_f1(true, pred), 4),
            "confusion": confusion.tolist()}
