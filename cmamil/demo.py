"""The end-to-end demo: synthetic cohort → nested tiles → features → CMA-MIL k-fold → report.

Every stage writes into one folder and skips what is already finished, so a rerun only redoes what is
missing. `compare` trains the baselines on the same features and splits and tabulates them beside CMA-MIL.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cmamil.errors import InputError
from cmamil.synthetic import CohortConfig

__all__ = ["COMPARISON", "DEMO_CMA_MIL", "DemoConfig", "comparison_table", "localisation", "run_demo", "train_model",
           "train_side_by_side", "write_heatmaps"]

# (row name, aggregator, model options) of the comparison, all trained on the demo's splits
# the demo's CMA-MIL: cmamil's local (parent/child) cross-attention, exp_raw weighting, bag loss only
DEMO_CMA_MIL = {"cross_attention": "local", "attn_weighting": "exp_raw", "bag_weight": 1.0}
COMPARISON: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("cma_mil (local)", "cma_mil", DEMO_CMA_MIL),
    ("cma_mil (dense)", "cma_mil", {**DEMO_CMA_MIL, "cross_attention": "dense"}),
    ("cma_mil (published: dense, repo)", "cma_mil", {"cross_attention": "dense", "attn_weighting": "repo"}),
    ("abmil (20x only)", "abmil", {"magnification": "20x"}),
    ("abmil (all mags)", "abmil", {"magnification": "all"}),
    ("mean_pool", "mean_pool", {}),
)


@dataclass(frozen=True)
class DemoConfig:
    """What the demo generates, how it embeds the tiles and how it trains."""

    out: Path = Path("cmamil-demo")
    cohort: CohortConfig = field(default_factory=CohortConfig)
    encoder: str = "timm:resnet10t"
    encoder_options: dict[str, Any] = field(default_factory=lambda: {"zero_init_last": False})
    magnifications: str = "5,10,20"
    tile_px: int = 64
    num_workers: int = 0  # bags of ~230 tiny tiles: starting a reader process per bag costs more than it saves
    folds: int = 5
    epochs: int = 12
    model_options: dict[str, Any] = field(default_factory=lambda: dict(DEMO_CMA_MIL))
    lr: float = 1e-3
    monitor: str = "loss"  # AUC on ~23 validation bags reaches 1.0 early and then picks an undertrained epoch
    standardize: bool = True
    val_fraction: float = 0.2
    device: str = "auto"
    seed: int = 0
    compare: bool = False

    def __post_init__(self) -> None:
        if self.folds < 2 or self.epochs < 1 or self.tile_px < 16:
            raise InputError("--folds must be >= 2, --epochs >= 1 and the tile size >= 16 px")
        smallest = self.smallest_cohort(self.folds, self.val_fraction)
        if self.cohort.n_slides < smallest:
            raise InputError(f"--slides {self.cohort.n_slides} is too few for --folds {self.folds}: every class needs "
                             f"a slide in each test fold and enough training slides to hold out a validation part; "
                             f"use --slides {smallest} or more, or fewer --folds")
        object.__setattr__(self, "out", Path(self.out))

    @staticmethod
    def smallest_cohort(folds: int, val_fraction: float) -> int:
        """The fewest slides (half of each class) that k-fold splits with a validation part can be made from."""
        parts = max(2, round(1 / val_fraction))
        smallest = max(2 * folds, math.ceil(parts * folds / (folds - 1)), 2 * 2 * folds // (folds - 1))
        return smallest + smallest % 2


def run_demo(config: DemoConfig, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every stage (skipping finished work), print progress and the results table; return the summary."""
    from cmamil.synthetic import make_cohort
    from cmamil.extract.batch import collect_slides
    from cmamil.extract.features import ExtractConfig, extract_slides
    from cmamil.extract.grid import TilingConfig
    from cmamil.evaluation.report import report_run
    from cmamil.magnification import parse_magnifications
    from cmamil.training.summary import format_summary

    start = time.perf_counter()
    out = config.out
    cohort_dir, features_dir, runs_dir = out / "cohort", out / "features", out / "runs"

    echo(f"[1/4] cohort: {config.cohort.n_slides} synthetic slides in {cohort_dir}")
    slides = make_cohort(cohort_dir, config.cohort)
    echo(f"      {time.perf_counter() - start:.0f} s")

    tiling = TilingConfig(magnifications=parse_magnifications(config.magnifications), tile_px=config.tile_px)
    echo(f"[2/4] tiles and features ({config.encoder}, {config.magnifications}, {config.tile_px} px) in {features_dir}")
    extract = ExtractConfig(
        tiling=tiling,
        encoder=config.encoder,
        model_options=dict(config.encoder_options),
        input_px=config.tile_px,
        device=config.device,
        seed=config.seed,
        num_workers=config.num_workers,
    )
    results = extract_slides(collect_slides([s.path for s in slides]), features_dir, extract)
    echo(f"      {time.perf_counter() - start:.0f} s")
    failed = [r for r in results if r.status == "failed"]
    if failed:
        echo(f"      {len(failed)} slide(s) failed: " + "; ".join(f"{r.slide_id}: {r.error}" for r in failed[:3]))

    echo(f"[3/4] cma_mil {config.folds}-fold cross-validation ({_options(config.model_options)})")
    main_run = runs_dir / "cma_mil"
    summary = train_model("cma_mil", config.model_options, config, features_dir, cohort_dir / "labels.csv", main_run)
    report_run(main_run)

    echo("[4/4] results (test folds)")
    echo(format_summary(summary))
    heatmaps = write_heatmaps(main_run, cohort_dir, features_dir, out / "inspect", config.device, echo)
    echo(f"attention heatmaps (fold 0, one positive and one negative test slide): {out / 'inspect' / 'heatmaps'} "
         f"({len(heatmaps)} slides: PNG with the magnifications side by side, QuPath GeoJSON, HDF5, tile montage)")
    found = localisation(main_run, cohort_dir, features_dir)
    summary["localisation_auc"] = found
    echo(f"localisation: 20x attention AUC for tiles on texture inside rings, positive test slides, "
         f"mean over folds: {found['mean']:.3f} ± {found['std']:.3f} (n={found['n']} folds)")
    rows = {f"cma_mil ({config.model_options.get('cross_attention', 'dense')})": summary}
    if config.compare:
        echo("comparison on the same features and splits:")
        jobs = {name: (model, options, runs_dir / f"{model}_{'_'.join(str(v) for v in options.values()) or 'default'}")
                for name, model, options in COMPARISON if name not in rows}
        rows.update(train_side_by_side(jobs, config, features_dir, cohort_dir / "labels.csv", main_run / "splits"))
        table = comparison_table(rows)
        (out / "comparison.txt").write_text(table + "\n")
        echo(table)
    echo(f"run folder: {main_run}")
    echo(f"tensorboard --logdir {runs_dir}")
    echo(f"total time: {time.perf_counter() - start:.0f} s")
    return {"summary": summary, "rows": rows, "seconds": time.perf_counter() - start}


