"""`cmamil predict` and `cmamil heatmap`: a trained bag run applied to new slides or feature files.

Slides are first tiled and embedded exactly as the run's training features were (the extraction recipe recorded
in the run's config.yaml, `data.features.extraction`), into `<out>/features/`. Every finished fold's best
checkpoint (or the one asked for) is applied to every bag; a feature file that does not match the run (encoder,
weights, tile size, feature dimension, magnifications) is refused with one line and the rest go on. The output
folder holds
  predictions.csv       the one predictions schema (cmamil.training.predictions): prob_<class> is the fold mean
                        (the ensemble); prob_<class>_fold_<K> are each fold's probabilities
  metrics.json          with --labels: the ensemble's metrics, the keys of a training fold's test metrics
  predict_manifest.csv  one row per input: done, skipped (finished before) or refused, with the reason
  bags/<bag>.json       each bag's fold probabilities and what they were made from (the resume record)
  heatmaps/             with heatmaps: per bag PNG, GeoJSON, HDF5 and montage (cmamil.evaluation.tile_maps)
  tile_values.h5        links to every bag's heatmaps/<bag>.h5 (`<bag>/<mag>/attention`, `.../scores`)
A rerun skips bags whose record matches (same run checkpoints, same feature file, same heatmap settings).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from cmamil.atomic import atomic_path, write_json
from cmamil.errors import CmamilError, InputError
from cmamil.evaluation.tile_maps import HeatmapConfig

__all__ = ["PredictConfig", "PredictResult", "predict_run"]

log = logging.getLogger(__name__)

FEATURE_SUFFIXES = (".h5", ".hdf5", ".zarr")


@dataclass(frozen=True)
class PredictConfig:
    """A run, the inputs (slides, feature files, folders of either), the output folder, and how to predict."""

    run: Path
    inputs: tuple[Path, ...]
    out: Path
    folds: int | None = None
    labels: Path | None = None
    device: str = "auto"
    batch_size: int = 64
    num_workers: int = 2
    overwrite: bool = False
    heatmaps: HeatmapConfig | None = None

    def __post_init__(self) -> None:
        if not self.inputs:
            raise InputError("no inputs given: pass slides, feature files (.h5/.zarr) or folders of either")
        if self.batch_size < 1 or self.num_workers < 0:
            raise InputError("--batch-size must be at least 1 and --num-workers non-negative")


@dataclass(frozen=True)
class PredictResult:
    """Counts of the call, the refused inputs (and refused heatmaps) with their reasons, and the files written."""

    done: int
    skipped: int
    refused: list[tuple[str, str]]
    predictions: Path | None
    metrics: dict[str, Any] | None


@dataclass(frozen=True)
class _Bag:
    """One feature file to predict, and the slide it came from (when known)."""

    path: Path
    slide: Path | None = None


def predict_run(config: PredictConfig, echo: Callable[[str], None] = log.info) -> PredictResult:
    """Predict every input with the run's folds, writing the output folder of the module docstring."""
    from tqdm import tqdm

    from cmamil.environment import resolve_device
    from cmamil.extract.batch import SlideResult, write_manifest
    from cmamil.training.run_folder import RunFolder
    from cmamil.training.trained import load_trained

    run = RunFolder(config.run)
    if run.kind != "bags":
        raise InputError(f"{run.root} is a {run.kind} run; predict applies bag runs (use cmamil evaluate for "
                         f"patch models)")
    checkpoints = _checkpoints(run, config)
    device = resolve_device(config.device)
    models = {fold: load_trained(path, device) for fold, path in checkpoints.items()}
    names = run.class_names
    expected = _expectation(run, next(iter(models.values())).meta)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[SlideResult] = []
    bags, slides = _gather(config.inputs, out, results)
    if slides:
        bags += _extract(slides, out / "features", run, config, results)
    for result in results:
        echo(f"refused: {result.error}")
    ensemble_folds = [config.folds] if config.folds is not None else sorted(models)
    heat_fold = None if config.heatmaps is None else (
        config.heatmaps.fold if config.heatmaps.fold is not None else ensemble_folds[0])
    base_key = {"run": str(run.root.resolve()),
                "checkpoints": {str(k): _file_key(p) for k, p in checkpoints.items()}}
    records: dict[str, dict[str, Any]] = {}
    for bag in tqdm(bags, desc="predict", unit="bag", disable=None):
        start = time.perf_counter()
        try:
            bag_id, record, status = _predict_bag(bag, models, ensemble_folds, expected, base_key, names, out,
                                                  config, heat_fold, records)
        except CmamilError as exc:
            message = str(exc).splitlines()[0]
            echo(f"refused: {message}")
            results.append(SlideResult(bag.path.stem, bag.path, "refused", {}, time.perf_counter() - start, message))
            continue
        records[bag_id] = record
        error = record.get("heatmap_error", "") if status == "done" else ""
        if error:
            echo(f"no heatmap: {error}")
        results.append(SlideResult(bag_id, bag.path, status, record["counts"], time.perf_counter() - start, error))
    mags = list(expected["magnifications"])
    write_manifest(out / "predict_manifest.csv", results, mags)
    predictions_path, metrics = _write_predictions(records, names, ensemble_folds, out, config.labels)
    if config.heatmaps is not None:
        _link_tile_values(out, records)
    refused = [(r.slide_id, r.error) for r in results if r.error]
    return PredictResult(sum(r.status == "done" for r in results), sum(r.status == "skipped" for r in results),
                         refused, predictions_path, metrics)


