"""`cmamil link`: per-magnification feature folders of other toolkits → nested multi-magnification bags."""

from __future__ import annotations

from pathlib import Path

import click

from cmamil.cli.options import option, output_options
from cmamil.errors import InputError

__all__ = ["link"]


@click.command()
@click.option("--set", "sets", multiple=True, required=True, metavar="MAG=DIR",
              help="A folder of one feature file per slide at magnification MAG (TRIDENT, CLAM h5 or pt, STAMP, "
                   "MoPaDi); repeat for each magnification.")
@output_options
@click.option("--tile-size-level0", "tile_sizes", multiple=True, metavar="MAG=N",
              help="Tile edge in level-0 pixels at MAG, for files that do not name it (or to override them).")
@option("mpp", help="Level-0 µm/px of the slides; needed for coords in µm (STAMP).")
@click.option("--links-only", is_flag=True,
              help="Reference the source feature datasets (HDF5 external links) instead of copying them: small "
                   "bags that break if the sources move. By default features are copied.")
@click.pass_context
def link(
    ctx: click.Context,
    sets: tuple[str, ...],
    out: Path,
    storage: str,
    overwrite: bool,
    tile_sizes: tuple[str, ...],
    mpp: float | None,
    links_only: bool,
) -> None:
    """Link per-magnification feature folders into one nested bag per slide, parents by tile centre.

    Writes <out>/<slide_id>.h5 for every slide found in all sets and <out>/link_report.csv (tiles, tiles without
    a parent, tiles straddling two parents, missing sets per slide). Slides missing from a set are listed and not
    linked; slides whose bag exists are skipped; the exit code is 1 if any slide failed.

    \b
    Examples:
      cmamil link --set 5x=trident/5x_256px_0px_overlap/features_uni_v1 \\
                  --set 10x=trident/10x_256px_0px_overlap/features_uni_v1 \\
                  --set 20x=trident/20x_256px_0px_overlap/features_uni_v1 --out bags/
      cmamil link --set 5x=stamp_5x --set 20x=stamp_20x --mpp 0.25 --out bags/ --links-only
    """
    from cmamil.linking import LinkConfig, link_sets, write_link_report

    config = LinkConfig.parse(sets, tile_sizes, out=out, mpp=mpp, links_only=links_only, storage=storage,
                              overwrite=overwrite)
    debug = bool(ctx.obj and ctx.obj.get("debug"))
    results = []
    for result in link_sets(config, debug=debug):
        results.append(result)
        if result.status == "failed":
            click.echo(f"failed: {result.slide_id}: {result.error}", err=True)
    if not results:
        raise InputError(f"no feature files found in {', '.join(str(folder) for _, folder in config.sets)}")
    report = write_link_report(out / "link_report.csv", results, config.names)
    status = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "incomplete", "failed")}
    done = [r for r in results if r.status == "done"]
    tiles = ", ".join(f"{m}: {sum(r.counts[m] for r in done)}" for m in config.names)
    orphans = ", ".join(f"{m}: {sum(r.orphans[m] for r in done)}" for m in config.names[1:])
    straddling = ", ".join(f"{m}: {sum(r.straddling[m] for r in done)}" for m in config.names[1:])
    click.echo(
        f"{len(results)} slides: {status['done']} linked, {status['skipped']} skipped (already linked), "
        f"{status['incomplete']} missing from a set, {status['failed']} failed; tiles {tiles}; "
        f"without parent {orphans}; straddling {straddling}; report {report}"
    )
    for mag in config.names:
        absent = [r.slide_id for r in results if mag in r.missing]
        if absent:
            click.echo(f"missing from {mag}: {', '.join(absent)}", err=True)
    if status["failed"]:
        raise InputError(f"{status['failed']} of {len(results)} slides failed; see {report}")
