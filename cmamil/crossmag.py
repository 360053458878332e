"""The cross-magnification study: train on each image set, test on every set, and compare.

For sets such as 100× and 400× (each with training/ validation/ testing/ class folders), one model is
trained per set (and, with `mixed`, one on their union, also tested on the union of their test splits), each
is evaluated on every test split, and the Train × Test macro-F1 matrix is summarised: in-domain mean (the
pure sets' diagonal), cross-domain mean as the MagFusion study defines it (every cell whose training and test
sets differ, the mixed row and column included), the pure-set cross-domain mean (off-diagonal cells between
the named sets only), and the directional asymmetry F1(A→B) − F1(B→A) of every pair. Before training, no
patient may have images in one set's training or validation split and in any set's test split. Output:
  train_<set>/ (and train_mixed/)        ordinary run folders with one fold (see cmamil.training.run_folder)
  cells/<train>__<test>/                 the evaluation of one model on one test split
  matrix_f1_macro.csv / .png, matrix_accuracy.csv, crossmag.json, crossmag.md
Finished trainings and cells are reused on rerun; a cell is redone when its model was retrained.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cmamil.atomic import write_csv, write_json, write_text, write_yaml
from cmamil.errors import InputError
from cmamil.training.config import PatchTrainConfig
from cmamil.training.runner import run_training

__all__ = ["MIXED", "CrossMagConfig", "matrix_summary", "run_crossmag"]

log = logging.getLogger(__name__)

MIXED = "mixed"


@dataclass(frozen=True)
class CrossMagConfig:
    """Named image sets, whether to add a model trained on their union, and the training options."""

    sets: tuple[tuple[str, Path], ...]
    training: PatchTrainConfig
    mixed: bool = False

    def __post_init__(self) -> None:
        names = [name for name, _ in self.sets]
        if len(names) < 2:
            raise InputError("crossmag needs at least two sets (--set 100x=ROOT --set 400x=ROOT)")
        if len(set(names)) != len(names):
            raise InputError(f"set names must be unique, got {', '.join(names)}")
        bad = [n for n in names if n == MIXED or not re.fullmatch(r"[A-Za-z0-9_.+-]+", n)]
        if bad:
            raise InputError(f"set name(s) {', '.join(bad)} not allowed; use letters, digits, '_', '.', '+', '-' "
                             f"(and not '{MIXED}')")
        if self.training.folds is not None:
            raise InputError("crossmag trains on each set's training/ validation/ testing/ folders; drop --folds")

    @property
    def out(self) -> Path:
        return self.training.out


def run_crossmag(config: CrossMagConfig) -> dict[str, Any]:
    """Train on every set (and the union), evaluate every model on every test split, write the matrix.

    Under torchrun every training is data-parallel over the ranks; rank 0 then evaluates the cells alone."""
    from cmamil.distributed import main_writes, process_group
    from cmamil.environment import resolve_device

    roots = dict(config.sets)
    trainings = {name: (root,) for name, root in config.sets}
    if config.mixed:
        trainings[MIXED] = tuple(roots.values())
    _check_patients_across_sets(config)
    with process_group(resolve_device(config.training.device)) as world:
        main_writes(world, lambda: write_yaml(config.out / "crossmag.yaml", {
            "sets": {k: str(v) for k, v in roots.items()}, "mixed": config.mixed,
            "training": config.training.to_dict()}))
        for name, images in trainings.items():
            log.info("crossmag: training on %s", name)
            run_training(dataclasses.replace(config.training, images=images, out=config.out / f"train_{name}"))
        summary = main_writes(world, lambda: _evaluate_cells(config, trainings))
    return summary if summary is not None else json.loads((config.out / "crossmag.json").read_text())


def _evaluate_cells(config: CrossMagConfig, trainings: dict[str, tuple[Path, ...]]) -> dict[str, Any]:
    """Every trained model on every test split (a cell is reused unless its model was retrained); the matrix."""
    from cmamil.data.images import ImagePart, ImageSet, read_split
    from cmamil.distributed import rank_device
    from cmamil.environment import resolve_device
    from cmamil.evaluation.evaluate import evaluate_trained
    from cmamil.training.run_folder import RunFolder
    from cmamil.training.trained import load_trained

    out = config.out
    device = rank_device(resolve_device(config.training.device))
    f1 = np.full((len(trainings), len(trainings)), np.nan)
    accuracy = f1.copy()
    for i, train_name in enumerate(trainings):
        checkpoint = RunFolder(out / f"train_{train_name}").checkpoints()[0]
        trained = None
        for j, (test_name, test_roots) in enumerate(trainings.items()):
            cell = out / "cells" / f"{train_name}__{test_name}"
            done = cell / "metrics.json"
            if done.is_file() and done.stat().st_mtime >= checkpoint.stat().st_mtime:
                metrics = json.loads(done.read_text())
            else:
                trained = trained or load_trained(checkpoint, device)
                tested = ImageSet.concat([read_split(root, "test", trained.class_names) for root in test_roots])
                part = ImagePart(tested, trained.prepare, tuple(map(str, tested.paths)))
                metrics = evaluate_trained(
                    trained, part, cell, device=device,
                    batch_size=config.training.batch_size, num_workers=config.training.num_workers,
                    amp=config.training.amp, title=f"train {train_name} → test {test_name}",
                    extra={"train_set": train_name, "test_set": test_name},
                )
            f1[i, j], accuracy[i, j] = metrics["f1_macro"], metrics["accuracy"]
    rows = cols = list(trainings)
    summary = {
        "model": config.training.model,
        "metric": "f1_macro",
        "train_sets": rows,
        "test_sets": cols,
        "matrix_f1_macro": f1.tolist(),
        "matrix_accuracy": accuracy.tolist(),
        **matrix_summary(f1, rows, cols),
    }
    _write_outputs(out, summary, f1, accuracy, rows, cols)
    return summary


def matrix_summary(matrix: np.ndarray, rows: list[str], cols: list[str]) -> dict[str, Any]:
    """In-domain mean, MagFusion's and the pure-set cross-domain means, pairwise asymmetry, and the mixed row.

    Cells are named by their training (`rows`) and test (`cols`) sets; the pure sets are the names other than
    `MIXED`. The in-domain mean averages the pure sets' diagonal; `cross_domain_mean` (MagFusion's definition)
    every cell whose training and test sets differ, mixed row and column included; `cross_domain_mean_pure`
    only the cells between two different pure sets; `mixed_mean` the mixed model on the pure test sets.
    """
    matrix = np.asarray(matrix, dtype=float)
    sets = [name for name in cols if name != MIXED]
    cell = {(r, c): matrix[i, j] for i, r in enumerate(rows) for j, c in enumerate(cols)}
    pairs = [
        {"from": a, "to": b, "forward": cell[a, b], "backward": cell[b, a], "asymmetry": cell[a, b] - cell[b, a]}
        for i, a in enumerate(sets) for b in sets[i + 1:]
    ]
    out: dict[str, Any] = {
        "in_domain_mean": float(np.mean([cell[s, s] for s in sets])),
        "cross_domain_mean": float(np.mean([v for (r, c), v in cell.items() if r != c])),
        "cross_domain_mean_pure": float(np.mean([v for (r, c), v in cell.items() if r != c and MIXED not in (r, c)])),
        "asymmetry": pairs,
    }
    out["generalisation_gap"] = out["in_domain_mean"] - out["cross_domain_mean_pure"]
    if MIXED in rows:
        out["mixed_mean"] = float(np.mean([cell[MIXED, s] for s in sets]))
    return out


def _check_patients_across_sets(config: CrossMagConfig) -> None:
    """No patient may have images in a set's training or validation split and in any set's test split."""
    from cmamil.data.images import find_split_folders, read_class_folders
    from cmamil.data.patients import check_patients_apart, image_grouping

    training = config.training
    sides: dict[str, list[str]] = {"a set's training or validation split": [], "a set's test split": []}
    for _, root in config.sets:
        for split, folder in (find_split_folders(root, training.split_names) or {}).items():
            side = "a set's test split" if split == "test" else "a set's training or validation split"
            sides[side] += [str(p) for p in read_class_folders(folder).paths]
    paths = [p for items in sides.values() for p in items]
    grouping = image_grouping(paths, training.group_by, training.no_group)
    if grouping.patients is not None:
        check_patients_apart(sides, dict(zip(paths, grouping.patients)), "crossmag, across the sets")


def _write_outputs(out: Path, summary: dict[str, Any], f1: np.ndarray, accuracy: np.ndarray,
                   rows: list[str], cols: list[str]) -> None:
    from cmamil.evaluation.figures import plot_matrix, save_figure

    for name, values in (("f1_macro", f1), ("accuracy", accuracy)):
        write_csv(out / f"matrix_{name}.csv", ["train \\ test", *cols],
                  [[row, *values[i].tolist()] for i, row in enumerate(rows)])
    fig = plot_matrix(f1, rows, cols, row_label="trained on", col_label="tested on",
                      title=f"{summary['model']}: macro-F1, train × test")
    save_figure(fig, out / "matrix_f1_macro.png")
    write_json(out / "crossmag.json", summary)
    write_text(out / "crossmag.md", _markdown(summary, f1, rows, cols))


def _markdown(summary: dict[str, Any], f1: np.ndarray, rows: list[str], cols: list[str]) -> str:
    """The matrix and its summary as a Markdown table, ready for a report."""
    lines = [f"Macro-F1 of {summary['model']}, trained on the row's set, tested on the column's.", "",
             "| trained on \\ tested on | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {row} | " + " | ".join(f"{v:.3f}" for v in f1[i]) + " |" for i, row in enumerate(rows)]
    lines += ["", f"- in-domain mean (diagonal of the sets): {summary['in_domain_mean']:.3f}",
              f"- cross-domain mean (MagFusion: every off-diagonal cell, mixed included): "
              f"{summary['cross_domain_mean']:.3f}",
              f"- cross-domain mean of the pure sets (off-diagonal, mixed excluded): "
              f"{summary['cross_domain_mean_pure']:.3f}",
              f"- generalisation gap (in-domain minus pure cross-domain): {summary['generalisation_gap']:.3f}"]
    lines += [f"- asymmetry {p['from']}→{p['to']} minus {p['to']}→{p['from']}: {p['asymmetry']:+.3f}"
              for p in summary["asymmetry"]]
    if "mixed_mean" in summary:
        lines.append(f"- mixed model, mean over the sets' test splits: {summary['mixed_mean']:.3f}")
    return "\n".join(lines) + "\n"
