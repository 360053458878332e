"""`cmamil extract`: embed the tiles of slides (or image sets) with an encoder into one feature file per bag."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cmamil.cli.options import option, output_options, slides_argument, tiling_options
from cmamil.errors import InputError

if TYPE_CHECKING:
    from cmamil.extract.grid import TilingConfig

__all__ = ["extract"]


@click.command()
@slides_argument(required=False)
@output_options
@click.option("--encoder", required=True,
              help="Patch model that embeds tiles: a cmamil.models plugin (deit_small, swin_tiny …) or timm:<arch>.")
@option("weights", default=None,
        help="Encoder weights: a local .pth/.safetensors file, or 'hub' to download [default: random].")
@option("model_options", help="Option passed to the encoder factory, repeatable (e.g. --model-option img_size=64).")
@option("input_px", default=None,
        help="Encoder input size; tiles are resized to it [default: the encoder's data_config size].")
@tiling_options
@click.option("--coords", type=click.Path(path_type=Path, file_okay=False, exists=True), default=None,
              help="Folder of `cmamil tile` coordinate files to use [default: those in --out, if any].")
@option("batch_size", default=64, show_default=True, help="Tiles per encoder batch.")
@option("num_workers", default=2, show_default=True,
        help="DataLoader worker processes that read and cut tiles while the encoder runs.")
@option("device", default="auto", show_default=True,
        help="auto uses CUDA when a GPU is visible (under torchrun: the rank's GPU).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="Encoder arithmetic: fp16/bf16 autocast on CUDA, or on a CPU that computes in it natively "
                   "(bf16: AVX512-BF16/AMX; 1.5-2.4x fp32's speed, features within ~1% of fp32's).")
@click.option("--compile", is_flag=True,
              help="Run the encoder through torch.compile with frozen weights (a warm-up of 15-45 s once per run; "
                   "needs a C++ compiler). On 2 CPU cores a slide then ran 10-20% faster, which 4 slides of 840 "
                   "tiles did not pay back; see docs/extraction.md#speed.")
@click.option("--features-dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="Stored feature dtype.")
@click.option("--images", multiple=True, metavar="MAG=DIR",
              help="An image set instead of slides: a folder of images at one magnification, repeatable "
                   "(--images 100x=BreaKHis/100X --images 400x=BreaKHis/400X).")
@click.option("--bag-by", default="image", show_default=True,
              help="[--images] Bags: 'image' (one per image), a regex whose named group 'patient' (or first "
                   "group) in the file name is the bag id, or a CSV file with columns image,bag_id.")
@click.option("--tile", is_flag=True,
              help="[--images] Cut each image into --tile-px tiles instead of embedding it whole (resized).")
@click.option("--shard", default=None, metavar="I/N",
              help="Take every N-th bag starting at I (0-based) [default: the torchrun rank, else all]. Not needed "
                   "for job arrays: processes started on one --out share the bags through lock files.")
@option("seed", default=0, show_default=True, help="Seed of random encoder weights (used without --weights).")
@click.pass_context
def extract(
    ctx: click.Context,
    slides: tuple[Path, ...],
    out: Path,
    storage: str,
    overwrite: bool,
    tiling: TilingConfig,
    images: tuple[str, ...],
    bag_by: str,
    tile: bool,
    shard: str | None,
    **options: Any,
) -> None:
    """Embed the tiles of SLIDES (files, folders or a CSV with a path column) into one feature file per bag.

    Writes <out>/<bag_id>.h5 (or .zarr): features, coords and parent links per magnification, with provenance
    and a fingerprint of the settings, and <out>/extract_manifest.csv. Coordinate files of `cmamil tile` in --out
    (or --coords) are reused. Bags whose feature file exists with the same settings are skipped; an --out holding
    features of other settings is refused; a failing bag is recorded and the rest go on; the exit code is 1 if
    any bag failed. Several processes (a SLURM array, several machines) may share one --out.

    \b
    Examples:
      cmamil extract slides/ --out features/ --encoder deit_small --magnifications 5,10,20
      cmamil extract cohort.csv --out features/ --encoder timm:resnet50 --weights resnet50.pth --device cuda
      cmamil extract slides/ --out features/ --encoder resnet50_trunc --weights resnet50.pth --tile-px 256 \\
          --input-px 224 --magnifications 20                          # CLAM's resnet50_trunc features
      cmamil extract slides/ --out features/ --encoder timm:resnet18 --tile-px 64 --input-px 64 --shard 0/4
      cmamil extract --images 100x=BreaKHis/100X --images 400x=BreaKHis/400X --out feats/ --encoder deit_small \\
          --bag-by 'SOB_\\w_\\w+-(?P<patient>\\d+-\\w+)-'
    """
    from cmamil.extract.allocator import keep_freed_memory
    from cmamil.extract.batch import parse_shard, resolve_shard, summarize
    from cmamil.extract.features import ExtractConfig, extract_slides, manifest_name

    if bool(slides) == bool(images):
        raise InputError("give SLIDES or --images MAG=DIR (one per magnification), not both and not neither")
    if not images and (tile or ctx.get_parameter_source("bag_by") != click.core.ParameterSource.DEFAULT):
        raise InputError("--bag-by and --tile apply to --images only")
    config = ExtractConfig(
        tiling=tiling, storage=storage, overwrite=overwrite, shard=parse_shard(shard) if shard else None, **options
    )
    debug = bool(ctx.obj and ctx.obj.get("debug"))
    keep_freed_memory()  # a process-wide malloc setting: the command owns its process, the library does not
    if images:
        from cmamil.extract.imagesets import ImageSets, extract_image_sets

        sets = ImageSets.parse(images, bag_by=bag_by, tile=tile)
        results, names = extract_image_sets(sets, out, config, debug=debug), sets.names
    else:
        results, names = extract_slides(slides, out, config, debug=debug), tiling.names
    manifest = out / manifest_name(resolve_shard(config.shard))
    click.echo(summarize(results, "bags", "extracted", names, manifest))
    failed = sum(r.status == "failed" for r in results)
    if failed:
        raise InputError(f"{failed} of {len(results)} bags failed; see {manifest}")
