"""The run-folder contract, the same for every kind of model, and the one reader of finished runs.

    runs/NAME/config.yaml          kind (bags | patches), every option, the fingerprint a resume must match
                                   (options, and inputs: labels sha256, feature fingerprint, images), class
                                   names, data counts, versions, world_size (processes that trained it)
    runs/NAME/splits/fold_K.csv    id,split (train | val | test): the items of each fold's parts
    runs/NAME/fold_K/              checkpoint.pt   best epoch's weights and what rebuilds the model
                                   last.pt         the latest epoch's full state while training (resume point)
                                   history.csv     one row per epoch: lr, train/val loss and metrics, seconds
                                   predictions.csv the test part (see cmamil.training.predictions)
                                   metrics.json    best epoch, val and test metrics, the rank that trained
                                                   it and the world size; written last
                                   events.out.tfevents.*  TensorBoard scalars, figures, PR curves, hparams
    runs/NAME/summary.json|csv     per-fold test metrics and mean ± std
    runs/NAME/figures/             pooled ROC, PR, confusion matrix, per-fold training curves

A fold is finished when its metrics.json exists; an unfinished fold resumes from last.pt. A run whose folds have
made progress is resumed only with the same options and inputs (else refused, or redone with --overwrite); a run
folder with no progress (a failed start) is simply started again. A run with split folders instead of k-fold has
one fold, fold_0.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Sequence

from cmamil.atomic import write_csv, write_yaml
from cmamil.errors import InputError
from cmamil.training.splits import Split, load_splits, save_splits

__all__ = ["FOLD_MARKER", "INPUTS", "KINDS", "LAST", "RunFolder", "write_history"]

FOLD_MARKER = "metrics.json"
LAST = "last.pt"
KINDS = ("bags", "patches")
# the inputs a run records (config.yaml: fingerprint.inputs) and a resume must match, as named to the user
INPUTS = {
    "labels_sha256": "the labels file's content",
    "features_sha256": "the feature files (their fingerprint)",
    "splits_sha256": "the --splits files",
    "images_sha256": "the image files",
}


class RunFolder:
    """Paths and state of one run folder (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def splits_dir(self) -> Path:
        return self.root / "splits"

    @property
    def figures_dir(self) -> Path:
        return self.root / "figures"

    def fold_dir(self, fold: int) -> Path:
        """The folder of fold `fold`."""
        return self.root / f"fold_{fold}"

    def fold_finished(self, fold: int) -> bool:
        """Whether fold `fold` completed (its metrics.json exists)."""
        return (self.fold_dir(fold) / FOLD_MARKER).is_file()

    def reset_fold(self, fold: int) -> Path:
        """Empty a fold's folder (an overwritten attempt) and return it."""
        folder = self.fold_dir(fold)
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        return folder

    def finished_folds(self) -> list[int]:
        """Numbers of the finished folds, ascending."""
        found = (p.parent.name for p in self.root.glob(f"fold_*/{FOLD_MARKER}"))
        return sorted(int(name.split("_", 1)[1]) for name in found if name.split("_", 1)[1].isdigit())

    def fold_metrics(self) -> list[dict[str, Any]]:
        """The metrics.json of every finished fold, ordered by fold number."""
        return [json.loads((self.fold_dir(k) / FOLD_MARKER).read_text()) for k in self.finished_folds()]

    def checkpoints(self) -> dict[int, Path]:
        """The best checkpoint of every finished fold."""
        return {k: self.fold_dir(k) / "checkpoint.pt" for k in self.finished_folds()}

    def read_config(self) -> dict[str, Any]:
        """config.yaml as written by `write_config`; a folder without one is not a run."""
        import yaml

        if not self.config_path.is_file():
            raise InputError(f"{self.root} is not a run folder (no config.yaml); pass a folder made by cmamil train")
        data = yaml.safe_load(self.config_path.read_text()) or {}
        if data.get("kind") not in KINDS:
            raise InputError(f"{self.config_path} names no run kind ({', '.join(KINDS)}); retrain with this cmamil")
        return data

    @property
    def kind(self) -> str:
        """'bags' or 'patches'."""
        return self.read_config()["kind"]

    @property
    def class_names(self) -> tuple[str, ...]:
        """The run's classes, in the order of the model's outputs."""
        return tuple(str(n) for n in self.read_config()["class_names"])

    def previous_classes(self) -> tuple[str, ...] | None:
        """Class names of an existing run (so that resuming maps labels the same way), else None."""
        return self.class_names if self.config_path.is_file() else None

    def has_progress(self) -> bool:
        """Whether any fold has finished an epoch (a resume point or a finished fold): work a rerun must match."""
        return any(self.root.glob(f"fold_*/{FOLD_MARKER}")) or any(self.root.glob(f"fold_*/{LAST}"))

    def check_options(self, fingerprint: dict[str, Any]) -> None:
        """Refuse to resume a run made with other options (the fingerprint of its config, inputs aside)."""
        if not self.config_path.is_file():
            return
        previous = {k: v for k, v in self.read_config().get("fingerprint", {}).items() if k != "inputs"}
        now = {k: v for k, v in json.loads(json.dumps(fingerprint)).items() if k != "inputs"}
        changed = sorted(k for k in set(previous) | set(now) if previous.get(k) != now.get(k))
        if changed:
            detail = ", ".join(f"{k}: {previous.get(k)!r} → {now.get(k)!r}" for k in changed)
            raise InputError(f"{self.root} was trained with other options ({detail}); use another --out or --overwrite")

    def check_inputs(self, inputs: dict[str, str]) -> None:
        """Refuse to resume a run made on other inputs (labels content, feature fingerprint, images, splits)."""
        if not self.config_path.is_file():
            return
        previous = self.read_config().get("fingerprint", {}).get("inputs") or {}
        changed = sorted(k for k in set(previous) | set(inputs) if previous.get(k) != inputs.get(k))
        if changed:
            detail = "; ".join(f"{INPUTS.get(k, k)} changed (sha256 {_short(previous.get(k))} → "
                               f"{_short(inputs.get(k))})" for k in changed)
            raise InputError(f"{self.root} was trained on other inputs: {detail}; use another --out, or --overwrite "
                             "to retrain on these")

    def write_config(self, kind: str, options: dict[str, Any], fingerprint: dict[str, Any],
                     class_names: Sequence[str], data: dict[str, Any], world_size: int = 1) -> None:
        """Write config.yaml: the kind, every option, what a resume must match, classes, data, environment, and
        how many processes trained the run (`world_size`, >1 under torchrun)."""
        from cmamil.environment import environment_info

        write_yaml(self.config_path, {
            "kind": kind, "config": options, "fingerprint": fingerprint, "class_names": list(class_names),
            "data": data, "environment": environment_info(), "world_size": world_size,
        })

    def saved_splits(self, known: Sequence[str]) -> list[Split] | None:
        """The run's own splits (for resuming), else None."""
        if self.splits_dir.is_dir() and any(self.splits_dir.glob("fold_*.csv")):
            return load_splits(self.splits_dir, known)
        return None

    def save_splits(self, splits: Sequence[Split]) -> None:
        """Write splits/fold_K.csv for every fold."""
        save_splits(splits, self.splits_dir)


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    """history.csv: one row per epoch, every key of any row a column."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    write_csv(path, keys, [[_cell(row.get(k)) for k in keys] for row in rows])


def _short(digest: str | None) -> str:
    return "not recorded" if digest is None else f"{digest[:8]}…"


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else value
