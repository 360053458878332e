"""One reader contract for whole-slide images (through OpenSlide) and plain microscope images.

A reader reports the level-0 size, the pyramid (levels, downsamples), the file's properties and reads RGB
regions as `(h, w, 3)` uint8 arrays. Readers pickle as their path and open the file lazily once per process,
so a reader handed to DataLoader workers opens once in each worker and never once per tile.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image

from cmamil.errors import InputError

__all__ = [
    "IMAGE_SUFFIXES",
    "SLIDE_SUFFIXES",
    "ImageReader",
    "OpenSlideReader",
    "SlideReader",
    "open_slide",
]

# whole-slide formats OpenSlide reads (.tif/.tiff may also be plain images: OpenSlide decides)
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# a level may have up to this much less resolution than asked for and still count as "enough pixels"
LEVEL_TOLERANCE = 1.01


class SlideReader(ABC):
    """The reader contract: geometry, properties and RGB region reads of one slide or image."""

    kind: str = ""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._handle: Any = None
        self._pid = -1

    @property
    def handle(self) -> Any:
        """The open file, opened on first use in this process (forked or spawned workers reopen it)."""
        if self._handle is None or self._pid != os.getpid():
            self._handle = self._open()
            self._pid = os.getpid()
        return self._handle

    def open(self) -> SlideReader:
        """Open the file now, so that a broken file fails here with its name; returns the reader."""
        _ = self.handle
        return self

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def _open(self) -> Any:
        """Open the file and return the library handle."""

    @property
    @abstractmethod
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """(width, height) of every level, level 0 first."""

    @property
    @abstractmethod
    def level_downsamples(self) -> tuple[float, ...]:
        """Downsample of every level relative to level 0."""

    @property
    @abstractmethod
    def properties(self) -> Mapping[str, str]:
        """Metadata as OpenSlide names it (`openslide.mpp-x`, `tiff.XResolution`, …)."""

    @abstractmethod
    def _read(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB pixels of `size` at `level`, top-left `location` in level-0 pixels."""

    def close(self) -> None:
        """Release the file handle (the reader reopens on next use)."""
        self._handle = None

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) at level 0."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        """Number of pyramid levels."""
        return len(self.level_dimensions)

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Read `size` (w, h) pixels at `level` from level-0 top-left `location` as an (h, w, 3) uint8 array."""
        try:
            return self._read((int(location[0]), int(location[1])), level, (int(size[0]), int(size[1])))
        except InputError:
            raise
        except Exception as exc:
            where = f"{self.path.name} at {tuple(location)}"
            raise InputError(f"cannot read {where}: {exc}; is the file complete?") from exc

    @property
    def source(self) -> dict[str, Any]:
        """Provenance of the file: absolute path, size in bytes, modification time (Unix s), reader, vendor."""
        stat = self.path.stat()
        return {
            "path": str(self.path.resolve()),
            "size": stat.st_size,
            "mtime": stat.st_mtime,
            "reader": self.kind,
            "vendor": self.properties.get("openslide.vendor", self.kind),
        }

    def best_level(self, downsample: float) -> int:
        """The coarsest level with at least the resolution of `downsample` (within 1 %)."""
        fits = [i for i, d in enumerate(self.level_downsamples) if d <= downsample * LEVEL_TOLERANCE]
        return max(fits, key=lambda i: self.level_downsamples[i]) if fits else 0

    def read_scaled(
        self, location: tuple[int, int], size_level0: float, out_px: int, level: int | None = None
    ) -> np.ndarray:
        """Read the level-0 square [x, x + size_level0) and resize it to `out_px` (exact magnification).

        The region is read from `level` (default: the coarsest level with enough pixels), then resampled
        (bilinear, antialiased) so that the tile covers exactly `size_level0` level-0 pixels.
        """
        if level is None:
            level = self.best_level(size_level0 / out_px)
        scale = self.level_downsamples[level]
        extent = size_level0 / scale
        read_px = math.ceil(extent)
        region = self.read_region(location, level, (read_px, read_px))
        if read_px == out_px and abs(extent - out_px) < 1e-6:
            return region
        image = Image.fromarray(region).resize(
            (out_px, out_px), Image.Resampling.BILINEAR, box=(0.0, 0.0, extent, extent)
        )
        return np.asarray(image)

    def thumbnail(self, max_size: int) -> np.ndarray:
        """The whole slide as RGB, longest side at most `max_size` px, aspect ratio kept."""
        width, height = self.dimensions
        scale = max(width, height) / max_size
        level = self.best_level(max(scale, 1.0))
        level_w, level_h = self.level_dimensions[level]
        region = self.read_region((0, 0), level, (level_w, level_h))
        out = (max(1, round(width / max(scale, 1.0))), max(1, round(height / max(scale, 1.0))))
        if out == (level_w, level_h):
            return region
        return np.asarray(Image.fromarray(region).resize(out, Image.Resampling.BOX))

    def thumbnail_at(self, downsample: float) -> np.ndarray:
        """The whole slide as RGB at `downsample` level-0 px per thumbnail px (at least 1)."""
        width, height = self.dimensions
        return self.thumbnail(max(1, round(max(width, height) / max(downsample, 1.0))))

    def __repr__(self) -> str:
        return f"{type(self).__name__}('{self.path}')"


