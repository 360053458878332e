"""Reproducible runs: --config FILE.yaml (a run's own config.yaml repeats it), --dry-run, input provenance."""

from __future__ import annotations

import hashlib
import json
import shutil

import pandas as pd
import timm
import torch
import yaml
from click.testing import CliRunner

from cmamil.cli import main
from cmamil.synthetic import write_patch_set


def _train(*args):
    result = CliRunner().invoke(main, ["train", *map(str, args)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_a_runs_config_yaml_repeats_it_with_identical_splits_and_metrics(planted_files, tmp_path):
    folder, labels = planted_files
    first = tmp_path / "A"
    _train("--features", folder, "--labels", labels, "--model", "abmil", "--folds", 2, "--epochs", 2,
           "--val-fraction", 0.5, "--min-epochs", 0, "--model-option", "dim=8", "--model-option", "attn_dim=4",
           "--device", "cpu", "--num-workers", 0, "--no-figures", "--seed", 3, "--out", first)
    saved = yaml.safe_load((first / "config.yaml").read_text())
    assert saved["data"]["labels_sha256"] == hashlib.sha256(labels.read_bytes()).hexdigest()
    assert saved["data"]["features"]["encoder"] == "synthetic"
    assert saved["data"]["features"]["magnifications"] == ["5x", "10x", "20x"]
    assert len(saved["data"]["features"]["sha256"]) == 64
    assert saved["environment"]["timm"] == timm.__version__ and saved["environment"]["torch"] == torch.__version__
    again = tmp_path / "B"
    _train("--config", first / "config.yaml", "--out", again)
    for fold in (0, 1):
        name = f"splits/fold_{fold}.csv"
        assert (again / name).read_text() == (first / name).read_text()
        metrics = [json.loads((run / f"fold_{fold}" / "metrics.json").read_text()) for run in (first, again)]
        assert metrics[0]["test"] == metrics[1]["test"] and metrics[0]["val"] == metrics[1]["val"]
    repeated = yaml.safe_load((again / "config.yaml").read_text())
    assert repeated["fingerprint"] == saved["fingerprint"] and repeated["config"]["out"] == str(again)


def test_flags_override_a_config_file_dry_run_prints_splits_and_unknown_keys_are_named(planted_files, tmp_path):
    folder, labels = planted_files
    options = tmp_path / "options.yaml"
    options.write_text(f"features: {folder}\nlabels: {labels}\nmodel: abmil\nweight-decay: 0.5\nepochs: 0\n")
    refused = CliRunner().invoke(main, ["train", "--config", str(options), "--out", str(tmp_path / "x")])
    assert refused.stderr.strip() == "Error: --epochs must be at least 1, got 0"
    result = _train("--config", options, "--epochs", 1, "--folds", 2, "--val-fraction", 0.5, "--out",
                    tmp_path / "never", "--dry-run")  # the flag overrides the file's invalid epochs
    assert not (tmp_path / "never").exists()
    table = ["fold  part   negative        positive"]
    for fold in (0, 1):
        table += [f"{fold}     train  1 (1 patient)   1 (1 patient)",
                  f"{fold}     val    2 (2 patients)  2 (2 patients)",
                  f"{fold}     test   3 (3 patients)  3 (3 patients)"]
    assert result.stdout.splitlines() == ["slides per class in each part of each fold:", *table,
                                          f"dry run: inputs checked, 2 fold(s); nothing written to {tmp_path / 'never'}"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: abmil\nepoch: 3\nfoo: 1\n")
    result = CliRunner().invoke(main, ["train", "--config", str(bad)])
    assert result.exit_code == 1
    assert result.stderr.strip() == (f"Error: {bad}: unknown option(s) epoch, foo; use the names of the long flags "
                                     "(see --help)")


def test_bag_training_states_per_slide_splits_with_no_group(planted_files, tmp_path):
    folder, labels = planted_files
    tcga = tmp_path / "tcga"
    tcga.mkdir()
    rows = ["slide_id,label"]
    for i, row in enumerate(pd.read_csv(labels).itertuples()):
        name = f"TCGA-A1-A{i // 2:03d}-01Z-00-DX{i % 2 + 1}"
        shutil.copy(folder / f"{row.slide_id}.h5", tcga / f"{name}.h5")
        rows.append(f"{name},{row.label}")
    (tcga / "labels.csv").write_text("\n".join(rows) + "\n")
    common = ["--features", tcga, "--labels", tcga / "labels.csv", "--model", "abmil", "--folds", 2,
              "--val-fraction", 0.5, "--out", tmp_path / "never", "--dry-run"]
    grouped = _train(*common)
    assert ("note: splits keep each patient's slides together (6 patients, 12 slides; patients from the TCGA "
            "barcodes of the slide ids (TCGA-XX-XXXX is the patient))") in grouped.stderr
    assert "(6 patients)" not in grouped.stdout and "patients)" in grouped.stdout
    per_slide = _train(*common, "--no-group")
    assert "note: splits are per slide: --no-group says the slides are independent" in per_slide.stderr
    assert "patient" not in per_slide.stdout.split("\n", 1)[1]  # the table counts slides only
    refused = CliRunner().invoke(main, ["train", "--features", str(folder), "--labels", str(labels), "--model",
                                        "abmil", "--out", str(tmp_path / "x"), "--no-group", "--dry-run"])
    assert refused.exit_code == 1 and refused.stderr.strip() == (
        f"Error: {labels} has a patient_id column but --no-group says the slides are independent; drop --no-group "
        "(splits then keep each patient's slides together) or the column")
    assert not (tmp_path / "never").exists() and not (tmp_path / "x").exists()


def test_crossmag_config_file_flags_override_unknown_keys_and_its_saved_study_repeats_it(tmp_path):
    sizes = {"training": 4, "validation": 2, "testing": 2}
    low = write_patch_set(tmp_path / "100x", magnification=100, sizes=sizes, size=16, seed=1)
    high = write_patch_set(tmp_path / "400x", magnification=400, period=14.0, sizes=sizes, size=16, seed=2)
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({
        "sets": {"100x": str(low), "400x": str(high)}, "model": "example_cnn", "model_options": {"img_size": 32},
        "epochs": 3, "batch-size": 4, "lr": 3e-3, "min-epochs": 0, "device": "cpu", "num-workers": 0, "explain": 0,
        "embeddings": 0, "figures": False, "seed": 1}))
    first = tmp_path / "first"
    result = CliRunner().invoke(main, ["crossmag", "--config", str(study), "--epochs", "1", "--out", str(first)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    saved = yaml.safe_load((first / "crossmag.yaml").read_text())
    assert saved["training"]["epochs"] == 1 and saved["training"]["lr"] == 3e-3  # the flag overrides the file
    assert saved["sets"] == {"100x": str(low), "400x": str(high)}
    assert len(pd.read_csv(first / "train_100x" / "fold_0" / "history.csv")) == 1
    again = tmp_path / "again"
    result = CliRunner().invoke(main, ["crossmag", "--config", str(first / "crossmag.yaml"), "--out", str(again)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    repeated = yaml.safe_load((again / "crossmag.yaml").read_text())
    assert repeated["training"] == {**saved["training"], "out": str(again)}
    for name in ("matrix_f1_macro.csv", "matrix_accuracy.csv"):
        assert (again / name).read_text() == (first / name).read_text()
    for train in ("100x", "400x"):
        assert (again / f"train_{train}" / "splits" / "fold_0.csv").read_text() == (
            first / f"train_{train}" / "splits" / "fold_0.csv").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"sets: {{100x: {low}, 400x: {high}}}\nmodel: example_cnn\nepoch: 2\nfolds: 3\n")
    refused = CliRunner().invoke(main, ["crossmag", "--config", str(bad), "--out", str(tmp_path / "never")])
    assert refused.exit_code == 1 and refused.stderr.strip() == (
        f"Error: {bad}: unknown option(s) epoch; use the names of the long flags (see --help)")
    assert not (tmp_path / "never").exists()


def test_random_weights_are_said_once_and_recorded_in_the_config(tmp_path):
    root = write_patch_set(tmp_path / "set", sizes={"training": 4, "validation": 2, "testing": 2}, size=16)
    out = tmp_path / "run"
    result = _train("--images", root, "--out", out, "--model", "example_cnn", "--model-option", "img_size=32",
                    "--epochs", 1, "--batch-size", 4, "--device", "cpu", "--num-workers", 0, "--explain", 0,
                    "--embeddings", 0, "--no-figures")
    said = [line for line in result.stderr.splitlines() if "random weights" in line]
    assert said == ["note: example_cnn starts from random weights; pass --weights hub (published weights, where the "
                    "model has them) or --weights FILE.pth to start from pretrained ones"]
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["initial_weights"] == "random"


def test_train_help_states_the_fold_size_rule():
    from cmamil.training.config import FOLD_RULE

    shown = " ".join(_train("--help").stdout.split())
    assert " ".join(FOLD_RULE.split()) in shown
