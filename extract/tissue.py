"""Tissue detection on a low-resolution thumbnail: HSV saturation (or fluorescence intensity) + Otsu, then clean-up.

Brightfield stains (H&E, IHC) are coloured on white glass, so saturation separates them; fluorescence is bright
on dark, so (log) intensity does. The signal is smoothed (local mean) and thresholded (Otsu's method unless a
fixed threshold is given); the mask is closed, stripped of small objects and of small holes, and
answers "what fraction of this level-0 square is tissue?" for every tile through a summed-area table.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import ndimage

from cmamil.errors import InputError
from cmamil.extract.reader import SlideReader

__all__ = ["TISSUE_METHODS", "TissueConfig", "TissueMask", "find_tissue"]

TISSUE_METHODS = ("saturation", "fluorescence", "none")


@dataclass(frozen=True)
class TissueConfig:
    """How tissue is told from background; areas and lengths in µm so they hold at any scan resolution."""

    method: str = "saturation"
    mask_mpp: float = 8.0
    threshold: float | None = None
    min_threshold: float = 0.05
    smooth_um: float = 40.0
    close_um: float = 32.0
    min_object_um2: float = 20_000.0
    min_hole_um2: float = 20_000.0

    def __post_init__(self) -> None:
        if self.method not in TISSUE_METHODS:
            raise InputError(f"tissue method '{self.method}' is unknown; choose one of {', '.join(TISSUE_METHODS)}")
        if self.mask_mpp <= 0:
            raise InputError(f"tissue mask resolution must be positive µm/px, got {self.mask_mpp}")
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise InputError(f"tissue threshold must lie in (0, 1) (a fraction of full scale), got {self.threshold}")
        if not 0 <= self.min_threshold < 1:
            raise InputError(f"minimum tissue threshold must lie in [0, 1), got {self.min_threshold}")
        if min(self.smooth_um, self.close_um, self.min_object_um2, self.min_hole_um2) < 0:
            raise InputError("tissue clean-up sizes (smooth, close, min object, min hole) must be >= 0")


@dataclass(frozen=True)
class TissueMask:
    """A boolean tissue mask over the whole slide, its thumbnail, and level-0 px per mask px (x, y)."""

    mask: np.ndarray
    thumbnail: np.ndarray
    scale: tuple[float, float]
    threshold: float

    def fractions(self, x: np.ndarray, y: np.ndarray, size: float) -> np.ndarray:
        """Tissue fraction of each level-0 square [x, x + size) × [y, y + size), as float32 in [0, 1]."""
        height, width = self.mask.shape
        table = self._table
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        x0, y0 = np.rint(x / self.scale[0]).astype(np.int64), np.rint(y / self.scale[1]).astype(np.int64)
        x1 = np.maximum(np.rint((x + size) / self.scale[0]).astype(np.int64), x0 + 1)
        y1 = np.maximum(np.rint((y + size) / self.scale[1]).astype(np.int64), y0 + 1)
        area = (x1 - x0) * (y1 - y0)  # the whole tile: any part outside the slide counts as background
        x0, x1 = np.clip(x0, 0, width), np.clip(x1, 0, width)
        y0, y1 = np.clip(y0, 0, height), np.clip(y1, 0, height)
        inside = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
        return (inside / area).astype(np.float32)

    @cached_property
    def _table(self) -> np.ndarray:
        """Summed-area table of the mask, one row and column of zeros in front."""
        height, width = self.mask.shape
        table = np.zeros((height + 1, width + 1), dtype=np.int32 if self.mask.size < 2**31 else np.int64)
        np.cumsum(self.mask, axis=0, dtype=table.dtype, out=table[1:, 1:])
        np.cumsum(table[1:, 1:], axis=1, out=table[1:, 1:])
        return table

    @property
    def fraction(self) -> float:
        """Fraction of the slide covered by tissue."""
        return float(self.mask.mean())


def find_tissue(reader: SlideReader, mpp: float, config: TissueConfig = TissueConfig()) -> TissueMask:
    """Detect tissue on a thumbnail of `reader` (level-0 µm/px `mpp`); one-line error when there is none."""
    width, height = reader.dimensions
    thumbnail = reader.thumbnail_at(config.mask_mpp / mpp)
    scale = (width / thumbnail.shape[1], height / thumbnail.shape[0])
    if config.method == "none":
        return TissueMask(np.ones(thumbnail.shape[:2], dtype=bool), thumbnail, scale, 0.0)
    px_um = mpp * (scale[0] + scale[1]) / 2
    signal = _signal(thumbnail, config.method, _odd(config.smooth_um / px_um))
    threshold = config.threshold if config.threshold is not None else max(_otsu(signal), config.min_threshold)
    mask = signal > threshold
    mask = _close(mask, round(config.close_um / px_um))
    mask = _remove_small(mask, config.min_object_um2 / px_um**2)
    mask = ~_remove_small(~mask, config.min_hole_um2 / px_um**2, keep_border=True)
    if not mask.any():
        raise InputError(
            f"no tissue found in {reader.path.name} ({config.method} threshold {threshold:.3f}); lower "
            f"--tissue-threshold, use --tissue fluorescence for a dark background, or --tissue none for the whole slide"
        )
    return TissueMask(mask, thumbnail, scale, float(threshold))


def _signal(rgb: np.ndarray, method: str, smooth: int) -> np.ndarray:
    """Tissue signal in [0, 1], averaged over `smooth` px.

    Brightfield: HSV saturation (dark pixels, e.g. outside the scan, count as background). Fluorescence: the
    brightest channel on a log scale, so that sparse nuclei on black glass still read as one tissue region.
    """
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    top = np.maximum(np.maximum(red, green), blue)
    if method == "fluorescence":
        signal = top.astype(np.float32)
    else:
        spread = top.astype(np.float32) - np.minimum(np.minimum(red, green), blue)
        signal = np.where(top >= 26, spread / np.maximum(top, 1), 0).astype(np.float32) * 255
    if smooth > 1:
        signal = ndimage.uniform_filter(signal, size=smooth)
    if method == "fluorescence":
        return np.log1p(signal) / np.log1p(255.0)
    return signal / 255


def _otsu(signal: np.ndarray) -> float:
    """Otsu's threshold of a [0, 1] image (0 when the image is flat)."""
    from skimage.filters import threshold_otsu

    if signal.min() == signal.max():
        return 0.0
    return float(threshold_otsu(signal, nbins=256))


def _odd(size: float) -> int:
    """The nearest odd integer >= 1, a median window size."""
    return max(1, int(round(size)) // 2 * 2 + 1)


def _close(mask: np.ndarray, radius: int) -> np.ndarray:
    """Morphological closing over `radius` px (diamond; padded so that objects at the border are not eroded)."""
    if radius < 1:
        return mask
    cross = ndimage.generate_binary_structure(2, 1)
    padded = np.pad(mask, radius, mode="edge")
    closed = ndimage.binary_erosion(ndimage.binary_dilation(padded, cross, radius), cross, radius, border_value=1)
    return closed[radius:-radius, radius:-radius]


def _remove_small(mask: np.ndarray, min_px: float, keep_border: bool = False) -> np.ndarray:
    """`mask` without connected components smaller than `min_px` (optionally keeping those touching the border)."""
    if min_px <= 1:
        return mask
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_px
    if keep_border:
        border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
        keep[np.unique(border)] = True
    keep[0] = False
    return keep[labels]
