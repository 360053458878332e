"""`cmamil train`: k-fold training of a MIL aggregator on slide bags, or of a patch classifier on images.

One command, two inputs: `--features DIR --labels CSV` trains an aggregator (`cmamil.aggregators`) on per-bag
feature files; `--images ROOT` trains a patch model (`cmamil.models`) on class folders. Which options apply to
which input, and their defaults, come from the fields of `BagTrainConfig` and `PatchTrainConfig`: an option of
the other kind is refused with one line. `--recipe NAME` starts from a seed study's shipped options and
`--config FILE.yaml` gives options from a file (a run's own config.yaml repeats that run); the file overrides
the recipe and flags override both. `--dry-run` checks the inputs and prints the splits only.
"""

from __future__ import annotations

import math
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

import click

from cmamil.cli.layers import layered_options
from cmamil.cli.options import config_options, option
from cmamil.errors import InputError
from cmamil.training.config import BagTrainConfig, PatchTrainConfig, TrainConfig

__all__ = ["build_config", "echo_metrics", "train"]


@click.command(context_settings={"show_default": True})
@option("recipe")
@option("config_file")
@config_options(BagTrainConfig, PatchTrainConfig)
@option("dry_run")
def train(recipe: str | None, config_file: Path | None, dry_run: bool, **options: Any) -> None:
    """Train a model with k-fold cross-validation and write a run folder.

    \b
    Examples:
      cmamil train --features feats/ --labels labels.csv --model cma_mil --folds 5 --out runs/cma
      cmamil train --images breakhis_100x/ --model deit_small --out runs/deit_100x
      cmamil train --config runs/cma/config.yaml --out runs/cma_again    # repeat a run
      torchrun --nproc-per-node 4 "$(which cmamil)" train --images patches/ --model deit_small --out runs/ddp
      cmamil train --recipe fadeformer --images organcmnist.npz --out runs/fade   # a seed study's options
      tensorboard --logdir runs
    """
    ctx = click.get_current_context()
    known = {f.name for kind in (BagTrainConfig, PatchTrainConfig) for f in fields(kind)}
    given, recipe_kind = layered_options(ctx, options, config_file, recipe, known)
    given = {k: v for k, v in given.items() if v is not None}
    if ("features" in given) == ("images" in given):
        raise InputError("give exactly one of --features (slide bags) or --images (patch images)")
    input_kind = "bags" if "features" in given else "patches"
    if recipe_kind not in (None, input_kind):
        inputs = "--features and --labels" if recipe_kind == "bags" else "--images"
        raise InputError(f"recipe {recipe} trains on {recipe_kind}; give {inputs}")
    if "model" not in given or "out" not in given:
        raise InputError("--model and --out are required (on the command line or in --config); "
                         "see `cmamil train --help`")
    kind = BagTrainConfig if "features" in given else PatchTrainConfig
    if kind is PatchTrainConfig:
        images = given["images"]
        given["images"] = (images,) if isinstance(images, (str, Path)) else tuple(images)
    elif "labels" not in given:
        raise InputError("--features needs --labels (a CSV with slide_id,label[,patient_id])")
    config = build_config(kind, given, "--features" if kind is BagTrainConfig else "--images")
    if dry_run:
        _echo_plan(config)
        return
    from cmamil.distributed import detect_world
    from cmamil.training.runner import run_training
    from cmamil.training.summary import format_summary

    summary = run_training(config, on_epoch=_epoch_lines(config))
    if not detect_world().main:
        return  # under torchrun, rank 0 reports
    click.echo(format_summary(summary))
    click.echo(f"run folder: {config.out}  (tensorboard --logdir {config.out.parent})")


def _epoch_lines(config: TrainConfig) -> Callable[[int, dict[str, Any]], None] | None:
    """One line per epoch on stderr when it is a log file, not a terminal (where the tqdm bar shows progress)."""
    if sys.stderr.isatty() or not config.progress:
        return None
    from cmamil.progress import duration

    def line(fold: int, row: dict[str, Any]) -> None:
        val = "".join(f", val {k} {row[f'val_{k}']:.4f}" for k in dict.fromkeys(("loss", config.monitor))
                      if f"val_{k}" in row)
        click.echo(f"fold {fold} epoch {row['epoch']}/{config.epochs}: train loss {row['train_loss']:.4f}{val} "
                   f"({duration(row['epoch_seconds'])})", err=True)

    return line


def build_config(kind: type[TrainConfig], given: dict[str, Any], mode: str) -> TrainConfig:
    """A config of `kind` from the options a user gave; an option `kind` lacks is a one-line error."""
    names = {f.name for f in fields(kind)}
    wrong = [name for name in given if name not in names]
    if wrong:
        flags = ", ".join("--" + name.replace("_", "-") for name in wrong)
        raise InputError(f"{flags} cannot be used with {mode}; see `cmamil train --help`")
    values = dict(given)
    if values.get("magnifications"):
        from cmamil.magnification import magnification_names

        values["magnifications"] = magnification_names(values["magnifications"])
    for name in ("split_names", "class_names"):
        if isinstance(values.get(name), str):
            values[name] = tuple(part.strip() for part in values[name].split(","))
    return kind(**values)


def _echo_plan(config: TrainConfig) -> None:
    """Print what a run would train on and its splits, having checked every input; write nothing."""
    from cmamil.training.runner import plan_training
    from cmamil.training.splits import format_splits

    _, items, splits = plan_training(config)
    patient_of = dict(zip(items.ids, items.patients)) if items.patients is not None else None
    click.echo(format_splits(splits, dict(zip(items.ids, items.labels)), items.class_names, patient_of,
                             items.grouping.item))
    click.echo(f"dry run: inputs checked, {len(splits)} fold(s); nothing written to {config.out}")


def echo_metrics(result: dict[str, Any], prefix: str = "") -> None:
    """Print the headline metrics of one evaluation, or mean ± std of a summary over folds."""
    metrics = result.get("summary", result)
    for key in ("accuracy", "balanced_accuracy", "f1_macro", "auc"):
        value = metrics[key]
        if isinstance(value, dict):
            shown = f"{value['mean']:.4f} ± {value['std']:.4f} over {value['n']} fold(s)"
        else:
            shown = "n/a (the data lack a class)" if math.isnan(value) else f"{value:.4f}"
        click.echo(f"{prefix}{key}: {shown}")

