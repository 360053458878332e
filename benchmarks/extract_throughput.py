"""Print end-to-end extraction throughput against the encoder-only ceiling, measured in the same run.

Writes a synthetic slide (cached in --workdir) large enough for thousands of nested tiles, then:
  1. encoder only: the same Encoder, batch size and precision on random uint8 tiles (preprocessing included);
  2. end to end: `extract_slides` (tissue, nested grid, reads and cuts in DataLoader workers, encoder,
     streamed HDF5 writes), timed from call to return;
  3. encoder only again; the ceiling is the mean of 1 and 3, so a machine shared with other jobs loads both
     figures alike.
Tiles/s per magnification is that magnification's tile count over the end-to-end time (one pass serves all).

    python benchmarks/extract_throughput.py                                  # timm:resnet18, 64-px tiles, CPU
    python benchmarks/extract_throughput.py --encoder deit_small --tile-px 224 --width 12000 --height 8000 \\
        --device cuda --precision fp16 --num-workers 8 --batch-size 256
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from cmamil.extract.allocator import keep_freed_memory
from cmamil.extract.features import ExtractConfig, extract_slides
from cmamil.extract.grid import TilingConfig
from cmamil.synthetic import Region, SyntheticTissue, write_slide


def synthetic_slide(folder: Path, width: int, height: int, mpp: float) -> Path:
    """A cached slide with two tissue ellipses and a rectangle covering about half of it."""
    path = folder / f"bench_{width}x{height}_{mpp:g}.tiff"
    if not path.exists():
        regions = (
            Region(int(0.03 * width), int(0.05 * height), int(0.50 * width), int(0.90 * height), "ellipse"),
            Region(int(0.55 * width), int(0.05 * height), int(0.42 * width), int(0.55 * height), "ellipse"),
            Region(int(0.58 * width), int(0.65 * height), int(0.38 * width), int(0.30 * height)),
        )
        start = time.perf_counter()
        write_slide(path, SyntheticTissue(regions, mpp=mpp), size=(width, height), mpp=mpp)
        print(f"wrote {path} in {time.perf_counter() - start:.1f} s")
    return path


def encoder_only(encoder, batch_size: int, seconds: float) -> float:
    """Tiles/s of the encoder on random uint8 batches for about `seconds` (after one warm-up batch)."""
    pixels = torch.randint(0, 256, (batch_size, encoder.input_px, encoder.input_px, 3), dtype=torch.uint8)
    if encoder.device.type == "cuda":
        pixels = pixels.pin_memory()
    encoder(pixels)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done < 3 * batch_size:
        encoder(pixels)
        done += batch_size
    if encoder.device.type == "cuda":
        torch.cuda.synchronize()
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=6144)
    parser.add_argument("--height", type=int, default=4096)
    parser.add_argument("--mpp", type=float, default=0.5, help="Level-0 µm/px of the synthetic slide.")
    parser.add_argument("--magnifications", default="5,10,20")
    parser.add_argument("--tile-px", type=int, default=64)
    parser.add_argument("--encoder", default="timm:resnet18")
    parser.add_argument("--input-px", type=int, default=None, help="Default: --tile-px.")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--ceiling-seconds", type=float, default=10.0, help="Duration of each encoder-only run.")
    parser.add_argument("--default-malloc", action="store_true", help="Leave glibc malloc as it is (to compare).")
    parser.add_argument("--compile", action="store_true", help="Compile the encoder (warm-up reported).")
    parser.add_argument("--json", action="store_true", help="End with one JSON line of the figures.")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "cmamil-bench")
    args = parser.parse_args()

    if not args.default_malloc:
        keep_freed_memory()
    args.workdir.mkdir(parents=True, exist_ok=True)
    slide = synthetic_slide(args.workdir, args.width, args.height, args.mpp)
    config = ExtractConfig(
        encoder=args.encoder, input_px=args.input_px or args.tile_px,
        tiling=TilingConfig(args.magnifications, tile_px=args.tile_px), batch_size=args.batch_size,
        num_workers=args.num_workers, device=args.device, precision=args.precision, overwrite=True,
        compile=args.compile,
    )
    encoder = config.build_encoder()
    warm_up = encoder.warm_up(args.batch_size)
    print(f"{args.encoder} on {encoder.device} ({args.precision}), input {encoder.input_px} px, batch "
          f"{args.batch_size}, {args.num_workers} workers, {torch.get_num_threads()} threads, "
          f"malloc {'default' if args.default_malloc else 'keeps freed memory'}")
    before = encoder_only(encoder, args.batch_size, args.ceiling_seconds)
    start = time.perf_counter()
    [result] = extract_slides([slide], args.workdir / "features", config)
    seconds = time.perf_counter() - start
    after = encoder_only(encoder, args.batch_size, args.ceiling_seconds)
    if result.status != "done":
        raise SystemExit(f"extraction failed: {result.error}")
    ceiling = (before + after) / 2
    total = sum(result.counts.values())
    print(f"slide {args.width} x {args.height} px at {args.mpp} µm/px, {args.tile_px}-px tiles")
    for mag, count in result.counts.items():
        print(f"  {mag:>5}: {count:6d} tiles  {count / seconds:8.1f} tiles/s")
    print(f"  total: {total:6d} tiles  {total / seconds:8.1f} tiles/s end to end ({seconds:.1f} s)")
    print(f"encoder only: {ceiling:.1f} tiles/s (before {before:.1f}, after {after:.1f})")
    print(f"ratio end to end / encoder only: {total / seconds / ceiling:.2f}; first batch (warm-up) {warm_up:.1f} s")
    if args.json:
        gpu = torch.cuda.max_memory_allocated() / 2**30 if encoder.device.type == "cuda" else 0.0
        print(json.dumps({"tiles": total, "end_to_end": total / seconds, "encoder_only": ceiling,
                          "warm_up_s": warm_up, "gpu_peak_gib": gpu}))


if __name__ == "__main__":
    main()
