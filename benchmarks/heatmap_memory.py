"""Print the peak RSS of `cmamil heatmap` on a large and a small synthetic slide, from finished features.

For each size (default 40,000 × 30,000 and 10,000 × 8,000 px at 0.5 µm/px): write the slide (cached in
--workdir, the tissue layout of tile_planning.py), plan its 5/10/20× tiles (224 px), write a feature file of random
64-d features on those tiles, and run `cmamil heatmap` (PNG, GeoJSON, HDF5, top-8 montage) in a child process of
a fresh wrapper process, whose RUSAGE_CHILDREN maximum is the command's own peak RSS; the same for a process that
only imports the libraries the command uses, to show what the slide adds. The model is a 2-fold
cma_mil run trained for one epoch on a small planted cohort of 64-d bags (the values do not matter here).

    python benchmarks/heatmap_memory.py
    python benchmarks/heatmap_memory.py --sizes 40000x30000 10000x8000 --workdir /tmp/cmamil-bench
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cmamil.extract.grid import TilingConfig, plan_tiles
from cmamil.extract.reader import open_slide
from cmamil.store import BagWriter
from cmamil.synthetic import PlantedSignal, write_planted_cohort, write_slide
from cmamil.training.config import BagTrainConfig
from cmamil.training.runner import run_training

from tile_planning import tissue_layout

DIM = 64
IMPORTS = "import torch, timm, matplotlib.pyplot, h5py, scipy.stats, sklearn.metrics, openslide"
PEAK = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def model_run(workdir: Path) -> Path:
    """A small cma_mil run on 64-d planted bags (reused when finished)."""
    run = workdir / "heatmap_run"
    if not (run / "fold_1" / "metrics.json").is_file():
        labels = write_planted_cohort(workdir / "heatmap_bags", 8, dim=DIM, n_coarse=2,
                                      signal=PlantedSignal("20x", tiles=2, shift=5.0))
        run_training(BagTrainConfig(model="cma_mil", features=workdir / "heatmap_bags", labels=labels, out=run,
                                    folds=2, epochs=1, min_epochs=0, val_fraction=0.5, device="cpu", num_workers=0,
                                    figures=False))
    return run


def slide_features(workdir: Path, width: int, height: int, mpp: float) -> tuple[Path, Path, int]:
    """The cached slide and a feature file of random features on its planned tiles; and the tile count."""
    slide = workdir / f"synthetic_{width}x{height}_{mpp:g}.tiff"
    if not slide.exists():
        began = time.perf_counter()
        write_slide(slide, tissue_layout(width, height, mpp), size=(width, height), mpp=mpp)
        print(f"wrote {slide.name} in {time.perf_counter() - began:.0f} s", flush=True)
    features = workdir / "heatmap_features" / f"{slide.stem}.h5"
    with open_slide(slide) as reader:
        grid = plan_tiles(reader, TilingConfig("5,10,20", tile_px=224))
    if not features.exists():
        rng = np.random.default_rng(0)
        with BagWriter(features, attrs={**grid.attrs, "encoder": "synthetic"}) as writer:
            for tiles in grid.tile_sets:
                name = tiles.magnification.name
                writer.add_magnification(name, tiles.coords, tiles.parent, tiles.attrs)
                writer.append_features(name, rng.standard_normal((len(tiles), DIM)).astype(np.float32))
    return slide, features, sum(grid.counts.values())


def peak_rss_mib(command: list[str]) -> float:
    """Peak resident memory of `command` in MiB (ru_maxrss of a child of a fresh wrapper process)."""
    result = subprocess.run([sys.executable, "-c", PEAK, *command], check=True, capture_output=True, text=True)
    return int(result.stdout.strip()) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["40000x30000", "10000x8000"], help="WIDTHxHEIGHT in px")
    parser.add_argument("--mpp", type=float, default=0.5)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "cmamil-bench")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    run = model_run(args.workdir)
    cmamil = str(Path(sys.executable).with_name("cmamil"))
    baseline = peak_rss_mib([sys.executable, "-c", IMPORTS])
    print(f"imports alone ({IMPORTS.removeprefix('import ')}): peak RSS {baseline:.0f} MiB", flush=True)
    figures = {}
    for size in args.sizes:
        width, height = map(int, size.split("x"))
        slide, features, tiles = slide_features(args.workdir, width, height, args.mpp)
        out = args.workdir / f"heatmap_out_{size}"
        command = [cmamil, "heatmap", str(run), str(features), "--slides", str(slide.parent), "--out", str(out),
                   "--device", "cpu", "--overwrite"]
        began = time.perf_counter()
        figures[size] = peak_rss_mib(command)
        print(f"{size} px, {tiles} tiles (5/10/20x): peak RSS {figures[size]:.0f} MiB, "
              f"{time.perf_counter() - began:.1f} s", flush=True)
    if len(figures) == 2:
        (big, a), (small, b) = figures.items()
        print(f"ratio {big} / {small}: {a / b:.2f}")


if __name__ == "__main__":
    main()
