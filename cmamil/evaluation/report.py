"""The report of a k-fold run: the per-fold and mean ± std table, and figures from the fold outputs.

Figures (in `runs/NAME/figures/`): `roc.png`, `pr.png` and `confusion_matrix.png` over the test predictions of
every fold pooled, and `fold_K_training.png` per fold (loss and validation curves per epoch).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cmamil.atomic import output_errors
from cmamil.errors import InputError
from cmamil.training.run_folder import RunFolder
from cmamil.training.summary import format_summary, summarize_run

__all__ = ["report_run", "write_figures"]


def write_figures(run_dir: str | Path) -> list[Path]:
    """ROC, PR and confusion-matrix figures of the pooled test predictions, and per-fold training curves."""
    import pandas as pd

    from cmamil.evaluation.figures import (
        plot_confusion_matrix,
        plot_pr_curves,
        plot_roc_curves,
        plot_training_curves,
        save_figure,
    )
    from cmamil.evaluation.metrics import classification_metrics
    from cmamil.training.predictions import read_predictions

    run = RunFolder(run_dir)
    names = list(run.class_names)
    out = run.figures_dir
    written = []
    pooled_y, pooled_p = [], []
    for metrics in run.fold_metrics():
        fold = metrics["fold"]
        folder = run.fold_dir(fold)
        predictions = read_predictions(folder / "predictions.csv", names)
        pooled_y.append(predictions.y_true)
        pooled_p.append(predictions.probs)
        history = folder / "history.csv"
        if history.exists():
            rows = pd.read_csv(history).to_dict("records")
            keys = [k for k in ("train_loss", "val_loss", f"val_{metrics.get('monitor', 'auc')}") if k in rows[0]]
            figure = plot_training_curves(rows, list(dict.fromkeys(keys)), title=f"fold {fold}")
            written.append(save_figure(figure, out / f"fold_{fold}_training.png"))
    if not pooled_y:
        raise InputError(f"{run.root} has no finished fold to report")
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
    with output_errors(run_dir, "free space, or make the run folder writable"):
        summary = summarize_run(run_dir)
        return format_summary(summary), write_figures(run_dir)