def write_heatmaps(run: Path, cohort_dir: Path, features_dir: Path, out: Path, device: str = "auto",
                   echo: Callable[[str], None] = print) -> list[Path]:
    """Fold 0's model on its first positive and first negative test slide, through `cmamil heatmap`'s own code
    path: `<out>/heatmaps/<slide>.png` (the magnifications side by side), `.geojson`, `.h5` and a tile montage.

    Only fold 0's model is used: the other folds trained on these slides."""
    from cmamil.evaluation.predict import PredictConfig, predict_run
    from cmamil.evaluation.tile_maps import HeatmapConfig
    from cmamil.training import RunFolder
    from cmamil.training.predictions import read_predictions

    folder = RunFolder(run)
    tested = read_predictions(folder.fold_dir(0) / "predictions.csv", folder.class_names)
    chosen = [next(i for i, y in zip(tested.ids, tested.y_true) if y == folder.class_names.index(label))
              for label in ("positive", "negative")]
    predict_run(PredictConfig(run=run, inputs=tuple(features_dir / f"{slide}.h5" for slide in chosen), out=out,
                              folds=0, labels=cohort_dir / "labels.csv", device=device, num_workers=0,
                              heatmaps=HeatmapConfig(fold=0, slides=cohort_dir / "slides")), echo)
    return sorted(p for p in (out / "heatmaps").glob("*.png") if not p.stem.endswith("_montage"))


