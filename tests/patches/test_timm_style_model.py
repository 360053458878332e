"""A patch model written with timm habits (a plain-dict data_config) trains and runs a crossmag study."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from cmamil.synthetic import write_patch_set

TIMM_STYLE = [
    "--model", "example_timm_cnn", "--model-option", "img_size=16", "--epochs", "1", "--warmup-epochs", "1",
    "--batch-size", "4", "--num-workers", "0", "--device", "cpu", "--min-epochs", "0", "--explain", "0",
    "--embeddings", "0",
]
TINY = {"training": 4, "validation": 2, "testing": 2}


@pytest.fixture(scope="module")
def tiny_sets(tmp_path_factory) -> dict[str, str]:
    """Two magnification sets of 16-px textures, 4/2/2 images per class and split."""
    root = tmp_path_factory.mktemp("tiny")
    return {
        f"{mag}x": str(write_patch_set(root / f"{mag}x", magnification=mag, period=period, sizes=TINY, size=16))
        for mag, period in ((100, 4.0), (400, 8.0))
    }


def test_train_images_with_a_dict_data_config_model(tiny_sets, tmp_path, invoke):
    out = tmp_path / "run"
    invoke(["train", "--images", tiny_sets["100x"], "--out", str(out), *TIMM_STYLE])
    metrics = json.loads((out / "fold_0" / "metrics.json").read_text())
    assert metrics["test"]["n"] == 4 and metrics["epochs_run"] == 1
    best = torch.load(out / "fold_0" / "checkpoint.pt", weights_only=True)
    assert best["class_names"] == ["benign", "malignant"] and best["kind"] == "patches"
    assert len(pd.read_csv(out / "fold_0" / "predictions.csv")) == 4


def test_crossmag_with_a_dict_data_config_model(tiny_sets, tmp_path, invoke):
    out = tmp_path / "study"
    invoke(["crossmag", "--set", f"100x={tiny_sets['100x']}", "--set", f"400x={tiny_sets['400x']}",
            "--out", str(out), *TIMM_STYLE])
    matrix = pd.read_csv(out / "matrix_f1_macro.csv", index_col=0)
    assert list(matrix.index) == ["100x", "400x"] and list(matrix.columns) == ["100x", "400x"]
    for train in ("100x", "400x"):
        for test in ("100x", "400x"):
            assert json.loads((out / "cells" / f"{train}__{test}" / "metrics.json").read_text())["n"] == 4
