"""The one k-fold runner: check inputs, settle splits, train every unfinished fold, write the run folder.

It serves every kind of model: a `BagTrainConfig` trains an aggregator on feature files, a
`PatchTrainConfig` a patch classifier on image folders; they differ only in their task (data, model, step).
A finished fold is skipped on rerun, an interrupted one resumes from its last epoch, and a run folder made
with other options or on other inputs (labels content, feature fingerprint, images) is refused unless
`overwrite`. Nothing is written before the inputs are checked. Each fold trains under its lock file, so
processes started on one run folder share the folds.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from cmamil.atomic import output_errors, write_json
from cmamil.data.patients import check_patients_apart
from cmamil.distributed import (SINGLE, World, gather, main_writes, process_group, rank_device, summary_writer,
                                wait)
from cmamil.environment import resolve_device, seed_everything
from cmamil.errors import InputError, OutputError, TrainingError
from cmamil.evaluation.metrics import HEADLINE
from cmamil.locks import try_lock
from cmamil.notices import notice
from cmamil.training.config import TrainConfig
from cmamil.training.loop import fit
from cmamil.training.predictions import Predictions, write_predictions
from cmamil.training.run_folder import LAST, RunFolder
from cmamil.training.splits import PARTS, Split, make_splits
from cmamil.training.summary import summarize_run
from cmamil.training.task import Items, Task
from cmamil.training.tblog import log_evaluation, log_hparams

__all__ = ["create_task", "plan_training", "run_training", "train_fold"]

log = logging.getLogger(__name__)


def create_task(config: TrainConfig, class_names: tuple[str, ...] | None = None) -> Task:
    """The task that trains `config`'s kind of input."""
    if config.kind == "bags":
        from cmamil.training.bags import BagTask

        return BagTask(config, class_names)
    if config.kind == "patches":
        from cmamil.training.patches import PatchTask

        return PatchTask(config, class_names)
    raise InputError(f"no training task for configs of kind {config.kind!r}")


def run_training(config: TrainConfig,
                 on_epoch: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train every unfinished fold of the run and return its summary (`format_summary` prints it).

    `on_epoch(fold, row)` is called after every epoch with its history row. Under torchrun, a data-parallel task
    (patch images) trains each fold on every rank with DDP; otherwise (bags) fold k trains on rank k mod N.
    Nothing is written before `plan_training`'s checks pass; a failure to write (full disk, read-only place, a
    file where the folder should be) is one OutputError line."""
    task, items, splits = plan_training(config)
    with process_group(resolve_device(config.device), task.data_parallel) as world:
        wait(world)  # every rank has read the previous state of the run folder before rank 0 rewrites it
        run = RunFolder(config.out)
        with output_errors(run.root):
            main_writes(world, lambda: _start_run(run, config, task, items, splits, world))
            mine = splits if task.data_parallel else [s for s in splits if s.fold % world.size == world.rank]
            failed = None
            for split in mine:
                if run.fold_finished(split.fold) and not config.overwrite:
                    log.info("fold %d is finished; skipping it", split.fold)
                    continue
                try:
                    _train_unless_locked(config, task, split, run, items.class_names, on_epoch, world)
                except Exception as exc:
                    if task.data_parallel or world.size == 1:
                        raise
                    failed = exc  # peers finish their folds; every rank then learns of the failure
                    break
            _raise_failures(world, failed)
            summary = main_writes(world, lambda: _finish_run(run, config))
    return summary if summary is not None else json.loads((run.root / "summary.json").read_text())


def _train_unless_locked(config: TrainConfig, task: Task, split: Split, run: RunFolder,
                         class_names: Sequence[str], on_epoch: Callable[[int, dict[str, Any]], None] | None,
                         world: World) -> None:
    """Train the fold under its lock file; a fold another process holds (a SLURM array task, another machine)
    is skipped. Ranks training one fold together with DDP are one job and take no lock (a rank skipping alone
    would leave its peers waiting)."""
    if task.data_parallel and world.size > 1:
        train_fold(config, task, split, run, class_names, on_epoch, world)
        return
    lock = try_lock(run.root / f".fold_{split.fold}.lock")
    if lock is None:
        notice(f"fold {split.fold} is being trained by another process; skipping it here")
        return
    with lock:
        if not run.fold_finished(split.fold) or config.overwrite:
            train_fold(config, task, split, run, class_names, on_epoch, world)


def _start_run(run: RunFolder, config: TrainConfig, task: Task, items: Items, splits: Sequence[Split],
               world: World) -> None:
    """config.yaml (with what a resume must match, and the number of processes) and the splits."""
    _make_folder(run.root)
    run.write_config(config.kind, config.to_dict(), {**config.fingerprint(), "inputs": task.inputs()},
                     items.class_names, task.describe(), world_size=world.size)
    run.save_splits(splits)


def _finish_run(run: RunFolder, config: TrainConfig) -> dict[str, Any]:
    """summary.json/csv over the finished folds, and the run's figures."""
    summary = summarize_run(run.root)
    if config.figures:
        from cmamil.evaluation.report import write_figures

        write_figures(run.root)
    return summary


def _raise_failures(world: World, failed: Exception | None) -> None:
    """Re-raise this rank's fold failure, or name a peer's, once every rank has finished its folds."""
    reports = gather(world, None if failed is None else f"{type(failed).__name__}: {failed}")
    if failed is not None:
        raise failed
    others = [f"rank {rank}: {report}" for rank, report in enumerate(reports) if report is not None]
    if others:
        raise TrainingError(f"a fold failed on another rank ({'; '.join(others)}); fix it and rerun: finished "
                            "folds are kept")


