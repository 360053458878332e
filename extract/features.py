"""Feature extraction: slides (or image bags) → tiles → encoder → one feature file per bag, streamed by batch.

    config = ExtractConfig(encoder="deit_small", tiling=TilingConfig("5,10,20", tile_px=224))
    results = extract_slides(["slides/"], Path("features/"), config)     # one SlideResult per slide

For every bag: reuse the coordinate file of `cmamil tile` when there is one (else plan tiles here), read and cut
tiles in DataLoader workers (`cmamil.extract.loading`), embed them batch by batch and append the features to a
`BagWriter`, which renames the file into place only when every row has its feature. A bag whose feature file
exists is skipped; a bag that fails is recorded with its reason and the batch goes on; the manifest
`extract_manifest.csv` (one per shard when sharded) lists every bag of the run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from torch.utils.data import DataLoader, Dataset

from cmamil.errors import CmamilError, InputError
from cmamil.extract.batch import (
    SlideResult,
    SlideSource,
    collect_slides,
    resolve_shard,
    shard_items,
    write_manifest,
)
from cmamil.extract.encoder import PRECISIONS, Encoder
from cmamil.extract.grid import NestedGrid, TilingConfig, load_grid, plan_tiles
from cmamil.extract.loading import SlideTiles, fixed_batches
from cmamil.extract.reader import open_slide
from cmamil.store import bag_info, bag_path, is_complete

if TYPE_CHECKING:
    import torch

    from cmamil.progress import Progress
    from cmamil.store import BagWriter

__all__ = ["BagJob", "BagPlan", "ExtractConfig", "Group", "extract_bags", "extract_slides", "manifest_name"]

log = logging.getLogger(__name__)

STORAGE = ("h5", "zarr")
FEATURE_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class ExtractConfig:
    """Everything `cmamil extract` needs besides its inputs and output folder.

    `encoder` is a `cmamil.models` plugin name or `timm:<arch>`; `weights` a local file, 'hub', or None (random);
    `model_options` go to the model factory; `input_px` overrides the encoder's input size (tiles are resized to
    it). `coords` is a folder of `cmamil tile` coordinate files (default: reuse those in the output folder);
    `shard` (I, N) takes every N-th bag (default: the torchrun rank, else all).
    """

    encoder: str
    weights: str | None = None
    model_options: Mapping[str, Any] = field(default_factory=dict)
    input_px: int | None = None
    tiling: TilingConfig = field(default_factory=TilingConfig)
    batch_size: int = 64
    num_workers: int = 2
    device: str = "auto"
    precision: str = "fp32"
    compile: bool = False
    storage: str = "h5"
    features_dtype: str = "float32"
    overwrite: bool = False
    coords: Path | None = None
    shard: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if not self.encoder:
            raise InputError("no encoder given; pass e.g. --encoder deit_small or --encoder timm:resnet18")
        if self.input_px is not None and self.input_px < 8:
            raise InputError(f"--input-px must be at least 8, got {self.input_px}")
        if self.batch_size < 1 or self.num_workers < 0:
            raise InputError(f"batch size must be >= 1 and workers >= 0, got {self.batch_size}, {self.num_workers}")
        for value, allowed, what in (
            (self.precision, tuple(PRECISIONS), "precision"),
            (self.storage, STORAGE, "format"),
            (self.features_dtype, FEATURE_DTYPES, "features dtype"),
        ):
            if value not in allowed:
                raise InputError(f"{what} '{value}' is not one of {', '.join(allowed)}")
        if self.shard is not None:
            resolve_shard(self.shard)
        if self.coords is not None:
            object.__setattr__(self, "coords", Path(self.coords))

    def build_encoder(self) -> Encoder:
        """Build the encoder this configuration names, on its device and precision."""
        return Encoder(
            self.encoder, weights=self.weights, options=self.model_options, input_px=self.input_px,
            device=self.device, precision=self.precision, compile=self.compile,
        )


@dataclass(frozen=True)
class Group:
    """One magnification of a bag: its name, level-0 coords, parent rows and the attributes of its coords."""

    name: str
    coords: np.ndarray
    parent: np.ndarray
    attrs: Mapping[str, Any]


@dataclass(frozen=True)
class BagPlan:
    """What to write for one bag: file attributes, its magnification groups, and the tiles to embed."""

    attrs: Mapping[str, Any]
    groups: tuple[Group, ...]
    tiles: Dataset


@dataclass(frozen=True)
class BagJob:
    """One bag of a run: its id, the path the manifest names, and how to plan it once the encoder exists."""

    bag_id: str
    path: Path
    plan: Callable[[Encoder], BagPlan]


def manifest_name(shard: tuple[int, int]) -> str:
    """`extract_manifest.csv`, or one name per shard so that shards never write the same file."""
    return "extract_manifest.csv" if shard[1] == 1 else f"extract_manifest.shard-{shard[0]}-of-{shard[1]}.csv"


def extract_slides(
    inputs: Iterable[str | Path | SlideSource], out: str | Path, config: ExtractConfig, *, debug: bool = False
) -> list[SlideResult]:
    """Extract features of every slide in `inputs` (slide files, folders, CSV tables, or SlideSource) into `out`.

    Returns one SlideResult per slide of this shard ('done', 'skipped' or 'failed' with its reason) and writes
    them to the manifest in `out`. With `debug`, an unexpected error (a bug, not bad input) is raised.
    """
    out, inputs = Path(out), list(inputs)
    given = [s for s in inputs if isinstance(s, SlideSource)]
    sources = given + collect_slides([s for s in inputs if not isinstance(s, SlideSource)], exclude=out)
    if not sources:
        raise InputError("no slides given (slide files, folders or a CSV with a path column)")
    jobs = [BagJob(s.slide_id, s.path, _slide_planner(s, out, config)) for s in sources]
    return extract_bags(jobs, out, config, config.tiling.names, debug=debug)


def extract_bags(
    jobs: Sequence[BagJob],
    out: Path,
    config: ExtractConfig,
    magnifications: Sequence[str],
    *,
    debug: bool = False,
    failed: Sequence[SlideResult] = (),
) -> list[SlideResult]:
    """Run this shard's jobs: skip finished bags, extract the others, record failures, write the manifest.

    `failed` are inputs that formed no job (e.g. images no bag takes); this shard's share is recorded too.
    """
    from cmamil.progress import Progress

    shard = resolve_shard(config.shard)
    duplicates = _duplicates(jobs)
    jobs = shard_items(jobs, shard)
    encoder: Encoder | None = None
    results: list[SlideResult] = shard_items(failed, shard)
    progress = Progress("extract", total=len(jobs), unit="bag")
    try:
        for job in jobs:
            start = time.perf_counter()
            try:
                out_file = bag_path(out, job.bag_id, config.storage)  # type: ignore[arg-type]
                finished = _finished(job, out_file, config, duplicates)
            except CmamilError as exc:
                finished = _failed(job, exc, 0.0)
            if finished is None:
                if encoder is None:  # a bad encoder stops the run, not one bag
                    encoder = config.build_encoder()
                    if config.compile:
                        encoder.warm_up(config.batch_size)
                try:
                    counts = _write_bag(out_file, job.plan(encoder), encoder, config)
                    finished = SlideResult(job.bag_id, job.path, "done", counts, time.perf_counter() - start)
                except Exception as exc:
                    if debug and not isinstance(exc, CmamilError):
                        raise
                    finished = _failed(job, exc, time.perf_counter() - start)
            results.append(finished)
            progress.advance(note=finished.describe(), worked=finished.status != "skipped")
    finally:
        progress.close()
        write_manifest(out / manifest_name(shard), results, magnifications)
    return results


def _failed(job: BagJob, exc: Exception, seconds: float) -> SlideResult:
    """A 'failed' result with a one-line reason (the original error of a DataLoader worker, not its traceback)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if isinstance(exc, CmamilError):
        message = lines[0] if lines else type(exc).__name__
    else:
        message = lines[-1].strip() if len(lines) > 1 else f"{type(exc).__name__}: {exc}"
    log.debug("%s failed", job.path, exc_info=exc)
    log.warning("failed: %s: %s", job.bag_id, message)
    return SlideResult(job.bag_id, job.path, "failed", {}, seconds, message)


