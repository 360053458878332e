"""Shared metrics, atomic writes and report figures, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from cmamil.atomic import atomic_path, write_json
from cmamil.evaluation.figures import plot_confusion_matrix, save_figure
from cmamil.evaluation.metrics import classification_metrics, summarize_folds
from cmamil.training.tblog import log_evaluation, log_hparams

Y = [0, 1, 1, 0, 1]
P = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.9, 0.1], [0.2, 0.8]])


def test_binary_metrics_by_hand():
    m = classification_metrics(Y, P, ["neg", "pos"])
    assert m["accuracy"] == pytest.approx(4 / 5)
    assert m["balanced_accuracy"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["auc"] == pytest.approx(1.0)  # every positive scores above every negative
    assert m["confusion_matrix"] == [[2, 0], [1, 2]]
    assert m["per_class"]["pos"]["precision"] == pytest.approx(1.0)
    assert m["per_class"]["neg"]["precision"] == pytest.approx(2 / 3)
    assert m["f1_macro"] == pytest.approx(0.8)


def test_multiclass_auc_and_missing_class():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.3, 0.2]])
    m = classification_metrics([0, 1, 2, 1], probs, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(0.75)
    assert 0.0 <= m["auc"] <= 1.0
    assert math.isnan(classification_metrics([0, 0], probs[:2], ["a", "b", "c"])["auc"])


def test_fold_summary_mean_and_sample_std():
    summary = summarize_folds([{"auc": 0.8}, {"auc": 1.0}, {"auc": math.nan}], keys=("auc",))
    assert summary["auc"]["mean"] == pytest.approx(0.9)
    assert summary["auc"]["std"] == pytest.approx(math.sqrt(0.02))
    assert summary["auc"]["n"] == 2


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    write_json(target, {"x": np.float32(1.5)})
    assert target.read_text().strip() == '{\n  "x": 1.5\n}'


def test_tensorboard_events_read_back(tmp_path):
    m = classification_metrics(Y, P, ["neg", "pos"])
    writer = SummaryWriter(tmp_path)
    log_evaluation(writer, "val", m, Y, P, ["neg", "pos"], step=3)
    log_hparams(writer, {"lr": 1e-3, "model": "x"}, {"auc": m["auc"]})
    writer.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    assert {"val/auc", "val/accuracy", "val/f1_class/pos", "hparam/auc"} <= set(tags["scalars"])
    assert tags["images"] == ["val/confusion_matrix"]
    assert {"val/pr_neg", "val/pr_pos"} <= set(tags["tensors"])
    assert events.Scalars("val/accuracy")[0].value == pytest.approx(0.8)
    assert events.Scalars("val/accuracy")[0].step == 3


def test_confusion_matrix_png(tmp_path):
    path = save_figure(plot_confusion_matrix([[2, 0], [1, 2]], ["neg", "pos"]), tmp_path / "cm.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_absent_class_is_left_out_of_macro_averages_by_hand():
    three = ["a", "b", "c"]
    perfect = classification_metrics([0, 0, 1, 1], np.eye(3)[[0, 0, 1, 1]], three)
    assert perfect["f1_macro"] == 1.0 and perfect["precision_macro"] == 1.0 and perfect["recall_macro"] == 1.0
    assert perfect["absent_classes"] == ["c"] and math.isnan(perfect["auc"])
    assert perfect["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # 'c' absent from the truth but predicted once: it counts, with F1 0; 'b' has P 1, R 1/2, F1 2/3
    wrong = classification_metrics([0, 0, 1, 1], np.eye(3)[[0, 0, 1, 2]], three)
    assert wrong["f1_macro"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert wrong["recall_macro"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert wrong["f1_weighted"] == pytest.approx((2 * 1 + 2 * 2 / 3) / 4)
