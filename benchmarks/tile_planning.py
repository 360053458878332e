"""Print how long tiling takes for a large synthetic slide (default 40,000 × 30,000 px at 0.5 µm/px, 5/10/20×).

Writes the slide once (cached in --workdir), then times each planning step with medians over --repeats:
open + resolution, tissue mask, nested grid, coordinate file, QC image, and `tile_slide` end to end.

    python benchmarks/tile_planning.py --width 40000 --height 30000 --repeats 3
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

from cmamil.extract.grid import TilingConfig, plan_tiles
from cmamil.extract.qc import write_qc
from cmamil.extract.reader import open_slide
from cmamil.extract.resolution import resolve_mpp
from cmamil.synthetic import Region, SyntheticTissue, write_slide
from cmamil.extract.tiling import tile_slide
from cmamil.extract.tissue import find_tissue


def tissue_layout(width: int, height: int, mpp: float) -> SyntheticTissue:
    """Two large ellipses and a rectangle covering about a third of the slide, like a resection section."""
    regions = (
        Region(int(0.05 * width), int(0.10 * height), int(0.45 * width), int(0.70 * height), "ellipse"),
        Region(int(0.55 * width), int(0.15 * height), int(0.35 * width), int(0.45 * height), "ellipse"),
        Region(int(0.60 * width), int(0.68 * height), int(0.25 * width), int(0.22 * height)),
    )
    return SyntheticTissue(regions, mpp=mpp)


def timed(step, repeats: int) -> tuple[float, object]:
    """Median seconds of `step()` over `repeats` runs, and its last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = step()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=40_000, help="level-0 width in px")
    parser.add_argument("--height", type=int, default=30_000, help="level-0 height in px")
    parser.add_argument("--mpp", type=float, default=0.5, help="level-0 µm/px")
    parser.add_argument("--magnifications", default="5,10,20", help="magnifications to plan")
    parser.add_argument("--tile-px", type=int, default=224, help="tile size in px")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per step (median reported)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "cmamil-bench",
                        help="where the synthetic slide is cached and outputs are written")
    args = parser.parse_args()
    slide = args.workdir / f"synthetic_{args.width}x{args.height}_{args.mpp:g}.tiff"
    if not slide.exists():
        tissue = tissue_layout(args.width, args.height, args.mpp)
        start = time.perf_counter()
        write_slide(slide, tissue, size=(args.width, args.height), mpp=args.mpp)
        seconds = time.perf_counter() - start
        pixels = args.width * args.height
        print(f"wrote {slide.name}: {slide.stat().st_size / 2**20:.0f} MiB in {seconds:.1f} s "
              f"({pixels / seconds / 1e6:.1f} Mpx/s), tissue {tissue.area / pixels:.0%}")
    config = TilingConfig(magnifications=args.magnifications, tile_px=args.tile_px)
    reader = open_slide(slide)
    print(f"slide {args.width}x{args.height} px, levels {reader.level_dimensions}")
    t_open, resolution = timed(lambda: resolve_mpp(open_slide(slide), config.mpp), args.repeats)
    t_tissue, tissue = timed(lambda: find_tissue(reader, resolution.mpp, config.tissue), args.repeats)
    t_plan, grid = timed(lambda: plan_tiles(reader, config, resolution=resolution, tissue=tissue), args.repeats)
    out = args.workdir / "out"
    t_save, _ = timed(lambda: grid.save(out / "slide.h5", overwrite=True), args.repeats)
    t_qc, _ = timed(lambda: write_qc(out / "slide.png", reader, grid, tissue), args.repeats)
    t_all, _ = timed(lambda: tile_slide(slide, out / "all.h5", out / "all.png", config, overwrite=True), args.repeats)
    print(f"tiles {grid.counts}; tissue mask {tissue.mask.shape[1]}x{tissue.mask.shape[0]} px, "
          f"{tissue.fraction:.0%} tissue")
    print(f"open + mpp {t_open * 1e3:7.1f} ms")
    print(f"tissue     {t_tissue * 1e3:7.1f} ms")
    print(f"plan grid  {t_plan * 1e3:7.1f} ms")
    print(f"save file  {t_save * 1e3:7.1f} ms")
    print(f"QC image   {t_qc * 1e3:7.1f} ms")
    print(f"tile_slide {t_all * 1e3:7.1f} ms end to end (median of {args.repeats})")
    print(f"peak RSS   {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:7.0f} MiB")


if __name__ == "__main__":
    main()
