"""`cmamil models info`, run in process."""

from __future__ import annotations

from click.testing import CliRunner

from cmamil.cli import main
from cmamil.models import count_parameters, create_model


def test_info_reports_hand_counted_macs_and_the_parameter_count():
    result = CliRunner().invoke(main, ["models", "info", "s4d", "--input-size", "16", "--num-classes", "5"])
    assert result.exit_code == 0, result.output
    length, width, layers, modes, block = 16 * 16, 128, 4, 32, 16  # the kernel splits ℓ into 16 × 16 blocks
    encoder, head = length * 3 * width, width * 5
    per_layer = 2 * width * block * modes * block + length * 2 * width * width  # kernel bmm pair + 1×1 conv
    assert f"{encoder + layers * per_layer + head:,} " in result.output
    total = count_parameters(create_model("s4d", num_classes=5, img_size=16))
    assert f"{total:,} ({total:,} trainable)" in result.output
    assert "3×16×16" in result.output
    assert "feature dim  128\n" in result.output


def test_info_of_an_unknown_model_is_one_error_line():
    result = CliRunner().invoke(main, ["models", "info", "mscvit_x"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: no model named 'mscvit_x'; did you mean")
    assert result.output.count("\n") == 1


def test_info_rejects_an_input_size_the_model_cannot_take():
    result = CliRunner().invoke(main, ["models", "info", "mscvit_t", "--input-size", "100"])
    assert result.exit_code == 1
    assert result.output == "Error: mscvit: img_size must be a positive multiple of 32, got 100\n"


def test_info_passes_model_options_to_the_factory():
    args = ["models", "info", "s4d", "--input-size", "16", "--model-option", "patch_size=2", "--model-option", "n_layers=1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    total = count_parameters(create_model("s4d", img_size=16, patch_size=2, n_layers=1))
    assert f"parameters   {total:,} " in result.output
