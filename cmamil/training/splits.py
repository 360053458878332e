"""Cross-validation splits: stratified k-fold grouped by patient, a validation part carved from each training part.

Items of one group (patient) always land on the same side of a split. Splits come from scikit-learn's
StratifiedKFold / StratifiedGroupKFold, seeded, so a run's splits are reproducible from its seed. A fold's
file `fold_K.csv` has the columns `id,split` (split ∈ train, val, test), one row per item; reused splits may
also be CLAM-style files (`splits_K.csv` with the columns train, val, test, each listing ids).
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from cmamil.atomic import write_text
from cmamil.errors import InputError
from cmamil.text_table import align

__all__ = [
    "PARTS",
    "Split",
    "assign_folds",
    "format_splits",
    "holdout_mask",
    "largest_folds",
    "load_splits",
    "make_splits",
    "save_splits",
]

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
    class_names: Sequence[str] | None = None,
    unit: str = "item",
) -> list[Split]:
    """Stratified k-fold over groups (patients; each id its own group when None), with a stratified grouped
    validation part of about `val_fraction` of each training part (none when 0).

    Every class must meet `cmamil.training.config.FOLD_RULE` (`unit` names what an id is in the error, e.g. slide or image)."""
    ids = np.asarray(ids, dtype=object)
    labels = np.asarray(labels)
    names = list(class_names) if class_names is not None else [str(c) for c in range(int(labels.max()) + 1)]
    unit = "patient" if groups is not None else unit
    groups = np.asarray(groups if groups is not None else ids, dtype=object)
    _check_fold_rule(labels, groups, folds, val_fraction > 0, names, unit)
    fold_of = assign_folds(labels, folds, groups=groups, seed=seed)
    splits = []
    for fold in range(folds):
        train, test = np.flatnonzero(fold_of != fold), np.flatnonzero(fold_of == fold)
        val = np.array([], dtype=int)
        if val_fraction > 0:  # every class needs a patient on each side; holdout_mask checks the total
            _check_training_part(labels[train], groups[train], fold, names, unit)
            held = holdout_mask(labels[train], val_fraction, groups=groups[train], seed=seed + fold)
            train, val = train[~held], train[held]
        splits.append(Split(fold, *(tuple(ids[np.sort(p)]) for p in (train, val, test))))
    return splits


def largest_folds(counts: Sequence[int], with_val: bool) -> int | None:
    """The largest --folds that classes of `counts` patients (or items) allow under `FOLD_RULE`; None if not 2."""
    fitting = [k for k in range(2, min(counts) + 1) if all(_fits(n, k, with_val) for n in counts)]
    return max(fitting) if fitting else None


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


def _fits(n: int, k: int, with_val: bool) -> bool:
    """Whether a class of `n` patients meets `FOLD_RULE` for `k` folds."""
    return n >= k and (not with_val or n - math.ceil(n / k) >= 2)


def _check_fold_rule(labels: np.ndarray, groups: np.ndarray, folds: int, with_val: bool, names: list[str],
                     unit: str) -> None:
    """Every class must meet FOLD_RULE; the error names the classes that do not and the largest --folds that works."""
    counts = {names[c]: len(set(groups[labels == c])) for c in np.unique(labels)}
    short = [f"class '{name}' has {n} {unit}{'s' if n != 1 else ''}" for name, n in counts.items()
             if not _fits(n, folds, with_val)]
    if not short:
        return
    largest = largest_folds(list(counts.values()), with_val)
    need = f"--folds {folds} needs at least {folds} {unit}s per class"
    if with_val:
        need += " and n − ⌈n/K⌉ ≥ 2 of a class's n left for training in each fold (for --val-fraction)"
    advice = (f"the largest --folds that works is {largest}" if largest is not None
              else "no --folds works: add data" + (" or pass --val-fraction 0" if with_val else ""))
    raise InputError(f"{', '.join(short)}; {need}; {advice}")


def _check_training_part(labels: np.ndarray, groups: np.ndarray, fold: int, names: list[str], unit: str) -> None:
    """Every class needs two groups in a fold's training part, so that validation can take one."""
    for label in np.unique(labels):
        n = len(set(groups[labels == label]))
        if n < 2:
            raise InputError(
                f"fold {fold}: class '{names[label]}' has {n} {unit} in the training part, fewer than the 2 that "
                "--val-fraction needs; lower --folds or --val-fraction, or add data"
            )


def format_splits(splits: Sequence[Split], label_of: dict[str, int], class_names: Sequence[str],
                  patient_of: dict[str, str] | None = None, unit: str = "item") -> str:
    """A table of every fold's parts: items per class, and patients per class when items are grouped."""
    header = ["fold", "part", *class_names]
    rows = []
    for split in splits:
        for part in PARTS:
            ids = getattr(split, part)
            cells = []
            for c in range(len(class_names)):
                members = [i for i in ids if label_of[i] == c]
                cell = str(len(members))
                if patient_of is not None:
                    n = len({patient_of[i] for i in members})
                    cell += f" ({n} patient{'s' if n != 1 else ''})"
                cells.append(cell)
            rows.append([str(split.fold), part, *cells])
    lines = align([header, *rows])
    return "\n".join([f"{unit}s per class in each part of each fold:", *lines])


def save_splits(splits: Sequence[Split], folder: str | Path) -> None:
    """Write `fold_K.csv` (id,split) per fold, atomically."""
    for split in splits:
        rows = [f"{i},{part}" for part in PARTS for i in getattr(split, part)]
        write_text(Path(folder) / f"fold_{split.fold}.csv", "id,split\n" + "\n".join(rows) + "\n")


def load_splits(folder: str | Path, known: Sequence[str] | None = None) -> list[Split]:
    """Read `fold_K.csv` (id,split; `slide_id` also accepted) or CLAM-style `splits_K.csv` (train,val,test
    columns) files, ordered by K; ids outside `known`, and ids of `known` in no part of a fold, are errors."""
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
            listed = {i for p in parts.values() for i in p}
            unknown, left_out = sorted(listed - known_set), sorted(known_set - listed)
            if unknown:
                raise InputError(f"{path} names {len(unknown)} id(s) missing from the labels: {_shown(unknown)}")
            if left_out:
                raise InputError(f"{path} leaves out {len(left_out)} labelled id(s): {_shown(left_out)}; add them to "
                                 "a part (train, val or test) or remove them from the labels")
        splits.append(Split(fold, *(tuple(parts[p]) for p in PARTS)))
    return splits


def _shown(ids: Sequence[str]) -> str:
    """The first five ids, and an ellipsis when there are more."""
    return ", ".join(ids[:5]) + (" …" if len(ids) > 5 else "")
