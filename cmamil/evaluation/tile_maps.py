"""One slide's per-tile values (attention or scores) as pictures and files: a PNG with the magnifications side by
side, a QuPath GeoJSON, an HDF5 of the values, and a montage of the top-k and bottom-k tiles.

Everything is painted on the tile grid at thumbnail resolution (`cmamil.evaluation.heatmaps.paint_tiles`): memory
follows the thumbnail and the tile count, never the slide's level-0 size. Shown values are normalised per slide
and magnification: `rank` (each tile's percentile, ties averaged, in [0, 1]), `minmax` (linear to [0, 1]) or `raw`;
the HDF5 and the GeoJSON hold the raw values beside the shown ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cmamil.atomic import atomic_path, write_text
from cmamil.errors import InputError
from cmamil.evaluation.heatmaps import BagOutputs, paint_tiles, save_panels

__all__ = ["FORMATS", "NORMALIZATIONS", "WHAT", "HeatmapConfig", "SlideTiles", "normalize_values",
           "write_tile_maps"]

WHAT = ("attention", "score")
FORMATS = ("png", "geojson", "h5")
NORMALIZATIONS = ("rank", "minmax", "raw")


@dataclass(frozen=True)
class HeatmapConfig:
    """What heatmaps show and which files they are written as (see the module docstring).

    `fold` is the fold whose model is shown (default: the lowest finished); `top_k` tiles per magnification go
    to the montage (0: none); `slides` is a folder where the slides of feature-file inputs are found by bag id
    (default: the path recorded in the feature file)."""

    fold: int | None = None
    what: str = "attention"
    formats: tuple[str, ...] = FORMATS
    normalize: str = "rank"
    top_k: int = 8
    thumbnail_px: int = 1024
    slides: Path | None = None

    def __post_init__(self) -> None:
        formats = tuple(self.formats)
        unknown = [f for f in formats if f not in FORMATS]
        if unknown or not formats:
            raise InputError(f"heatmap format(s) {', '.join(unknown) or 'none'} not among {', '.join(FORMATS)}")
        if self.what not in WHAT or self.normalize not in NORMALIZATIONS:
            raise InputError(f"--what must be one of {', '.join(WHAT)} and --normalize one of "
                             f"{', '.join(NORMALIZATIONS)}")
        if self.top_k < 0 or self.thumbnail_px < 64:
            raise InputError("--top-k must be >= 0 and --thumbnail-px >= 64")
        object.__setattr__(self, "formats", formats)

    def key(self) -> dict[str, Any]:
        """The settings that determine the written files (a rerun with others redoes them)."""
        return {"fold": self.fold, "what": self.what, "formats": list(self.formats), "normalize": self.normalize,
                "top_k": self.top_k, "thumbnail_px": self.thumbnail_px}


@dataclass(frozen=True)
class SlideTiles:
    """One bag's tiles: level-0 coords, parent rows and tile size per magnification, and its slide (if found)."""

    bag_id: str
    coords: dict[str, np.ndarray]
    parents: dict[str, np.ndarray]
    sizes: dict[str, float]
    dimensions: tuple[int, int] | None
    slide: Path | None = None


def normalize_values(values: np.ndarray, method: str) -> np.ndarray:
    """Values normalised per slide and magnification: rank → percentile in [0, 1] (ties averaged), minmax →
    linear to [0, 1] (0.5 when all equal), raw → unchanged."""
    values = np.asarray(values, dtype=float)
    if method == "raw" or not len(values):
        return values
    if method == "rank":
        from scipy.stats import rankdata

        return (rankdata(values) - 1) / (len(values) - 1) if len(values) > 1 else np.full(1, 0.5)
    spread = values.max() - values.min()
    return (values - values.min()) / spread if spread > 0 else np.full(len(values), 0.5)


