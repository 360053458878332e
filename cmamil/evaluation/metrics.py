"""Classification metrics from labels and class probabilities (scikit-learn), and their fold summaries.

One function serves bag (MIL) and patch models, so every report and table uses the same definitions:
AUC is binary ROC AUC for two classes and macro one-vs-rest AUC otherwise (undefined, NaN, when a class is
missing from y_true: `absent_classes` names it); precision/recall/F1 are macro and weighted; the confusion
matrix has rows = truth.

Absent classes: a macro average is taken over the classes that occur in y_true or in the predictions. A class
in neither has no defined precision or recall and is left out (it does not count as 0, so a perfect prediction
of a test part lacking a class scores 1.0); a class predicted but absent from y_true counts, with F1 0 (its
predictions are all wrong). Per-class entries list every class, with support 0 for an absent one.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np
import sklearn
from sklearn import metrics as skm

__all__ = ["HEADLINE", "classification_metrics", "summarize_folds"]

HEADLINE = ("auc", "accuracy", "balanced_accuracy", "f1_macro")


def classification_metrics(
    y_true: Sequence[int], probs: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """Every metric cmamil reports, for integer labels `y_true` and (N, C) class probabilities `probs`."""
    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=float)
    labels = list(range(len(class_names)))
    y_pred = probs.argmax(axis=1)
    with sklearn.config_context(skip_parameter_validation=True):  # our own arrays; checking them took a third
        return _metrics(y_true, probs, y_pred, labels, class_names)


def _metrics(y_true: np.ndarray, probs: np.ndarray, y_pred: np.ndarray, labels: list[int],
             class_names: Sequence[str]) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a fold may predict a class absent from y_true
        balanced = float(skm.balanced_accuracy_score(y_true, y_pred))
    out: dict[str, Any] = {
        "n": int(len(y_true)),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": balanced,
        "auc": _auc(y_true, probs, labels),
    }
    occurring = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    out["absent_classes"] = [name for i, name in enumerate(class_names) if i not in set(y_true.tolist())]
    for average in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=occurring if average == "macro" else labels, average=average, zero_division=0
        )
        out[f"precision_{average}"], out[f"recall_{average}"], out[f"f1_{average}"] = float(p), float(r), float(f)
    p, r, f, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    out["per_class"] = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
        for i, name in enumerate(class_names)
    }
    out["confusion_matrix"] = skm.confusion_matrix(y_true, y_pred, labels=labels).tolist()
    return out


def _auc(y_true: np.ndarray, probs: np.ndarray, labels: list[int]) -> float:
    """Binary or macro one-vs-rest ROC AUC; NaN when y_true does not hold every class."""
    if len(np.unique(y_true)) < len(labels) or len(labels) < 2:
        return math.nan
    if len(labels) == 2:
        return float(skm.roc_auc_score(y_true, probs[:, 1]))
    return float(skm.roc_auc_score(y_true, probs, multi_class="ovr", average="macro", labels=labels))


def summarize_folds(fold_metrics: Sequence[dict[str, Any]], keys: Sequence[str] = HEADLINE) -> dict[str, dict]:
    """Mean and sample standard deviation over folds of each scalar metric in `keys` (NaNs skipped)."""
    summary = {}
    for key in keys:
        values = np.array([m[key] for m in fold_metrics if not _isnan(m.get(key))], dtype=float)
        summary[key] = {
            "mean": float(values.mean()) if len(values) else math.nan,
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0 if len(values) else math.nan,
            "n": int(len(values)),
        }
    return summary


def _isnan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
