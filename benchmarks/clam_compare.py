"""Print cmamil's extraction against CLAM's per-tile pipeline, side by side: tiles/s and peak memory.

The reference is CLAM's published pipeline (extract_features_fp.py with Whole_Slide_Bag_FP), rebuilt here
because CLAM itself is not installed: one OpenSlide `read_region` per 256-px tile at level 0, torchvision
transforms (Resize(224), ToTensor, Normalize), a DataLoader with batch 64 and no workers, fp32 NCHW under
`torch.no_grad`, features appended to an HDF5 file batch by batch. The coordinates are cmamil's 20x grid of the
same slide, so both embed the same tiles. cmamil runs `extract_slides` end to end (tissue, grid, reads in
workers, encoder, streamed writes) as `cmamil extract` does (malloc tuning included).

Every measurement runs in a fresh subprocess (peak memory is per process tree), and the runs are interleaved
round by round so that a machine shared with other jobs disturbs both sides alike; figures are medians over
the rounds. Memory is the peak of the process tree's proportional set size (PSS: shared pages split between
the processes that share them, so DataLoader workers are counted fairly), sampled every 0.2 s.

    python benchmarks/clam_compare.py                     # ResNet-50-trunc and ViT-S/16, 10,000 x 8,000 px slide
    python benchmarks/clam_compare.py --rounds 1 --encoders resnet50_trunc
    python benchmarks/clam_compare.py --variants fp32,fp32+compile,bf16+compile   # bf16 needs a bf16-native CPU
    python benchmarks/clam_compare.py --sizes 10000x8000,40000x30000 --encoders timm:resnet10t   # memory vs size
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from extract_throughput import synthetic_slide

ENCODERS = {"resnet50_trunc": "resnet50_trunc", "vit_s16": "timm:vit_small_patch16_224"}


class TreeMemory:
    """Peak PSS of this process and its children, sampled in a thread (Linux /proc)."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.sample())

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.sample())

    @staticmethod
    def sample() -> int:
        """Bytes of PSS summed over this process and its descendants."""
        pids, total, index = [os.getpid()], 0, 0
        while index < len(pids):
            pid = pids[index]
            index += 1
            try:
                for task in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{task}/children") as handle:
                        pids += [int(p) for p in handle.read().split()]
                with open(f"/proc/{pid}/smaps_rollup") as handle:
                    for line in handle:
                        if line.startswith("Pss:"):
                            total += int(line.split()[1]) * 1024
                            break
            except (FileNotFoundError, ProcessLookupError):
                continue
        return total


