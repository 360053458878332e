"""The format's names: its identity and version, storage kinds by suffix, and a bag's file name."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from cmamil.errors import InputError

__all__ = [
    "FOLDER_FILE_STEM",
    "FOREIGN_MAGNIFICATION",
    "FORMAT",
    "FORMAT_VERSION",
    "SUFFIXES",
    "StorageFormat",
    "bag_id_from_path",
    "bag_path",
    "storage_format",
]

FORMAT = "cmamil.features"
FORMAT_VERSION = 1
FOREIGN_MAGNIFICATION = "all"
StorageFormat = Literal["h5", "zarr"]
SUFFIXES: dict[str, StorageFormat] = {".h5": "h5", ".hdf5": "h5", ".zarr": "zarr"}
# the file name of a bag kept in a folder of its own, `<bag_id>/features.h5` (MoPaDi)
FOLDER_FILE_STEM = "features"


def storage_format(path: str | Path) -> StorageFormat:
    """'h5' or 'zarr', from the file name's suffix (.h5/.hdf5 or .zarr)."""
    fmt = SUFFIXES.get(Path(path).suffix.lower())
    if fmt is None:
        raise InputError(f"{path}: unknown feature file type '{Path(path).suffix}'; name it <bag_id>.h5 or .zarr")
    return fmt


def bag_path(folder: str | Path, bag_id: str, format: StorageFormat = "h5") -> Path:
    """The final path of bag `bag_id` in `folder`: `<folder>/<bag_id>.h5` or `.zarr`."""
    if not bag_id or bag_id.startswith(".") or "/" in bag_id or os.sep in bag_id:
        raise InputError(f"invalid slide id '{bag_id}' (an id names a file: non-empty, no '/', no leading '.')")
    if format not in ("h5", "zarr"):
        raise InputError(f"feature file format '{format}' is not one of h5, zarr")
    return Path(folder) / f"{bag_id}.{format}"


def bag_id_from_path(path: str | Path) -> str:
    """The bag id a file name gives: `<bag_id>.h5`, or the folder of `<bag_id>/features.h5`."""
    path = Path(path)
    return path.parent.name if path.stem == FOLDER_FILE_STEM else path.stem
