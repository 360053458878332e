"""Finding finished feature files in a folder, and telling a finished file from a missing or partial one."""

from __future__ import annotations

from pathlib import Path

from cmamil.store._format import FOLDER_FILE_STEM, SUFFIXES
from cmamil.store.reader import bag_info

__all__ = ["is_complete", "list_bags"]


def list_bags(folder: str | Path) -> list[Path]:
    """Finished feature files in `folder`, sorted: `<bag_id>.h5|.hdf5|.zarr`, and `<bag_id>/features.h5|.hdf5|.zarr`
    for a bag kept in a folder of its own; temporary files of running writers are ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.suffix.lower() in SUFFIXES:
            found.append(entry)
        elif entry.is_dir():
            found.extend(entry / f"{FOLDER_FILE_STEM}{suffix}" for suffix in SUFFIXES)
    return sorted(p for p in found if _is_store(p))


def _is_store(path: Path) -> bool:
    """Whether `path` is a feature file of its suffix's kind: a zarr directory, or an HDF5 file."""
    return path.is_dir() if SUFFIXES[path.suffix.lower()] == "zarr" else path.is_file()


def is_complete(path: str | Path, *, with_features: bool = True) -> bool:
    """Whether a finished feature file exists at `path` (holding features, unless `with_features` is False)."""
    path = Path(path)
    if path.name.startswith(".") or not path.exists():
        return False
    return bag_info(path).has_features if with_features else True

