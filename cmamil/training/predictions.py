"""Predictions of a model on a set of items (bags or images), and their one CSV schema.

predictions.csv has the columns `id,patient_id,label,prediction,prob_<class>…`: `id` is the bag id or
the image path, `label` and `prediction` are class names (`label` is empty where the truth is unknown),
and there is one probability column per class in the run's class order. Every fold, evaluation and
prediction of every kind of run writes and reads this schema; a writer may add columns after them (`cmamil
predict` adds each fold's probabilities, `prob_<class>_fold_<K>`), which readers ignore.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from cmamil.atomic import write_csv
from cmamil.errors import InputError

__all__ = ["Predictions", "read_predictions", "write_predictions"]


@dataclass(frozen=True)
class Predictions:
    """Class probabilities (N, C) of N items, their ids, patients, true labels (-1: unknown) and mean loss."""

    ids: tuple[str, ...]
    patients: tuple[str, ...]
    y_true: np.ndarray
    probs: np.ndarray
    loss: float = float("nan")

    def __post_init__(self) -> None:
        n = len(self.ids)
        if len(self.patients) != n or len(self.y_true) != n or len(self.probs) != n:
            raise ValueError("predictions need one patient, label and probability row per id")

    @property
    def y_pred(self) -> np.ndarray:
        """The predicted class index of every item."""
        return self.probs.argmax(1) if len(self.probs) else np.zeros(0, dtype=int)

    def metrics(self, class_names: Sequence[str]) -> dict[str, Any]:
        """classification_metrics of the items with a known label, plus the loss."""
        from cmamil.evaluation.metrics import classification_metrics

        return {"loss": self.loss, **classification_metrics(self.y_true, self.probs, class_names)}


def write_predictions(path: str | Path, predictions: Predictions, class_names: Sequence[str],
                      extra: Mapping[str, Sequence[float]] | None = None) -> None:
    """Write predictions.csv (see the module docstring), atomically; `extra` adds float columns after the schema's."""
    names, extra = list(class_names), dict(extra or {})
    rows = [
        [item, patient, names[y] if y >= 0 else "", names[int(row.argmax())], *(f"{p:.6f}" for p in row),
         *(f"{float(column[i]):.6f}" for column in extra.values())]
        for i, (item, patient, y, row) in enumerate(zip(predictions.ids, predictions.patients, predictions.y_true,
                                                        predictions.probs))
    ]
    write_csv(path, ["id", "patient_id", "label", "prediction", *(f"prob_{n}" for n in names), *extra], rows)


def read_predictions(path: str | Path, class_names: Sequence[str]) -> Predictions:
    """Read a predictions.csv written by `write_predictions` back into Predictions."""
    import pandas as pd

    path = Path(path)
    frame = pd.read_csv(path, dtype={"id": str, "patient_id": str, "label": str}, keep_default_na=False)
    columns = [f"prob_{n}" for n in class_names]
    missing = [c for c in ("id", "label", *columns) if c not in frame.columns]
    if missing:
        raise InputError(f"{path} lacks the column(s) {', '.join(missing)}; it was not written by this cmamil")
    code = {name: i for i, name in enumerate(class_names)}
    return Predictions(
        tuple(frame["id"]), tuple(frame.get("patient_id", frame["id"])),
        np.array([code.get(label, -1) for label in frame["label"]], dtype=int),
        frame[columns].to_numpy(dtype=float),
    )