def _checkpoints(run: Any, config: PredictConfig) -> dict[int, Path]:
    """Every finished fold's checkpoint, or `config.folds`'s (plus the heatmap fold's, when another)."""
    found = run.checkpoints()
    if not found:
        raise InputError(f"{run.root} has no finished fold (no fold_K/metrics.json); train it first")
    wanted = [f for f in (config.folds, config.heatmaps.fold if config.heatmaps else None) if f is not None]
    missing = [f for f in wanted if f not in found]
    if missing:
        raise InputError(f"{run.root} has no finished fold {missing[0]} (finished: {sorted(found)})")
    if config.folds is not None:
        found = {f: found[f] for f in sorted({config.folds, *wanted})}
    return found


def _expectation(run: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """What a feature file must match: the run's encoder, weights and tile size, its feature size and
    magnifications."""
    features = run.read_config().get("data", {}).get("features", {})
    recipe = features.get("extraction") or {}
    return {"encoder": recipe.get("encoder", features.get("encoder")),
            "encoder_weights": recipe.get("encoder_weights", features.get("encoder_weights")),
            "tile_px": recipe.get("tile_px", features.get("tile_px")),
            "in_dim": int(meta["in_dim"]), "magnifications": tuple(meta["magnifications"])}


def check_bag(info: Any, expected: dict[str, Any]) -> None:
    """Refuse a feature file that does not match the run, in one line naming the first difference."""
    name = info.path.name
    for key, what in (("encoder", "encoder"), ("encoder_weights", "encoder weights"), ("tile_px", "tile size")):
        have, want = info.attrs.get(key), expected.get(key)
        if have is not None and want is not None and not isinstance(want, list) and have != want:
            raise InputError(f"{name}: {what} {have} but the run was trained on {want}; extract it with the "
                             f"run's settings (or pass its slide)")
    if info.feature_dim != expected["in_dim"]:
        raise InputError(f"{name}: {info.feature_dim}-d features but the run was trained on {expected['in_dim']}-d "
                         f"ones; extract it with the run's encoder")
    missing = [m for m in expected["magnifications"] if m not in info.magnifications]
    if missing:
        raise InputError(f"{name}: no {', '.join(missing)} tiles (it has {', '.join(info.magnifications)}); the "
                         f"run needs {', '.join(expected['magnifications'])}")


def _gather(inputs: Sequence[Path], out: Path, results: list) -> tuple[list[_Bag], list[Any]]:
    """Feature files and slides named by `inputs` (files or folders of either); a path that is neither is
    recorded as refused."""
    from cmamil.extract.batch import SlideResult, collect_slides
    from cmamil.extract.reader import SLIDE_SUFFIXES
    from cmamil.store import list_bags

    bags, slides = [], []
    for item in map(Path, inputs):
        if item.is_dir() and item.suffix.lower() != ".zarr":
            found = list_bags(item)
            bags += [_Bag(p) for p in found]
            slides += collect_slides([item], exclude=out)
            if not found and not any(s.path.is_relative_to(item) for s in slides):
                results.append(SlideResult(item.name, item, "refused", {}, 0.0, f"{item}: no slides or feature "
                                                                                  f"files in it"))
        elif item.suffix.lower() in FEATURE_SUFFIXES and item.exists():
            bags.append(_Bag(item))
        elif item.suffix.lower() in SLIDE_SUFFIXES and item.is_file():
            slides += collect_slides([item])
        else:
            results.append(SlideResult(item.stem, item, "refused", {}, 0.0,
                                       f"{item} is not a slide, a feature file (.h5/.zarr) or a folder of them"))
    return bags, slides


def _extract(slides: Sequence[Any], folder: Path, run: Any, config: PredictConfig, results: list) -> list[_Bag]:
    """Tile and embed slides with the run's recipe into `folder` (finished ones are reused); failures recorded."""
    from cmamil.extract.batch import SlideResult
    from cmamil.extract.features import extract_slides

    try:
        extract = _extract_config(run, config)
    except CmamilError as exc:
        results += [SlideResult(s.slide_id, s.path, "refused", {}, 0.0, f"{s.path.name}: {exc}") for s in slides]
        return []
    found = []
    for result in extract_slides(slides, folder, extract):
        if result.status == "failed":
            result.error = f"{result.path.name}: {result.error}"
            results.append(result)
        else:
            found.append(_Bag(folder / f"{result.slide_id}.h5", result.path))
    return found


def _extract_config(run: Any, config: PredictConfig) -> Any:
    """The ExtractConfig that embeds new slides as the run's training features were embedded."""
    from cmamil.extract.features import ExtractConfig

    data = run.read_config()
    recipe = data.get("data", {}).get("features", {}).get("extraction") or _recipe_from_training_features(run, data)
    return ExtractConfig.from_recipe(recipe, batch_size=config.batch_size, num_workers=config.num_workers,
                                     device=config.device)


def _recipe_from_training_features(run: Any, data: dict[str, Any]) -> dict[str, Any]:
    """The recipe of a run made before runs recorded one: from its training features, if still there."""
    from cmamil.data.provenance import extraction_recipe
    from cmamil.store import bag_info, list_bags

    folder = data.get("config", {}).get("features")
    found = list_bags(folder) if folder else []
    if not found:
        raise InputError(f"{run.root} records no extraction recipe and its training features ({folder}) are gone; "
                         f"extract the slides with the run's encoder and pass the feature files")
    return extraction_recipe(bag_info(found[0]).attrs)


def _file_key(path: Path) -> dict[str, Any]:
    """What identifies a file's content cheaply: its resolved path, size and modification time."""
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _predict_bag(bag: _Bag, models: dict[int, Any], ensemble_folds: list[int], expected: dict[str, Any],
                 base_key: dict[str, Any],
                 names: Sequence[str], out: Path, config: PredictConfig, heat_fold: int | None,
                 records: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any], str]:
    """Predict one bag (and write its heatmaps), or reuse its matching record; returns (id, record, status)."""
    from cmamil.evaluation.heatmaps import bag_outputs
    from cmamil.store import bag_info, read_bag

    info = bag_info(bag.path)
    if info.bag_id in records:
        raise InputError(f"{bag.path.name}: bag id '{info.bag_id}' was already predicted from another input; give "
                         f"bags distinct ids")
    check_bag(info, expected)
    key = {**base_key, "features": _file_key(bag.path)}
    heat_key = None if config.heatmaps is None else {**config.heatmaps.key(), "fold": heat_fold,
                                                     "slide": str(bag.slide or "")}
    record_path = out / "bags" / f"{info.bag_id}.json"
    if record_path.is_file() and not config.overwrite:
        record = json.loads(record_path.read_text())
        if record.get("key") == key and (heat_key is None or record.get("heatmap") == heat_key):
            return info.bag_id, record, "skipped"
    data = read_bag(bag.path, expected["magnifications"])
    outputs = {fold: bag_outputs(trained, data) for fold, trained in models.items()}
    probs = {str(fold): o.probs.tolist() for fold, o in outputs.items()}
    record = {"bag_id": info.bag_id, "path": str(bag.path), "key": key, "probs": probs,
              "counts": dict(info.counts), "heatmap": None}
    if heat_key is not None:
        try:
            ensemble = np.mean([outputs[k].probs for k in ensemble_folds], axis=0)
            _heatmaps(bag, info, outputs[heat_fold], ensemble, names, out / "heatmaps", config.heatmaps, heat_fold)
            record["heatmap"] = heat_key
        except CmamilError as exc:  # the prediction stands; only the pictures are refused
            record["heatmap_error"] = str(exc).splitlines()[0]
    write_json(record_path, record)
    return info.bag_id, record, "done"


