"""Print write/read speed and peak Python memory of per-bag feature files (HDF5 and zarr, float32 and float16).

    python benchmarks/store_throughput.py --rows 20000 --dim 768 --batch 256
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from cmamil.store import BagWriter, bag_path, read_bag


def write(path: Path, rows: int, dim: int, batch: int, dtype: str) -> float:
    """Stream `rows` random features into one 20x magnification; return seconds."""
    coords = np.stack([np.arange(rows) * 224, np.zeros(rows, np.int64)], axis=1)
    block = np.random.default_rng(0).standard_normal((batch, dim)).astype(np.float32)
    start = time.perf_counter()
    with BagWriter(path, features_dtype=dtype) as writer:  # type: ignore[arg-type]
        writer.add_magnification("20x", coords)
        for first in range(0, rows, batch):
            writer.append_features("20x", block[: min(batch, rows - first)])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000, help="feature rows in the bag")
    parser.add_argument("--dim", type=int, default=768, help="feature dimension")
    parser.add_argument("--batch", type=int, default=256, help="rows per append")
    args = parser.parse_args()
    import h5py  # noqa: F401  (imported here so that import time is not counted as writing time)
    import zarr  # noqa: F401
    print(f"rows={args.rows} dim={args.dim} batch={args.batch}")
    with tempfile.TemporaryDirectory() as folder:
        for fmt in ("h5", "zarr"):
            for dtype in ("float32", "float16"):
                path = bag_path(folder, f"{fmt}_{dtype}", fmt)  # type: ignore[arg-type]
                megabytes = args.rows * args.dim * np.dtype(dtype).itemsize / 2**20
                tracemalloc.start()
                seconds = write(path, args.rows, args.dim, args.batch, dtype)
                peak = tracemalloc.get_traced_memory()[1] / 2**20
                tracemalloc.stop()
                start = time.perf_counter()
                read_bag(path)
                read = time.perf_counter() - start
                print(
                    f"{fmt:4s} {dtype}: {megabytes:7.1f} MiB written in {seconds:6.2f} s "
                    f"({megabytes / seconds:7.1f} MiB/s, {args.rows / seconds:9.0f} rows/s), "
                    f"peak traced memory {peak:5.1f} MiB; read_bag {read:5.2f} s"
                )


if __name__ == "__main__":
    main()
