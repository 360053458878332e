"""`cmamil models compare`: the efficiency table per model and input size, as CSV and a plot."""

from __future__ import annotations

import csv

from click.testing import CliRunner
from PIL import Image

from cmamil.cli import main
from cmamil.evaluation.efficiency import COLUMNS
from cmamil.models import count_macs, count_parameters, create_model

S4D = {"d_model": 16, "n_layers": 1, "d_state": 8, "patch_size": 4}


def test_compare_two_models_at_two_sizes_fills_every_cell(tmp_path):
    options = [item for key, value in S4D.items() for item in ("--model-option", f"s4d:{key}={value}")]
    result = CliRunner().invoke(main, ["models", "compare", "s4d", "timm:resnet10t", "--input-size", "32,16",
                                       "--batch-size", "4", "--repeats", "1", "--device", "cpu", "--no-progress",
                                       *options, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    with open(tmp_path / "efficiency.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == COLUMNS
    assert [(row["model"], row["input"]) for row in rows] == [
        ("s4d", "3×16×16"), ("s4d", "3×32×32"), ("timm:resnet10t", "3×16×16"), ("timm:resnet10t", "3×32×32")]
    assert all(value != "" for row in rows for value in row.values())
    for row in rows:
        assert float(row["throughput_per_s"]) > 0 and float(row["latency_ms"]) > 0
        assert float(row["peak_memory_mib"]) >= 0 and row["memory_kind"] == "cpu_rss_rise"
    # parameters and MACs are those `models info` reports for the same model at the same size
    s4d = create_model("s4d", num_classes=2, img_size=32, **S4D)
    assert int(rows[1]["parameters"]) == count_parameters(s4d) == int(rows[0]["parameters"])
    assert int(rows[1]["macs"]) == count_macs(s4d)
    resnet = create_model("timm:resnet10t", num_classes=2)
    assert int(rows[3]["macs"]) == count_macs(resnet, (3, 32, 32)) > int(rows[2]["macs"])
    assert rows[0]["options"] == "d_model=16;n_layers=1;d_state=8;patch_size=4" and rows[2]["options"] == "defaults"
    assert Image.open(tmp_path / "efficiency.png").size[0] > 0
    assert "s4d" in result.stdout and "timm:resnet10t" in result.stdout and "throughput: median" in result.stdout


def test_an_option_for_a_model_not_compared_is_refused(tmp_path):
    result = CliRunner().invoke(main, ["models", "compare", "s4d", "--model-option", "deit_small:depth=2",
                                       "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "names model deit_small, which is not compared (s4d)" in result.output
