"""DDP patch training speed under torchrun: training images per second for 1, 2 … processes, and the speed-up.

Each setting runs `torchrun --standalone --nproc-per-node N cmamil train --images …` on the same image set with
the same per-rank batch size; the figure is the training images of the epochs after the first divided by their
summed `epoch_seconds` (history.csv: training and validation, without start-up). Settings are interleaved
(1, 2, 1, 2 …) so that a disturbance hits both alike. Each process gets cores/N threads; on CPU the ranks share
the machine's cores, so only GPU figures say what scale-out buys.

    python benchmarks/scale_out.py --nproc 1 2 4 8 --device cuda --model deit_small --images patches/
    python benchmarks/scale_out.py --nproc 1 2 --device cpu        # synthetic 32-px set, example_cnn
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def train(nproc: int, images: Path, out: Path, args: argparse.Namespace) -> float:
    """Training images per second of one torchrun run (epochs after the first)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               str(Path(sys.executable).with_name("cmamil")), "train", "--images", str(images), "--model", args.model,
               *[a for option in args.model_option for a in ("--model-option", option)],
               "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--device", args.device,
               "--num-workers", str(args.num_workers), "--no-progress", "--no-figures", "--explain", "0",
               "--embeddings", "0", "--min-epochs", str(args.epochs), "--out", str(out)]
    threads = max(1, (os.cpu_count() or 1) // nproc)  # the machine's cores shared out, as torchrun does for N > 1
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    with open(out / "fold_0" / "history.csv", newline="") as handle:
        seconds = [float(row["epoch_seconds"]) for row in csv.DictReader(handle)][1:]
    with open(out / "splits" / "fold_0.csv", newline="") as handle:
        train_images = sum(row["split"] == "train" for row in csv.DictReader(handle))
    return train_images * len(seconds) / sum(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--images", type=Path, help="training/ validation/ testing/ class folders [synthetic]")
    parser.add_argument("--model", default="example_cnn")
    parser.add_argument("--model-option", action="append", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if args.model_option is None:
        args.model_option = ["img_size=32"] if args.model == "example_cnn" else []
    with tempfile.TemporaryDirectory() as tmp:
        images = args.images
        if images is None:
            from cmamil.synthetic import write_patch_set

            images = write_patch_set(Path(tmp) / "images", sizes={"training": 256, "validation": 32, "testing": 8},
                                     size=32)
        rates: dict[int, list[float]] = {n: [] for n in args.nproc}
        for repeat in range(args.repeats):
            for n in args.nproc:
                rates[n].append(train(n, images, Path(tmp) / f"run_{n}_{repeat}", args))
    base = max(rates[args.nproc[0]])
    print(f"{args.model} on {args.device}, batch {args.batch_size} per rank, best of {args.repeats}")
    print("processes  images/s  speed-up")
    for n in args.nproc:
        print(f"{n:9d}  {max(rates[n]):8.1f}  {max(rates[n]) / base:7.2f}")


if __name__ == "__main__":
    main()