def localisation(run: Path, cohort_dir: Path, features_dir: Path, magnification: str = "20x") -> dict[str, Any]:
    """How well the attention finds the signal: per positive test slide, the AUC of its `magnification` attention
    for separating tiles that overlap texture inside a ring from the rest; mean per fold, then mean ± std over folds."""
    import numpy as np
    from PIL import Image

    from cmamil.evaluation.heatmaps import bag_attention, localisation_auc, tile_overlap
    from cmamil.store import bag_info, read_coords
    from cmamil.synthetic import REGION_CODES
    from cmamil.training import RunFolder, load_trained
    from cmamil.training.predictions import read_predictions

    folder = RunFolder(run)
    positive = folder.class_names.index("positive")
    per_fold = []
    for fold in folder.finished_folds():
        trained = load_trained(folder.fold_dir(fold))
        tested = read_predictions(folder.fold_dir(fold) / "predictions.csv", folder.class_names)
        aucs = []
        for slide in (i for i, y in zip(tested.ids, tested.y_true) if y == positive):
            path = features_dir / f"{slide}.h5"
            attention, _ = bag_attention(trained, path)
            if magnification not in attention:
                continue
            truth = np.asarray(Image.open(cohort_dir / "truth" / f"{slide}.png")) == REGION_CODES["texture_inside"]
            size = float(bag_info(path).coords_attrs[magnification]["tile_size_level0"])
            inside = tile_overlap(read_coords(path)[magnification][0], size, truth) > 0
            aucs.append(localisation_auc(attention[magnification], inside))
        if aucs:
            per_fold.append(float(np.nanmean(aucs)))
    values = np.array(per_fold, dtype=float)
    return {"mean": float(values.mean()) if len(values) else float("nan"),
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0, "n": len(values), "folds": per_fold}


def train_model(
    model: str,
    options: dict[str, Any],
    config: DemoConfig,
    features: Path,
    labels: Path,
    run: Path,
    splits: Path | None = None,
) -> dict[str, Any]:
    """One k-fold run of `model` with the demo's training settings (finished folds are skipped): every model of
    the demo and its comparison is trained here."""
    from cmamil.training.config import BagTrainConfig
    from cmamil.training.runner import run_training

    return run_training(BagTrainConfig(
        model=model, features=features, labels=labels, out=run, folds=config.folds, epochs=config.epochs,
        lr=config.lr, monitor=config.monitor, min_epochs=config.epochs // 2, patience=config.epochs,
        val_fraction=config.val_fraction,
        standardize=config.standardize, model_options=dict(options),
        splits=splits, seed=config.seed, device=config.device, num_workers=0,
    ))


def train_side_by_side(
    jobs: dict[str, tuple[str, dict[str, Any], Path]],
    config: DemoConfig,
    features: Path,
    labels: Path,
    splits: Path,
    workers: int | None = None,
) -> dict[str, dict[str, Any]]:
    """`train_model` for each named (model, options, run folder), `workers` runs at a time (default one per CPU),
    each process with its share of the CPU threads; summaries in the order given.

    A bag step is small (one bag of a few hundred tiles), so a run keeps two threads only partly busy: two
    single-thread runs side by side train about 1.7x as fast as one two-thread run after the other (2 cores)."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    cpus = os.cpu_count() or 1
    workers = max(1, min(workers or cpus, len(jobs)))
    if workers == 1:
        return {name: train_model(model, options, config, features, labels, run, splits)
                for name, (model, options, run) in jobs.items()}
    threads = max(1, cpus // workers)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {name: pool.submit(_train_with_threads, threads, model, options, config, features, labels, run,
                                     splits)
                   for name, (model, options, run) in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


def _train_with_threads(threads: int, *args: Any) -> dict[str, Any]:
    """`train_model` in a worker process limited to `threads` CPU threads."""
    import torch

    torch.set_num_threads(threads)
    return train_model(*args)


def comparison_table(rows: dict[str, dict[str, Any]]) -> str:
    """One line per model: mean ± sample std over its test folds of AUC, balanced accuracy and macro-F1, with
    the number of folds (a mean over fewer folds says so in its cell)."""
    from cmamil.text_table import align
    from cmamil.training.summary import mean_std_cell

    keys = ("auc", "balanced_accuracy", "f1_macro")
    body = []
    for name, summary in rows.items():
        total = summary.get("n_folds", len(summary["folds"]))
        body.append([name, str(total), *(mean_std_cell(summary["mean_std"][k], total) for k in keys)])
    return "\n".join([*align([["model", "folds", *keys], *body]), "mean ± sample std over the test folds"])


def _options(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "default options"