def write_tile_maps(tiles: SlideTiles, outputs: BagOutputs, ensemble: np.ndarray, class_names: Sequence[str],
                    out: Path, config: HeatmapConfig, fold: int) -> list[Path]:
    """Write the bag's heatmap files into `out` (`<bag>.png`, `<bag>.geojson`, `<bag>.h5`, `<bag>_montage.png`)
    from fold `fold`'s `outputs`; the title names the `ensemble` prediction."""
    predicted = int(np.argmax(ensemble))
    raw = _values(tiles.bag_id, outputs, config.what, predicted, class_names)
    shown = {mag: normalize_values(v, config.normalize) for mag, v in raw.items()}
    label = f"{config.what}{'' if config.what == 'attention' else f' p({class_names[predicted]})'} " \
            f"({'raw' if config.normalize == 'raw' else config.normalize + '-normalised per magnification'})"
    title = (f"{tiles.bag_id}: predicted {class_names[predicted]} (p = {ensemble[predicted]:.2f}); "
             f"{config.what} of fold {fold}")
    written = []
    if "h5" in config.formats:
        written.append(_write_h5(out / f"{tiles.bag_id}.h5", tiles, outputs, raw, shown, class_names, config, fold))
    if "geojson" in config.formats:
        written.append(_write_geojson(out / f"{tiles.bag_id}.geojson", tiles, outputs, raw, shown, class_names,
                                      config))
    if "png" in config.formats:
        thumbnail, downsample = _thumbnail(tiles, config.thumbnail_px)
        heats = {mag: paint_tiles(tiles.coords[mag], tiles.sizes[mag], shown[mag], thumbnail.shape[:2], downsample)
                 for mag in shown}
        limits = (0.0, 1.0) if config.normalize != "raw" else None
        written.append(save_panels(out / f"{tiles.bag_id}.png", thumbnail, heats, title, label, limits))
    if config.top_k and tiles.slide is not None:
        written.append(_write_montage(out / f"{tiles.bag_id}_montage.png", tiles, raw, config.top_k, config.what))
    return written


