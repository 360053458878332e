"""`cmamil predict`: apply a trained bag run (every fold, or one) to new slides or feature files."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cmamil.cli.options import heatmap_options, predict_options
from cmamil.errors import InputError

if TYPE_CHECKING:
    from cmamil.evaluation.predict import PredictConfig, PredictResult
    from cmamil.evaluation.tile_maps import HeatmapConfig

__all__ = ["predict", "report_predictions"]


def _folds(ctx: click.Context, param: click.Parameter, value: str) -> int | None:
    if value == "all":
        return None
    if not value.isdigit():
        raise click.BadParameter(f"'{value}' is not 'all' or a fold number")
    return int(value)


@click.command()
@predict_options
@click.option("--folds", default="all", show_default=True, callback=_folds, metavar="all|K",
              help="Apply every finished fold's best checkpoint (the ensemble is their mean), or fold K only.")
@click.option("--heatmaps", is_flag=True, help="Also write per-slide heatmaps (the options below; same as cmamil "
                                                "heatmap).")
@heatmap_options
def predict(run: Path, inputs: tuple[Path, ...], folds: int | None, heatmaps: bool, heatmap: HeatmapConfig,
            **options: Any) -> None:
    """Predict INPUTS (slides, feature files, or folders of either) with the trained bag run RUN.

    Slides are tiled and embedded first exactly as the run's training features were. Writes <out>/predictions.csv
    (per-fold probabilities, their mean, the predicted class), metrics.json with --labels, and
    predict_manifest.csv. A feature file that does not match the run is refused with one line and the rest go
    on; finished bags are skipped on rerun; the exit code is 1 if anything was refused.

    \b
    Examples:
      cmamil predict runs/cma_mil new_slides/ --out predictions/
      cmamil predict runs/cma_mil features/*.h5 --out predictions/ --labels labels.csv --folds 0
      cmamil predict runs/cma_mil new_slides/ --out predictions/ --heatmaps --top-k 4
    """
    from cmamil.evaluation.predict import PredictConfig

    config = PredictConfig(run=run, inputs=tuple(inputs), folds=folds, heatmaps=heatmap if heatmaps else None,
                           **options)
    report_predictions(config)


def report_predictions(config: PredictConfig) -> PredictResult:
    """Run `predict_run`, print one line per refused input and a summary, exit 1 if anything was refused."""
    from cmamil.evaluation.predict import predict_run

    result = predict_run(config, echo=lambda line: click.echo(line, err=True))
    where = f"; {result.predictions}" if result.predictions else ""
    click.echo(f"{result.done + result.skipped} bags predicted ({result.done} new, {result.skipped} already done), "
               f"{len(result.refused)} refused{where}")
    if result.metrics is not None:
        m = result.metrics
        click.echo(f"ensemble on {m['n']} labelled bags: AUC {m['auc']:.3f}, balanced accuracy "
                   f"{m['balanced_accuracy']:.3f}; {Path(config.out) / 'metrics.json'}")
    if config.heatmaps is not None:
        click.echo(f"heatmaps: {Path(config.out) / 'heatmaps'}")
    if result.refused:
        raise InputError(f"{len(result.refused)} input(s) refused; see {Path(config.out) / 'predict_manifest.csv'}")
    return result
