"""Stratified (and patient-grouped) splits: k-fold test folds and a validation hold-out within a fold.

Items of one group (patient) always land on the same side of a split. Splits come from scikit-learn's
StratifiedKFold / StratifiedGroupKFold, seeded, so a run's splits are reproducible from its seed.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from cmamil.errors import InputError

__all__ = ["assign_folds", "holdout_mask"]


def assign_folds(
    labels: Sequence[int], k: int, *, groups: Sequence[str] | None = None, seed: int = 0
) -> np.ndarray:
    """Fold index (0..k-1) of every item: stratified by label, grouped so a group sits in one fold."""
    labels = np.asarray(labels)
    units = len(set(groups)) if groups is not None else len(labels)
    if k < 2 or units < k:
        what = "patients" if groups is not None else "items"
        raise InputError(f"cannot make {k} folds from {units} {what}; lower --folds or add data")
    fold = np.full(len(labels), -1, dtype=int)
    for index, (_, test) in enumerate(_splitter(k, groups, seed).split(np.zeros(len(labels)), labels, groups)):
        fold[test] = index
    return fold


def holdout_mask(
    labels: Sequence[int], fraction: float, *, groups: Sequence[str] | None = None, seed: int = 0
) -> np.ndarray:
    """Boolean mask of a stratified (grouped) share `fraction` of the items, e.g. a validation set."""
    labels = np.asarray(labels)
    if not 0.0 < fraction < 1.0:
        raise InputError(f"a hold-out fraction must lie between 0 and 1, got {fraction}")
    k = max(2, round(1.0 / fraction))
    units = len(set(groups)) if groups is not None else len(labels)
    if units < k:
        raise InputError(f"cannot hold out {fraction:.0%} of only {units} items/patients; add data")
    _, held = next(_splitter(k, groups, seed).split(np.zeros(len(labels)), labels, groups))
    mask = np.zeros(len(labels), dtype=bool)
    mask[held] = True
    return mask


def _splitter(k: int, groups: Sequence[str] | None, seed: int):
    """A shuffled stratified splitter, grouped when groups are given."""
    if groups is None:
        return _Quiet(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed))
    return _Quiet(StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed))


class _Quiet:
    """Wrap a splitter: silence the 'least populated class' warning (a small class is legal here)."""

    def __init__(self, splitter) -> None:
        self.splitter = splitter

    def split(self, x, y, groups=None):
        import warnings

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The least populated class")
            yield from self.splitter.split(x, y, groups)
