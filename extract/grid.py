"""Nested multi-magnification tile grids: the coarsest magnification sets the grid, finer tiles nest inside it.

With magnifications 5×/10×/20× and 224-px tiles, each 5× tile covers exactly 2×2 10× tiles and 4×4 20× tiles,
and every finer tile stores the index of its parent in the next coarser magnification. Tile sizes are exact
in level-0 pixels (`tile_px * target_mpp / slide_mpp`, a float); stored coordinates are their level-0
top-left corners rounded down, so every tile lies inside its parent (to < 1 px). The coarse grid covers the
whole slide: tiles in the last row and column may extend past the slide's edge (reads there return the
slide's background), and finer tiles exist only where their top-left corner is inside the slide. Tissue
fractions are measured over the whole tile, so the part outside the slide counts as background.

Which tiles are kept: every tile whose own tissue fraction reaches its magnification's threshold, and every
ancestor of a kept tile, so that each kept fine tile has its parent chain. Within a magnification, tiles are
ordered by parent (then row-major inside the parent), so the children of one parent are contiguous.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cmamil.errors import InputError
from cmamil.extract.reader import SlideReader
from cmamil.extract.resolution import Resolution, resolve_mpp
from cmamil.extract.tissue import TissueConfig, TissueMask, find_tissue
from cmamil.magnification import Magnification, parse_magnifications

__all__ = ["UPSAMPLE_LIMIT", "NestedGrid", "TileSet", "TilingConfig", "check_same_tiling", "load_grid", "plan_tiles"]

UPSAMPLE_LIMIT = 1.1  # a magnification may need at most 10 % more resolution than the slide has


@dataclass(frozen=True)
class TilingConfig:
    """Magnifications (coarse to fine), tile size in output px, tissue thresholds, and an optional --mpp override.

    `magnifications` accepts '5,10,20' or Magnification objects; `min_tissue` one fraction for every
    magnification or one per magnification (coarse to fine).
    """

    magnifications: tuple[Magnification, ...] | str = "5,10,20"
    tile_px: int = 224
    min_tissue: tuple[float, ...] | float = 0.25
    mpp: float | None = None
    tissue: TissueConfig = field(default_factory=TissueConfig)

    def __post_init__(self) -> None:
        mags = self.magnifications
        mags = parse_magnifications(mags if isinstance(mags, str) else [m.name for m in mags])
        object.__setattr__(self, "magnifications", mags)
        thresholds = (self.min_tissue,) if isinstance(self.min_tissue, (int, float)) else tuple(self.min_tissue)
        if len(thresholds) == 1:
            thresholds = thresholds * len(mags)
        if len(thresholds) != len(mags) or not all(0 <= t <= 1 for t in thresholds):
            raise InputError(
                f"min tissue must be one fraction in [0, 1] or one per magnification ({len(mags)}), "
                f"got {self.min_tissue}"
            )
        object.__setattr__(self, "min_tissue", tuple(float(t) for t in thresholds))
        if not isinstance(self.tile_px, int) or self.tile_px < 8:
            raise InputError(f"tile size must be an integer of at least 8 px, got {self.tile_px}")
        if self.mpp is not None and self.mpp <= 0:
            raise InputError(f"--mpp must be positive µm/px, got {self.mpp}")

    @property
    def names(self) -> tuple[str, ...]:
        """Magnification names, coarse to fine ('5x', '10x', '20x')."""
        return tuple(m.name for m in self.magnifications)


@dataclass(frozen=True)
class TileSet:
    """The kept tiles of one magnification and everything needed to read them."""

    magnification: Magnification
    coords: np.ndarray
    parent: np.ndarray
    tissue: np.ndarray
    tile_px: int
    tile_size_level0: float
    read_level: int
    read_downsample: float
    min_tissue: float

    def __len__(self) -> int:
        return len(self.coords)

    @property
    def attrs(self) -> dict[str, Any]:
        """Attributes stored with this magnification's group."""
        return {
            "magnification": self.magnification.name,
            "mpp": self.magnification.mpp,
            "tile_px": self.tile_px,
            "tile_size_level0": self.tile_size_level0,
            "read_level": self.read_level,
            "read_downsample": self.read_downsample,
            "min_tissue": self.min_tissue,
        }


