"""Tile loading for extraction: torch Datasets whose items are chunks of tiles, read and cut in DataLoader workers.

`SlideTiles` serves a nested grid with **one read per coarsest-magnification tile**: the region is read once at
the finest magnification's resolution (`SlideReader.read_scaled`: the coarsest pyramid level with enough pixels,
resampled to exactly `tile_px` per finest tile), every finer tile is cut out of it by its (column, row) inside
the region, and every coarser view is the region box-averaged by the integer ratio of the magnifications
(`PIL.Image.reduce`, the exact mean of the fine pixels each coarse pixel covers). A tile is therefore the same
pixels as reading its own square from the region's read level and averaging it down.

`ImageTiles` serves image sets (BreakHis-style folders): each instance is a box of one image (the whole image,
or a tile of it) resized to the encoder's input size.

Items are dicts: `pixels` uint8 (n, P, P, 3) at the encoder input size P and `mag` (n,) index into the bag's
magnifications. Within each magnification, tiles come in row order across items (regions and images are served
in order, and the rows inside one region are contiguous), so features are appended to the feature file as they
come. A bad read becomes `{"error": message}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from cmamil.errors import CmamilError, InputError
from cmamil.extract.grid import NestedGrid
from cmamil.extract.reader import SlideReader, open_slide

__all__ = ["ImageInstances", "ImageTiles", "SlideTiles", "fixed_batches", "resample_filter"]

_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def resample_filter(interpolation: str) -> Image.Resampling:
    """The PIL filter for a data_config interpolation name ('bicubic', 'bilinear' …; unknown names: bicubic)."""
    return _FILTERS.get(interpolation.lower(), Image.Resampling.BICUBIC)


def _chunks(sizes: np.ndarray, max_tiles: int) -> list[tuple[int, int]]:
    """Group consecutive units (regions, images) into [start, stop) ranges of at most `max_tiles` tiles each
    (a unit larger than that is a chunk of its own)."""
    chunks, start, total = [], 0, 0
    for i, size in enumerate(sizes.tolist()):
        if total and total + size > max_tiles:
            chunks.append((start, i))
            start, total = i, 0
        total += size
    if total:
        chunks.append((start, len(sizes)))
    return chunks


def fixed_batches(
    chunks: Iterable[dict[str, Any]], batch_size: int, *, pin: bool = False
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Regroup chunks of tiles into (pixels, mag) batches of exactly `batch_size` tiles, in order (the last may be
    short); a chunk's error is raised as an InputError.

    Chunks hold whole regions, so their sizes vary: fed as they come, every new batch shape makes the encoder's
    allocator and kernels keep buffers of one more size. `pin` puts each batch in page-locked memory (CUDA).
    """
    pixels: list[torch.Tensor] = []
    mags: list[torch.Tensor] = []
    held = 0
    for chunk in chunks:
        if "error" in chunk:
            raise InputError(chunk["error"])
        pixels.append(chunk["pixels"])
        mags.append(chunk["mag"])
        held += len(chunk["mag"])
        while held >= batch_size:
            all_pixels, all_mags = torch.cat(pixels), torch.cat(mags)
            batch = all_pixels[:batch_size]
            yield (batch.pin_memory() if pin else batch), all_mags[:batch_size]
            pixels, mags = [all_pixels[batch_size:]], [all_mags[batch_size:]]
            held -= len(batch)
    if held:
        batch = torch.cat(pixels)
        yield (batch.pin_memory() if pin else batch), torch.cat(mags)


def _error(exc: CmamilError) -> dict[str, Any]:
    return {"error": str(exc)}