def _duplicates(jobs: Sequence[BagJob]) -> set[str]:
    """Bag ids that more than one job claims (each such job fails instead of overwriting another's file)."""
    seen: dict[str, int] = {}
    for job in jobs:
        seen[job.bag_id] = seen.get(job.bag_id, 0) + 1
    return {bag_id for bag_id, n in seen.items() if n > 1}


def _finished(job: BagJob, out_file: Path, config: ExtractConfig, duplicates: set[str]) -> SlideResult | None:
    """'skipped' for a finished file of the same encoder (None when the bag is to be extracted); a finished file
    of another encoder, or an id claimed twice, is an error rather than a silent skip or an overwrite."""
    if job.bag_id in duplicates:
        raise InputError(f"bag id '{job.bag_id}' is used by more than one input; give them distinct ids")
    if config.overwrite or not is_complete(out_file):
        return None
    info = bag_info(out_file)
    if info.attrs.get("encoder") != config.encoder:
        raise InputError(
            f"{out_file} holds features of encoder {info.attrs.get('encoder')}, not {config.encoder}; "
            f"use another --out folder or --overwrite"
        )
    return SlideResult(job.bag_id, job.path, "skipped", info.counts)


def _write_bag(out_file: Path, plan: BagPlan, encoder: Encoder, config: ExtractConfig) -> dict[str, int]:
    """Embed the plan's tiles batch by batch and stream the features into the bag's file (renamed when complete).

    Each batch is submitted before the previous one's features are written, so that on a GPU their copy to the
    host and the file writes overlap the next batch's inference.
    """
    from cmamil.progress import Progress
    from cmamil.store import BagWriter

    workers = config.num_workers if len(plan.tiles) > 1 else 0
    loader = DataLoader(
        plan.tiles, batch_size=None, shuffle=False, num_workers=workers, prefetch_factor=2 if workers else None,
    )
    names = [group.name for group in plan.groups]
    counts = {group.name: len(group.coords) for group in plan.groups}
    writer = BagWriter(out_file, attrs=plan.attrs, features_dtype=config.features_dtype, overwrite=True)
    with plan.tiles, writer:
        for group in plan.groups:
            writer.add_magnification(group.name, group.coords, group.parent, group.attrs)
        with Progress(out_file.stem, total=sum(counts.values()), unit="tile", leave=False) as progress:
            pending = None
            for pixels, mags in fixed_batches(loader, config.batch_size, pin=encoder.device.type == "cuda"):
                submitted = encoder.submit(pixels), mags
                if pending is not None:
                    _append(writer, names, *pending, progress)
                pending = submitted
            if pending is not None:
                _append(writer, names, *pending, progress)
    return counts


