"""The patch-image side of `cmamil train`: build a PatchTrainConfig from the options and run it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cmamil.cli.train import BAG_ONLY

__all__ = ["PATCH_DEFAULTS", "echo_metrics", "patch_config", "run_patches"]

# the patch protocol's values for options whose default differs between bag and patch training
PATCH_DEFAULTS = {"epochs": 100, "lr": 3e-4, "weight_decay": 0.05, "optimizer": "adamw", "monitor": "f1_macro"}


def patch_config(images: tuple[Path, ...], **options: Any):
    """A PatchTrainConfig from `cmamil train` options (None means the patch protocol default)."""
    from cmamil.patch_training import PatchTrainConfig

    for key, value in PATCH_DEFAULTS.items():
        if options.get(key) is None:
            options[key] = value
    for key in BAG_ONLY:
        options.pop(key, None)
    names = options.pop("split_names", None)
    if names:
        options["split_names"] = tuple(part.strip() for part in names.split(","))
    return PatchTrainConfig(images=images, **options)


def run_patches(images: Path, **options: Any) -> None:
    """Train a patch classifier and print where the run and its test metrics are."""
    from cmamil.patch_training import train_patches

    config = patch_config((images,), **options)
    result = train_patches(config)
    click.echo(f"run folder: {config.out}")
    echo_metrics(result, "test ")


def echo_metrics(result: dict[str, Any], prefix: str = "") -> None:
    """Print the headline metrics of one evaluation, or mean ± std of a k-fold summary."""
    metrics = result.get("summary", result)
    for key in ("accuracy", "balanced_accuracy", "f1_macro", "auc"):
        value = metrics[key]
        shown = f"{value['mean']:.4f} ± {value['std']:.4f}" if isinstance(value, dict) else f"{value:.4f}"
        click.echo(f"{prefix}{key}: {shown}")
