"""The report of a k-fold run: the per-fold and mean ± std table, and figures from the fold outputs.

Figures (in `runs/NAME/figures/`): `roc.png`, `pr.png` and `confusion_matrix.png` over the test predictions of
every fold pooled, and `fold_K_training.png` per fold (loss and validation curves per epoch).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cmamil.errors import InputError
from cmamil.kfold import format_summary, read_fold_metrics, summarize_run

__all__ = ["report_run", "write_figures"]


def _class_names(run_dir: Path) -> list[str]:
    """Class names from summary.json, else config.yaml."""
    summary = run_dir / "summary.json"
    if summary.exists():
        return json.loads(summary.read_text())["class_names"]
    config = run_dir / "config.yaml"
    if config.exists():
        import yaml

        names = (yaml.safe_load(config.read_text()) or {}).get("class_names")
        if names:
            return [str(n) for n in names]
    raise InputError(f"{run_dir} is not a run folder (no summary.json or config.yaml with class names)")


def write_figures(run_dir: str | Path) -> list[Path]:
    """ROC, PR and confusion-matrix figures of the pooled test predictions, and per-fold training curves."""
    import pandas as pd

    from cmamil.figures import (
        plot_confusion_matrix,
        plot_pr_curves,
        plot_roc_curves,
        plot_training_curves,
        save_figure,
    )
    from cmamil.metrics import classification_metrics

    run_dir = Path(run_dir)
    names = _class_names(run_dir)
    out = run_dir / "figures"
    written = []
    pooled_y, pooled_p = [], []
    for metrics in read_fold_metrics(run_dir):
        fold = metrics["fold"]
        folder = run_dir / f"fold_{fold}"
        predictions = pd.read_csv(folder / "predictions.csv", dtype={"slide_id": str})
        y = predictions["label"].to_numpy(dtype=int)
        p = predictions[[f"prob_{n}" for n in names]].to_numpy(dtype=float)
        pooled_y.append(y)
        pooled_p.append(p)
        history = folder / "history.csv"
        if history.exists():
            rows = pd.read_csv(history).to_dict("records")
            keys = [k for k in ("train_loss", "val_loss", f"val_{metrics.get('monitor', 'auc')}") if k in rows[0]]
            figure = plot_training_curves(rows, list(dict.fromkeys(keys)), title=f"fold {fold}")
            written.append(save_figure(figure, out / f"fold_{fold}_training.png"))
    if not pooled_y:
        raise InputError(f"{run_dir} has no finished fold to report")
    y, p = np.concatenate(pooled_y), np.concatenate(pooled_p)
    cm = classification_metrics(y, p, names)["confusion_matrix"]
    written.append(save_figure(plot_roc_curves(y, p, names, title="ROC, all folds pooled"), out / "roc.png"))
    written.append(save_figure(plot_pr_curves(y, p, names, title="PR, all folds pooled"), out / "pr.png"))
    written.append(save_figure(plot_confusion_matrix(cm, names, title="test, all folds pooled"),
                               out / "confusion_matrix.png"))
    return written


def report_run(run_dir: str | Path) -> tuple[str, list[Path]]:
    """The run's per-fold and mean ± std table (summary refreshed from the finished folds) and its figures."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"run folder {run_dir} does not exist")
    summary = summarize_run(run_dir, _class_names(run_dir))
    return format_summary(summary), write_figures(run_dir)
