"""Synthetic patch-image sets where the class is a stripe orientation and "magnification" is its scale.

Class `benign` shows stripes, `malignant` a lattice of dots, each at a random angle (so flips and
rotations keep the class, as in histology), in H&E-like colours with noise; a higher magnification
shows the same texture larger (a longer period). File names follow
BreakHis (`SOB_B_A-<patient>-<mag>-<n>.png`) so patient grouping can be tested.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ("benign", "malignant")
PATIENT_PATTERN = r"SOB_[BM]_[A-Z]+-([^-]+-[^-]+)-"
SPLIT_SIZES = {"training": 16, "validation": 6, "testing": 8}


def texture_image(label: int, period: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """An RGB uint8 image: noisy stripes (label 0) or dots (label 1) at a random angle, with `period` px."""
    angle = rng.uniform(0, np.pi)
    y, x = np.mgrid[0:size, 0:size].astype(float)
    u = 2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period + rng.uniform(0, 2 * np.pi)
    v = 2 * np.pi * (-x * np.sin(angle) + y * np.cos(angle)) / period + rng.uniform(0, 2 * np.pi)
    wave = np.sin(u) if label == 0 else 2 * np.clip(np.sin(u) * np.sin(v), 0, 1) - 0.5
    level = np.clip(0.5 + 0.4 * wave + rng.normal(0, 0.25, (size, size)), 0, 1)[..., None]
    pink, purple = np.array([235, 170, 210]), np.array([90, 40, 140])
    tint = rng.uniform(-15, 15, 3)
    return np.clip(pink * (1 - level) + purple * level + tint, 0, 255).astype(np.uint8)


def make_patch_set(
    root: Path, *, magnification: int = 100, period: float = 4.0, layout: str = "splits",
    sizes: dict[str, int] | None = None, size: int = 40, seed: int = 0, patients: int = 4,
) -> Path:
    """Write a class-folder image set under ROOT (split folders, or a flat class tree with layout='flat')."""
    rng = np.random.default_rng(seed)
    sizes = sizes or SPLIT_SIZES
    counter = 0
    for split, count in sizes.items():
        for label, name in enumerate(CLASSES):
            folder = root / name if layout == "flat" else root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                counter += 1
                patient = f"{14 + label}-{split[:2]}{i % patients}"
                file = folder / f"SOB_{'BM'[label]}_A-{patient}-{magnification}-{counter:03d}.png"
                Image.fromarray(texture_image(label, period, size, rng)).save(file)
    return root


@pytest.fixture(scope="session")
def stripes_100x(tmp_path_factory) -> Path:
    """A 100× set: training/ validation/ testing/, 2 classes, 40 px images, texture period 6 px."""
    return make_patch_set(tmp_path_factory.mktemp("stripes") / "100x", magnification=100, period=6.0, seed=1)


@pytest.fixture(scope="session")
def stripes_400x(tmp_path_factory) -> Path:
    """A 400× set: the same textures shown larger (period 14 px)."""
    return make_patch_set(tmp_path_factory.mktemp("stripes") / "400x", magnification=400, period=14.0, seed=2)


# fast settings for every training in these tests: the example plugin's CNN at 32 px on CPU
FAST_TRAIN = [
    "--model", "example_cnn", "--model-option", "img_size=32", "--lr", "3e-3", "--warmup-epochs", "1",
    "--batch-size", "8", "--num-workers", "0", "--device", "cpu", "--min-epochs", "0",
]


def invoke(args: list[str]):
    """Run the cmamil CLI in process and fail with its output when it exits non-zero."""
    from click.testing import CliRunner

    from cmamil.cli import main

    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="session")
def trained_run(stripes_100x, tmp_path_factory) -> Path:
    """A run folder of example_cnn trained 5 epochs on the 100× set (with overlays and embeddings)."""
    out = tmp_path_factory.mktemp("runs") / "cnn_100x"
    invoke(["train", "--images", str(stripes_100x), "--out", str(out), "--epochs", "5", "--explain", "4",
            "--embeddings", "20", *FAST_TRAIN])
    return out
