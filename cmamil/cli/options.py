"""Options shared by the slide commands (`cmamil tile`, `cmamil extract`), defined once as click decorators.

`tiling_options` adds the magnification, tile-size, resolution and tissue options and hands the command one
`tiling: TilingConfig`; `slides_argument` and `output_options` add the inputs and the output folder.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

import click

__all__ = ["output_options", "slides_argument", "tiling_options"]

TISSUE_CHOICES = ("saturation", "fluorescence", "none")


def _options(*decorators: Callable) -> Callable:
    """Apply click decorators in the order they are listed (top to bottom in --help)."""

    def apply(func: Callable) -> Callable:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


def _fractions(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, ...]:
    """'0.25' or '0.1,0.25,0.5' (coarse to fine) as floats."""
    try:
        return tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a fraction or a comma-separated list of fractions") from None


def slides_argument(func: Callable) -> Callable:
    """SLIDES...: slide files, folders (searched recursively) or CSV tables with a `path` column."""
    return click.argument("slides", nargs=-1, required=True, type=click.Path(path_type=Path))(func)


def output_options(func: Callable) -> Callable:
    """--out, --format, --overwrite: where per-slide files go, their format, and whether finished ones are redone."""
    return _options(
        click.option("--out", "-o", type=click.Path(path_type=Path, file_okay=False), required=True,
                     help="Output folder (one file per slide, named <slide_id>.h5 or .zarr)."),
        click.option("--format", "storage", type=click.Choice(["h5", "zarr"]), default="h5", show_default=True,
                     help="Per-slide file format."),
        click.option("--overwrite", is_flag=True,
                     help="Redo slides whose output file exists (by default they are skipped)."),
    )(func)


def tiling_options(func: Callable) -> Callable:
    """Magnifications, tile size, --mpp and tissue options, passed to the command as `tiling: TilingConfig`."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from cmamil.extract.grid import TilingConfig
        from cmamil.extract.tissue import TissueConfig

        tissue = TissueConfig(
            method=kwargs.pop("tissue"),
            mask_mpp=kwargs.pop("tissue_mpp"),
            threshold=kwargs.pop("tissue_threshold"),
        )
        kwargs["tiling"] = TilingConfig(
            magnifications=kwargs.pop("magnifications"),
            tile_px=kwargs.pop("tile_px"),
            min_tissue=kwargs.pop("min_tissue"),
            mpp=kwargs.pop("mpp"),
            tissue=tissue,
        )
        return func(*args, **kwargs)

    return _options(
        click.option("--magnifications", default="5,10,20", show_default=True,
                     help="Magnifications, in any order: powers (5,10,20; 20x = 0.5 µm/px) "
                          "or µm/px (2um,1um,0.5um). Each must nest in the coarser one (×2, ×4 …)."),
        click.option("--tile-px", type=click.IntRange(min=8), default=224, show_default=True,
                     help="Tile size in pixels at every magnification."),
        click.option("--mpp", type=float, default=None,
                     help="Level-0 µm/px, overriding the slide's metadata (needed when a slide has none)."),
        click.option("--tissue", type=click.Choice(TISSUE_CHOICES), default="saturation", show_default=True,
                     help="Tissue detection: saturation (brightfield H&E/IHC), fluorescence (bright on dark), "
                          "none (tile the whole slide)."),
        click.option("--tissue-threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
                     help="Fixed threshold on the tissue signal in (0, 1) instead of Otsu's."),
        click.option("--tissue-mpp", type=click.FloatRange(min=0, min_open=True), default=8.0, show_default=True,
                     help="Resolution of the tissue mask in µm/px."),
        click.option("--min-tissue", default="0.25", show_default=True, callback=_fractions,
                     help="Tissue fraction a tile needs to be kept: one value, or one per magnification coarse to "
                          "fine (0.1,0.25,0.5). Ancestors of kept tiles are always kept."),
    )(wrapper)