def _reference_model(encoder: str):
    """The encoder as CLAM builds it: timm ResNet-50 (torchvision layout) cut after layer 3 and average-pooled
    (CLAM's TimmCNNEncoder), or a timm ViT with its head removed."""
    import timm
    import torch

    if encoder == "resnet50_trunc":
        class Trunc(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = timm.create_model("resnet50.tv_in1k", features_only=True, out_indices=(3,))
                self.pool = torch.nn.AdaptiveAvgPool2d(1)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.pool(self.model(x)[-1]).squeeze(-1).squeeze(-1)

        return Trunc().eval()
    return timm.create_model(ENCODERS[encoder].removeprefix("timm:"), num_classes=0).eval()


def run_reference(slide: Path, encoder: str, batch_size: int, out: Path) -> int:
    """CLAM's extract_features_fp loop on the slide's 20x tiles; returns the number of tiles embedded."""
    import h5py
    import numpy as np
    import openslide
    import torch
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    from cmamil.extract.grid import TilingConfig, plan_tiles
    from cmamil.extract.reader import open_slide

    with open_slide(slide) as reader:
        coords = plan_tiles(reader, TilingConfig("20", tile_px=256)).tile_sets[0].coords

    model = _reference_model(encoder)
    transform = transforms.Compose([
        transforms.Resize(224), transforms.ToTensor(),
        transforms.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    ])

    class WholeSlideBag(Dataset):
        def __init__(self) -> None:
            self.wsi = openslide.OpenSlide(str(slide))

        def __len__(self) -> int:
            return len(coords)

        def __getitem__(self, index: int) -> dict:
            coord = coords[index]
            img = self.wsi.read_region(tuple(int(c) for c in coord), 0, (256, 256)).convert("RGB")
            return {"img": transform(img), "coord": coord}

    loader = DataLoader(WholeSlideBag(), batch_size=batch_size)
    mode = "w"
    for data in loader:
        with torch.no_grad():
            features = model(data["img"]).cpu().numpy().astype(np.float32)
        with h5py.File(out, mode) as f:
            for key, value in (("features", features), ("coords", data["coord"].numpy().astype(np.int32))):
                if key not in f:
                    f.create_dataset(key, data=value, maxshape=(None, *value.shape[1:]), chunks=True)
                else:
                    f[key].resize(len(f[key]) + len(value), axis=0)
                    f[key][-len(value):] = value
        mode = "a"
    return len(coords)


def run_cmamil(slide: Path, encoder: str, batch_size: int, out: Path, args: argparse.Namespace) -> int:
    """`extract_slides` end to end, as `cmamil extract` runs it; returns the number of tiles embedded."""
    from cmamil.extract.allocator import keep_freed_memory
    from cmamil.extract.features import ExtractConfig, extract_slides
    from cmamil.extract.grid import TilingConfig

    keep_freed_memory()
    config = ExtractConfig(
        encoder=ENCODERS.get(encoder, encoder), input_px=224, tiling=TilingConfig(args.magnifications, tile_px=256),
        batch_size=batch_size, num_workers=args.num_workers, device=args.device, overwrite=True, compile=args.compile,
        precision=args.precision,
    )
    [result] = extract_slides([slide], out, config)
    if result.status != "done":
        raise SystemExit(f"extraction failed: {result.error}")
    return sum(result.counts.values())


def measure(args: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    import resource

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(dir=args.workdir) as folder, TreeMemory() as memory:
        start = time.perf_counter()
        if args.pipeline == "clam":
            tiles = run_reference(args.slide, args.encoder, args.batch_size, Path(folder) / "features.h5")
        else:
            tiles = run_cmamil(args.slide, args.encoder, args.batch_size, Path(folder), args)
        seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"tiles": tiles, "seconds": seconds, "pss": memory.peak, "rss": rss}))


def spawn(args: argparse.Namespace, slide: Path, pipeline: str, encoder: str, **extra: object) -> dict:
    """Run one measurement in a fresh interpreter and return its figures. Each run gets an empty inductor cache,
    so a compiled run pays its whole compilation (a later process of a real cohort would find it cached)."""
    options = {"batch_size": args.batch_size, "num_workers": args.num_workers, "magnifications": "20",
               "device": "cpu", "threads": args.threads, **extra}
    command = [sys.executable, __file__, "--measure", "--pipeline", pipeline, "--encoder", encoder,
               "--slide", str(slide), "--workdir", str(args.workdir)]
    for key, value in options.items():
        if value is True:
            command.append(f"--{key.replace('_', '-')}")
        elif value not in (None, False):
            command += [f"--{key.replace('_', '-')}", str(value)]
    with tempfile.TemporaryDirectory(dir=args.workdir) as cache:
        done = subprocess.run(command, check=True, capture_output=True, text=True,
                              env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache})
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    label = f"{pipeline} {extra.get('precision', 'fp32')}{'+compile' * bool(extra.get('compile'))}"
    print(f"  {label:<20} {options['magnifications']:<8} {encoder:<16} {figures['tiles'] / figures['seconds']:7.2f} "
          f"tiles/s {figures['pss'] / 2**30:5.2f} GiB", flush=True)
    return figures


def _cpu_model() -> str:
    """The CPU's model name (Linux), since the ratios depend on its instruction set."""
    with open("/proc/cpuinfo") as handle:
        return next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "unknown")


