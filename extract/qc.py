"""Quality-control image of a tiled slide: thumbnail, tissue contour and the kept tiles of the coarsest grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from cmamil.atomic import atomic_path
from cmamil.extract.grid import NestedGrid
from cmamil.extract.reader import SlideReader
from cmamil.extract.tissue import TissueMask

__all__ = ["render_qc", "write_qc"]

CONTOUR = (0, 170, 0)
GRID = (30, 80, 230)
CAPTION_PX = 16


def render_qc(reader: SlideReader, grid: NestedGrid, tissue: TissueMask, max_size: int = 1024) -> Image.Image:
    """The slide thumbnail with the tissue contour (green), coarsest kept tiles (blue) and a caption of counts."""
    if max(tissue.thumbnail.shape[:2]) >= max_size:  # the tissue thumbnail is large enough: no second read
        image = Image.fromarray(tissue.thumbnail)
        image.thumbnail((max_size, max_size), Image.Resampling.BOX)
        thumbnail = np.asarray(image)
    else:
        thumbnail = reader.thumbnail(max_size)
    height, width = thumbnail.shape[:2]
    mask = np.asarray(Image.fromarray(tissue.mask).resize((width, height), Image.Resampling.NEAREST))
    edge = mask & ~ndimage.binary_erosion(mask, iterations=2, border_value=0)
    canvas = np.full((height + CAPTION_PX, width, 3), 255, dtype=np.uint8)
    canvas[:height] = thumbnail
    canvas[:height][edge] = CONTOUR
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    coarsest = grid.tile_sets[0]
    scale_x, scale_y = width / grid.dimensions[0], height / grid.dimensions[1]
    size = coarsest.tile_size_level0
    for x, y in coarsest.coords:
        draw.rectangle(
            (x * scale_x, y * scale_y, (x + size) * scale_x - 1, (y + size) * scale_y - 1), outline=GRID
        )
    counts = ", ".join(f"{name}: {count}" for name, count in grid.counts.items())
    caption = f"{reader.path.name}  {grid.resolution.mpp:.4g} um/px ({grid.resolution.source})  {counts}"
    draw.text((3, height + 2), caption, fill=(0, 0, 0))
    return image


def write_qc(path: str | Path, reader: SlideReader, grid: NestedGrid, tissue: TissueMask, max_size: int = 1024) -> Path:
    """Write the QC image as PNG atomically; returns `path`."""
    path = Path(path)
    with atomic_path(path) as tmp:
        render_qc(reader, grid, tissue, max_size).save(tmp, format="PNG")
    return path
