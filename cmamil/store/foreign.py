"""Single-magnification feature files of other toolkits, read as tiles with level-0 pixel coords and tile size.

| layout | features | coords | tile size (level-0 px) |
|---|---|---|---|
| TRIDENT | `features` | `coords`, level-0 px | `coords.attrs["patch_size_level0"]` |
| CLAM (h5_files) | `features` | `coords`, level-0 px | `coords.attrs["patch_size"]` × `downsample` (level 0: × 1) |
| CLAM (pt_files) | `<slide>.pt` tensor | `coords` of `../h5_files/<slide>.h5` or `<slide>.h5` beside it | as CLAM |
| STAMP | `feats` | `coords` in µm (`attrs["unit"] == "um"` or `tile_size_um`) | `attrs["tile_size_um"]` / mpp |
| MoPaDi | `feats` or `features` | `coords` when present (else no geometry) | given |

A tile size given by the caller overrides the file's. µm coords need the slide's level-0 µm/px: the caller's `mpp`,
else the file's root attribute `slide_mpp` (or `mpp`); STAMP itself stores neither, so its files need `--mpp`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cmamil.errors import InputError
from cmamil.magnification import Magnification
from cmamil.store._attrs import decode_attrs

__all__ = ["FEATURE_KEYS", "ForeignTiles", "read_tiles", "stated_magnification", "unknown_layout"]

FEATURE_KEYS = ("features", "feats")
_BLOCK_ROWS = 4096


@dataclass(frozen=True)
class ForeignTiles:
    """One slide at one magnification from another toolkit: where its features are and where its tiles lie."""

    path: Path
    layout: str
    features_key: str | None
    feature_shape: tuple[int, int]
    coords: np.ndarray
    tile_size_level0: int | None
    magnification: str | None
    encoder: str
    mpp: float | None = None

    def feature_blocks(self, rows: int = _BLOCK_ROWS) -> Iterator[np.ndarray]:
        """The (N, D) features in row order, a block of `rows` at a time (a .pt tensor is loaded whole)."""
        if self.features_key is None:
            features = _load_pt(self.path)
            yield from (features[start : start + rows] for start in range(0, len(features), rows))
            return
        import h5py

        with h5py.File(self.path, "r") as handle:
            data = handle[self.features_key]
            flat = data.ndim == 3
            for start in range(0, self.feature_shape[0], rows):
                yield np.asarray(data[0, start : start + rows] if flat else data[start : start + rows])


def read_tiles(path: str | Path, *, mpp: float | None = None, tile_size_level0: int | None = None) -> ForeignTiles:
    """The tiles of a foreign feature file (layouts in this module's table), coords in level-0 pixels."""
    import h5py

    path = Path(path)
    if path.suffix == ".pt":
        coords_file = _pt_coords_file(path)
        with h5py.File(coords_file, "r") as handle:
            coords, size, layout, stated, mpp = _geometry(handle, coords_file, mpp, tile_size_level0)
        shape, features_key, layout, encoder = _load_pt(path).shape, None, f"{layout} (pt)", _folder_encoder(path)
    else:
        with h5py.File(path, "r") as handle:
            features_key = next((k for k in FEATURE_KEYS if isinstance(handle.get(k), h5py.Dataset)), None)
            if features_key is None:
                raise unknown_layout(path, handle)
            shape = tuple(handle[features_key].shape)
            coords, size, layout, stated, mpp = _geometry(handle, path, mpp, tile_size_level0)
            encoder = _encoder(handle, path)
    shape = tuple(shape)
    shape = shape[1:] if len(shape) == 3 and shape[0] == 1 else shape
    if len(shape) != 2 or shape[0] != len(coords):
        raise InputError(f"{path}: features have shape {shape} but there are {len(coords)} coords; expected (N, D)")
    return ForeignTiles(
        path=path,
        layout=layout,
        features_key=features_key,
        feature_shape=(int(shape[0]), int(shape[1])),
        coords=coords,
        tile_size_level0=size,
        magnification=stated,
        encoder=encoder,
        mpp=mpp,
    )


def stated_magnification(coords: Any) -> str | None:
    """'20x' from a TRIDENT coords attribute target_magnification, when present."""
    value = coords.attrs.get("target_magnification") if coords is not None else None
    return Magnification.parse(str(value)).name if value is not None else None


def unknown_layout(path: Path, root: Any) -> InputError:
    """The one-line error for a file of no known layout, naming the datasets it holds."""
    names = ", ".join(sorted(root.keys())) or "nothing"
    return InputError(
        f"{path} has neither a cmamil layout nor a 'features'/'feats' dataset (it holds: {names}); "
        "see the readers table in docs/feature-files.md"
    )


def _geometry(
    handle: Any, path: Path, mpp: float | None, given_size: int | None
) -> tuple[np.ndarray, int | None, str, str | None, float | None]:
    """Level-0 pixel coords, tile size, layout name, stated magnification and level-0 µm/px (given, or stated by
    the file; None when unknown) of an HDF5 file's `coords`."""
    node = handle.get("coords")
    if node is None:
        raise InputError(f"{path} has no coords (it holds: {', '.join(sorted(handle.keys()))}); tiles without "
                         "positions cannot be linked across magnifications")
    coords = np.asarray(node[...])
    coords = coords[0] if coords.ndim == 3 and coords.shape[0] == 1 else coords
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise InputError(f"{path}: coords have shape {coords.shape}, expected (N, 2)")
    root, attrs = decode_attrs(handle.attrs), decode_attrs(node.attrs)
    stated_mpp = next((float(root[k]) for k in ("slide_mpp", "mpp") if root.get(k) is not None), None)
    mpp = mpp or stated_mpp
    if root.get("unit") == "um" or "tile_size_um" in root:
        if mpp is None:
            raise InputError(f"{path} has coords in µm (STAMP) and no slide_mpp attribute; pass --mpp, the slides' "
                             "level-0 µm/px")
        size_um = root.get("tile_size_um")
        size = given_size or (round(float(size_um) / mpp) if size_um is not None else None)
        return np.rint(coords / mpp).astype(np.int64), size, "stamp", None, mpp
    if "patch_size_level0" in attrs:
        size, layout = int(attrs["patch_size_level0"]), "trident"
    elif "patch_size" in attrs and ("downsample" in attrs or int(attrs.get("patch_level", -1)) == 0):
        downsample = np.ravel(attrs.get("downsample", 1.0))[0]
        size, layout = round(int(attrs["patch_size"]) * float(downsample)), "clam"
    else:
        size, layout = None, "features+coords"
    return np.asarray(coords).astype(np.int64), given_size or size, layout, stated_magnification(node), mpp


def _encoder(handle: Any, path: Path) -> str:
    """The encoder named by the file (`encoder`, STAMP's `extractor`), else by a TRIDENT `features_<name>` folder."""
    for attrs in (handle.attrs, handle[next(k for k in FEATURE_KEYS if k in handle)].attrs):
        for key in ("encoder", "extractor"):
            if key in attrs:
                value = attrs[key]
                return value.decode() if isinstance(value, bytes) else str(value)
    return _folder_encoder(path)


def _folder_encoder(path: Path) -> str:
    """'uni_v1' from a TRIDENT folder `features_uni_v1/`, else 'unknown'."""
    for folder in (path.parent, path.parent.parent):
        if folder.name.startswith("features_"):
            return folder.name.removeprefix("features_")
    return "unknown"


def _pt_coords_file(path: Path) -> Path:
    """The HDF5 file holding a CLAM .pt file's coords: `../h5_files/<slide>.h5`, or `<slide>.h5` beside it."""
    candidates = (path.parent.parent / "h5_files" / f"{path.stem}.h5", path.with_suffix(".h5"))
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise InputError(f"{path} has no coords file; put CLAM's h5_files/{path.stem}.h5 beside pt_files/")
    return found


def _load_pt(path: Path) -> np.ndarray:
    """A saved (N, D) feature tensor as a float32 array."""
    import torch

    try:
        tensor = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a corrupt or foreign file
        raise InputError(f"{path} is not a readable feature tensor ({type(exc).__name__}); re-save it") from exc
    if not isinstance(tensor, torch.Tensor):
        raise InputError(f"{path} holds a {type(tensor).__name__}, not a feature tensor (N, D)")
    array = tensor.float().numpy()
    return array[0] if array.ndim == 3 and len(array) == 1 else array