def _heatmaps(bag: _Bag, info: Any, outputs: Any, ensemble: np.ndarray, names: Sequence[str], folder: Path,
              heatmaps: HeatmapConfig, fold: int) -> list[Path]:
    """The bag's heatmap files, from its feature file's coords and its slide (found when not given)."""
    from cmamil.evaluation.tile_maps import SlideTiles, write_tile_maps
    from cmamil.store import read_coords

    coords = read_coords(bag.path)
    sizes = {}
    for mag in coords:
        size = info.coords_attrs[mag].get("tile_size_level0", info.coords_attrs[mag].get("patch_size_level0"))
        if size is None and mag in outputs.attention:
            raise InputError(f"{bag.path.name}: {mag} coords have no tile_size_level0 attribute; heatmaps need the "
                             f"level-0 tile size")
        sizes[mag] = float(size) if size is not None else 0.0
    slide = bag.slide or _find_slide(info, heatmaps.slides)
    dims = (info.attrs.get("level0_width"), info.attrs.get("level0_height"))
    if slide is not None and None not in dims:
        from cmamil.extract.reader import open_slide

        with open_slide(slide) as reader:
            if tuple(reader.dimensions) != (int(dims[0]), int(dims[1])):
                raise InputError(f"{slide.name} is {reader.dimensions[0]}x{reader.dimensions[1]} px but "
                                 f"{bag.path.name} was tiled from a {dims[0]}x{dims[1]} slide; pass its own slide")
    tiles = SlideTiles(info.bag_id, {m: c for m, (c, _) in coords.items()},
                       {m: p for m, (_, p) in coords.items()}, sizes,
                       (int(dims[0]), int(dims[1])) if None not in dims else None, slide)
    folder.mkdir(parents=True, exist_ok=True)
    return write_tile_maps(tiles, outputs, ensemble, names, folder, heatmaps, fold)


