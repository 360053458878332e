"""Shared fixtures for patch-model tests: synthetic 100×/400× texture sets and one small trained run."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmamil.synthetic import write_patch_set

# fast settings for every training in these tests: the example plugin's CNN at 32 px on CPU
FAST_TRAIN = [
    "--model", "example_cnn", "--model-option", "img_size=32", "--lr", "3e-3", "--warmup-epochs", "1",
    "--batch-size", "4", "--num-workers", "0", "--device", "cpu", "--min-epochs", "0",
]


def _invoke(args: list[str]):
    from click.testing import CliRunner

    from cmamil.cli import main

    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture
def invoke():
    """Run the cmamil CLI in process; fail with its output when it exits non-zero."""
    return _invoke


@pytest.fixture
def fast_train() -> list[str]:
    """`cmamil train` options for a fast CPU training of the example CNN at 32 px."""
    return list(FAST_TRAIN)


@pytest.fixture(scope="session")
def stripes_100x(tmp_path_factory) -> Path:
    """A 100× set: training/ validation/ testing/, 2 classes, 40 px images, texture period 6 px."""
    return write_patch_set(tmp_path_factory.mktemp("textures") / "100x", magnification=100, period=6.0, seed=1)


@pytest.fixture(scope="session")
def stripes_400x(tmp_path_factory) -> Path:
    """A 400× set: the same textures shown larger (period 14 px)."""
    return write_patch_set(tmp_path_factory.mktemp("textures") / "400x", magnification=400, period=14.0, seed=2)


@pytest.fixture(scope="session")
def trained_run(stripes_100x, tmp_path_factory) -> Path:
    """A run folder of example_cnn trained 6 epochs on the 100× set (with overlays and embeddings)."""
    out = tmp_path_factory.mktemp("runs") / "cnn_100x"
    _invoke(["train", "--images", str(stripes_100x), "--out", str(out), "--epochs", "6", "--explain", "4",
            "--embeddings", "20", *FAST_TRAIN])
    return out
