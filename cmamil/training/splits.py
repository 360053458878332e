"""Cross-validation splits: stratified k-fold grouped by patient, a validation part carved from each training part.

Items of one group (patient) always land on the same side of a split. Splits come from scikit-learn's
StratifiedKFold / StratifiedGroupKFold, seeded, so a run's splits are reproducible from its seed. A fold's
file `fold_K.csv` has the columns `id,split` (split ∈ train, val, test), one row per item; reused splits may
also be CLAM-style files (`splits_K.csv` with the columns train, val, test, each listing ids).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from cmamil.atomic import write_text
from cmamil.errors import InputError

__all__ = ["PARTS", "Split", "assign_folds", "holdout_mask", "load_splits", "make_splits", "save_splits"]

PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """The ids of one fold's training, validation and test parts (disjoint)."""

    fold: int
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def __post_init__(self) -> None:
        parts = [set(self.train), set(self.val), set(self.test)]
        if any(a & b for i, a in enumerate(parts) for b in parts[i + 1:]):
            raise InputError(f"fold {self.fold}: an id appears in more than one of train, val, test")
        if not self.train or not self.test:
            raise InputError(f"fold {self.fold}: the train and test parts must not be empty")


def make_splits(
    ids: Sequence[str],
    labels: Sequence[int],
    groups: Sequence[str] | None = None,
    *,
    folds: int = 5,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> list[Split]:
    """Stratified k-fold over groups (patients; each id its own group when None), with a stratified grouped
    validation part of about `val_fraction` of each training part (none when 0)."""
    ids = np.asarray(ids, dtype=object)
    labels = np.asarray(labels)
    groups = np.asarray(groups if groups is not None else ids, dtype=object)
    _check_enough(labels, groups, folds, "--folds")
    fold_of = assign_folds(labels, folds, groups=groups, seed=seed)
    splits = []
    for fold in range(folds):
        train, test = np.flatnonzero(fold_of != fold), np.flatnonzero(fold_of == fold)
        val = np.array([], dtype=int)
        if val_fraction > 0:  # every class needs a patient on each side; holdout_mask checks the total
            _check_enough(labels[train], groups[train], 2, f"--val-fraction {val_fraction} in fold {fold}")
            held = holdout_mask(labels[train], val_fraction, groups=groups[train], seed=seed + fold)
            train, val = train[~held], train[held]
        splits.append(Split(fold, *(tuple(ids[np.sort(p)]) for p in (train, val, test))))
    return splits


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
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The least populated class")
            yield from self.splitter.split(x, y, groups)


def _check_enough(labels: np.ndarray, groups: np.ndarray, parts: int, option: str) -> None:
    """Every class needs at least `parts` groups, so that each part can hold every class."""
    for label in np.unique(labels):
        n = len(set(groups[labels == label]))
        if n < parts:
            raise InputError(
                f"class {label} has {n} patient(s)/slide(s), fewer than the {parts} parts that {option} needs; "
                "lower --folds or --val-fraction, or add data"
            )


def save_splits(splits: Sequence[Split], folder: str | Path) -> None:
    """Write `fold_K.csv` (id,split) per fold, atomically."""
    for split in splits:
        rows = [f"{i},{part}" for part in PARTS for i in getattr(split, part)]
        write_text(Path(folder) / f"fold_{split.fold}.csv", "id,split\n" + "\n".join(rows) + "\n")


def load_splits(folder: str | Path, known: Sequence[str] | None = None) -> list[Split]:
    """Read `fold_K.csv` (id,split; `slide_id` also accepted) or CLAM-style `splits_K.csv` (train,val,test
    columns) files, ordered by K; ids outside `known` are an error."""
    import pandas as pd

    folder = Path(folder)
    files = sorted(
        (int(m.group(2)), p)
        for p in folder.glob("*.csv")
        if (m := re.fullmatch(r"(fold|splits)_(\d+)\.csv", p.name))
    )
    if not files:
        raise InputError(f"{folder} holds no fold_K.csv or splits_K.csv files")
    known_set = set(known) if known is not None else None
    splits = []
    for fold, (_, path) in enumerate(files):
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        table.columns = [c.strip() for c in table.columns]
        id_column = next((c for c in ("id", "slide_id") if c in table.columns), None)
        if id_column and "split" in table.columns:
            parts = {p: [i.strip() for i in table.loc[table["split"].str.strip() == p, id_column]] for p in PARTS}
        elif {"train", "test"} <= set(table.columns):
            parts = {p: [i.strip() for i in table.get(p, []) if i.strip()] for p in PARTS}
        else:
            raise InputError(
                f"{path} has columns {', '.join(table.columns)}; expected id,split or CLAM-style train,val,test"
            )
        if known_set is not None:
            unknown = sorted({i for p in parts.values() for i in p} - known_set)
            if unknown:
                shown = ", ".join(unknown[:5]) + (" …" if len(unknown) > 5 else "")
                raise InputError(f"{path} names {len(unknown)} id(s) missing from the labels: {shown}")
        splits.append(Split(fold, *(tuple(parts[p]) for p in PARTS)))
    return splits