def _append(
    writer: BagWriter, names: Sequence[str], features: Callable[[], torch.Tensor], mags: torch.Tensor,
    progress: Progress,
) -> None:
    """Write one embedded batch's features to their magnifications' groups."""
    embedded = features()
    for index, name in enumerate(names):
        selected = mags == index
        if selected.any():
            writer.append_features(name, embedded[selected])
    progress.advance(len(embedded))


def _slide_planner(source: SlideSource, out: Path, config: ExtractConfig) -> Callable[[Encoder], BagPlan]:
    """Plan a slide: its grid (from a coordinate file, else planned now), file attributes and tile dataset."""

    def plan(encoder: Encoder) -> BagPlan:
        reader = open_slide(source.path)
        try:
            grid, origin = _coordinate_grid(source, out, config)
            if grid is None:
                grid, origin = plan_tiles(reader, config.tiling), "planned"
        except BaseException:
            reader.close()
            raise
        if grid.dimensions != reader.dimensions:
            reader.close()
            raise InputError(
                f"{origin} was made for a {grid.dimensions[0]}x{grid.dimensions[1]} slide, but {source.path.name} "
                f"is {reader.dimensions[0]}x{reader.dimensions[1]}; re-tile it"
            )
        attrs = {**grid.attrs, "source": reader.source, "tiles_from": origin, **encoder.attrs}
        groups = tuple(Group(t.magnification.name, t.coords, t.parent, t.attrs) for t in grid.tile_sets)
        tiles = SlideTiles(
            reader, grid, input_px=encoder.input_px, interpolation=encoder.data_config.interpolation,
            max_tiles=config.batch_size,
        )
        return BagPlan(attrs, groups, tiles)

    return plan


def _coordinate_grid(source: SlideSource, out: Path, config: ExtractConfig) -> tuple[NestedGrid | None, str]:
    """The slide's grid from `config.coords`, or from a coordinate file in `out` (unless overwriting); else None."""
    folder = config.coords or (None if config.overwrite else out)
    if folder is None:
        return None, ""
    for storage in STORAGE:
        path = bag_path(folder, source.slide_id, storage)  # type: ignore[arg-type]
        if path.exists():
            grid = load_grid(path)
            _check_tiling(grid, path, config.tiling)
            return grid, str(path)
    if config.coords is not None:
        raise InputError(
            f"no coordinate file {source.slide_id}.h5 or .zarr in {folder}; run cmamil tile --out {folder} first"
        )
    return None, ""


def _check_tiling(grid: NestedGrid, path: Path, tiling: TilingConfig) -> None:
    """A coordinate file must hold the magnifications and tile size asked for (and the --mpp, when given)."""
    same_mpp = tiling.mpp is None or abs(grid.resolution.mpp - tiling.mpp) <= 1e-6 * tiling.mpp
    if grid.names != tiling.names or grid.config.tile_px != tiling.tile_px or not same_mpp:
        mpp = f" at {grid.resolution.mpp:g} µm/px" if not same_mpp else ""
        raise InputError(
            f"{path} was tiled at {','.join(grid.names)} with {grid.config.tile_px}-px tiles{mpp}, not "
            f"{','.join(tiling.names)} with {tiling.tile_px}-px tiles; extract with the same --magnifications, "
            f"--tile-px and --mpp, or delete the coordinate file to re-tile"
        )
