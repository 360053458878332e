"""`cmamil train --features`: build the bag-training config from the command's options and run k-fold CV."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

__all__ = ["run_bags"]


def run_bags(features: Path, **options: Any) -> None:
    """Run k-fold training of an aggregator and print the per-fold and mean ± std table."""
    from cmamil.kfold import format_summary
    from cmamil.mil_training import MILTrainConfig, run_kfold

    if options.get("magnifications"):
        options["magnifications"] = tuple(m.strip() for m in options["magnifications"].split(",") if m.strip())
    fields = MILTrainConfig.__dataclass_fields__
    config = MILTrainConfig(
        features=features, **{k: v for k, v in options.items() if k in fields and v is not None}
    )
    summary = run_kfold(config)
    click.echo(format_summary(summary))
    click.echo(f"run folder: {config.out}  (tensorboard --logdir {config.out.parent})")
