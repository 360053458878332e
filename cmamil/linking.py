"""Per-magnification feature folders of other toolkits (TRIDENT, CLAM, STAMP …) linked into nested bags.

Each set folder holds one file per slide at one magnification, with level-0 coords and no link between
magnifications. For every slide found in all sets, the parent of a tile is the tile of the next coarser set whose
level-0 square holds the tile's centre (half-open squares, ties to the nearest centre, then the lower row). A tile
with no such square (the coarse tissue mask dropped it) gets parent -1; a tile whose square reaches outside its
parent's (misaligned or overlapping grids) keeps the parent of its centre and is counted as straddling. Rows keep
the source order, so feature links (`links_only`) stay valid.

Feature dimensions must agree across the sets of a slide: aggregators take one input dimension.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cmamil.atomic import write_csv
from cmamil.errors import CmamilError, InputError
from cmamil.magnification import Magnification, magnification_order
from cmamil.store import BagWriter, StorageFormat, bag_id_from_path, bag_info, bag_path, list_bags
from cmamil.store.foreign import ForeignTiles, read_tiles

__all__ = ["LinkConfig", "LinkResult", "feature_files", "link_sets", "link_slide", "parent_map", "write_link_report"]

_CANDIDATES = 4  # nearest coarse centres checked per fine tile: the squares that can meet at one point


@dataclass(frozen=True)
class LinkConfig:
    """Which set folder holds each magnification, where bags go, and how geometry and features are taken."""

    sets: tuple[tuple[str, Path], ...]
    out: Path
    tile_size_level0: tuple[tuple[str, int], ...] = ()
    mpp: float | None = None
    links_only: bool = False
    storage: StorageFormat = "h5"
    overwrite: bool = False

    def __post_init__(self) -> None:
        sets = tuple((Magnification.parse(mag).name, Path(folder)) for mag, folder in self.sets)
        names = [mag for mag, _ in sets]
        if len(set(names)) != len(names) or len(names) < 2:
            raise InputError(f"--set names {', '.join(names) or 'nothing'}; give two or more distinct magnifications")
        for mag, folder in sets:
            if not folder.is_dir():
                raise InputError(f"--set {mag}={folder}: the folder does not exist")
        order = magnification_order(names)
        object.__setattr__(self, "sets", tuple(sorted(sets, key=lambda item: order.index(item[0]))))
        sizes = tuple((Magnification.parse(mag).name, int(size)) for mag, size in self.tile_size_level0)
        for mag, size in sizes:
            if mag not in names or size <= 0:
                raise InputError(f"--tile-size-level0 {mag}={size}: name a --set magnification and a positive size")
        object.__setattr__(self, "tile_size_level0", sizes)
        if self.mpp is not None and not self.mpp > 0:
            raise InputError(f"--mpp {self.mpp} is not a positive level-0 µm/px")
        if self.links_only and self.storage != "h5":
            raise InputError("--links-only writes HDF5 external links; use --format h5")

    @classmethod
    def parse(cls, sets: Iterable[str], tile_sizes: Iterable[str] = (), **options) -> LinkConfig:
        """From 'MAG=DIR' and 'MAG=N' strings, as `--set 5x=DIR --tile-size-level0 5x=1024` give them."""
        return cls(sets=tuple(_pairs(sets, "--set", "MAG=DIR")),
                   tile_size_level0=tuple(_pairs(tile_sizes, "--tile-size-level0", "MAG=N")), **options)

    @property
    def names(self) -> tuple[str, ...]:
        """Magnification names, coarse to fine."""
        return tuple(mag for mag, _ in self.sets)


@dataclass
class LinkResult:
    """One slide's outcome: 'done', 'skipped' (bag exists), 'incomplete' (missing from a set) or 'failed'."""

    slide_id: str
    status: str
    counts: dict[str, int] = field(default_factory=dict)
    orphans: dict[str, int] = field(default_factory=dict)
    straddling: dict[str, int] = field(default_factory=dict)
    missing: tuple[str, ...] = ()
    seconds: float = 0.0
    error: str = ""


