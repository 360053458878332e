"""`cmamil crossmag`: the Train × Test matrix, its summary, its files, and reruns that reuse finished work."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cmamil.cli import main
from cmamil.crossmag import matrix_summary


def test_crossmag_trains_each_set_and_the_union_and_tests_every_set(
    stripes_100x, stripes_400x, tmp_path, invoke, fast_train
):
    out = tmp_path / "study"
    args = ["crossmag", "--set", f"100x={stripes_100x}", "--set", f"400x={stripes_400x}", "--mixed",
            "--out", str(out), "--epochs", "4", "--explain", "0", "--embeddings", "0",
            *fast_train]
    result = invoke(args)
    assert "| trained on \\ tested on | 100x | 400x | mixed |" in result.output
    matrix = pd.read_csv(out / "matrix_f1_macro.csv", index_col=0)
    assert matrix.shape == (3, 3)
    assert list(matrix.index) == ["100x", "400x", "mixed"] and list(matrix.columns) == ["100x", "400x", "mixed"]
    assert pd.read_csv(out / "matrix_accuracy.csv", index_col=0).shape == (3, 3)
    assert (out / "matrix_f1_macro.png").stat().st_size > 0
    values = matrix.to_numpy()
    assert values[0, 0] >= 0.8 and values[2].mean() >= 0.75  # in-domain and mixed models learn the textures
    summary = json.loads((out / "crossmag.json").read_text())
    assert summary["in_domain_mean"] == pytest.approx((values[0, 0] + values[1, 1]) / 2, abs=1e-5)
    assert summary["cross_domain_mean_pure"] == pytest.approx((values[0, 1] + values[1, 0]) / 2, abs=1e-5)
    assert summary["cross_domain_mean"] == pytest.approx(values[~np.eye(3, dtype=bool)].mean(), abs=1e-5)
    assert summary["asymmetry"][0]["asymmetry"] == pytest.approx(values[0, 1] - values[1, 0], abs=1e-5)
    assert summary["mixed_mean"] == pytest.approx(values[2, :2].mean(), abs=1e-5)
    for train in ("100x", "400x", "mixed"):
        assert (out / f"train_{train}" / "fold_0" / "checkpoint.pt").is_file()
        for test in ("100x", "400x", "mixed"):
            cell = json.loads((out / "cells" / f"{train}__{test}" / "metrics.json").read_text())
            assert cell["f1_macro"] == pytest.approx(matrix.loc[train, test], abs=1e-5)
            assert cell["n"] == (32 if test == "mixed" else 16)
    train_sizes = pd.read_csv(out / "train_mixed" / "splits" / "fold_0.csv")["split"].value_counts()
    assert train_sizes["train"] == 64 and train_sizes["test"] == 32  # the union of both sets

    stamps = {p: p.stat().st_mtime_ns for p in out.glob("**/checkpoint.pt")} | {
        p: p.stat().st_mtime_ns for p in out.glob("cells/*/metrics.json")
    }
    invoke(args)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing retrained, nothing re-evaluated
    np.testing.assert_allclose(pd.read_csv(out / "matrix_f1_macro.csv", index_col=0).to_numpy(), values)


def test_magfusion_cross_domain_mean_of_the_published_deit_matrix():
    names = ["100x", "400x", "mixed"]
    deit = np.array([[0.979, 0.518, 0.769], [0.405, 0.996, 0.734], [0.921, 0.933, 0.920]])
    summary = matrix_summary(deit, names, names)
    assert round(summary["cross_domain_mean"], 3) == 0.713  # MagFusion's published value
    assert summary["cross_domain_mean_pure"] == pytest.approx((0.518 + 0.405) / 2)
    assert summary["in_domain_mean"] == pytest.approx((0.979 + 0.996) / 2)
    assert summary["mixed_mean"] == pytest.approx((0.921 + 0.933) / 2)


def test_matrix_summary_by_hand():
    matrix = np.array([[0.9, 0.5, 0.4], [0.6, 0.8, 0.7], [0.3, 0.6, 1.0], [0.85, 0.8, 0.9]])
    summary = matrix_summary(matrix, ["40x", "100x", "400x", "mixed"], ["40x", "100x", "400x"])
    assert summary["in_domain_mean"] == pytest.approx(0.9)
    assert summary["cross_domain_mean_pure"] == pytest.approx((0.5 + 0.4 + 0.6 + 0.7 + 0.3 + 0.6) / 6)
    assert summary["cross_domain_mean"] == pytest.approx((3.1 + 0.85 + 0.8 + 0.9) / 9)
    assert [(p["from"], p["to"], round(p["asymmetry"], 6)) for p in summary["asymmetry"]] == [
        ("40x", "100x", -0.1), ("40x", "400x", 0.1), ("100x", "400x", 0.1),
    ]
    assert summary["mixed_mean"] == pytest.approx(0.85)
    assert summary["generalisation_gap"] == pytest.approx(0.9 - 3.1 / 6)


def test_crossmag_refuses_bad_sets(stripes_100x, tmp_path):
    runner = CliRunner()
    one = runner.invoke(main, ["crossmag", "--model", "example_cnn", "--set", f"a={stripes_100x}",
                               "--out", str(tmp_path)])
    assert one.exit_code == 1
    assert one.output.strip() == "Error: crossmag needs at least two sets (--set 100x=ROOT --set 400x=ROOT)"
    twice = runner.invoke(main, ["crossmag", "--model", "example_cnn", "--set", f"a={stripes_100x}",
                                 "--set", f"a={stripes_100x}", "--out", str(tmp_path)])
    assert twice.output.strip() == "Error: set names must be unique, got a, a"
    malformed = runner.invoke(main, ["crossmag", "--model", "example_cnn", "--set", str(stripes_100x),
                                     "--out", str(tmp_path)])
    assert malformed.exit_code == 2 and "is not NAME=ROOT" in malformed.output
