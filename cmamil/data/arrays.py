"""MedMNIST-style image arrays: one `.npz` holding `train_images`, `train_labels`, `val_*` and `test_*`.

Images are (N, H, W) grey or (N, H, W, 3) RGB uint8 at any size (MedMNIST: 28, 64, 128, 224 px); labels are
(N,) or (N, 1) class indices (multi-label sets such as ChestMNIST are refused). Class names come from the caller,
else from `<stem>.json` or `<stem>.csv` beside the file, else are the indices. An image is addressed as
`FILE.npz::split/index`, so the rest of the toolkit treats it as an item with a path; a split's array is read
once per process (the whole array: npz members are zip entries and cannot be memory-mapped).
"""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from cmamil.errors import InputError

__all__ = ["ARRAY_SPLITS", "array_class_names", "array_image", "array_split", "array_splits", "is_array_file",
           "is_array_item", "read_array_split"]

ARRAY_SPLITS = ("train", "val", "test")
SEPARATOR = "::"


def is_array_file(path: str | Path) -> bool:
    """Whether `path` names a `.npz` array file (or one of its splits, `FILE.npz::split`)."""
    return str(path).partition(SEPARATOR)[0].lower().endswith(".npz")


def is_array_item(path: str | Path) -> bool:
    """Whether `path` addresses one image of an array file (`FILE.npz::split/index`)."""
    return is_array_file(path) and SEPARATOR in str(path)


def array_split(file: str | Path, split: str) -> Path:
    """The address of one split of an array file, as find_split_folders returns a split folder."""
    return Path(f"{file}{SEPARATOR}{split}")


def array_splits(file: str | Path) -> tuple[str, ...]:
    """The splits of an array file that hold images; train and test are required."""
    members = _members(str(file))
    found = tuple(split for split in ARRAY_SPLITS if f"{split}_images" in members)
    if "train" not in found or "test" not in found:
        raise InputError(f"{file} needs train_images and test_images (MedMNIST layout); it has {', '.join(members)}")
    return found


def read_array_split(location: str | Path, class_names: Sequence[str] | None = None
                     ) -> tuple[tuple[Path, ...], tuple[int, ...], tuple[str, ...], int]:
    """Items (addresses), labels, class names and channels (1 or 3) of `FILE.npz::split`."""
    file, _, split = str(location).partition(SEPARATOR)
    images, labels = _array(file, f"{split}_images"), _labels(file, split)
    names = array_class_names(file, class_names)
    if len(labels) != len(images):
        raise InputError(f"{file}: {split}_images holds {len(images)} images but {split}_labels {len(labels)} labels")
    if len(labels) and labels.max() >= len(names):
        raise InputError(f"{file}: {split}_labels has class {labels.max()} but there are {len(names)} class names "
                         f"({', '.join(names)}); give one name per class")
    channels = 1 if images.ndim == 3 or images.shape[-1] == 1 else 3
    items = tuple(Path(f"{file}{SEPARATOR}{split}/{i}") for i in range(len(labels)))
    return items, tuple(int(v) for v in labels), names, channels


def array_class_names(file: str | Path, given: Sequence[str] | None = None) -> tuple[str, ...]:
    """Class names of an array file: `given`, else `<stem>.json` or `<stem>.csv` beside it, else '0', '1', …"""
    if given is not None:
        return tuple(str(name) for name in given)
    file = Path(file)
    for beside in (file.with_suffix(".json"), file.with_suffix(".csv")):
        if beside.is_file():
            return _names_file(beside)
    count = 1 + max(int(_labels(file, split).max(initial=-1)) for split in ARRAY_SPLITS
                    if f"{split}_labels" in _members(str(file)))
    return tuple(str(i) for i in range(count))


def array_image(path: str | Path):
    """The image at `FILE.npz::split/index` as a PIL RGB image (grey repeated to three channels)."""
    from PIL import Image

    file, _, rest = str(path).partition(SEPARATOR)
    split, _, index = rest.partition("/")
    pixels = _array(file, f"{split}_images")[int(index)]
    return Image.fromarray(np.squeeze(pixels).astype(np.uint8)).convert("RGB")


@functools.lru_cache(maxsize=8)
def _array(file: str, key: str) -> np.ndarray:
    """One member of an array file, read once per process; a missing file or member is an InputError."""
    if key not in _members(file):
        raise InputError(f"{file} has no array '{key}' (it has {', '.join(_members(file))}); a MedMNIST-style file "
                         "holds train_images, train_labels, val_*, test_*")
    with np.load(file) as data:
        return data[key]


@functools.lru_cache(maxsize=8)
def _members(file: str) -> tuple[str, ...]:
    if not Path(file).is_file():
        raise InputError(f"array file '{file}' does not exist")
    try:
        with np.load(file) as data:
            return tuple(data.files)
    except (OSError, ValueError) as exc:
        raise InputError(f"{file} is not a readable .npz file ({exc})") from exc


def _labels(file: str | Path, split: str) -> np.ndarray:
    labels = np.asarray(_array(str(file), f"{split}_labels"))
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise InputError(f"{file}: {split}_labels has shape {labels.shape}; multi-label sets (e.g. ChestMNIST) "
                         "are not supported, give one class index per image")
    return labels.astype(int)


def _names_file(path: Path) -> tuple[str, ...]:
    """Names from JSON (a list, a mapping index → name, or MedMNIST's INFO with a `label` mapping) or CSV
    (one name per row, or index,name rows with an optional header)."""
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        data = data.get("label", data) if isinstance(data, dict) else data
        if isinstance(data, dict):
            return tuple(str(data[key]) for key in sorted(data, key=int))
        return tuple(str(name) for name in data)
    rows = [row for row in csv.reader(path.read_text().splitlines()) if row]
    if rows and len(rows[0]) >= 2 and not rows[0][0].strip().isdigit():
        rows = rows[1:]
    if rows and len(rows[0]) >= 2:
        return tuple(row[1].strip() for row in sorted(rows, key=lambda row: int(row[0])))
    return tuple(row[0].strip() for row in rows)