@dataclass(frozen=True)
class NestedGrid:
    """Tile sets of one slide, coarse to fine, with the slide geometry and resolution they were planned for."""

    tile_sets: tuple[TileSet, ...]
    dimensions: tuple[int, int]
    resolution: Resolution
    config: TilingConfig
    level_downsamples: tuple[float, ...] = (1.0,)
    tissue_threshold: float = float("nan")
    tissue_fraction: float = float("nan")
    source: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> TileSet:
        for tile_set in self.tile_sets:
            if tile_set.magnification.name == name:
                return tile_set
        raise KeyError(f"no magnification {name}; have {', '.join(self.names)}")

    @property
    def names(self) -> tuple[str, ...]:
        """Magnification names, coarse to fine."""
        return tuple(t.magnification.name for t in self.tile_sets)

    @property
    def counts(self) -> dict[str, int]:
        """Number of kept tiles per magnification."""
        return {t.magnification.name: len(t) for t in self.tile_sets}

    @property
    def attrs(self) -> dict[str, Any]:
        """Slide-level attributes: resolution and its source, geometry, and the tiling and tissue settings."""
        return {
            "source": self.source,
            "mpp": self.resolution.mpp,
            "mpp_x": self.resolution.mpp_x,
            "mpp_y": self.resolution.mpp_y,
            "mpp_source": self.resolution.source,
            "objective_power": self.resolution.objective_power,
            "level0_width": self.dimensions[0],
            "level0_height": self.dimensions[1],
            "level_downsamples": list(self.level_downsamples),
            "tile_px": self.config.tile_px,
            "magnifications": list(self.names),
            "min_tissue": list(self.config.min_tissue),
            "tissue": asdict(self.config.tissue),
            "tissue_threshold": self.tissue_threshold,
            "tissue_fraction": self.tissue_fraction,
        }

    def save(self, path: str | Path, *, attrs: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
        """Write the coordinate file (DESIGN §5 layout without features) atomically through the feature store."""
        from cmamil.store import BagWriter

        path = Path(path)
        with BagWriter(path, attrs={**self.attrs, **(attrs or {})}, coords_only=True, overwrite=overwrite) as writer:
            for tile_set in self.tile_sets:
                writer.add_magnification(tile_set.magnification.name, tile_set.coords, tile_set.parent, tile_set.attrs)
        return path


def plan_tiles(
    reader: SlideReader,
    config: TilingConfig = TilingConfig(),
    *,
    resolution: Resolution | None = None,
    tissue: TissueMask | None = None,
) -> NestedGrid:
    """Plan nested tiles of every magnification in `config` over `reader` (mpp and tissue found unless given)."""
    resolution = resolution or resolve_mpp(reader, config.mpp)
    tissue = tissue or find_tissue(reader, resolution.mpp, config.tissue)
    width, height = reader.dimensions
    sizes = [config.tile_px * m.mpp / resolution.mpp for m in config.magnifications]
    for mag, size in zip(config.magnifications, sizes):
        if size * UPSAMPLE_LIMIT < config.tile_px:
            raise InputError(
                f"{reader.path.name} is scanned at {resolution.mpp:.4g} µm/px ({resolution.source}); {mag.name} "
                f"({mag.mpp:.4g} µm/px) would need upsampling: drop it from --magnifications"
            )
    columns, rows = math.ceil(width / sizes[0] - 1e-9), math.ceil(height / sizes[0] - 1e-9)
    xs, ys, parents = _candidates(columns, rows, sizes)
    fractions = [tissue.fractions(x, y, size) for x, y, size in zip(xs, ys, sizes)]
    for x, y, fraction in zip(xs, ys, fractions):
        fraction[(x >= width) | (y >= height)] = -1.0  # starts outside the slide: never a tile
    keep = _keep(fractions, parents, config.min_tissue)
    if not keep[0].any():
        raise InputError(
            f"no {config.names[0]} tile of {reader.path.name} reaches {config.min_tissue[0]:.0%} tissue (tissue "
            f"covers {tissue.fraction:.1%} of the slide); lower --min-tissue or use a finer coarsest magnification"
        )
    tile_sets = []
    new_index = np.empty(0, dtype=np.int64)
    for i, (mag, size) in enumerate(zip(config.magnifications, sizes)):
        kept = np.flatnonzero(keep[i])
        parent = new_index[parents[i][kept]] if i else np.full(len(kept), -1, dtype=np.int64)
        new_index = np.full(len(keep[i]), -1, dtype=np.int64)
        new_index[kept] = np.arange(len(kept))
        coords = np.stack([np.floor(xs[i][kept] + 1e-6), np.floor(ys[i][kept] + 1e-6)], axis=1).astype(np.int64)
        level = reader.best_level(size / config.tile_px)
        tile_sets.append(
            TileSet(
                mag, coords, parent, fractions[i][kept], config.tile_px, float(size), level,
                reader.level_downsamples[level], config.min_tissue[i],
            )
        )
    return NestedGrid(
        tuple(tile_sets), (width, height), resolution, config, reader.level_downsamples,
        tissue.threshold, tissue.fraction, reader.source,
    )


def load_grid(path: str | Path) -> NestedGrid:
    """Read a coordinate file written by `NestedGrid.save` (or a feature file made from one) back into a grid.

    Per-tile tissue fractions are not stored; they come back as NaN.
    """
    from cmamil.store import bag_info, read_coords

    info = bag_info(path)
    attrs = info.attrs
    if "tile_px" not in attrs or "mpp_source" not in attrs:
        raise InputError(f"{path} was not written by cmamil tile (no tile_px / mpp_source attributes)")
    resolution = Resolution(attrs["mpp_x"], attrs["mpp_y"], attrs["mpp_source"], attrs.get("objective_power"))
    config = TilingConfig(
        magnifications=",".join(attrs["magnifications"]),
        tile_px=int(attrs["tile_px"]),
        min_tissue=tuple(attrs["min_tissue"]),
        mpp=resolution.mpp if resolution.source == "user" else None,
        tissue=TissueConfig(**attrs["tissue"]),
    )
    tile_sets = []
    for mag, (coords, parent) in read_coords(path).items():
        meta = info.coords_attrs[mag]
        tile_sets.append(
            TileSet(
                Magnification(mag, float(meta["mpp"])), coords, parent, np.full(len(coords), np.nan, np.float32),
                int(meta["tile_px"]), float(meta["tile_size_level0"]), int(meta["read_level"]),
                float(meta["read_downsample"]), float(meta["min_tissue"]),
            )
        )
    return NestedGrid(
        tuple(tile_sets), (int(attrs["level0_width"]), int(attrs["level0_height"])), resolution, config,
        tuple(attrs["level_downsamples"]), float(attrs["tissue_threshold"]), float(attrs["tissue_fraction"]),
        dict(attrs["source"]),
    )


def _candidates(
    columns: int, rows: int, sizes: Sequence[float]
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Exact level-0 top-left x, y of every candidate tile per magnification, and its parent candidate index."""
    row, column = np.divmod(np.arange(rows * columns), columns)
    xs, ys = [column * sizes[0]], [row * sizes[0]]
    parents = [np.full(rows * columns, -1, dtype=np.int64)]
    for coarse, fine in zip(sizes, sizes[1:]):
        ratio = round(coarse / fine)
        dy, dx = np.divmod(np.arange(ratio * ratio), ratio)
        xs.append((xs[-1][:, None] + dx[None, :] * fine).ravel())
        ys.append((ys[-1][:, None] + dy[None, :] * fine).ravel())
        parents.append(np.repeat(np.arange(len(xs[-2])), ratio * ratio))
    return xs, ys, parents


def _keep(fractions: list[np.ndarray], parents: list[np.ndarray], thresholds: Sequence[float]) -> list[np.ndarray]:
    """Tiles that pass their own threshold, plus every ancestor of such a tile (finest to coarsest).

    Candidates starting outside the slide carry fraction -1 and are never kept.
    """
    keep = [(f >= t) & (f >= 0) for f, t in zip(fractions, thresholds)]
    for i in range(len(keep) - 1, 0, -1):
        keep[i - 1] = keep[i - 1] | np.bincount(parents[i], weights=keep[i], minlength=len(keep[i - 1])).astype(bool)
    return keep


def check_same_tiling(grid: NestedGrid, path: Path, tiling: TilingConfig, command: str) -> None:
    """A coordinate file must have been made with the tiling asked for now: magnifications, tile size, tissue
    thresholds and detection, and --mpp (when given); otherwise one line says what differs and what to do."""
    made, asked = grid.config, tiling
    differences = []
    if grid.names != asked.names:
        differences.append(f"magnifications {','.join(grid.names)}, not {','.join(asked.names)}")
    if made.tile_px != asked.tile_px:
        differences.append(f"{made.tile_px}-px tiles, not {asked.tile_px}")
    if asked.mpp is not None and abs(grid.resolution.mpp - asked.mpp) > 1e-6 * asked.mpp:
        differences.append(f"{grid.resolution.mpp:g} µm/px, not {asked.mpp:g}")
    if made.min_tissue != asked.min_tissue:
        shown = [",".join(map(str, t)) for t in (made.min_tissue, asked.min_tissue)]
        differences.append(f"min tissue {shown[0]}, not {shown[1]}")
    if made.tissue != asked.tissue:
        changed = [f"{k} {v!r}" for k, v in asdict(made.tissue).items() if getattr(asked.tissue, k) != v]
        differences.append(f"tissue settings {', '.join(changed)}")
    if differences:
        redo = "--overwrite to re-tile" if command == "tile" else "the same options, or delete the coordinate file"
        raise InputError(f"{path} was tiled with {'; '.join(differences)}; {command} with {redo}")