def _median(runs: list[dict]) -> tuple[float, float]:
    return (statistics.median(r["tiles"] / r["seconds"] for r in runs),
            statistics.median(r["pss"] / 2**30 for r in runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", default="resnet50_trunc,vit_s16",
                        help="Comma-separated: resnet50_trunc, vit_s16, or any cmamil encoder name.")
    parser.add_argument("--rounds", type=int, default=2, help="Interleaved rounds; figures are medians.")
    parser.add_argument("--sizes", default="10000x8000", help="Slide sizes WxH; several show memory vs size.")
    parser.add_argument("--nested", default="5,10,20", help="Magnifications of the nested run ('' to skip).")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=1, help="cmamil's DataLoader workers.")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in every run [default: torch's].")
    parser.add_argument("--variants", default="fp32",
                        help="cmamil runs side by side, comma-separated PRECISION[+compile] (fp32,fp32+compile,"
                             "bf16+compile); the reference stays fp32, as CLAM runs. Nested and other sizes use "
                             "the first.")
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--no-reference", action="store_true", help="Only cmamil (e.g. for memory vs size).")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "cmamil-bench")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pipeline", help=argparse.SUPPRESS)
    parser.add_argument("--encoder", help=argparse.SUPPRESS)
    parser.add_argument("--slide", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--magnifications", default="20", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.measure:
        return measure(args)

    encoders = args.encoders.split(",")
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    slides = {size: synthetic_slide(args.workdir, *size, 0.5) for size in sizes}
    first = slides[sizes[0]]
    variants = {v: {"precision": v.split("+")[0], "compile": v.endswith("+compile")} for v in args.variants.split(",")}
    first_variant = next(iter(variants))
    extra = variants[first_variant]
    runs: dict[tuple, list[dict]] = {}
    for round_ in range(args.rounds):
        print(f"round {round_ + 1} of {args.rounds}", flush=True)
        for encoder in encoders:
            if not args.no_reference:
                runs.setdefault(("clam", encoder), []).append(spawn(args, first, "clam", encoder))
            for variant, options in variants.items():
                runs.setdefault((f"cmamil {variant}", encoder), []).append(
                    spawn(args, first, "cmamil", encoder, **options))
            if args.nested:
                runs.setdefault(("nested", encoder), []).append(
                    spawn(args, first, "cmamil", encoder, magnifications=args.nested, **extra))
            for size in sizes[1:]:
                runs.setdefault((f"{size[0]}x{size[1]}", encoder), []).append(
                    spawn(args, slides[size], "cmamil", encoder, **extra))

    print(f"\nslide {sizes[0][0]} x {sizes[0][1]} px at 0.5 µm/px (20x), 256-px tiles resized to 224, batch "
          f"{args.batch_size}, CPU; CLAM in fp32, cmamil with {args.num_workers} worker(s); medians of "
          f"{args.rounds} interleaved round(s)")
    from cmamil.extract.encoder import cpu_computes_natively

    print(f"CPU: {_cpu_model()}, {os.cpu_count()} cores; bf16 native: {cpu_computes_natively('bf16')}")
    print("| encoder | CLAM tiles/s | CLAM GiB | cmamil | cmamil tiles/s | cmamil GiB | speed ratio | memory ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for encoder in encoders:
        for variant in variants if ("clam", encoder) in runs else ():
            (ct, cm), (mt, mm) = _median(runs[("clam", encoder)]), _median(runs[(f"cmamil {variant}", encoder)])
            print(f"| {encoder} | {ct:.2f} | {cm:.2f} | {variant} | {mt:.2f} | {mm:.2f} | {mt / ct:.2f}x "
                  f"| {mm / cm:.2f}x |")
    for encoder in encoders:
        key = (f"cmamil {first_variant}", encoder)
        single = _median(runs[key]) if key in runs else None
        if args.nested and single:
            nt, nm = _median(runs[("nested", encoder)])
            print(f"nested {args.nested} ({runs[('nested', encoder)][0]['tiles']} tiles) {encoder}: {nt:.2f} tiles/s, "
                  f"{nm:.2f} GiB = {nm / single[1]:.2f}x the 20x-only memory, {nt / single[0]:.2f}x its tiles/s")
        for size in sizes[1:]:
            key = (f"{size[0]}x{size[1]}", encoder)
            st, sm = _median(runs[key])
            print(f"slide {key[0]} ({runs[key][0]['tiles']} tiles) {encoder}: {st:.2f} tiles/s, {sm:.2f} GiB"
                  + (f" = {sm / single[1]:.2f}x the {sizes[0][0]}x{sizes[0][1]} memory" if single else ""))


if __name__ == "__main__":
    main()
