"""Feature extraction: slides (or image bags) → tiles → encoder → one feature file per bag, streamed by batch.

    config = ExtractConfig(encoder="deit_small", tiling=TilingConfig("5,10,20", tile_px=224))
    results = extract_slides(["slides/"], Path("features/"), config)     # one SlideResult per slide

For every bag: reuse the coordinate file of `cmamil tile` when there is one (else plan tiles here), read and cut
tiles in DataLoader workers (`cmamil.extract.loading`), embed them batch by batch and append the features to a
`BagWriter`, which renames the file into place only when every row has its feature. A bag whose feature file
exists with the same settings fingerprint is skipped (`cmamil.extract.resume`); a bag that fails is recorded
with its reason and the batch goes on; the manifest `extract_manifest.csv` (one per shard when sharded) holds
a row per bag. Each bag is extracted under its lock file, so several processes on one output folder share the
bags; SIGTERM/SIGINT end the bag being written cleanly (temporary file removed, manifest written).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from cmamil.atomic import output_error, writable_folder
from cmamil.errors import CmamilError, InputError
from cmamil.extract.batch import (
    SlideResult,
    SlideSource,
    collect_slides,
    report_failure,
    resolve_shard,
    shard_items,
    write_manifest,
)
from cmamil.extract.encoder import PRECISIONS, Encoder, weights_digest
from cmamil.extract.grid import NestedGrid, TilingConfig, check_same_tiling, load_grid, plan_tiles
from cmamil.extract.loading import SlideTiles
from cmamil.extract.plans import BagPlan, Group, write_bag
from cmamil.extract.reader import open_slide
from cmamil.extract.resume import BagSettings, check_folder, finished_counts, tiling_settings
from cmamil.interrupt import Interrupted, raise_if_interrupted
from cmamil.locks import try_lock
from cmamil.notices import notice
from cmamil.store import bag_path, remove_temporaries

__all__ = ["BagJob", "ExtractConfig", "extract_bags", "extract_slides", "manifest_name"]

log = logging.getLogger(__name__)

STORAGE = ("h5", "zarr")
FEATURE_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class ExtractConfig:
    """Everything `cmamil extract` needs besides its inputs and output folder.

    `encoder` is a `cmamil.models` plugin name or `timm:<arch>`; `weights` a local file, 'hub', or None (random);
    `model_options` go to the model factory; `input_px` overrides the encoder's input size (tiles are resized to
    it). `coords` is a folder of `cmamil tile` coordinate files (default: reuse those in the output folder);
    `shard` (I, N) takes every N-th bag (default: the torchrun rank, else all); `seed` draws random weights.
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
    seed: int = 0

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

    @classmethod
    def from_recipe(cls, recipe: Mapping[str, Any], **runtime: Any) -> ExtractConfig:
        """The settings that made a feature file, from its recorded recipe (`cmamil.data.provenance.
        extraction_recipe`), with runtime options (batch size, workers, device); the weights must be at hand."""
        from cmamil.extract.encoder import weights_digest
        from cmamil.extract.tissue import TissueConfig

        weights = recipe.get("encoder_weights")
        if weights == "random":
            raise InputError(f"the features were embedded with randomly initialised {recipe.get('encoder')} "
                             f"weights, which cannot be rebuilt; extract the slides yourself and pass feature files")
        weights_file = recipe.get("encoder_weights_file") or None
        if weights not in (None, "hub") and (not weights_file or not Path(weights_file).is_file()
                                             or weights_digest(weights_file) != weights):
            raise InputError(f"the encoder weights ({weights_file or 'no file recorded'}, sha256 {str(weights)[:12]}…) "
                             f"are not at hand; extract the slides with them and pass the feature files")
        tiling = TilingConfig(
            magnifications=",".join(recipe["magnifications"]), tile_px=int(recipe["tile_px"]),
            min_tissue=tuple(recipe.get("min_tissue", (0.25,))),
            mpp=recipe.get("mpp") if recipe.get("mpp_source") == "user" else None,
            tissue=TissueConfig(**recipe.get("tissue", {})),
        )
        return cls(encoder=recipe["encoder"], weights="hub" if weights == "hub" else weights_file,
                   model_options=dict(recipe.get("encoder_options") or {}), input_px=recipe.get("input_px"),
                   tiling=tiling, precision=recipe.get("precision", "fp32"), **runtime)

    def build_encoder(self) -> Encoder:
        """Build the encoder this configuration names, on its device and precision."""
        return Encoder(
            self.encoder, weights=self.weights, options=self.model_options, input_px=self.input_px,
            device=self.device, precision=self.precision, seed=self.seed, compile=self.compile,
        )

    def encoder_settings(self) -> dict[str, Any]:
        """The encoder part of a bag's settings fingerprint (weights by content hash, random ones by seed)."""
        return {
            "encoder": self.encoder,
            "encoder_weights": weights_digest(self.weights),
            "encoder_seed": self.seed if self.weights is None else None,
            "model_options": dict(self.model_options),
            "input_px": self.input_px,
            "precision": self.precision,
            "features_dtype": self.features_dtype,
        }


