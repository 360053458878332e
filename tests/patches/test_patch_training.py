"""`cmamil train --images`: learning a planted texture, the run folder, resume, k-fold with patient groups."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner
from sklearn import metrics as skm
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cmamil.cli import main
from cmamil.errors import InputError
from cmamil.training.config import PatchTrainConfig
from cmamil.training.runner import run_training
from cmamil.synthetic import PATCH_CLASSES, PATCH_PATIENT_PATTERN, write_patch_set

FAST = dict(model="example_cnn", model_options={"img_size": 32}, lr=3e-3, warmup_epochs=1, batch_size=8,
            num_workers=0, device="cpu", min_epochs=0, explain=0, embeddings=0)


def test_training_beats_chance_and_fills_the_run_folder(trained_run):
    fold = trained_run / "fold_0"
    metrics = json.loads((fold / "metrics.json").read_text())
    assert metrics["test"]["n"] == 16
    assert metrics["test"]["f1_macro"] >= 0.8  # chance is 0.5 on two balanced classes
    assert 1 <= metrics["best_epoch"] <= 6 and metrics["epochs_run"] == 6
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert config["kind"] == "patches"
    assert config["config"]["model"] == "example_cnn" and config["config"]["epochs"] == 6
    assert config["config"]["weight_decay"] == 0.05 and config["config"]["optimizer"] == "adamw"
    assert config["class_names"] == list(PATCH_CLASSES)
    assert config["data"]["per_class"] == {"benign": 30, "malignant": 30}
    assert {"torch", "timm", "cmamil", "cpu_count"} <= set(config["environment"])
    log = pd.read_csv(fold / "history.csv")
    assert list(log["epoch"]) == [1, 2, 3, 4, 5, 6]
    for column in ("train_loss", "val_loss", "train_accuracy", "val_f1_macro", "val_f1_benign",
                   "val_f1_malignant", "epoch_seconds", "peak_memory_mb", "lr"):
        assert log[column].notna().all(), column
    assert log["lr"].iloc[0] == pytest.approx(3e-3) and log["lr"].iloc[-1] < 3e-4  # warm-up, then cosine
    best = torch.load(fold / "checkpoint.pt", weights_only=True)
    assert best["epoch"] == metrics["best_epoch"] and best["class_names"] == list(PATCH_CLASSES)
    assert best["val_metrics"]["f1_macro"] == pytest.approx(log["val_f1_macro"].max(), abs=1e-6)
    assert not (fold / "last.pt").exists()
    for name in ("figures/confusion_matrix.png", "figures/roc.png", "figures/pr.png", "figures/fold_0_training.png",
                 "fold_0/predictions.csv", "fold_0/explain/index.json", "summary.json", "summary.csv"):
        assert (trained_run / name).stat().st_size > 0, name
    split = pd.read_csv(trained_run / "splits" / "fold_0.csv")
    assert split["split"].value_counts().to_dict() == {"train": 32, "test": 16, "val": 12}


def test_tensorboard_events_hold_every_epoch_and_the_test_evaluation(trained_run):
    events = EventAccumulator(str(trained_run / "fold_0"), size_guidance={"scalars": 0, "images": 0}).Reload()
    tags = events.Tags()
    assert [e.step for e in events.Scalars("val/f1_macro")] == [1, 2, 3, 4, 5, 6]
    assert len(events.Scalars("train/loss")) == 6 and len(events.Scalars("lr")) == 6
    test_f1 = events.Scalars("test/f1_macro")[0].value
    saved = json.loads((trained_run / "fold_0" / "metrics.json").read_text())["test"]["f1_macro"]
    assert test_f1 == pytest.approx(saved, abs=1e-6)
    assert "test/confusion_matrix" in tags["images"]


def test_evaluation_numbers_equal_scikit_learn_on_saved_predictions(trained_run):
    metrics = json.loads((trained_run / "fold_0" / "metrics.json").read_text())["test"]
    table = pd.read_csv(trained_run / "fold_0" / "predictions.csv")
    y_true = table["label"].map(PATCH_CLASSES.index).to_numpy()
    probs = table[[f"prob_{c}" for c in PATCH_CLASSES]].to_numpy()
    y_pred = probs.argmax(1)
    assert (table["prediction"].map(PATCH_CLASSES.index).to_numpy() == y_pred).all()
    assert metrics["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert metrics["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    assert metrics["f1_macro"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    assert metrics["auc"] == pytest.approx(skm.roc_auc_score(y_true, probs[:, 1]), abs=1e-6)
    assert metrics["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred).tolist()
    recall = skm.recall_score(y_true, y_pred, average=None)
    assert [metrics["per_class"][c]["recall"] for c in PATCH_CLASSES] == pytest.approx(recall)


def test_interrupted_training_resumes_to_the_same_result(stripes_100x, tmp_path):
    whole = PatchTrainConfig(images=(stripes_100x,), out=tmp_path / "whole", epochs=4, **FAST)
    run_training(whole)

    def interrupt(fold: int, row: dict) -> None:
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    parts = PatchTrainConfig(images=(stripes_100x,), out=tmp_path / "parts", epochs=4, **FAST)
    with pytest.raises(KeyboardInterrupt):
        run_training(parts, on_epoch=interrupt)
    assert (parts.out / "fold_0" / "last.pt").is_file() and not (parts.out / "fold_0" / "metrics.json").exists()
    assert len(pd.read_csv(parts.out / "fold_0" / "history.csv")) == 2
    run_training(parts)
    a, b = pd.read_csv(whole.out / "fold_0" / "history.csv"), pd.read_csv(parts.out / "fold_0" / "history.csv")
    numeric = ["train_loss", "val_loss", "val_f1_macro", "train_accuracy", "lr"]
    np.testing.assert_allclose(a[numeric].to_numpy(), b[numeric].to_numpy(), rtol=1e-4, atol=1e-6)
    best_a = torch.load(whole.out / "fold_0" / "checkpoint.pt", weights_only=True)["state_dict"]
    best_b = torch.load(parts.out / "fold_0" / "checkpoint.pt", weights_only=True)["state_dict"]
    assert all(torch.allclose(best_a[k].float(), best_b[k].float(), atol=1e-5) for k in best_a)
    assert not (parts.out / "fold_0" / "last.pt").exists()


def test_rerun_skips_finished_work_and_refuses_changed_options(
    trained_run, stripes_100x, invoke, fast_train
):
    stamp = (trained_run / "fold_0" / "checkpoint.pt").stat().st_mtime_ns
    invoke(["train", "--images", str(stripes_100x), "--out", str(trained_run), "--epochs", "6", "--explain", "4",
            "--embeddings", "20", *fast_train])
    assert (trained_run / "fold_0" / "checkpoint.pt").stat().st_mtime_ns == stamp
    changed = [a if a != "3e-3" else "1e-3" for a in fast_train]
    result = CliRunner().invoke(main, ["train", "--images", str(stripes_100x), "--out", str(trained_run),
                                       "--epochs", "6", *changed])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        f"Error: {trained_run} was trained with other options (lr: 0.003 → 0.001); use another --out or --overwrite"
    )


def test_kfold_groups_patients_and_summarises_folds(tmp_path, invoke, fast_train):
    root = write_patch_set(tmp_path / "flat", layout="flat", sizes={"all": 18}, patients=6, seed=3)
    (root / "benign" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "run"
    invoke(["train", "--images", str(root), "--out", str(out), "--folds", "2", "--group-by", PATCH_PATIENT_PATTERN,
            "--epochs", "1", "--explain", "0", "--embeddings", "0", *fast_train])
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert [Path(p).name for p, _ in config["data"]["skipped_images"]] == ["broken.png"]
    everything = set()
    tested = []
    for k in range(2):
        split = pd.read_csv(out / "splits" / f"fold_{k}.csv")
        assert len(split) == 36
        split["label"] = split["id"].map(lambda p: Path(p).parent.name)
        patient = split["id"].map(lambda p: Path(p).name.split("-", 1)[1].rsplit("-", 2)[0])
        held_out = set(patient[split["split"] == "test"])
        assert held_out.isdisjoint(patient[split["split"] != "test"])
        assert set(patient[split["split"] == "val"]).isdisjoint(patient[split["split"] == "train"])
        assert set(split.loc[split["split"] == "test", "label"]) == set(PATCH_CLASSES)  # stratified
        tested += list(split.loc[split["split"] == "test", "id"])
        everything |= set(split["id"])
        fold_metrics = json.loads((out / f"fold_{k}" / "metrics.json").read_text())
        assert fold_metrics["test"]["n"] == (split["split"] == "test").sum()
    assert sorted(tested) == sorted(everything) and len(everything) == 36  # test folds partition the images
    summary = json.loads((out / "summary.json").read_text())
    f1 = [row["f1_macro"] for row in summary["folds"]]
    assert summary["mean_std"]["f1_macro"]["mean"] == pytest.approx(np.mean(f1))
    assert summary["mean_std"]["f1_macro"]["std"] == pytest.approx(np.std(f1, ddof=1))
    rows = list(csv.reader((out / "summary.csv").open()))
    assert [r[0] for r in rows] == ["fold", "0", "1", "mean", "std", "folds_averaged"]
    assert rows[-1][2:] == ["2", "2", "2", "2"]

    result = invoke(["evaluate", str(out), "--images", str(root), "--no-benchmark", "--explain", "0",
                     "--embeddings", "0", "--num-workers", "0", "--device", "cpu"])
    assert "f1_macro:" in result.output and "±" in result.output
    assert len(json.loads((out / "evaluate" / "flat-testing" / "summary.json").read_text())["folds"]) == 2
    report = invoke(["report", str(out)])
    lines = report.output.splitlines()
    assert lines[0].split() == ["fold", "n", "auc", "accuracy", "balanced_accuracy", "f1_macro"]
    assert lines[3].startswith("mean±std") and (out / "figures" / "roc.png").is_file()


@pytest.mark.parametrize(
    "model, extra",
    [
        ("timm:resnet18", ["--input-px", "32", "--optimizer", "sgd", "--augment", "strong", "--mixup", "0.4",
                           "--cutmix", "1.0", "--label-smoothing", "0.1", "--weighted-sampling"]),
        ("deit_small", ["--model-option", "img_size=32", "--model-option", "depth=2"]),
    ],
)
def test_any_registered_model_trains_with_every_option(model, extra, stripes_100x, tmp_path, invoke):
    out = tmp_path / "run"
    invoke(["train", "--images", str(stripes_100x), "--model", model, "--out", str(out), "--epochs", "1",
            "--warmup-epochs", "1", "--batch-size", "16", "--num-workers", "0", "--device", "cpu",
            "--explain", "2", "--embeddings", "8", *extra])
    metrics = json.loads((out / "fold_0" / "metrics.json").read_text())
    assert metrics["test"]["n"] == 16 and metrics["epochs_run"] == 1
    assert (out / "fold_0" / "explain" / "index.json").is_file()
    assert metrics["explain"]["method"] == ("gradcam" if model.startswith("timm:resnet") else "rollout")


def test_flat_folder_without_folds_is_a_one_line_error(tmp_path, fast_train):
    root = write_patch_set(tmp_path / "flat", layout="flat", sizes={"all": 2})
    result = CliRunner().invoke(main, ["train", "--images", str(root), "--out", str(tmp_path / "r"), *fast_train])
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"Error: {root} has no training/ and testing/ split folders; pass --folds K to split its class folders "
        "by stratified k-fold"
    )
    with pytest.raises(InputError, match="--monitor must be one of"):
        PatchTrainConfig(images=(root,), out=tmp_path, monitor="kappa", model="example_cnn")