def _make_folder(root: Path) -> None:
    """Create the run folder; a place where none can be made is one line."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the run folder {root}: {exc.strerror} ({exc.filename or root}); pass "
                          "--out a writable folder") from exc


def train_fold(config: TrainConfig, task: Task, split: Split, run: RunFolder, class_names: Sequence[str],
               on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
               world: World = SINGLE) -> dict[str, Any]:
    """Train and test one fold into `fold_K/`; metrics.json is written last and returned.

    A data-parallel task trains the fold on every rank of `world` (rank 0 writes); otherwise this rank alone."""
    team = world if task.data_parallel else SINGLE
    folder = run.fold_dir(split.fold)
    if config.overwrite:
        main_writes(team, lambda: run.reset_fold(split.fold))
    folder.mkdir(parents=True, exist_ok=True)
    device = rank_device(resolve_device(config.device))
    use_amp = config.amp and device.type == "cuda"
    seed_everything(config.seed + split.fold, config.deterministic)
    model = task.build_model()  # first: a patch task reads the model's data config for the fold's transforms
    data = task.fold_data(split)
    meta = {"kind": config.kind, "model": config.model, "model_options": dict(config.model_options),
            "class_names": list(class_names), "fold": split.fold, **task.checkpoint_meta(data)}
    done = _epochs_done(folder)
    with summary_writer(team, folder, purge_step=done + 1 if done else None) as writer:
        result = fit(task, data, model, config, folder, writer, device, meta, on_epoch, team)
        evaluations = {p: task.predict(result.model, data.part(p), device, use_amp)
                       for p in ("val", "test") if len(data.part(p))}
        metrics = {p: e.metrics(class_names) for p, e in evaluations.items()}
        for part, evaluation in evaluations.items():
            log_evaluation(writer, part, metrics[part], evaluation.y_true, evaluation.probs, class_names,
                           result.best_epoch, scalars=part == "test")
        extra = task.inspect(result.model, data.test, evaluations["test"], folder, device, writer) if team.main else {}
        log_hparams(writer, _hparams(config, split.fold), {f"test_{k}": metrics["test"][k] for k in HEADLINE})
    fold_metrics = {
        "fold": split.fold,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "monitor": config.monitor,
        "parameters": sum(p.numel() for p in result.model.parameters()),
        "rank": world.rank,
        "world_size": world.size,
        **metrics,
        **extra,
    }
    main_writes(team, lambda: _finish_fold(folder, evaluations["test"], class_names, fold_metrics))
    return fold_metrics


def _finish_fold(folder: Path, test: Predictions, class_names: Sequence[str], fold_metrics: dict[str, Any]) -> None:
    """predictions.csv, then metrics.json (the fold is finished), then drop the resume point."""
    write_predictions(folder / "predictions.csv", test, class_names)
    write_json(folder / "metrics.json", fold_metrics)
    (folder / LAST).unlink(missing_ok=True)


def _epochs_done(folder: Path) -> int:
    """Epochs an interrupted fold finished (rows of its history.csv, when it has a resume point)."""
    history = folder / "history.csv"
    if not (folder / LAST).is_file() or not history.is_file():
        return 0
    return max(len(history.read_text().splitlines()) - 1, 0)


def plan_training(config: TrainConfig) -> tuple[Task, Items, list[Split]]:
    """Check the inputs and settle the splits of a run, writing nothing (`cmamil train --dry-run` stops here).

    A run folder whose folds have made progress is resumed only with the same options and inputs (labels content,
    feature fingerprint, images), else refused (`overwrite` redoes it). Splits are those fixed by the input, else
    the run's saved ones (resuming), else new stratified grouped k-fold; a patient on two sides of any fold is an
    error. The model is built once, so that a bad model option or weights file fails here."""
    run = RunFolder(config.out)
    resume = not config.overwrite and run.has_progress()
    if resume:
        run.check_options(config.fingerprint())
    task = create_task(config, run.previous_classes() if resume else None)
    items = task.items()
    if resume:
        run.check_inputs(task.inputs())
    notice(items.grouping.describe())
    splits = task.given_splits()
    if splits is None and resume:
        splits = run.saved_splits(items.ids)
    if splits is None:
        splits = make_splits(items.ids, items.labels, items.patients, folds=config.folds,
                             val_fraction=config.val_fraction, seed=config.seed, class_names=items.class_names,
                             unit=items.grouping.item)
    _check_patients(splits, items)
    task.build_model()
    return task, items, splits


def _check_patients(splits: Sequence[Split], items: Items) -> None:
    """A patient's items must all lie in one part of each fold."""
    if items.patients is None:
        return
    patient = dict(zip(items.ids, items.patients))
    for split in splits:
        check_patients_apart({part: getattr(split, part) for part in PARTS}, patient, f"fold {split.fold}")


def _hparams(config: TrainConfig, fold: int) -> dict[str, Any]:
    """The run's options flattened for TensorBoard's hparams view."""
    hparams = {k: v for k, v in config.fingerprint().items() if k != "model_options"}
    hparams.update({f"model_option.{k}": v for k, v in config.model_options.items()}, fold=fold)
    return hparams

