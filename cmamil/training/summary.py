"""Summaries of a run: per-fold test metrics and their mean ± std (summary.json, summary.csv), and the table."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from cmamil.atomic import write_json, write_text
from cmamil.errors import InputError
from cmamil.text_table import align
from cmamil.evaluation.metrics import HEADLINE, summarize_folds
from cmamil.training.run_folder import FOLD_MARKER, RunFolder

__all__ = ["format_summary", "mean_std_cell", "summarize_run"]


def summarize_run(run_dir: str | Path, keys: Sequence[str] = HEADLINE) -> dict[str, Any]:
    """Per-fold test metrics and their mean ± std over finished folds; written to summary.json and summary.csv.

    A metric undefined in a fold (AUC of a test part lacking a class) is left out of its mean, which then counts
    fewer folds (`mean_std[key]["n"]`); `notes` says which folds and why."""
    run = RunFolder(run_dir)
    run_dir = run.root
    folds = run.fold_metrics()
    if not folds:
        raise InputError(f"{run_dir} has no finished fold (no fold_K/{FOLD_MARKER}); train it first")
    rows = [{"fold": f["fold"], "n": f["test"]["n"], **{k: f["test"].get(k) for k in keys}} for f in folds]
    summary = {
        "class_names": list(run.class_names),
        "keys": list(keys),
        "n_folds": len(folds),
        "folds": rows,
        "mean_std": summarize_folds([f["test"] for f in folds], keys),
        "notes": _notes(folds, keys),
    }
    write_json(run_dir / "summary.json", summary)
    lines = [",".join(["fold", "n", *keys])]
    lines += [",".join(str(r[k]) for k in ["fold", "n", *keys]) for r in rows]
    for stat in ("mean", "std", "n"):
        label = "folds_averaged" if stat == "n" else stat
        lines.append(",".join([label, ""] + [str(summary["mean_std"][k][stat]) for k in keys]))
    write_text(run_dir / "summary.csv", "\n".join(lines) + "\n")
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The per-fold and mean ± std table of a summary, as aligned plain text, with how many folds each mean
    averages and why a fold's value is n/a."""
    keys = summary["keys"]
    total = summary.get("n_folds", len(summary["folds"]))
    header = ["fold", "n", *keys]
    body = [[str(r["fold"]), str(r["n"]), *(_number(r[k]) for k in keys)] for r in summary["folds"]]
    body.append(["mean±std", "", *(mean_std_cell(summary["mean_std"][k], total) for k in keys)])
    lines = align([header, *body])
    lines.append(f"mean ± sample std over {total} fold{'s' if total != 1 else ''}")
    lines += [f"note: {note}" for note in summary.get("notes", [])]
    return "\n".join(lines)


def _notes(folds: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[str]:
    """Why a fold's metric is n/a: the classes its test part lacks."""
    notes = []
    for fold in folds:
        absent = [name for name, v in fold["test"].get("per_class", {}).items() if v["support"] == 0]
        undefined = [k for k in keys if _missing(fold["test"].get(k))]
        if absent and undefined:
            names = ", ".join(f"'{name}'" for name in absent)
            notes.append(f"fold {fold['fold']}: the test part has no {names}; {', '.join(undefined)} n/a there and "
                         "left out of the mean")
    return notes


def mean_std_cell(stats: dict[str, Any], total: int) -> str:
    """'mean±std', with the number of folds averaged when it is not all of them."""
    cell = f"{_number(stats['mean'])}±{_number(stats['std'])}"
    return cell if stats["n"] == total else f"{cell} ({stats['n']} of {total})"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _number(value: Any) -> str:
    return "n/a" if _missing(value) else f"{value:.3f}"
