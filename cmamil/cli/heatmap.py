"""`cmamil heatmap`: per-tile attention or scores of a trained bag run on slides, as PNG, QuPath GeoJSON and HDF5."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cmamil.cli.options import heatmap_options, predict_options

if TYPE_CHECKING:
    from cmamil.evaluation.tile_maps import HeatmapConfig

__all__ = ["heatmap"]


@click.command()
@predict_options
@heatmap_options
def heatmap(run: Path, inputs: tuple[Path, ...], heatmap: HeatmapConfig, **options: Any) -> None:
    """Paint the per-tile values of RUN's model on INPUTS (slides, feature files, or folders of either).

    Per slide, in <out>/heatmaps/: <bag>.png (the magnifications side by side over the thumbnail, a colour bar,
    the prediction in the title), <bag>.geojson (one level-0 polygon per tile for QuPath, values in
    measurements), <bag>.h5 (raw values per tile; all bags linked from <out>/tile_values.h5) and
    <bag>_montage.png (top-k and bottom-k tiles). The same as `cmamil predict --heatmaps`: predictions.csv is
    written too.

    \b
    Examples:
      cmamil heatmap runs/cma_mil slides/case_01.svs --out heatmaps/
      cmamil heatmap runs/cma_mil features/ --slides slides/ --out heatmaps/ --fold 2 --normalize minmax
    """
    from cmamil.cli.predict import report_predictions
    from cmamil.evaluation.predict import PredictConfig

    report_predictions(PredictConfig(run=run, inputs=tuple(inputs), heatmaps=heatmap, **options))
