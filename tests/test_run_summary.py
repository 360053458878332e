"""Run summaries: every mean states how many folds it averages, and an undefined fold metric is n/a with a note."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cmamil.evaluation.metrics import classification_metrics
from cmamil.training.run_folder import RunFolder
from cmamil.training.summary import format_summary, summarize_run


def _fold(run, fold, y_true, predicted):
    folder = RunFolder(run).fold_dir(fold)
    folder.mkdir(parents=True)
    test = classification_metrics(y_true, np.eye(2)[predicted] * 0.8 + 0.1, ["benign", "tumour"])
    (folder / "metrics.json").write_text(json.dumps({"fold": fold, "test": test}))


def test_a_fold_lacking_a_class_shows_auc_n_a_with_a_note_and_means_count_their_folds(tmp_path):
    RunFolder(tmp_path).write_config("bags", {}, {}, ["benign", "tumour"], {})
    _fold(tmp_path, 0, [0, 0, 1, 1], [0, 0, 1, 1])  # perfect
    _fold(tmp_path, 1, [0, 0, 1, 1], [0, 1, 1, 1])  # one benign slide called tumour
    _fold(tmp_path, 2, [0, 0, 0], [0, 0, 0])  # no tumour in the test part: perfect, AUC undefined
    summary = summarize_run(tmp_path)
    assert summary["n_folds"] == 3
    assert summary["mean_std"]["auc"] == {"mean": pytest.approx(0.875), "std": pytest.approx(np.std([1, 0.75], ddof=1)),
                                          "n": 2}
    assert summary["mean_std"]["f1_macro"]["n"] == 3
    assert summary["mean_std"]["f1_macro"]["mean"] == pytest.approx((1 + (2 / 3 + 0.8) / 2 + 1) / 3)
    lines = format_summary(summary).splitlines()
    assert lines[3].split() == ["2", "3", "n/a", "1.000", "1.000", "1.000"]
    assert lines[4].split()[:4] == ["mean±std", "0.875±0.177", "(2", "of"]
    assert lines[5:] == ["mean ± sample std over 3 folds",
                         "note: fold 2: the test part has no 'tumour'; auc n/a there and left out of the mean"]
    csv = (tmp_path / "summary.csv").read_text().splitlines()
    assert csv[-1] == "folds_averaged,,2,3,3,3"