@dataclass(frozen=True)
class BagJob:
    """One bag of a run: its id, the path the manifest names, how to plan it once the encoder exists, and the
    input part of its settings fingerprint (tiling, or how image sets are cut)."""

    bag_id: str
    path: Path
    plan: Callable[[Encoder], BagPlan]
    settings: Mapping[str, Any] = field(default_factory=dict)


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
    jobs = [
        BagJob(s.slide_id, s.path, _slide_planner(s, out, config), tiling_settings(config.tiling, s.mpp))
        for s in sources
    ]
    return extract_bags(jobs, out, config, config.tiling.names, debug=debug)


def _tiling(source: SlideSource, config: ExtractConfig) -> TilingConfig:
    """The run's tiling, with the slide table's mpp for this slide when it gives one."""
    return config.tiling if source.mpp is None else replace(config.tiling, mpp=source.mpp)


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

    `failed` are inputs that formed no job (e.g. images no bag takes); this shard's share is recorded too. A
    folder holding features of other settings is refused before any work (unless `config.overwrite`).
    """
    from cmamil.progress import Progress

    writable_folder(out)
    shard = resolve_shard(config.shard)
    encoder_part = config.encoder_settings()
    settings = {job.bag_id: BagSettings({**encoder_part, **job.settings}) for job in jobs}
    if jobs and not config.overwrite:
        check_folder(out, settings[jobs[0].bag_id])
    if config.weights is None:
        notice(f"encoder {config.encoder} runs with random weights (seed {config.seed}); pass --weights FILE "
               "(.pth/.safetensors) or --weights hub for pretrained features")
    duplicates = _duplicates(jobs)
    encoder: list[Encoder] = []
    results: list[SlideResult] = shard_items(failed, shard)
    job: BagJob | None = None
    progress = Progress("extract", total=len(shard_items(jobs, shard)), unit="bag")
    try:
        for job in shard_items(jobs, shard):
            raise_if_interrupted()
            result = _run_job(job, out, config, settings[job.bag_id], duplicates, encoder, debug)
            if result.status == "failed":
                report_failure(result)
            results.append(result)
            progress.advance(note=result.describe(), worked=result.status not in ("skipped", "busy"))
            job = None
    except Interrupted as exc:
        if job is not None:
            results.append(SlideResult(job.bag_id, job.path, "failed", error=f"{exc}; rerun to extract it"))
        raise
    finally:
        progress.close()
        write_manifest(out / manifest_name(shard), results, magnifications)
    return results


def _run_job(job: BagJob, out: Path, config: ExtractConfig, settings: BagSettings, duplicates: set[str],
             encoder: list[Encoder], debug: bool) -> SlideResult:
    """One bag: 'skipped' when finished with these settings, 'busy' when another process holds its lock, else
    extracted under its lock ('done', or 'failed' with a one-line reason). `encoder` holds the run's encoder,
    built on first use (a bad encoder stops the run, not one bag)."""
    start = time.perf_counter()
    try:
        if job.bag_id in duplicates:
            raise InputError(f"bag id '{job.bag_id}' is used by more than one input; give them distinct ids")
        out_file = bag_path(out, job.bag_id, config.storage)  # type: ignore[arg-type]
        counts = None if config.overwrite else finished_counts(out_file, settings)
        if counts is not None:
            return SlideResult(job.bag_id, job.path, "skipped", counts)
        lock = try_lock(out_file.with_name(f".{out_file.name}.lock"))
    except CmamilError as exc:
        return _failed(job, exc, 0.0)
    if lock is None:
        return SlideResult(job.bag_id, job.path, "busy")
    with lock:
        try:
            remove_temporaries(out_file)  # left by a killed run: only the lock holder writes this bag
            counts = None if config.overwrite else finished_counts(out_file, settings)
            if counts is not None:  # another process finished it while this one was deciding
                return SlideResult(job.bag_id, job.path, "skipped", counts)
        except CmamilError as exc:
            return _failed(job, exc, 0.0)
        if not encoder:
            encoder.append(config.build_encoder())
            if config.compile:
                encoder[0].warm_up(config.batch_size)
        try:
            counts = write_bag(out_file, job.plan(encoder[0]), encoder[0], config, settings)
        except Exception as exc:
            if debug and not isinstance(exc, (CmamilError, OSError)):
                raise
            exc = output_error(out_file, exc) if isinstance(exc, OSError) else exc
            return _failed(job, exc, time.perf_counter() - start)
    return SlideResult(job.bag_id, job.path, "done", counts, time.perf_counter() - start)


def _failed(job: BagJob, exc: Exception, seconds: float) -> SlideResult:
    """A 'failed' result with a one-line reason (the original error of a DataLoader worker, not its traceback)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if isinstance(exc, CmamilError):
        message = lines[0] if lines else type(exc).__name__
    else:
        message = lines[-1].strip() if len(lines) > 1 else f"{type(exc).__name__}: {exc}"
    log.debug("%s failed", job.path, exc_info=exc)
    return SlideResult(job.bag_id, job.path, "failed", {}, seconds, message)


