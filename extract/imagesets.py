"""Image sets (BreakHis-style folders of microscope images per magnification) as bags of instances.

    sets = ImageSets.parse(["100x=data/100X", "400x=data/400X"], bag_by=r"SOB_\\w_\\w+-(\\d+-\\w+)-")
    results = extract_image_sets(sets, Path("features/"), config)     # one file per patient, groups 100x, 400x

Each image is one instance (the whole image resized to the encoder input), or with `tile=True` it is cut into
`tile_px` tiles at its own resolution (only whole tiles inside the image; an image smaller than one tile stays
one instance). Magnifications of an image set are not geometrically linked: `parent` is -1 everywhere, and the
group attributes `images` and `image_rows` say which rows came from which image (rows image_rows[i] to
image_rows[i+1] - 1 are image i).

Bags are formed by `bag_by`: `image` (each image its own bag), a regular expression whose named group `patient`
(else its first group, else the whole match) in the file name is the bag id, as `cmamil train --group-by` reads it, or a CSV file with columns `image,bag_id` (`image` is a
file name, or a path relative to the CSV's folder).
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image

from cmamil.errors import InputError
from cmamil.extract.batch import SlideResult
from cmamil.extract.encoder import Encoder
from cmamil.extract.features import BagJob, ExtractConfig, extract_bags
from cmamil.extract.plans import BagPlan, Group
from cmamil.extract.loading import ImageInstances, ImageTiles
from cmamil.extract.reader import IMAGE_SUFFIXES
from cmamil.data.images import patient_groups
from cmamil.magnification import Magnification, magnification_order

__all__ = ["ImageBag", "ImageSets", "collect_image_bags", "extract_image_sets"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageSets:
    """Folders of images per magnification (`(("100x", dir), ("400x", dir))`), the bag rule, and whether to tile."""

    folders: tuple[tuple[str, Path], ...]
    bag_by: str = "image"
    tile: bool = False

    def __post_init__(self) -> None:
        if not self.folders:
            raise InputError("no image folders given; pass --images 100x=DIR (one per magnification)")
        folders = tuple((Magnification.parse(mag).name, Path(folder)) for mag, folder in self.folders)
        names = [mag for mag, _ in folders]
        if len(set(names)) != len(names):
            raise InputError(f"a magnification is given twice in --images: {', '.join(names)}")
        for mag, folder in folders:
            if not folder.is_dir():
                raise InputError(f"--images {mag}={folder}: the folder does not exist")
        object.__setattr__(self, "folders", folders)
        self.bag_rule()

    @classmethod
    def parse(cls, items: Iterable[str], bag_by: str = "image", tile: bool = False) -> ImageSets:
        """From 'MAG=DIR' strings, as `--images 100x=DIR` gives them."""
        folders = []
        for item in items:
            mag, sep, folder = item.partition("=")
            if not sep or not mag.strip() or not folder.strip():
                raise InputError(f"--images '{item}' is not MAG=DIR (e.g. 100x=BreaKHis/100X)")
            folders.append((mag.strip(), Path(folder.strip())))
        return cls(tuple(folders), bag_by, tile)

    @property
    def names(self) -> tuple[str, ...]:
        """Magnification names, coarse to fine."""
        return magnification_order(mag for mag, _ in self.folders)

    def bag_rule(self) -> Callable[[Path], str | None]:
        """The function mapping an image path to its bag id (None: the image belongs to no bag)."""
        if self.bag_by == "image":
            return lambda path: path.stem
        if self.bag_by.lower().endswith(".csv"):
            return _table_rule(Path(self.bag_by))
        try:
            re.compile(self.bag_by)
        except re.error as exc:
            raise InputError(f"--bag-by '{self.bag_by}' is not 'image', a CSV file or a valid regex ({exc})") from exc

        def from_name(path: Path) -> str | None:
            try:
                return patient_groups([path], self.bag_by)[0] or None
            except InputError:
                return None

        return from_name


def _table_rule(table: Path) -> Callable[[Path], str | None]:
    """Bag ids from a CSV with columns image,bag_id (file names, or paths relative to the table's folder)."""
    if not table.is_file():
        raise InputError(f"--bag-by table {table} does not exist")
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"image", "bag_id"} <= set(rows[0]):
        raise InputError(f"{table} needs the columns image,bag_id")
    by_path, by_name = {}, {}
    for row in rows:
        image, bag = row["image"].strip(), row["bag_id"].strip()
        if "/" in image:
            by_path[(table.parent / image).resolve()] = bag
        else:
            by_name[image] = bag
    return lambda path: by_path.get(path.resolve(), by_name.get(path.name))


