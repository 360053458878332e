"""Synthetic whole-slide images: pyramidal, tiled, JPEG-compressed TIFFs with resolution metadata OpenSlide reads.

`write_slide` writes any RGB source, an in-memory array or a callable that renders level-0 regions on demand,
so a 40,000 × 30,000 px slide is written tile by tile and never held in memory. Lower pyramid levels are built
on the fly from each finished tile row (2× box averaging) and kept only as encoded JPEG tiles until written.

`SyntheticTissue` is such a callable: tissue regions of known area (rectangles, ellipses) on white glass with an
H&E-like texture (pink stroma, purple nuclei on a jittered lattice) whose density, nucleus size, colours and
noise are parameters. Every pixel depends only on its level-0 position, so tiles join seamlessly.

    tissue = SyntheticTissue((Region(1000, 800, 4000, 3000), Region(6000, 1000, 2000, 2000, "ellipse")), mpp=0.5)
    write_slide("slide.tiff", tissue, size=(10_000, 8_000), mpp=0.5)   # openslide.mpp-x == 0.5
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from cmamil.atomic import atomic_path
from cmamil.errors import InputError

__all__ = ["Region", "SyntheticTissue", "TileSource", "write_slide"]

# (x, y, width, height) of a level-0 region -> (height, width, 3) uint8 RGB
TileSource = Callable[[int, int, int, int], np.ndarray]
VENDORS = ("generic", "aperio")
_GRAIN = (251, 257)
WHITE = 255


@dataclass(frozen=True)
class Region:
    """A tissue region: the rectangle, or the ellipse inscribed in it, at level-0 (x, y) with size (w, h)."""

    x: int
    y: int
    width: int
    height: int
    shape: str = "rect"

    def __post_init__(self) -> None:
        if self.shape not in ("rect", "ellipse") or self.width <= 0 or self.height <= 0:
            raise InputError(f"a region is a 'rect' or 'ellipse' of positive size, got {self}")

    @property
    def area(self) -> float:
        """Area in level-0 px² (exact for rectangles, π·w·h/4 for ellipses)."""
        return self.width * self.height * (math.pi / 4 if self.shape == "ellipse" else 1.0)

    def contains(self, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
        """Whether level-0 pixel centres (xx + .5, yy + .5) lie inside the region."""
        if self.shape == "rect":
            return (xx >= self.x) & (xx < self.x + self.width) & (yy >= self.y) & (yy < self.y + self.height)
        u = (xx + 0.5 - self.x - self.width / 2) / (self.width / 2)
        v = (yy + 0.5 - self.y - self.height / 2) / (self.height / 2)
        return u * u + v * v <= 1.0

    def overlaps(self, x: int, y: int, width: int, height: int) -> bool:
        """Whether the region's bounding box meets the level-0 box (x, y, width, height)."""
        return x < self.x + self.width and self.x < x + width and y < self.y + self.height and self.y < y + height


