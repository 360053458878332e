"""Synthetic patch-image sets for demos and tests: a class texture whose scale is the "magnification".

Class `benign` shows stripes and `malignant` a lattice of dots, each at a random angle (flips and
rotations keep the class, as in histology), in H&E-like colours with noise. A higher magnification
shows the same texture larger (a longer period), so a model trained at one magnification meets a
shifted input at another: a small, fast stand-in for the BreakHis 100×/400× study. File names follow
BreakHis (`SOB_B_A-<patient>-<mag>-<n>.png`), so patient grouping (`--group-by`) applies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from cmamil.errors import InputError

__all__ = ["PATCH_CLASSES", "PATCH_PATIENT_PATTERN", "PATCH_SPLIT_SIZES", "texture_image", "write_patch_set"]

PATCH_CLASSES = ("benign", "malignant")
PATCH_PATIENT_PATTERN = r"SOB_[BM]_[A-Z]+-([^-]+-[^-]+)-"
PATCH_SPLIT_SIZES = {"training": 16, "validation": 6, "testing": 8}


def texture_image(label: int, period: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """An RGB uint8 image: noisy stripes (even labels) or dots (odd labels) at a random angle, `period` px."""
    angle = rng.uniform(0, np.pi)
    y, x = np.mgrid[0:size, 0:size].astype(float)
    u = 2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period + rng.uniform(0, 2 * np.pi)
    v = 2 * np.pi * (-x * np.sin(angle) + y * np.cos(angle)) / period + rng.uniform(0, 2 * np.pi)
    wave = np.sin(u) if label % 2 == 0 else 2 * np.clip(np.sin(u) * np.sin(v), 0, 1) - 0.5
    level = np.clip(0.5 + 0.4 * wave + rng.normal(0, 0.25, (size, size)), 0, 1)[..., None]
    pink, purple = np.array([235, 170, 210]), np.array([90, 40, 140])
    return np.clip(pink * (1 - level) + purple * level + rng.uniform(-15, 15, 3), 0, 255).astype(np.uint8)


def write_patch_set(
    root: str | Path,
    *,
    magnification: int = 100,
    period: float = 6.0,
    sizes: dict[str, int] | None = None,
    size: int = 40,
    patients: int = 4,
    layout: str = "splits",
    seed: int = 0,
) -> Path:
    """Write PNGs under ROOT/<split>/<class>/ (or ROOT/<class>/ with layout='flat'); `sizes` is images per class."""
    if layout not in ("splits", "flat"):
        raise InputError(f"layout must be 'splits' or 'flat', got {layout!r}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    counter = 0
    for split, count in (sizes or PATCH_SPLIT_SIZES).items():
        for label, name in enumerate(PATCH_CLASSES):
            folder = root / name if layout == "flat" else root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                counter += 1
                patient = f"{14 + label}-{split[:2]}{i % patients}"
                file = folder / f"SOB_{'BM'[label]}_A-{patient}-{magnification}-{counter:03d}.png"
                Image.fromarray(texture_image(label, period, size, rng)).save(file)
    return root
