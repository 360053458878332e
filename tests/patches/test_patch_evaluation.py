"""`cmamil evaluate`: metrics against scikit-learn, speed figures, overlays, projector, and real PNG/TIFF inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image
from sklearn import metrics as skm

from cmamil.cli import main
from cmamil.synthetic import PATCH_CLASSES, texture_image

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
NCT_CLASSES = ("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM")


def test_evaluate_on_another_magnification(trained_run, stripes_400x, tmp_path, invoke):
    out = tmp_path / "eval"
    result = invoke(["evaluate", str(trained_run), "--images", str(stripes_400x), "--out", str(out),
                     "--batch-size", "4", "--num-workers", "0", "--device", "cpu", "--explain", "3",
                     "--embeddings", "10"])
    assert f"evaluation folder: {out}" in result.output and "latency:" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    table = pd.read_csv(out / "predictions.csv")
    assert len(table) == metrics["n"] == 16
    probs = table[[f"prob_{c}" for c in PATCH_CLASSES]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    y_true, y_pred = table["label"].map(PATCH_CLASSES.index).to_numpy(), probs.argmax(1)
    assert metrics["f1_macro"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    precision = skm.precision_score(y_true, y_pred, average=None, zero_division=0)
    assert [metrics["per_class"][c]["precision"] for c in PATCH_CLASSES] == pytest.approx(precision)
    speed = metrics["speed"]
    assert speed["throughput_batch_size"] == 4 and speed["peak_memory_kind"] == "process_max_rss"
    assert all(np.isfinite(speed[k]) and speed[k] > 0
               for k in ("latency_ms_per_image", "throughput_images_per_s", "peak_memory_mb"))
    scalars = pd.read_csv(out / "metrics.csv").set_index("metric")["value"]
    assert scalars["f1_macro"] == pytest.approx(metrics["f1_macro"])
    assert scalars["latency_ms_per_image"] == pytest.approx(speed["latency_ms_per_image"])

    index = json.loads((out / "explain" / "index.json").read_text())
    assert index["positive_class"] == "malignant" and index["method"] == "gradcam"
    for group, paths in index["groups"].items():
        assert len(paths) <= 3
        assert (out / "explain" / f"{group}.png").is_file() == bool(paths)
        truth = [Path(p).parent.name for p in paths]
        assert all(t == "malignant" for t in truth) if group != "false_positive" else all(t == "benign" for t in truth)

    projector = out / "projector"
    assert "embeddings" in (projector / "projector_config.pbtxt").read_text()
    [tensors] = projector.glob("*/*/tensors.tsv")
    vectors = np.loadtxt(tensors, delimiter="\t")
    assert vectors.shape == (10, 64)  # example_cnn at width 16 has 64 features
    metadata = (tensors.parent / "metadata.tsv").read_text().splitlines()
    assert metadata[0].split("\t") == ["label", "prediction", "file"] and len(metadata) == 11
    with Image.open(tensors.parent / "sprite.png") as sprite:
        assert sprite.size == (4 * 64, 4 * 64)  # ceil(sqrt(10)) thumbnails of 64 px a side


def test_evaluate_errors_are_one_line(trained_run, tmp_path):
    (tmp_path / "testing" / "stroma").mkdir(parents=True)
    Image.fromarray(texture_image(0, 6.0, 40, np.random.default_rng(0))).save(tmp_path / "testing" / "stroma" / "a.png")
    result = CliRunner().invoke(main, ["evaluate", str(trained_run), "--images", str(tmp_path), "--device", "cpu"])
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"Error: {tmp_path / 'testing'} has class folder(s) stroma that the model was not trained on "
        "(its classes: benign, malignant)"
    )
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path), "--images", str(tmp_path)])
    assert result.output.strip() == (
        f"Error: {tmp_path} is not a run folder (no config.yaml); pass a folder made by cmamil train"
    )
    result = CliRunner().invoke(main, ["evaluate", str(trained_run), "--features", str(tmp_path)])
    assert result.output.strip() == f"Error: {trained_run} is a patches run: evaluate it with --images"


def _copy_into_class_folders(source: Path, target: Path, label_column: str, rename=lambda v: v) -> Path:
    """Copy a labelled sample folder (labels.csv) into testing/<class>/ folders."""
    labels = pd.read_csv(source / "labels.csv")
    for file, label in zip(labels["file"], labels[label_column]):
        folder = target / "testing" / rename(label)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / file, folder / file)
    return target


@pytest.mark.skipif(not (SHARED_DATA / "breakhis_samples").is_dir(), reason="shared BreakHis samples absent")
def test_real_breakhis_pngs_go_through_evaluate(trained_run, tmp_path, invoke):
    root = _copy_into_class_folders(SHARED_DATA / "breakhis_samples", tmp_path / "breakhis", "benign_malignant")
    out = tmp_path / "eval"
    invoke(["evaluate", str(trained_run), "--images", str(root), "--out", str(out), "--num-workers", "0",
            "--device", "cpu", "--no-benchmark", "--explain", "2", "--embeddings", "4"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 4 and metrics["per_class"]["benign"]["support"] == 2
    assert sorted(Path(p).name for p in pd.read_csv(out / "predictions.csv")["id"]) == sorted(
        pd.read_csv(SHARED_DATA / "breakhis_samples" / "labels.csv")["file"]
    )
    overlays = list((out / "explain").glob("*.png"))
    assert overlays and all(Image.open(p).size[0] > 200 for p in overlays)


@pytest.mark.skipif(not (SHARED_DATA / "nct_crc_he_100k_samples").is_dir(), reason="shared NCT-CRC-HE samples absent")
def test_real_nct_crc_tiffs_go_through_evaluate(tmp_path, invoke, fast_train):
    rng = np.random.default_rng(0)
    synthetic = tmp_path / "synthetic"
    for split, count in (("training", 2), ("validation", 1), ("testing", 1)):
        for label, name in enumerate(NCT_CLASSES):
            (synthetic / split / name).mkdir(parents=True)
            for i in range(count):
                image = texture_image(label % 2, 3.0 + label, 32, rng)
                Image.fromarray(image).save(synthetic / split / name / f"{name}-{i}.tif")
    run = tmp_path / "run"
    invoke(["train", "--images", str(synthetic), "--out", str(run), "--epochs", "1", "--explain", "0",
            "--embeddings", "0", *fast_train])
    root = _copy_into_class_folders(SHARED_DATA / "nct_crc_he_100k_samples", tmp_path / "nct", "label")
    out = tmp_path / "eval"
    invoke(["evaluate", str(run), "--images", str(root), "--split", "test", "--out", str(out), "--num-workers", "0",
            "--device", "cpu", "--no-benchmark", "--explain", "1", "--positive-class", "TUM", "--embeddings", "10"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 10 and metrics["images"]["skipped"] == []
    assert metrics["per_class"]["NORM"]["support"] == 2
    assert len(metrics["confusion_matrix"]) == 9
    assert len(np.loadtxt(next(out.glob("projector/*/*/tensors.tsv")), delimiter="\t")) == 10