@dataclass(frozen=True)
class ImageBag:
    """One bag of an image set: its id and its images per magnification."""

    bag_id: str
    images: dict[str, tuple[Path, ...]]

    @property
    def folder(self) -> Path:
        """The deepest folder holding every image of the bag (named in the manifest)."""
        paths = [p.resolve() for images in self.images.values() for p in images]
        common = paths[0].parent
        while not all(p.is_relative_to(common) for p in paths):
            common = common.parent
        return common


def collect_image_bags(sets: ImageSets) -> tuple[list[ImageBag], list[SlideResult]]:
    """Bags (sorted by id) from the image folders, and a 'failed' result for every image no bag takes."""
    rule = sets.bag_rule()
    grouped: dict[str, dict[str, list[Path]]] = {}
    unmatched = []
    for mag, folder in sets.folders:
        for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
            bag = rule(path)
            if bag is None:
                reason = f"{path.name} gives no bag id with --bag-by {sets.bag_by}"
                log.warning("failed: %s", reason)
                unmatched.append(SlideResult(path.stem, path, "failed", {}, 0.0, reason))
            else:
                grouped.setdefault(bag, {}).setdefault(mag, []).append(path)
    bags = [ImageBag(bag, {m: tuple(grouped[bag].get(m, ())) for m in sets.names}) for bag in sorted(grouped)]
    return bags, unmatched


def extract_image_sets(
    sets: ImageSets, out: str | Path, config: ExtractConfig, *, debug: bool = False
) -> list[SlideResult]:
    """Extract one feature file per bag of the image sets into `out` (one group per magnification).

    Tiles are `config.tiling.tile_px` px when `sets.tile`; the rest of `config.tiling` does not apply. Images
    that no bag takes are recorded as failed; returns the results of this shard, also written to the manifest.
    """
    out = Path(out)
    bags, unmatched = collect_image_bags(sets)
    if not bags and not unmatched:
        folders = ", ".join(str(folder) for _, folder in sets.folders)
        raise InputError(f"no images ({' '.join(IMAGE_SUFFIXES)}) found in {folders}")
    settings = {
        "magnifications": list(sets.names), "instance": "tile" if sets.tile else "image",
        "tile_px": config.tiling.tile_px if sets.tile else 0, "bag_by": sets.bag_by,
    }
    jobs = [BagJob(bag.bag_id, bag.folder, _image_planner(bag, sets, config), settings) for bag in bags]
    return extract_bags(jobs, out, config, sets.names, debug=debug, failed=unmatched)


def _image_planner(bag: ImageBag, sets: ImageSets, config: ExtractConfig) -> Callable[[Encoder], BagPlan]:
    """Plan an image bag: instance boxes per magnification, file attributes and the tile dataset."""
    tile_px = config.tiling.tile_px if sets.tile else None

    def plan(encoder: Encoder) -> BagPlan:
        groups, instances = [], []
        for mag in sets.names:
            folder = dict(sets.folders)[mag]
            found = _instances(bag.images[mag], tile_px)
            coords = found.boxes[:, :2].copy()
            attrs = {
                "instance": "tile" if tile_px else "image",
                "tile_px": tile_px or 0,
                "images": [str(p.relative_to(folder)) for p in found.images],
                "image_rows": found.image_rows.tolist(),
            }
            groups.append(Group(mag, coords, np.full(len(coords), -1, dtype=np.int64), attrs))
            instances.append(found)
        attrs = {
            "source": {
                "folders": {m: str(f.resolve()) for m, f in sets.folders},
                "images": sum(len(v) for v in bag.images.values()),
            },
            "bag_by": sets.bag_by,
            "instance": "tile" if tile_px else "image",
            "tile_px": tile_px or 0,
            "mpp": None,
            "mpp_source": "none",
            "magnifications": list(sets.names),
            **encoder.attrs,
        }
        tiles = ImageTiles(
            instances, input_px=encoder.input_px, interpolation=encoder.data_config.interpolation,
            max_tiles=config.batch_size,
        )
        return BagPlan(attrs, tuple(groups), tiles)

    return plan


def _instances(images: tuple[Path, ...], tile_px: int | None) -> ImageInstances:
    """Instance boxes (x, y, w, h) of `images`: whole images, or whole `tile_px` tiles row by row."""
    boxes, rows = [], [0]
    for path in images:
        try:
            with Image.open(path) as image:
                width, height = image.size
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read image {path} ({exc}); is it a complete image file?") from exc
        if tile_px and width >= tile_px and height >= tile_px:
            ys, xs = np.mgrid[0 : height - tile_px + 1 : tile_px, 0 : width - tile_px + 1 : tile_px]
            boxes += [(x, y, tile_px, tile_px) for x, y in zip(xs.ravel().tolist(), ys.ravel().tolist())]
        else:
            boxes.append((0, 0, width, height))
        rows.append(len(boxes))
    return ImageInstances(tuple(images), np.array(rows, dtype=np.int64), np.array(boxes, dtype=np.int64).reshape(-1, 4))
