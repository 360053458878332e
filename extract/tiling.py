"""Tile slides end to end: open → resolution → tissue → nested grid → coordinate file + QC image.

Each slide's coordinate file is `<out>/<slide_id>.h5` (or `.zarr`): the feature-file layout without features,
which `cmamil extract` reuses. QC images go to `<out>/qc/<slide_id>.png`. A slide whose file exists is skipped
when it was tiled with the same settings (else it fails, saying what differs). Each slide is tiled under its
lock file, so several processes on one output folder share the slides.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Iterator

from cmamil.errors import CmamilError, InputError
from cmamil.extract.batch import SlideResult, SlideSource
from cmamil.extract.grid import NestedGrid, TilingConfig, check_same_tiling, load_grid, plan_tiles
from cmamil.extract.qc import write_qc
from cmamil.extract.reader import open_slide
from cmamil.extract.resolution import resolve_mpp
from cmamil.extract.tissue import find_tissue
from cmamil.interrupt import Interrupted
from cmamil.locks import try_lock

__all__ = ["tile_slide", "tile_slides"]

log = logging.getLogger(__name__)


def tile_slide(path: str | Path, out_file: Path, qc_file: Path | None, config: TilingConfig, *,
               overwrite: bool = False) -> NestedGrid:
    """Plan nested tiles for one slide and write its coordinate file (and QC image); returns the grid."""
    with open_slide(path) as reader:
        resolution = resolve_mpp(reader, config.mpp)
        tissue = find_tissue(reader, resolution.mpp, config.tissue)
        grid = plan_tiles(reader, config, resolution=resolution, tissue=tissue)
        if qc_file is not None:
            write_qc(qc_file, reader, grid, tissue)
    grid.save(out_file, overwrite=overwrite)
    return grid


def tile_slides(
    slides: Iterable[SlideSource],
    out: Path,
    config: TilingConfig,
    *,
    storage: str = "h5",
    overwrite: bool = False,
    qc: bool = True,
    debug: bool = False,
) -> Iterator[SlideResult]:
    """Tile each slide, yielding its result; a failing slide is a 'failed' result and the batch goes on.

    With `debug`, an unexpected error (a bug, not bad input) is raised instead of recorded.
    """
    from cmamil.store import bag_info, bag_path, remove_temporaries

    seen: dict[str, Path] = {}
    for slide in slides:
        start = time.perf_counter()
        try:
            if slide.slide_id in seen:
                raise InputError(
                    f"slide id '{slide.slide_id}' is also the id of {seen[slide.slide_id]}; give the slides distinct "
                    f"ids (a CSV with path,slide_id columns)"
                )
            seen[slide.slide_id] = slide.path
            out_file = bag_path(out, slide.slide_id, storage)
            tiling = config if slide.mpp is None else replace(config, mpp=slide.mpp)
            if _finished(out_file, tiling, overwrite):
                yield SlideResult(slide.slide_id, slide.path, "skipped", bag_info(out_file).counts)
                continue
            lock = try_lock(out_file.with_name(f".{out_file.name}.lock"))
            if lock is None:
                yield SlideResult(slide.slide_id, slide.path, "busy")
                continue
            with lock:
                remove_temporaries(out_file)  # left by a killed run: only the lock holder writes this slide
                if _finished(out_file, tiling, overwrite):
                    yield SlideResult(slide.slide_id, slide.path, "skipped", bag_info(out_file).counts)
                    continue
                qc_file = out / "qc" / f"{slide.slide_id}.png" if qc else None
                grid = tile_slide(slide.path, out_file, qc_file, tiling, overwrite=overwrite)
            yield SlideResult(slide.slide_id, slide.path, "done", grid.counts, time.perf_counter() - start)
        except Interrupted as exc:  # recorded, then the interruption goes on (the caller writes the manifest)
            yield SlideResult(slide.slide_id, slide.path, "failed", {}, time.perf_counter() - start,
                              f"{exc}; rerun to tile it")
            raise
        except Exception as exc:
            if debug and not isinstance(exc, CmamilError):
                raise
            message = str(exc) if isinstance(exc, CmamilError) else f"{type(exc).__name__}: {exc}"
            log.debug("%s failed", slide.path, exc_info=True)
            yield SlideResult(slide.slide_id, slide.path, "failed", {}, time.perf_counter() - start, message)


def _finished(out_file: Path, tiling: TilingConfig, overwrite: bool) -> bool:
    """Whether the slide's coordinate file exists (and is kept); one made with other settings is an error."""
    if overwrite or not out_file.exists():
        return False
    check_same_tiling(load_grid(out_file), out_file, tiling, "tile")
    return True