class OpenSlideReader(SlideReader):
    """Every format OpenSlide reads: Aperio SVS, Hamamatsu NDPI/VMS, MIRAX, Leica SCN, generic tiled TIFF …"""

    kind = "openslide"

    def _open(self) -> Any:
        import openslide

        try:
            return openslide.OpenSlide(str(self.path))
        except (openslide.OpenSlideError, OSError) as exc:
            raise InputError(f"cannot open {self.path.name} with OpenSlide ({exc}); is the file complete?") from exc

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple(self.handle.level_dimensions)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return tuple(float(d) for d in self.handle.level_downsamples)

    @property
    def properties(self) -> Mapping[str, str]:
        return dict(self.handle.properties)

    @property
    def background(self) -> tuple[int, int, int]:
        """The colour of areas outside the scanned region (`openslide.background-color`, else white)."""
        color = self.properties.get("openslide.background-color", "FFFFFF")
        return tuple(int(color[i : i + 2], 16) for i in (0, 2, 4))

    def _read(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        rgba = np.asarray(self.handle.read_region(location, level, size))
        rgb = rgba[..., :3].copy()
        transparent = rgba[..., 3] == 0
        if transparent.any():
            rgb[transparent] = self.background
        return rgb

    def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        super().close()


class ImageReader(SlideReader):
    """A plain image (PNG, JPEG, BMP, or a TIFF that OpenSlide does not take) as a one-level slide."""

    kind = "image"

    def _open(self) -> Any:
        try:
            if self.path.suffix.lower() in (".tif", ".tiff"):
                return _read_tiff(self.path)
            with Image.open(self.path) as image:
                return np.asarray(image.convert("RGB")), _pillow_resolution(image)
        except Exception as exc:
            raise InputError(f"cannot read image {self.path.name} ({exc}); is it a complete image file?") from exc

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        pixels = self.handle[0]
        return ((pixels.shape[1], pixels.shape[0]),)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return (1.0,)

    @property
    def properties(self) -> Mapping[str, str]:
        return {"openslide.vendor": "image", **self.handle[1]}

    def _read(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        if level != 0:
            raise InputError(f"{self.path.name} is a plain image with one level; level {level} does not exist")
        pixels = self.handle[0]
        x, y = location
        out = np.full((size[1], size[0], 3), 255, dtype=np.uint8)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + size[0], pixels.shape[1]), min(y + size[1], pixels.shape[0])
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = pixels[y0:y1, x0:x1]
        return out


def _read_tiff(path: Path) -> tuple[np.ndarray, dict[str, str]]:
    """Pixels (RGB) and resolution tags of a plain TIFF, named as OpenSlide names them."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        pixels = page.asarray()
        tags = page.tags
        props: dict[str, str] = {}
        if "XResolution" in tags and "ResolutionUnit" in tags:
            unit = {2: "inch", 3: "centimeter"}.get(int(tags["ResolutionUnit"].value), "none")
            for axis in ("X", "Y"):
                num, den = tags[f"{axis}Resolution"].value
                props[f"tiff.{axis}Resolution"] = str(num / den)
            props["tiff.ResolutionUnit"] = unit
    return _to_rgb(pixels), props


def _pillow_resolution(image: Image.Image) -> dict[str, str]:
    """Resolution recorded by Pillow (dpi), named as OpenSlide names TIFF resolution tags."""
    dpi = image.info.get("dpi")
    if not dpi:
        return {}
    x, y = (str(float(v)) for v in dpi[:2])
    return {"tiff.XResolution": x, "tiff.YResolution": y, "tiff.ResolutionUnit": "inch"}


def _to_rgb(pixels: np.ndarray) -> np.ndarray:
    """Grey, RGBA or 16-bit pixels as (h, w, 3) uint8 RGB."""
    if pixels.dtype != np.uint8:
        top = float(pixels.max()) or 1.0
        pixels = (pixels.astype(np.float32) * (255.0 / top)).round().astype(np.uint8)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    return np.ascontiguousarray(pixels[..., :3])


def open_slide(path: str | Path) -> SlideReader:
    """Open `path` with OpenSlide when it recognises the format, else as a plain image; one-line error if neither."""
    import openslide

    path = Path(path)
    if not path.exists():
        raise InputError(f"slide not found: {path}")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not a slide file")
    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except (openslide.OpenSlideError, OSError):
        vendor = None
    if vendor is not None:
        reader: SlideReader = OpenSlideReader(path)
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        reader = ImageReader(path)
    elif path.suffix.lower() in SLIDE_SUFFIXES:
        raise InputError(f"OpenSlide does not recognise {path.name}: the file is corrupt, truncated or not a slide")
    else:
        raise InputError(
            f"{path.name}: '{path.suffix}' is not a supported file type (slides: {' '.join(SLIDE_SUFFIXES)}; "
            f"images: {' '.join(IMAGE_SUFFIXES[:4])})"
        )
    return reader.open()