def _values(bag_id: str, outputs: BagOutputs, what: str, predicted: int,
            class_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Raw per-tile values: attention, or the per-tile probability of the predicted class."""
    if what == "attention":
        values = outputs.attention
    else:
        values = {mag: s[:, predicted] for mag, s in outputs.scores.items()}
    if not values:
        raise InputError(f"{bag_id}: the model gives no per-tile {what}; "
                         f"use --what {'score' if what == 'attention' else 'attention'} or a model that gives it")
    return {mag: np.asarray(v, dtype=float) for mag, v in values.items()}


def _chain(tiles: SlideTiles, mag: str) -> dict[str, np.ndarray]:
    """Row of every tile's ancestor at each coarser magnification (-1 where none)."""
    order = list(tiles.coords)
    found, rows = {}, np.arange(len(tiles.coords[mag]))
    for index in range(order.index(mag), 0, -1):
        parent = tiles.parents[order[index]]
        rows = np.where(rows >= 0, parent[np.maximum(rows, 0)], -1)
        found[order[index - 1]] = rows
    return found


def _write_h5(path: Path, tiles: SlideTiles, outputs: BagOutputs, raw: dict[str, np.ndarray],
              shown: dict[str, np.ndarray], class_names: Sequence[str], config: HeatmapConfig, fold: int) -> Path:
    """`/<bag>/<mag>/attention` (raw), `scores` (N, C per-tile class probabilities), `shown` (the painted values),
    `coords`, `parent`, written atomically."""
    import h5py

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        root = handle.create_group(tiles.bag_id)
        root.attrs.update({"class_names": json.dumps(list(class_names)), "fold": fold, "what": config.what,
                           "normalize": config.normalize})
        for mag in raw:
            group = root.create_group(mag)
            group.attrs["tile_size_level0"] = tiles.sizes[mag]
            group["coords"], group["parent"], group["shown"] = tiles.coords[mag], tiles.parents[mag], shown[mag]
            if mag in outputs.attention:
                group["attention"] = outputs.attention[mag]
            if mag in outputs.scores:
                group["scores"] = outputs.scores[mag]
    return path


def _write_geojson(path: Path, tiles: SlideTiles, outputs: BagOutputs, raw: dict[str, np.ndarray],
                   shown: dict[str, np.ndarray], class_names: Sequence[str], config: HeatmapConfig) -> Path:
    """A FeatureCollection QuPath imports: one level-0 square polygon per tile, values in `measurements`."""
    features = []
    for mag in raw:
        size, ancestors = tiles.sizes[mag], _chain(tiles, mag)
        for row, (x, y) in enumerate(tiles.coords[mag].tolist()):
            measurements = {f"{config.what} ({config.normalize})": float(shown[mag][row])}
            if mag in outputs.attention:
                measurements["attention"] = float(outputs.attention[mag][row])
            if mag in outputs.scores:
                measurements |= {f"p({n})": float(p) for n, p in zip(class_names, outputs.scores[mag][row])}
            measurements |= {f"parent {coarse}": int(r[row]) for coarse, r in ancestors.items()}
            ring = [[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]
            features.append({
                "type": "Feature", "id": f"{tiles.bag_id}:{mag}:{row}",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"objectType": "tile", "name": f"{mag} tile {row}", "magnification": mag,
                               "tile": row, "classification": {"name": mag}, "measurements": measurements},
            })
    write_text(path, json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def _thumbnail(tiles: SlideTiles, max_px: int) -> tuple[np.ndarray, float]:
    """The slide's thumbnail and its level-0 px per thumbnail px; a white canvas when the slide is not at hand."""
    if tiles.slide is not None:
        from cmamil.extract.reader import open_slide

        with open_slide(tiles.slide) as reader:
            thumbnail = reader.thumbnail(max_px)
            return thumbnail, reader.dimensions[0] / thumbnail.shape[1]
    if tiles.dimensions is not None:
        width, height = tiles.dimensions
    else:
        width = max(float((c[:, 0] + tiles.sizes[m]).max()) for m, c in tiles.coords.items() if len(c))
        height = max(float((c[:, 1] + tiles.sizes[m]).max()) for m, c in tiles.coords.items() if len(c))
    downsample = max(width, height) / max_px
    return np.full((max(1, round(height / downsample)), max(1, round(width / downsample)), 3), 255, np.uint8), \
        downsample


def _write_montage(path: Path, tiles: SlideTiles, raw: dict[str, np.ndarray], k: int, what: str,
                   tile_px: int = 96) -> Path:
    """The k highest- and k lowest-valued tiles of every magnification, read from the slide, with their values."""
    from PIL import Image, ImageDraw

    from cmamil.extract.reader import open_slide

    pad, text_h, head_w = 4, 14, 44
    cell_w, cell_h = tile_px + pad, tile_px + text_h + pad
    canvas = Image.new("RGB", (head_w + (2 * k) * cell_w + 3 * pad + pad, text_h + len(raw) * cell_h + pad), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((head_w, 1), f"top {k} {what}", fill="black")
    draw.text((head_w + k * cell_w + 3 * pad, 1), f"bottom {k} {what}", fill="black")
    with open_slide(tiles.slide) as reader:
        for line, (mag, values) in enumerate(raw.items()):
            order = np.argsort(-values, kind="stable")
            top = text_h + line * cell_h
            draw.text((2, text_h + line * cell_h + tile_px // 2), mag, fill="black")
            picks = [(i, head_w + n * cell_w) for n, i in enumerate(order[:k])]
            picks += [(i, head_w + k * cell_w + 3 * pad + n * cell_w) for n, i in enumerate(order[::-1][:k])]
            for row, x in picks:
                x0, y0 = tiles.coords[mag][row]
                pixels = reader.read_scaled((int(x0), int(y0)), tiles.sizes[mag], tile_px)
                canvas.paste(Image.fromarray(pixels), (x, top))
                draw.text((x, top + tile_px + 1), f"{values[row]:.3g}", fill="black")
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path