def _pairs(items: Iterable[str], flag: str, form: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise InputError(f"{flag} '{item}' is not {form} (e.g. 20x=…)")
        pairs.append((key.strip(), value.strip()))
    return pairs


def feature_files(folder: str | Path) -> dict[str, Path]:
    """A set folder's feature files by slide id: `<slide>.h5`, `<slide>/features.h5` (MoPaDi), `<slide>.pt`."""
    folder = Path(folder)
    files = {bag_id_from_path(path): path for path in list_bags(folder)}
    for path in sorted(folder.glob("*.pt")):
        files.setdefault(path.stem, path)
    return dict(sorted(files.items()))


def parent_map(
    coarse: np.ndarray, coarse_size: int, fine: np.ndarray, fine_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row of the coarse tile whose level-0 square holds each fine tile's centre (-1: none), and whether the fine
    tile's square reaches outside that parent's (straddling)."""
    from scipy.spatial import cKDTree

    parent = np.full(len(fine), -1, np.int64)
    if not len(coarse) or not len(fine):
        return parent, np.zeros(len(fine), bool)
    # doubled level-0 units keep centres integral: square [2x, 2x + 2s), centre 2x + s
    centres, coarse2 = 2 * fine + fine_size, 2 * coarse
    k = min(_CANDIDATES, len(coarse))
    distances, rows = cKDTree(coarse2 + coarse_size).query(centres, k=k, p=np.inf)
    distances, rows = distances.reshape(len(fine), k), rows.reshape(len(fine), k)
    rows = np.take_along_axis(rows, np.lexsort((rows, distances)), axis=1)
    corner = coarse2[rows]
    inside = np.all((corner <= centres[:, None]) & (centres[:, None] < corner + 2 * coarse_size), axis=2)
    found = inside.any(axis=1)
    parent[found] = rows[found, inside[found].argmax(axis=1)]
    low = coarse[parent[found]]
    straddling = np.zeros(len(fine), bool)
    straddling[found] = np.any((fine[found] < low) | (fine[found] + fine_size > low + coarse_size), axis=1)
    return parent, straddling


def link_slide(slide_id: str, files: dict[str, Path], config: LinkConfig) -> LinkResult:
    """Write one slide's nested bag from its per-magnification files; counts of tiles, orphans and straddlers."""
    started = time.perf_counter()
    sizes = dict(config.tile_size_level0)
    tiles = {mag: read_tiles(files[mag], mpp=config.mpp, tile_size_level0=sizes.get(mag)) for mag in config.names}
    for mag, t in tiles.items():
        if t.magnification is not None and t.magnification != mag:
            raise InputError(f"{t.path} is {t.magnification} by its attributes but was given as --set {mag}")
        if t.tile_size_level0 is None:
            raise InputError(f"{t.path} names no tile size; pass --tile-size-level0 {mag}=N (level-0 pixels)")
    dims = {mag: t.feature_shape[1] for mag, t in tiles.items()}
    if len(set(dims.values())) > 1:
        shown = ", ".join(f"{m}: {d}" for m, d in dims.items())
        raise InputError(f"{slide_id}: feature dimensions differ across sets ({shown}); link one encoder's features")
    result = LinkResult(slide_id, "done", counts={m: len(t.coords) for m, t in tiles.items()})
    parents = {config.names[0]: None}
    for coarse, fine in zip(config.names, config.names[1:]):
        c, f = tiles[coarse], tiles[fine]
        parents[fine], straddling = parent_map(c.coords, c.tile_size_level0, f.coords, f.tile_size_level0)
        result.orphans[fine] = int((parents[fine] < 0).sum())
        result.straddling[fine] = int(straddling.sum())
    with BagWriter(bag_path(config.out, slide_id, config.storage), attrs=_provenance(tiles, config),
                   overwrite=config.overwrite) as writer:
        for mag, t in tiles.items():
            writer.add_magnification(mag, t.coords, parents[mag], _coords_attrs(mag, t))
            if config.links_only and t.features_key is not None:
                writer.link_features(mag, t.path, t.features_key)
            else:
                for block in t.feature_blocks():
                    writer.append_features(mag, block)
    result.seconds = time.perf_counter() - started
    return result


def _provenance(tiles: dict[str, ForeignTiles], config: LinkConfig) -> dict:
    """Root attributes: the encoder(s), the level-0 µm/px when given or stated by the files, and every source
    file."""
    encoders = sorted({t.encoder for t in tiles.values()})
    attrs = {
        "encoder": ",".join(encoders),
        "linked_by": "tile centre",
        "features_linked": config.links_only,
        "sources": {mag: {"path": str(t.path.resolve()), "layout": t.layout, "encoder": t.encoder}
                    for mag, t in tiles.items()},
    }
    mpp = next((t.mpp for t in tiles.values() if t.mpp is not None), None)
    return {**attrs, "mpp": mpp} if mpp is not None else attrs


def _coords_attrs(mag: str, tiles: ForeignTiles) -> dict:
    return {"mpp": Magnification.parse(mag).mpp, "tile_size_level0": tiles.tile_size_level0,
            "source": str(tiles.path.resolve()), "source_layout": tiles.layout, "encoder": tiles.encoder}


def link_sets(config: LinkConfig, *, debug: bool = False) -> Iterator[LinkResult]:
    """Link every slide of the sets; a slide missing from a set is listed, a failing one recorded, the rest go on."""
    found = {mag: feature_files(folder) for mag, folder in config.sets}
    for slide_id in sorted(set().union(*found.values())):
        missing = tuple(mag for mag in config.names if slide_id not in found[mag])
        out_file = bag_path(config.out, slide_id, config.storage)
        if missing:
            yield LinkResult(slide_id, "incomplete", missing=missing)
        elif out_file.exists() and not config.overwrite:
            yield LinkResult(slide_id, "skipped", counts=bag_info(out_file).counts)
        else:
            try:
                yield link_slide(slide_id, {mag: found[mag][slide_id] for mag in config.names}, config)
            except (CmamilError, OSError) as exc:
                if debug:
                    raise
                yield LinkResult(slide_id, "failed", error=str(exc).splitlines()[0])


def write_link_report(path: str | Path, results: Iterable[LinkResult], names: tuple[str, ...]) -> Path:
    """One CSV row per slide: status, tiles, parent -1 and straddling counts per magnification, missing sets."""
    header = ["slide_id", "status", *(f"tiles_{m}" for m in names), *(f"orphans_{m}" for m in names[1:]),
              *(f"straddling_{m}" for m in names[1:]), "missing", "seconds", "error"]
    rows = [[r.slide_id, r.status, *(r.counts.get(m, "") for m in names), *(r.orphans.get(m, "") for m in names[1:]),
             *(r.straddling.get(m, "") for m in names[1:]), " ".join(r.missing), f"{r.seconds:.2f}", r.error]
            for r in results]
    write_csv(path, header, rows)
    return Path(path)
