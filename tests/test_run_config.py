"""Reproducible runs: --config FILE.yaml (a run's own config.yaml repeats it), --dry-run, input provenance."""

from __future__ import annotations

import hashlib
import json

import yaml
from click.testing import CliRunner

from cmamil.cli import main


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
