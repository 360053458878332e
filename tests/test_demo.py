"""A reduced demo end to end: every artefact of every stage, and a rerun that reuses them."""

from __future__ import annotations

import csv
import json

import h5py
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cmamil.demo import DemoConfig, run_demo, train_model, train_side_by_side
from cmamil.evaluation.heatmaps import PANELS_KEY
from cmamil.errors import InputError
from cmamil.synthetic import CohortConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    config = DemoConfig(
        out=out,
        cohort=CohortConfig(n_slides=8, size_um=900.0, sites_per_slide=1, separation_um=100.0, seed=3),
        folds=2,
        epochs=2,
        val_fraction=0.5,
        tile_px=32,
        device="cpu",
        compare=True,
    )
    lines: list[str] = []
    result = run_demo(config, echo=lines.append)
    return config, result, lines


def test_every_stage_leaves_its_artefacts(demo_run):
    config, result, lines = demo_run
    out = config.out
    slides = sorted((out / "cohort" / "slides").glob("*.tiff"))
    assert len(slides) == 8 and len(list((out / "cohort" / "truth").glob("*.png"))) == 8
    assert (out / "cohort" / "labels.csv").read_text().splitlines()[0] == "slide_id,label,patient_id"
    with h5py.File(out / "features" / "slide_000.h5") as f:
        assert set(f) >= {"5x", "10x", "20x", "features", "coords"}
        assert f["20x/features"].shape[0] == f["20x/parent"].shape[0] > f["5x/features"].shape[0]
        assert f["20x/parent"][:].max() < f["10x/features"].shape[0]
        assert f.attrs["encoder"] == "timm:resnet10t"
    run = out / "runs" / "cma_mil"
    assert (run / "config.yaml").is_file() and len(list((run / "splits").glob("fold_*.csv"))) == 2
    for fold in range(2):
        metrics = json.loads((run / f"fold_{fold}" / "metrics.json").read_text())
        assert "auc" in metrics["test"]
        assert (run / f"fold_{fold}" / "predictions.csv").is_file()
    assert list((run / "figures").glob("*.png"))
    meta = torch.load(run / "fold_0" / "checkpoint.pt", weights_only=True)
    assert meta["model_options"] == {"cross_attention": "local", "attn_weighting": "exp_raw", "bag_weight": 1.0}
    events = EventAccumulator(str(run / "fold_0"))
    events.Reload()
    assert "val/auc" in events.Tags()["scalars"] or "val/loss" in events.Tags()["scalars"]
    assert set(result["rows"]) == {"cma_mil (local)", "cma_mil (dense)", "cma_mil (published: dense, repo)",
                                   "abmil (20x only)", "abmil (all mags)", "mean_pool"}
    table = (out / "comparison.txt").read_text().splitlines()
    assert table[0].split() == ["model", "folds", "auc", "balanced_accuracy", "f1_macro"]
    assert table[1].startswith("cma_mil (local)") and table[1].split()[2] == "2"  # both folds counted
    assert any(line.startswith("tensorboard --logdir") for line in lines)
    assert lines[-1].startswith("total time:")
    # where the model looks: fold 0's first positive and first negative test slide, through cmamil heatmap's path
    heatmaps = out / "inspect" / "heatmaps"
    shown = sorted(p.stem for p in heatmaps.glob("*.png") if not p.stem.endswith("_montage"))
    assert len(shown) == 2 and all((heatmaps / f"{s}.geojson").is_file() for s in shown)
    with Image.open(heatmaps / f"{shown[0]}.png") as image:
        assert set(json.loads(image.text[PANELS_KEY])) == {"5x", "10x", "20x"}
    tested = {row["id"]: row for row in csv.DictReader(open(run / "fold_0" / "predictions.csv"))}
    assert {tested[s]["label"] for s in shown} == {"positive", "negative"}
    found = result["summary"]["localisation_auc"]
    assert found["n"] >= 1 and 0.0 <= found["mean"] <= 1.0
    assert any(line.startswith("localisation: 20x attention AUC") for line in lines)


def test_a_cohort_too_small_for_the_folds_says_what_size_works():
    with pytest.raises(InputError, match=r"^--slides 8 is too few for --folds 2: .*; use --slides 10 or more"):
        DemoConfig(cohort=CohortConfig(n_slides=8), folds=2)
    DemoConfig(cohort=CohortConfig(n_slides=10), folds=2)


def test_rerun_reuses_finished_stages(demo_run):
    config, result, _ = demo_run
    feature_file = config.out / "features" / "slide_000.h5"
    checkpoint = config.out / "runs" / "cma_mil" / "fold_0" / "checkpoint.pt"
    stamps = (feature_file.stat().st_mtime_ns, checkpoint.stat().st_mtime_ns)
    again = run_demo(config, echo=lambda line: None)
    assert (feature_file.stat().st_mtime_ns, checkpoint.stat().st_mtime_ns) == stamps
    assert again["summary"]["mean_std"] == result["summary"]["mean_std"]


def test_runs_side_by_side_match_runs_one_after_the_other(demo_run, tmp_path):
    config, _, _ = demo_run
    out = config.out
    shared = (config, out / "features", out / "cohort" / "labels.csv", out / "runs" / "cma_mil" / "splits")

    def jobs(root):
        return {"mean_pool": ("mean_pool", {}, root / "mean_pool"),
                "abmil (20x only)": ("abmil", {"magnification": "20x"}, root / "abmil")}

    side = train_side_by_side(jobs(tmp_path / "side"), *shared, workers=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sequential = train_side_by_side(jobs(tmp_path / "sequential"), *shared, workers=1)
    finally:
        torch.set_num_threads(threads)
    assert list(side) == ["mean_pool", "abmil (20x only)"]
    for name, summary in side.items():
        for key, cell in summary["mean_std"].items():
            expected = sequential[name]["mean_std"][key]["mean"]
            assert cell["mean"] == pytest.approx(expected, abs=1e-4, nan_ok=True), (name, key)
        assert (tmp_path / "side" / ("abmil" if "abmil" in name else "mean_pool") / "summary.json").is_file()


# the test size of the demo cohort: two thirds of the default slides, 3 folds (about two and a half minutes on 2 cores)
LEARNING_COHORT = CohortConfig(n_slides=96, seed=0)


def test_a_small_demo_cohort_is_learnt_by_cma_mil_and_not_by_abmil_on_20x(tmp_path):
    config = DemoConfig(out=tmp_path, cohort=LEARNING_COHORT, folds=3, device="cpu")
    cma_mil = run_demo(config, echo=lambda line: None)["summary"]["mean_std"]["auc"]["mean"]
    abmil = train_model("abmil", {"magnification": "20x"}, config, tmp_path / "features",
                        tmp_path / "cohort" / "labels.csv", tmp_path / "runs" / "abmil_20x",
                        splits=tmp_path / "runs" / "cma_mil" / "splits")["mean_std"]["auc"]["mean"]
    assert cma_mil >= 0.9 and abmil <= cma_mil - 0.15, (cma_mil, abmil)
