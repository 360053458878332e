"""`cmamil tile`: nested multi-magnification tile coordinates and QC images for a batch of slides."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from cmamil.cli.options import output_options, slides_argument, tiling_options
from cmamil.errors import InputError

if TYPE_CHECKING:
    from cmamil.extract.grid import TilingConfig

__all__ = ["tile"]


@click.command()
@slides_argument
@output_options
@tiling_options
@click.option("--qc/--no-qc", default=True, show_default=True, help="Write a QC image per slide to <out>/qc/.")
@click.pass_context
def tile(
    ctx: click.Context,
    slides: tuple[Path, ...],
    out: Path,
    storage: str,
    overwrite: bool,
    tiling: TilingConfig,
    qc: bool,
) -> None:
    """Find tissue and plan nested tiles for SLIDES (files, folders or a CSV with a path column).

    Writes <out>/<slide_id>.h5 (coords and parent links per magnification, no features), <out>/qc/<slide_id>.png
    and <out>/tile_manifest.csv. Slides whose file exists are skipped; a failing slide is recorded and the rest
    go on; the exit code is 1 if any slide failed.

    \b
    Examples:
      cmamil tile slides/ --out tiles/
      cmamil tile cohort.csv --out tiles/ --magnifications 5,10,20 --tile-px 224 --min-tissue 0.1,0.25,0.5
      cmamil tile scan.svs --out tiles/ --mpp 0.25 --tissue fluorescence
    """
    from cmamil.atomic import writable_folder
    from cmamil.extract.batch import collect_slides, report_failure, summarize, write_manifest
    from cmamil.extract.tiling import tile_slides
    from cmamil.progress import Progress

    sources = collect_slides(slides, exclude=out)
    if not sources:
        raise InputError(f"no slides found in {', '.join(map(str, slides))} (suffixes .svs .ndpi .tiff .mrxs …)")
    writable_folder(out)
    debug = bool(ctx.obj and ctx.obj.get("debug"))
    results = []
    manifest = out / "tile_manifest.csv"
    try:
        with Progress("tile", total=len(sources), unit="slide") as progress:
            for result in tile_slides(sources, out, tiling, storage=storage, overwrite=overwrite, qc=qc, debug=debug):
                results.append(result)
                if result.status == "failed":
                    report_failure(result)
                progress.advance(note=result.describe(), worked=result.status != "skipped")
    finally:
        write_manifest(manifest, results, tiling.names)
    click.echo(summarize(results, "slides", "tiled", tiling.names, manifest))
    failed = sum(r.status == "failed" for r in results)
    if failed:
        raise InputError(f"{failed} of {len(results)} slides failed; see {manifest}")
