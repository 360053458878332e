"""Print the cost of shielding libhdf5 from write errors: the same chunked HDF5 writes made by libhdf5 directly
and through the guarded file object `BagWriter` uses (`cmamil.store._sinks`), interleaved so that a shared
machine loads both alike.

    python benchmarks/h5_write_guard.py --rows 40920 --dim 768 --repeats 5
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from cmamil.store._sinks import _GuardedFile


def write(path: Path, rows: int, dim: int, guarded: bool) -> float:
    """Write `rows` x `dim` float32 in ~1 MiB chunks, 10 chunks per call; return seconds (close included)."""
    chunk = max(1, (1 << 20) // (dim * 4))
    block = np.random.default_rng(0).standard_normal((10 * chunk, dim)).astype(np.float32)
    start = time.perf_counter()
    guard = _GuardedFile(path) if guarded else None
    with h5py.File(guard if guarded else path, "w") as handle:
        data = handle.create_dataset("features", shape=(rows, dim), dtype="float32", chunks=(chunk, dim))
        for first in range(0, rows, len(block)):
            data[first : first + len(block)] = block[: rows - first]
    if guard is not None:
        guard.close()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=40920, help="feature rows")
    parser.add_argument("--dim", type=int, default=768, help="feature dimension")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each, interleaved")
    args = parser.parse_args()
    times: dict[str, list[float]] = {"libhdf5 directly": [], "through the guarded file": []}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeats):
            times["libhdf5 directly"].append(write(Path(folder) / "direct.h5", args.rows, args.dim, False))
            times["through the guarded file"].append(write(Path(folder) / "guarded.h5", args.rows, args.dim, True))
    megabytes = args.rows * args.dim * 4 / 2**20
    for name, seconds in times.items():
        print(f"{name:26s} {megabytes:6.1f} MiB: median {np.median(seconds):5.2f} s "
              f"(runs {', '.join(f'{s:.2f}' for s in seconds)})")


if __name__ == "__main__":
    main()