def _find_slide(info: Any, folder: Path | None) -> Path | None:
    """The bag's slide: `<folder>/<bag_id>.<slide suffix>`, else the source path its feature file records."""
    from cmamil.extract.reader import SLIDE_SUFFIXES

    if folder is not None:
        for suffix in SLIDE_SUFFIXES:
            if (Path(folder) / f"{info.bag_id}{suffix}").is_file():
                return Path(folder) / f"{info.bag_id}{suffix}"
    source = info.attrs.get("source")
    path = Path(source["path"]) if isinstance(source, dict) and source.get("path") else None
    return path if path is not None and path.is_file() else None


def _write_predictions(records: dict[str, dict[str, Any]], names: Sequence[str], folds: Sequence[int], out: Path,
                       labels: Path | None) -> tuple[Path | None, dict[str, Any] | None]:
    """predictions.csv (ensemble and per-fold columns) of this call's bags and, with labels, metrics.json."""
    from cmamil.training.predictions import Predictions, write_predictions

    if not records:
        return None, None
    ids = tuple(records)
    per_fold = {k: np.array([records[i]["probs"][str(k)] for i in ids]) for k in folds}
    ensemble = np.mean(list(per_fold.values()), axis=0)
    truth, patients = _truth(labels, ids, names)
    predictions = Predictions(ids, patients, truth, ensemble)
    extra = {f"prob_{n}_fold_{k}": per_fold[k][:, c] for k in folds for c, n in enumerate(names)}
    path = out / "predictions.csv"
    write_predictions(path, predictions, names, extra)
    if labels is None:
        return path, None
    known = truth >= 0
    if not known.any():
        raise InputError(f"{labels} names none of the predicted bags; check its slide_id column")
    labelled = Predictions(tuple(np.array(ids)[known]), tuple(np.array(patients)[known]), truth[known], ensemble[known],
                           float(-np.mean(np.log(np.clip(ensemble[known, truth[known]], 1e-12, None)))))
    metrics = labelled.metrics(names) | {"folds": list(folds), "unlabelled": int((~known).sum())}
    write_json(out / "metrics.json", metrics)
    return path, metrics


def _truth(labels: Path | None, ids: Sequence[str], names: Sequence[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Each bag's class index (-1 where it has none) and patient from a labels CSV (the bag id without one)."""
    if labels is None:
        return np.full(len(ids), -1, dtype=int), tuple(ids)
    from cmamil.data.labels import read_labels

    table = read_labels(labels, tuple(names))
    label, patient = dict(zip(table.slide_ids, table.labels)), dict(zip(table.slide_ids, table.patients))
    return np.array([label.get(i, -1) for i in ids], dtype=int), tuple(patient.get(i, i) for i in ids)


def _link_tile_values(out: Path, records: dict[str, dict[str, Any]]) -> None:
    """tile_values.h5: one external link per bag, `<bag>` → heatmaps/<bag>.h5:/<bag>, written atomically."""
    import h5py

    with atomic_path(out / "tile_values.h5") as tmp, h5py.File(tmp, "w") as handle:
        for bag_id in records:
            if (out / "heatmaps" / f"{bag_id}.h5").is_file():
                handle[bag_id] = h5py.ExternalLink(f"heatmaps/{bag_id}.h5", f"/{bag_id}")
