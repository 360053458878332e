"""Summaries of a run: per-fold test metrics and their mean ± std (summary.json, summary.csv), and the table."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from cmamil.atomic import write_json, write_text
from cmamil.errors import InputError
from cmamil.evaluation.metrics import HEADLINE, summarize_folds
from cmamil.training.run_folder import FOLD_MARKER, RunFolder

__all__ = ["format_summary", "summarize_run"]


def summarize_run(run_dir: str | Path, keys: Sequence[str] = HEADLINE) -> dict[str, Any]:
    """Per-fold test metrics and their mean ± std over finished folds; written to summary.json and summary.csv."""
    run = RunFolder(run_dir)
    run_dir = run.root
    folds = run.fold_metrics()
    if not folds:
        raise InputError(f"{run_dir} has no finished fold (no fold_K/{FOLD_MARKER}); train it first")
    rows = [{"fold": f["fold"], "n": f["test"]["n"], **{k: f["test"].get(k) for k in keys}} for f in folds]
    summary = {
        "class_names": list(run.class_names),
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
