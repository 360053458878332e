"""The k-fold run folder, shared by every kind of training: fold outputs, resume, summaries and the table.

    runs/NAME/config.yaml          every option, class names, versions, hardware
    runs/NAME/splits/fold_K.csv    the ids of each fold's train/val/test parts
    runs/NAME/fold_K/              checkpoint.pt, predictions.csv, history.csv, TensorBoard events, metrics.json
    runs/NAME/summary.json|csv     per-fold test metrics and mean ± std
    runs/NAME/figures/             ROC, PR, confusion matrix, training curves (written by the report)

A fold is finished when its `metrics.json` exists: it is written last, atomically, after every other output
of the fold, so a rerun skips finished folds and restarts unfinished ones from scratch.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, Sequence

from cmamil.atomic import write_json, write_text
from cmamil.errors import InputError
from cmamil.metrics import HEADLINE, summarize_folds

__all__ = [
    "FOLD_MARKER",
    "fold_dir",
    "fold_finished",
    "format_summary",
    "read_fold_metrics",
    "reset_fold",
    "summarize_run",
]

FOLD_MARKER = "metrics.json"


def fold_dir(run_dir: str | Path, fold: int) -> Path:
    """The folder of fold `fold` in a run."""
    return Path(run_dir) / f"fold_{fold}"


def fold_finished(run_dir: str | Path, fold: int) -> bool:
    """Whether fold `fold` completed (its metrics.json exists)."""
    return (fold_dir(run_dir, fold) / FOLD_MARKER).is_file()


def reset_fold(run_dir: str | Path, fold: int) -> Path:
    """Empty a fold's folder (leftovers of an interrupted or overwritten attempt) and return it."""
    folder = fold_dir(run_dir, fold)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def read_fold_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The metrics.json of every finished fold, ordered by fold number."""
    folders = sorted(Path(run_dir).glob(f"fold_*/{FOLD_MARKER}"), key=lambda p: int(p.parent.name.split("_")[1]))
    return [json.loads(p.read_text()) for p in folders]


def summarize_run(run_dir: str | Path, class_names: Sequence[str], keys: Sequence[str] = HEADLINE) -> dict[str, Any]:
    """Per-fold test metrics and their mean ± std over finished folds; written to summary.json and summary.csv."""
    run_dir = Path(run_dir)
    folds = read_fold_metrics(run_dir)
    if not folds:
        raise InputError(f"{run_dir} has no finished fold (no fold_K/{FOLD_MARKER}); train it first")
    rows = [{"fold": f["fold"], "n": f["test"]["n"], **{k: f["test"].get(k) for k in keys}} for f in folds]
    summary = {
        "class_names": list(class_names),
        "keys": list(keys),
        "folds": rows,
        "mean_std": summarize_folds([f["test"] for f in folds], keys),
    }
    write_json(run_dir / "summary.json", summary)
    lines = [",".join(["fold", "n", *keys])]
    lines += [",".join(str(r[k]) for k in ["fold", "n", *keys]) for r in rows]
    for stat in ("mean", "std"):
        lines.append(",".join([stat, ""] + [str(summary["mean_std"][k][stat]) for k in keys]))
    write_text(run_dir / "summary.csv", "\n".join(lines) + "\n")
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The per-fold and mean ± std table of a summary, as aligned plain text."""
    keys = summary["keys"]
    header = ["fold", "n", *keys]
    body = [[str(r["fold"]), str(r["n"]), *(_number(r[k]) for k in keys)] for r in summary["folds"]]
    body.append(["mean±std", "", *(f"{_number(summary['mean_std'][k]['mean'])}±{_number(summary['mean_std'][k]['std'])}"
                                   for k in keys)])
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *body])


def _number(value: Any) -> str:
    return "nan" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"