@dataclass(frozen=True)
class SyntheticTissue:
    """A tile source painting H&E-like tissue inside `regions` and white glass elsewhere (lengths in µm)."""

    regions: tuple[Region, ...]
    mpp: float = 0.5
    nuclei_density: float = 0.5
    nucleus_um: float = 6.0
    cell_um: float = 12.0
    stroma: tuple[int, int, int] = (236, 150, 200)
    nucleus: tuple[int, int, int] = (95, 55, 150)
    noise: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.nuclei_density <= 1:
            raise InputError(f"nuclei density must lie in [0, 1], got {self.nuclei_density}")
        if self.mpp <= 0 or self.nucleus_um <= 0 or self.cell_um < self.nucleus_um:
            raise InputError("mpp and nucleus size must be positive and the cell spacing at least the nucleus size")

    @property
    def area(self) -> float:
        """Total tissue area in level-0 px² (regions are assumed not to overlap)."""
        return sum(r.area for r in self.regions)

    def mask(self, x: int, y: int, width: int, height: int) -> np.ndarray:
        """(height, width) bool: which pixels of the level-0 box are tissue."""
        yy, xx = np.arange(y, y + height)[:, None], np.arange(x, x + width)[None, :]
        inside = np.zeros((height, width), dtype=bool)
        for region in self.regions:
            if region.overlaps(x, y, width, height):
                inside |= region.contains(xx, yy)
        return inside

    def __call__(self, x: int, y: int, width: int, height: int) -> np.ndarray:
        """RGB pixels of the level-0 box (x, y, width, height)."""
        if not any(r.overlaps(x, y, width, height) for r in self.regions):
            return np.full((height, width, 3), WHITE, dtype=np.uint8)
        inside = self.mask(x, y, width, height)
        palette = np.array([self.stroma, self.nucleus], dtype=np.int16)
        colour = palette[self._nuclei(x, y, width, height).view(np.uint8)]
        colour += self._grain(x, y, width, height)[..., None]
        rgb = np.clip(colour, 0, 255).astype(np.uint8)
        if not inside.all():
            rgb[~inside] = WHITE
        return rgb

    def _nuclei(self, x: int, y: int, width: int, height: int) -> np.ndarray:
        """(height, width) bool: pixels inside a nucleus; one possible nucleus per lattice cell, jittered."""
        cell = max(2.0, self.cell_um / self.mpp)
        radius = self.nucleus_um / self.mpp / 2
        cy0, cx0 = int(y // cell), int(x // cell)
        cy1, cx1 = int((y + height) // cell) + 1, int((x + width) // cell) + 1
        gy, gx = np.mgrid[cy0:cy1, cx0:cx1]
        h = _hash(gx, gy, self.seed)
        slack = cell - 2 * radius
        offset_x = (radius + ((h >> 16) & 0xFF) / 255.0 * slack).astype(np.float32)
        offset_y = (radius + ((h >> 24) & 0xFF) / 255.0 * slack).astype(np.float32)
        offset_x[(h & 0xFFFF) >= self.nuclei_density * 0x10000] = np.inf  # no nucleus in this cell
        ys, xs = np.arange(y, y + height) + 0.5, np.arange(x, x + width) + 0.5
        iy, ix = (ys // cell).astype(np.int64), (xs // cell).astype(np.int64)
        within_y = (ys - iy * cell).astype(np.float32)[:, None]  # position inside the cell
        within_x = (xs - ix * cell).astype(np.float32)[None, :]
        cells = np.ix_(iy - cy0, ix - cx0)
        dx, dy = within_x - offset_x[cells], within_y - offset_y[cells]
        return dx * dx + dy * dy <= radius * radius

    def _grain(self, x: int, y: int, width: int, height: int) -> np.ndarray:
        """(height, width) int16 brightness noise in ±noise, a deterministic function of position."""
        rows = (np.arange(y, y + height) % _GRAIN[0])[:, None]
        columns = (np.arange(x, x + width) % _GRAIN[1])[None, :]
        return (self._grain_table[rows, columns] * self.noise).astype(np.int16)

    @cached_property
    def _grain_table(self) -> np.ndarray:
        """Uniform noise in [-1, 1] on a prime-sized torus, so its period never lines up with tiles."""
        return np.random.default_rng(self.seed).uniform(-1, 1, _GRAIN).astype(np.float32)


def _hash(a: np.ndarray, b: np.ndarray, seed: int) -> np.ndarray:
    """A well-mixed uint64 hash of integer grid positions (a, b) and a seed."""
    h = a.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) ^ b.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
    h ^= np.uint64(seed * 0x165667B19E3779F9 % 2**64)
    h ^= h >> np.uint64(31)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(29)
    return h >> np.uint64(16)


def write_slide(
    path: str | Path,
    source: np.ndarray | TileSource,
    *,
    size: tuple[int, int] | None = None,
    mpp: float | None = 0.5,
    objective_power: float | None = None,
    tile: int = 256,
    quality: int = 85,
    smallest_level: int = 1024,
    vendor: str = "generic",
) -> Path:
    """Write a pyramidal, tiled, JPEG-compressed TIFF that OpenSlide opens; returns `path`.

    `source` is an (h, w, 3) uint8 array or a callable `(x, y, width, height) -> (height, width, 3) uint8`
    rendering level-0 regions (then `size` = (width, height) is required). Levels halve until the longest side
    is at most `smallest_level`. `vendor="generic"` writes a generic tiled TIFF whose resolution tags give
    `openslide.mpp-x/y` (omit with `mpp=None`); `vendor="aperio"` writes an Aperio-style description
    (`MPP`, `AppMag` = `objective_power`), the way SVS files record resolution. Written atomically.
    """
    if vendor not in VENDORS:
        raise InputError(f"vendor must be one of {', '.join(VENDORS)}, got '{vendor}'")
    if tile % 16 or tile < 16:
        raise InputError(f"tile size must be a positive multiple of 16 (JPEG blocks), got {tile}")
    if isinstance(source, np.ndarray):
        pixels = _as_rgb(source)
        size = (pixels.shape[1], pixels.shape[0])
        source = lambda x, y, w, h: pixels[y : y + h, x : x + w]  # noqa: E731
    if size is None or min(size) <= 0:
        raise InputError("write_slide needs size=(width, height) when the source is a callable")
    shapes = [(size[1], size[0])]
    while max(shapes[-1]) > smallest_level:
        shapes.append((math.ceil(shapes[-1][0] / 2), math.ceil(shapes[-1][1] / 2)))
    pyramid = _Pyramid(shapes, tile, quality)
    options = _tags(size, mpp, objective_power, tile, quality, vendor)
    path = Path(path)
    with atomic_path(path) as tmp:
        import tifffile

        with tifffile.TiffWriter(tmp, bigtiff=size[0] * size[1] * 3 >= 2**31) as tiff:
            for level, shape in enumerate(shapes):
                tiles = pyramid.level0(source) if level == 0 else iter(pyramid.encoded[level])
                downsample = size[0] / shape[1]
                tiff.write(
                    tiles,
                    shape=(*shape, 3),
                    dtype=np.uint8,
                    tile=(tile, tile),
                    photometric="rgb",
                    compression="jpeg",
                    compressionargs={"level": quality},
                    description=options["description"] if level == 0 else "",
                    resolution=_resolution(mpp, downsample) if mpp and vendor == "generic" else None,
                    resolutionunit="CENTIMETER" if mpp and vendor == "generic" else None,
                    subfiletype=1 if level else 0,
                    metadata=None,
                    software="cmamil",
                )
                pyramid.encoded[level] = []
    return path


def _tags(
    size: tuple[int, int], mpp: float | None, objective: float | None, tile: int, quality: int, vendor: str
) -> dict[str, str]:
    """ImageDescription for the first page (Aperio fields when `vendor` is 'aperio')."""
    if vendor == "aperio":
        fields = [f"Aperio Image Library cmamil\n{size[0]}x{size[1]} ({tile}x{tile}) JPEG/RGB Q={quality}"]
        fields += [f"AppMag = {objective:g}"] if objective else []
        fields += [f"MPP = {mpp:.6g}"] if mpp else []
        return {"description": "|".join(fields)}
    text = f"cmamil synthetic slide {size[0]}x{size[1]}"
    text += f", level-0 mpp={mpp:.6g} um/px" if mpp else ", no resolution metadata"
    return {"description": text}


def _resolution(mpp: float, downsample: float) -> tuple[float, float]:
    """TIFF XResolution/YResolution in pixels per centimetre at a level."""
    per_cm = 1e4 / (mpp * downsample)
    return per_cm, per_cm


def _as_rgb(pixels: np.ndarray) -> np.ndarray:
    """An (h, w, 3) uint8 array, or a one-line error."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise InputError(f"pixels must be an (h, w, 3) uint8 RGB array, got {pixels.dtype} {pixels.shape}")
    return pixels


class _Pyramid:
    """Streams level-0 tiles from a source and builds every lower level as encoded JPEG tiles on the way."""

    def __init__(self, shapes: list[tuple[int, int]], tile: int, quality: int) -> None:
        self.shapes, self.tile, self.quality = shapes, tile, quality
        self.rows: list[list[np.ndarray]] = [[] for _ in shapes]  # pending rows (full width) per level
        self.encoded: list[list[bytes]] = [[] for _ in shapes]

    def level0(self, source: TileSource) -> Iterator[np.ndarray]:
        """Yield level-0 tiles row by row; each tile row feeds the lower levels before its tiles are yielded."""
        height, width = self.shapes[0]
        for y in range(0, height, self.tile):
            h = min(self.tile, height - y)
            strip = np.full((self.tile, _ceil_to(width, self.tile), 3), WHITE, dtype=np.uint8)
            for x in range(0, width, self.tile):
                w = min(self.tile, width - x)
                strip[:h, x : x + w] = _as_rgb(np.asarray(source(x, y, w, h)))[:h, :w]
            self._push(1, strip[:h, :width])
            if y + self.tile >= height:  # the writer stops pulling after the last tile: finish the pyramid first
                self._flush(1)
            for x in range(0, width, self.tile):
                yield strip[:, x : x + self.tile]

    def _push(self, level: int, rows: np.ndarray) -> None:
        """Add full-resolution rows of level-1 to `level` (2× box average) and emit its finished tile rows."""
        if level >= len(self.shapes):
            return
        self.rows[level].append(rows)
        pending = np.concatenate(self.rows[level]) if len(self.rows[level]) > 1 else rows
        usable = (len(pending) // (2 * self.tile)) * 2 * self.tile
        if usable:
            self._emit(level, _halve(pending[:usable]))
            pending = pending[usable:]
        self.rows[level] = [pending] if len(pending) else []

    def _flush(self, level: int) -> None:
        """Emit the last, partial tile row of `level` and of every level below it."""
        if level >= len(self.shapes):
            return
        if self.rows[level]:
            self._emit(level, _halve(np.concatenate(self.rows[level])))
            self.rows[level] = []
        self._flush(level + 1)

    def _emit(self, level: int, rows: np.ndarray) -> None:
        """Encode full tile rows of `level` (padded white) and pass the rows on to the next level."""
        import imagecodecs

        height, width = rows.shape[:2]
        padded = np.full((_ceil_to(height, self.tile), _ceil_to(width, self.tile), 3), WHITE, dtype=np.uint8)
        padded[:height, :width] = rows
        for y in range(0, padded.shape[0], self.tile):
            for x in range(0, padded.shape[1], self.tile):
                block = np.ascontiguousarray(padded[y : y + self.tile, x : x + self.tile])
                self.encoded[level].append(
                    imagecodecs.jpeg_encode(
                        block, level=self.quality, colorspace="RGB", outcolorspace="YCBCR", subsampling=(2, 2)
                    )
                )
        self._push(level + 1, rows)


def _halve(rows: np.ndarray) -> np.ndarray:
    """2× box downsample of (h, w, 3) uint8 (odd edges replicated)."""
    if rows.shape[0] % 2:
        rows = np.concatenate([rows, rows[-1:]])
    if rows.shape[1] % 2:
        rows = np.concatenate([rows, rows[:, -1:]], axis=1)
    wide = rows.astype(np.uint16)
    total = wide[0::2, 0::2] + wide[1::2, 0::2] + wide[0::2, 1::2] + wide[1::2, 1::2]
    return ((total + 2) >> 2).astype(np.uint8)


def _ceil_to(value: int, step: int) -> int:
    return -(-value // step) * step
