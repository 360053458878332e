"""Bag training: learning a planted signal, the run folder, TensorBoard events, resume, and the CLI end to end."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from torch.utils.tensorboard import SummaryWriter

from cmamil.aggregators import create_aggregator
from cmamil.cli import main
from cmamil.environment import seed_everything
from cmamil.errors import InputError
from cmamil.store import read_bag
from cmamil.synthetic import PlantedSignal, write_planted_cohort
from cmamil.training.bags import BagTask
from cmamil.training.checkpoint import load_checkpoint
from cmamil.training.config import BagTrainConfig
from cmamil.training.loop import fit
from cmamil.training.runner import run_training
from cmamil.training.splits import Split, load_splits, make_splits



@pytest.mark.slow
def test_attention_models_learn_a_sparse_signal_that_mean_pooling_misses(tmp_path):
    # 3 of 64 tiles at 20x shifted in positive bags; 4 coarse tiles per bag
    labels = write_planted_cohort(tmp_path / "feats", 65, dim=8, n_coarse=4,
                                  signal=PlantedSignal("20x", tiles=3, shift=5.0), seed=1)
    ids = tuple(pd.read_csv(labels)["slide_id"])
    split = Split(0, ids[:40], ids[40:64], ids[64:])  # the one test bag is not used here
    device = torch.device("cpu")
    best = {}
    for name in ("cma_mil", "abmil", "mean_pool"):
        config = BagTrainConfig(model=name, features=tmp_path / "feats", labels=labels, out=tmp_path / name,
                                epochs=6, lr=3e-3, patience=2, min_epochs=0, device="cpu", num_workers=0,
                                progress=False, model_options={"dim": 32})
        task = BagTask(config)
        data = task.fold_data(split)
        seed_everything(0)
        folder = tmp_path / name / "fold_0"
        folder.mkdir(parents=True)
        meta = {"kind": "bags", "model": name, "model_options": {"dim": 32}, "class_names": ["negative", "positive"],
                **task.checkpoint_meta(data)}
        with SummaryWriter(folder) as writer:
            result = fit(task, data, task.build_model(), config, folder, writer, device, meta)
        best[name] = max(row["val_auc"] for row in result.history)
        # the kept weights are the best epoch's
        assert result.history[result.best_epoch - 1]["val_auc"] == best[name]
        kept = task.predict(result.model, data.val, device, False)
        assert kept.metrics(("negative", "positive"))["auc"] == pytest.approx(best[name])
    assert best["cma_mil"] >= 0.9, best
    assert best["abmil"] >= 0.9, best
    assert best["mean_pool"] < min(best["cma_mil"], best["abmil"]) - 0.1, best


def _config(folder, labels, out, **changes) -> BagTrainConfig:
    options = dict(model="abmil", features=folder, labels=labels, out=out, folds=2, epochs=2, val_fraction=0.5,
                   min_epochs=0, model_options={"dim": 8, "attn_dim": 4}, device="cpu", num_workers=0,
                   progress=False, figures=False)
    return BagTrainConfig(**{**options, **changes})


@pytest.mark.slow
def test_kfold_run_writes_the_run_folder_tensorboard_and_loadable_checkpoints(planted_files, tmp_path):
    folder, labels = planted_files
    run = tmp_path / "runs" / "abmil"
    summary = run_training(_config(folder, labels, run, figures=True))
    assert [row["fold"] for row in summary["folds"]] == [0, 1]
    assert set(summary["mean_std"]) == {"auc", "accuracy", "balanced_accuracy", "f1_macro"}
    for name in ("config.yaml", "summary.json", "summary.csv", "splits/fold_0.csv", "splits/fold_1.csv",
                 "figures/roc.png", "figures/pr.png", "figures/confusion_matrix.png", "figures/fold_1_training.png"):
        assert (run / name).is_file(), name
    csv = pd.read_csv(run / "summary.csv")
    assert list(csv["fold"]) == ["0", "1", "mean", "std", "folds_averaged"]
    assert list(csv.iloc[4, 2:]) == [2, 2, 2, 2]
    tested = []
    for fold in (0, 1):
        metrics = json.loads((run / f"fold_{fold}" / "metrics.json").read_text())
        assert metrics["test"]["n"] == 6 and len(metrics["test"]["confusion_matrix"]) == 2
        predictions = pd.read_csv(run / f"fold_{fold}" / "predictions.csv")
        assert list(predictions.columns) == ["id", "patient_id", "label", "prediction", "prob_negative",
                                             "prob_positive"]
        assert predictions[["prob_negative", "prob_positive"]].sum(axis=1).round(5).eq(1).all()
        tested += list(predictions["id"])
        # the checkpoint loads safely and reproduces the saved test probabilities
        checkpoint = load_checkpoint(run / f"fold_{fold}" / "checkpoint.pt")
        meta = checkpoint
        assert meta["kind"] == "bags" and meta["class_names"] == ["negative", "positive"]
        model = create_aggregator(meta["model"], in_dim=meta["in_dim"], num_classes=2,
                                  magnifications=tuple(meta["magnifications"]), **meta["model_options"])
        model.load_state_dict(checkpoint["state_dict"])
        model.eval()
        row = predictions.iloc[0]
        with torch.no_grad():
            probs = torch.softmax(model(read_bag(folder / f"{row.id}.h5")).logits, dim=1)[0]
        assert probs[1].item() == pytest.approx(row.prob_positive, abs=1e-5)
        # TensorBoard: per-epoch scalars, learning rate, confusion matrix image, PR curves, hparams
        events = EventAccumulator(str(run / f"fold_{fold}"), size_guidance={"tensors": 0}).Reload()
        tags = events.Tags()
        assert {"train/loss", "train/auc", "val/loss", "val/auc", "val/f1_macro", "lr"} <= set(tags["scalars"])
        assert len(events.Scalars("train/loss")) == metrics["epochs_run"]
        assert {"test/confusion_matrix", "val/confusion_matrix"} <= set(tags["images"])
        assert {"test/pr_negative", "test/pr_positive"} <= set(tags["tensors"])
        start = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
        assert hparams["model"].string_value == "abmil" and hparams["fold"].number_value == fold
        assert events.Scalars("hparam/test_auc")[0].value == pytest.approx(metrics["test"]["auc"])
    assert sorted(tested) == sorted(f"bag_{i:03d}" for i in range(12))


@pytest.mark.slow
def test_finished_folds_are_skipped_on_rerun_and_changed_options_refused(planted_files, tmp_path):
    folder, labels = planted_files
    run = tmp_path / "run"
    run_training(_config(folder, labels, run))
    fold0 = run / "fold_0" / "metrics.json"
    fold1 = run / "fold_1" / "metrics.json"
    stamp0 = fold0.stat().st_mtime_ns
    checkpoint0 = (run / "fold_0" / "checkpoint.pt").read_bytes()
    fold1.unlink()  # as if the run had been interrupted during fold 1
    summary = run_training(_config(folder, labels, run, device="cpu", num_workers=1))
    assert fold0.stat().st_mtime_ns == stamp0
    assert (run / "fold_0" / "checkpoint.pt").read_bytes() == checkpoint0
    assert fold1.is_file() and len(summary["folds"]) == 2
    with pytest.raises(InputError, match=r"was trained with other options \(lr: 0.0002 → 0.001\)"):
        run_training(_config(folder, labels, run, lr=1e-3))
    run_training(_config(folder, labels, run, lr=1e-3, overwrite=True))
    assert fold0.stat().st_mtime_ns != stamp0
    # given splits are reused as they are (another seed would split differently)
    reuse = tmp_path / "reuse"
    run_training(_config(folder, labels, reuse, seed=5, splits=run / "splits"))
    assert load_splits(reuse / "splits") == load_splits(run / "splits")
    assert make_splits([f"bag_{i:03d}" for i in range(12)], [i % 2 for i in range(12)],
                       [f"patient_{i // 2:03d}" for i in range(12)], folds=2, val_fraction=0.5, seed=5) \
        != load_splits(run / "splits")


@pytest.mark.slow
def test_cli_trains_cma_mil_end_to_end_and_reports(planted_files, tmp_path):
    folder, labels = planted_files
    run = tmp_path / "runs" / "cma"
    args = ["train", "--features", str(folder), "--labels", str(labels), "--model", "cma_mil", "--folds", "2",
            "--epochs", "1", "--val-fraction", "0.5", "--out", str(run), "--num-workers", "0", "--device", "cpu",
            "--model-option", "dim=8", "--model-option", "cross_attention=local", "--magnifications", "10x,20x"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["fold", "n", "auc", "accuracy", "balanced_accuracy", "f1_macro"]
    assert lines[1].split()[:2] == ["0", "6"] and lines[3].startswith("mean±std")
    config = (run / "config.yaml").read_text()
    assert "cross_attention: local" in config and "- 10x" in config and "epochs: 1" in config
    report = CliRunner().invoke(main, ["report", str(run)])
    assert report.exit_code == 0, report.output
    assert report.output.splitlines()[:5] == lines[:5] and lines[4] == "mean ± sample std over 2 folds"
    assert "fold 0 epoch 1/1: train loss " in result.stderr and ", val auc " in result.stderr  # a log file's line
    assert "note: splits keep each patient's slides together (6 patients, 12 slides; patients from the patient_id " \
           "column)" in result.stderr
    assert "figures: 5 written" in report.output and (run / "figures" / "fold_0_training.png").is_file()
    # evaluate: every fold's model on feature files; on its own test bags it repeats the fold's predictions
    out = tmp_path / "evaluated"
    evaluated = CliRunner().invoke(main, ["evaluate", str(run), "--features", str(folder), "--labels", str(labels),
                                          "--out", str(out), "--num-workers", "0", "--device", "cpu"])
    assert evaluated.exit_code == 0, evaluated.output
    assert "auc:" in evaluated.output and "±" in evaluated.output
    for fold in (0, 1):
        saved = pd.read_csv(run / f"fold_{fold}" / "predictions.csv").set_index("id")
        again = pd.read_csv(out / f"fold_{fold}" / "predictions.csv").set_index("id")
        assert len(again) == 12 and json.loads((out / f"fold_{fold}" / "metrics.json").read_text())["n"] == 12
        assert again.loc[saved.index, "prob_positive"].to_numpy() == pytest.approx(
            saved["prob_positive"].to_numpy(), abs=1e-5)
    wrong = CliRunner().invoke(main, ["evaluate", str(run), "--images", str(tmp_path)])
    assert wrong.output.strip() == f"Error: {run} is a bags run: evaluate it with --features and --labels"


def test_cli_reports_bad_inputs_in_one_line(planted_files, tmp_path):
    folder, labels = planted_files
    bad = tmp_path / "labels.csv"
    bad.write_text(labels.read_text() + "ghost,positive,patient_x\nbag_000,negative,patient_000\n")
    args = ["train", "--features", str(folder), "--labels", str(bad), "--model", "abmil", "--out",
            str(tmp_path / "run"), "--magnifications", "40x"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    message = result.output.strip()
    assert message.startswith("Error: ") and "\n" not in message
    assert "duplicate slide_id" in message and "ghost: no feature file" in message
    assert "bag_001: lacks magnification 40x" in message
    assert not (tmp_path / "run" / "fold_0").exists()
