"""Patch-image folders: class folders (one per class), optionally under training/validation/testing.

Layouts read:
  ROOT/training/<class>/*.png, ROOT/validation/<class>/…, ROOT/testing/<class>/…   (or train/ val/ test/)
  ROOT/<class>/*.png                                                                (split by k-fold)
  FILE.npz with train_/val_/test_ images and labels (MedMNIST; see `cmamil.data.arrays`)
Images may sit in sub-folders of a class folder (e.g. one per patient). PNG, JPEG, TIFF and BMP are
read with Pillow and converted to RGB. Every file is checked in full when a folder is read (in threads; a PNG's
chunks and checksums, other formats decoded, JPEG at 1/8 scale): a file that cannot be decoded (not an image,
truncated) is skipped with a warning naming it and recorded (`ImageSet.skipped`), so training never stops on it.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from cmamil.data.arrays import (
    array_image,
    array_split,
    array_splits,
    is_array_file,
    is_array_item,
    read_array_split,
)
from cmamil.errors import InputError
from cmamil.notices import notice

if TYPE_CHECKING:
    import torch
    from torch.utils.data import DataLoader

__all__ = [
    "IMAGE_SUFFIXES",
    "SPLITS",
    "ImageDataset",
    "ImagePart",
    "ImageSet",
    "check_images",
    "find_split_folders",
    "image_loader",
    "open_image",
    "patient_groups",
    "read_class_folders",
    "read_split",
]


IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
# canonical split -> folder names accepted for it, in order of preference
SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("training", "train"),
    "val": ("validation", "val", "valid"),
    "test": ("testing", "test"),
}


@dataclass(frozen=True)
class ImageSet:
    """Labelled image files: paths, integer labels indexing `class_names`, skipped unreadable files (path, reason),
    the channels the images carry (1 for grey arrays; files are read as RGB), and the sha256 of every file's bytes
    where the files were checked."""

    paths: tuple[Path, ...]
    labels: tuple[int, ...]
    class_names: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    channels: int = 3
    digests: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.labels) or (self.digests and len(self.digests) != len(self.paths)):
            raise ValueError("paths, labels (and digests) must have the same length")

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, mask: np.ndarray | Sequence[int]) -> ImageSet:
        """The items selected by a boolean mask or an index list (the record of skipped files is kept)."""
        index = np.flatnonzero(mask) if np.asarray(mask).dtype == bool else np.asarray(mask, dtype=int)
        return ImageSet(
            tuple(self.paths[i] for i in index), tuple(self.labels[i] for i in index), self.class_names,
            self.skipped, self.channels, tuple(self.digests[i] for i in index) if self.digests else (),
        )

    def counts(self) -> dict[str, int]:
        """Images per class."""
        values = np.bincount(np.asarray(self.labels, dtype=int), minlength=len(self.class_names))
        return {name: int(n) for name, n in zip(self.class_names, values)}

    @staticmethod
    def concat(sets: Sequence[ImageSet]) -> ImageSet:
        """One set from several with the same classes (e.g. the 100× and 400× training images)."""
        names = sets[0].class_names
        for other in sets[1:]:
            if other.class_names != names:
                raise InputError(f"image sets have different classes: {list(names)} vs {list(other.class_names)}")
        return ImageSet(
            tuple(p for s in sets for p in s.paths),
            tuple(y for s in sets for y in s.labels),
            names,
            tuple(item for s in sets for item in s.skipped),
            max(s.channels for s in sets),
            tuple(d for s in sets for d in s.digests) if all(s.digests for s in sets) else (),
        )


def find_split_folders(root: str | Path, split_names: Sequence[str] | None = None) -> dict[str, Path] | None:
    """Map 'train'/'val'/'test' to ROOT's split folders; None when ROOT is a flat class-folder tree.

    `split_names` (train, val, test folder names) overrides detection. 'val' may be absent (the
    caller then holds out part of training); 'train' and 'test' must both exist. An `.npz` array file maps to
    its own splits.
    """
    if is_array_file(root):
        return {split: array_split(root, split) for split in array_splits(root)}
    root = _existing_folder(root)
    if split_names is not None:
        if len(split_names) != 3:
            raise InputError(f"split names must be three folder names (train,val,test), got {list(split_names)}")
        found = {split: root / name for split, name in zip(SPLITS, split_names) if (root / name).is_dir()}
        missing = [name for split, name in zip(SPLITS, split_names) if split != "val" and split not in found]
        if missing:
            raise InputError(f"{root} has no folder {', '.join(missing)} (from --split-names)")
        return found
    found = {}
    for split, names in SPLITS.items():
        folder = next((root / name for name in names if (root / name).is_dir()), None)
        if folder is not None:
            found[split] = folder
    if not found:
        return None
    if "train" not in found or "test" not in found:
        have = ", ".join(p.name for p in found.values())
        raise InputError(
            f"{root} has split folder(s) {have} but needs both training/ and testing/ (or train/ and test/); "
            "or pass --split-names"
        )
    return found


def read_split(root: str | Path, split: str, class_names: Sequence[str] | None = None) -> ImageSet:
    """Images of one split of ROOT, by folder name or alias (testing = test); ROOT itself if it has no splits."""
    if is_array_file(root):
        canonical = next((key for key, names in SPLITS.items() if split == key or split in names), split)
        return read_class_folders(array_split(root, canonical), class_names)
    root = _existing_folder(root)
    canonical = next((key for key, names in SPLITS.items() if split == key or split in names), None)
    names = (split,) + (SPLITS[canonical] if canonical else ())
    folder = next((root / name for name in names if (root / name).is_dir()), None)
    if folder is None:
        if find_split_folders(root) is not None:
            raise InputError(f"{root} has no split folder '{split}'; choose one of its split folders with --split")
        folder = root
    return read_class_folders(folder, class_names)


def read_class_folders(folder: str | Path, class_names: Sequence[str] | None = None) -> ImageSet:
    """Images under FOLDER/<class>/ (or of one split of an array file, `FILE.npz::split`); with `class_names` the
    classes are fixed and unknown folders refused."""
    if is_array_file(folder):
        paths, labels, names, channels = read_array_split(folder, class_names)
        return ImageSet(paths, labels, names, channels=channels)
    folder = _existing_folder(folder)
    present = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if class_names is None:
        class_names = present
    class_names = tuple(class_names)
    unknown = sorted(set(present) - set(class_names))
    if unknown:
        raise InputError(
            f"{folder} has class folder(s) {', '.join(unknown)} that the model was not trained on "
            f"(its classes: {', '.join(class_names)})"
        )
    found = [(path, label) for label, name in enumerate(class_names) for path in _image_files(folder / name)]
    paths, labels, digests, skipped = [], [], [], []
    for (path, label), (reason, digest) in zip(found, check_images([path for path, _ in found])):
        if reason:
            skipped.append((str(path), reason))
            continue
        paths.append(path)
        labels.append(label)
        digests.append(digest)
    if not paths:
        raise InputError(
            f"no images found under {folder}/<class>/ (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    if skipped:
        listed = "; ".join(f"skipping {path}: {reason}" for path, reason in skipped)
        notice(f"{len(skipped)} image(s) under {folder} cannot be decoded and are left out (recorded in the run's "
               f"config.yaml as data.skipped_images): {listed}")
    return ImageSet(tuple(paths), tuple(labels), class_names, tuple(skipped), digests=tuple(digests))


def check_images(paths: Sequence[Path]) -> list[tuple[str, str]]:
    """For every file, why it cannot be decoded in full ('' when it can) and the sha256 of its bytes; files are
    read in threads (decoding releases the GIL), with a progress bar on a terminal."""
    from tqdm.auto import tqdm

    if not paths:
        return []
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(tqdm(pool.map(_check_image, paths), total=len(paths), desc="checking images", unit="image",
                         leave=False, disable=None if len(paths) > 200 else True))


def patient_groups(paths: Sequence[Path], pattern: str) -> list[str]:
    """Patient id of every path: the named group 'patient' (or else group 1) of `pattern` in the file name."""
    regex = re.compile(pattern)
    groups = []
    for path in paths:
        match = regex.search(Path(path).name)
        if match is None:
            raise InputError(f"--group-by pattern {pattern!r} does not match the file name '{Path(path).name}'")
        named = match.groupdict().get("patient")
        groups.append(named if named is not None else match.group(1) if regex.groups else match.group(0))
    return groups


def open_image(path: str | Path) -> Image.Image:
    """Decode an image file (or an array file's image) as RGB; a file that fails is an InputError naming it."""
    if is_array_item(path):
        return array_image(path)
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise InputError(f"image '{path}' cannot be decoded ({exc}); remove or replace it") from exc


class ImageDataset:
    """A map-style dataset of (transformed image, label, index) over an ImageSet."""

    def __init__(self, images: ImageSet, transform: Callable[[Image.Image], object]) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(open_image(self.images.paths[index])), self.images.labels[index], index


@dataclass(frozen=True)
class ImagePart:
    """The images of one part of a fold and the transform that feeds them to the model."""

    images: ImageSet
    transform: Callable
    patients: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(str(p) for p in self.images.paths)


def image_loader(part: ImagePart, batch_size: int, num_workers: int, device: torch.device) -> DataLoader:
    """Batches of a part's images in file order, for prediction."""
    from torch.utils.data import DataLoader

    return DataLoader(ImageDataset(part.images, part.transform), batch_size=batch_size, shuffle=False,
                      num_workers=num_workers, pin_memory=device.type == "cuda")


def _existing_folder(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"image folder '{path}' does not exist or is not a folder")
    return path


def _image_files(folder: Path) -> list[Path]:
    """Image files under `folder` (recursively), sorted, hidden files ignored."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _check_image(path: Path) -> tuple[str, str]:
    """Why `path` cannot be decoded in full ('' when it can), and the sha256 of its bytes."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return exc.strerror or str(exc), ""
    digest = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format == "PNG":
                image.verify()  # walks every chunk and its checksum without inflating: finds truncation fast
            else:
                image.draft("RGB", (1, 1))  # JPEG decodes at 1/8 scale, still reading the whole stream
                image.load()
    except UnidentifiedImageError:
        return "not an image Pillow can read", digest
    except (OSError, ValueError, SyntaxError) as exc:
        return str(exc) or type(exc).__name__, digest
    return "", digest