class _Tiles(Dataset):
    """A tile dataset used as a context manager: leaving it releases the files the main process opened."""

    def __enter__(self) -> _Tiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release open files (workers open their own)."""


class SlideTiles(_Tiles):
    """Chunks of whole coarsest-magnification regions of one slide, every magnification cut from one read."""

    def __init__(
        self, reader: SlideReader, grid: NestedGrid, *, input_px: int, interpolation: str = "bicubic",
        max_tiles: int = 64,
    ) -> None:
        sets = grid.tile_sets
        coarse, fine = sets[0], sets[-1]
        self.reader = reader
        self.tile_px = coarse.tile_px
        self.input_px = input_px
        self.filter = resample_filter(interpolation)
        self.region_size = coarse.tile_size_level0
        self.read_level = fine.read_level
        self.factors = [round(s.tile_size_level0 / fine.tile_size_level0) for s in sets]
        self.region_px = self.factors[0] * self.tile_px
        self.origins = coarse.coords
        self.cells: list[np.ndarray] = []
        self.bounds: list[np.ndarray] = []
        ancestor = np.arange(len(coarse))
        for i, tile_set in enumerate(sets):
            if i:
                if len(tile_set) and tile_set.parent.min() < 0:
                    raise InputError(f"{reader.path.name}: {tile_set.magnification.name} tiles without a parent")
                ancestor = ancestor[tile_set.parent]
            if np.any(np.diff(ancestor) < 0):
                raise InputError(
                    f"{reader.path.name}: {tile_set.magnification.name} tiles are not ordered by parent; "
                    f"re-tile the slide with cmamil tile"
                )
            per_side = self.factors[0] // self.factors[i]
            offset = tile_set.coords - coarse.coords[ancestor]
            cells = np.rint(offset / tile_set.tile_size_level0).astype(np.int64)
            if len(cells) and (cells.min() < 0 or cells.max() >= per_side):
                raise InputError(
                    f"{reader.path.name}: a {tile_set.magnification.name} tile lies outside its "
                    f"{coarse.magnification.name} ancestor; re-tile the slide with cmamil tile"
                )
            self.cells.append(cells)
            self.bounds.append(np.searchsorted(ancestor, np.arange(len(coarse) + 1)))
        sizes = sum(np.diff(b) for b in self.bounds)
        self.chunks = _chunks(sizes, max_tiles)

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, index: int) -> dict[str, Any]:
        start, stop = self.chunks[index]
        count = sum(int(b[stop] - b[start]) for b in self.bounds)
        pixels = np.empty((count, self.input_px, self.input_px, 3), dtype=np.uint8)
        mags = np.empty(count, dtype=np.int64)
        n = 0
        try:
            for region_index in range(start, stop):
                n = self._cut_region(region_index, pixels, mags, n)
        except CmamilError as exc:
            return _error(exc)
        return {"pixels": torch.from_numpy(pixels), "mag": torch.from_numpy(mags)}

    def close(self) -> None:
        self.reader.close()

    def _cut_region(self, index: int, pixels: np.ndarray, mags: np.ndarray, n: int) -> int:
        """Read coarsest tile `index` once and write the tiles of every magnification inside it from slot n."""
        x, y = (int(v) for v in self.origins[index])
        region = self.reader.read_scaled((x, y), self.region_size, self.region_px, self.read_level)
        image = Image.fromarray(region)
        size = self.tile_px
        for mag, (factor, bounds, cells) in enumerate(zip(self.factors, self.bounds, self.cells)):
            first, last = int(bounds[index]), int(bounds[index + 1])
            if first == last:
                continue
            view = region if factor == 1 else np.asarray(image.reduce(factor))
            for row in range(first, last):
                cx, cy = cells[row]
                tile = view[cy * size : (cy + 1) * size, cx * size : (cx + 1) * size]
                if self.input_px != size:
                    tile = np.asarray(Image.fromarray(tile).resize((self.input_px, self.input_px), self.filter))
                pixels[n], mags[n] = tile, mag
                n += 1
        return n


@dataclass(frozen=True)
class ImageInstances:
    """The instances of one magnification of an image bag: boxes (x, y, w, h) of images, grouped by image."""

    images: tuple[Path, ...]
    image_rows: np.ndarray
    boxes: np.ndarray

    def __len__(self) -> int:
        return len(self.boxes)


class ImageTiles(_Tiles):
    """Chunks of whole images of one bag (all its magnifications); each instance box is resized to input_px."""

    def __init__(
        self, sets: Sequence[ImageInstances], *, input_px: int, interpolation: str = "bicubic", max_tiles: int = 64
    ) -> None:
        self.sets = list(sets)
        self.input_px = input_px
        self.filter = resample_filter(interpolation)
        self.units = [(mag, image) for mag, s in enumerate(self.sets) for image in range(len(s.images))]
        rows = [self.sets[m].image_rows for m, _ in self.units]
        sizes = np.array([r[i + 1] - r[i] for r, (_, i) in zip(rows, self.units)], dtype=np.int64)
        self.chunks = _chunks(sizes, max_tiles)

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, index: int) -> dict[str, Any]:
        start, stop = self.chunks[index]
        spans = [(m, i, self.sets[m].image_rows[i], self.sets[m].image_rows[i + 1]) for m, i in self.units[start:stop]]
        count = int(sum(b - a for _, _, a, b in spans))
        pixels = np.empty((count, self.input_px, self.input_px, 3), dtype=np.uint8)
        mags = np.empty(count, dtype=np.int64)
        n = 0
        try:
            for mag, image, first, last in spans:
                with open_slide(self.sets[mag].images[image]) as reader:
                    for row in range(int(first), int(last)):
                        x, y, w, h = (int(v) for v in self.sets[mag].boxes[row])
                        box = reader.read_region((x, y), 0, (w, h))
                        if (w, h) != (self.input_px, self.input_px):
                            box = Image.fromarray(box).resize((self.input_px, self.input_px), self.filter)
                        pixels[n], mags[n] = np.asarray(box), mag
                        n += 1
        except CmamilError as exc:
            return _error(exc)
        return {"pixels": torch.from_numpy(pixels), "mag": torch.from_numpy(mags)}