def _duplicates(jobs: Sequence[BagJob]) -> set[str]:
    """Bag ids that more than one job claims (each such job fails instead of overwriting another's file)."""
    seen: dict[str, int] = {}
    for job in jobs:
        seen[job.bag_id] = seen.get(job.bag_id, 0) + 1
    return {bag_id for bag_id, n in seen.items() if n > 1}


def _slide_planner(source: SlideSource, out: Path, config: ExtractConfig) -> Callable[[Encoder], BagPlan]:
    """Plan a slide: its grid (from a coordinate file, else planned now), file attributes and tile dataset."""

    def plan(encoder: Encoder) -> BagPlan:
        reader = open_slide(source.path)
        tiling = _tiling(source, config)
        try:
            grid, origin = _coordinate_grid(source, out, config, tiling)
            if grid is None:
                grid, origin = plan_tiles(reader, tiling), "planned"
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


def _coordinate_grid(
    source: SlideSource, out: Path, config: ExtractConfig, tiling: TilingConfig
) -> tuple[NestedGrid | None, str]:
    """The slide's grid from `config.coords`, or from a coordinate file in `out` (unless overwriting); else None.

    A coordinate file made with other tiling settings (magnifications, tile size, --mpp, tissue) is an error."""
    folder = config.coords or (None if config.overwrite else out)
    if folder is None:
        return None, ""
    for storage in STORAGE:
        path = bag_path(folder, source.slide_id, storage)  # type: ignore[arg-type]
        if path.exists():
            grid = load_grid(path)
            check_same_tiling(grid, path, tiling, "extract")
            return grid, str(path)
    if config.coords is not None:
        raise InputError(
            f"no coordinate file {source.slide_id}.h5 or .zarr in {folder}; run cmamil tile --out {folder} first"
        )
    return None, ""
