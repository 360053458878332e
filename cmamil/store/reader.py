"""Reading feature files, cmamil's own and the single-magnification layouts of other toolkits, without writing."""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cmamil.errors import InputError
from cmamil.magnification import magnification_order
from cmamil.store._attrs import decode_attrs
from cmamil.store._format import FOREIGN_MAGNIFICATION, FORMAT, FORMAT_VERSION, bag_id_from_path, storage_format
from cmamil.store.foreign import FEATURE_KEYS, stated_magnification, unknown_layout

if TYPE_CHECKING:
    import torch

    from cmamil.aggregators import Bag

__all__ = ["BagInfo", "bag_info", "read_bag", "read_coords"]

_READ_ERRORS = (OSError, KeyError, ValueError, RuntimeError)


@dataclass(frozen=True)
class BagInfo:
    """What a feature file holds, read without loading features: attributes, magnifications and row counts."""

    path: Path
    bag_id: str
    native: bool
    attrs: dict[str, Any]
    counts: dict[str, int]
    coords_attrs: dict[str, dict[str, Any]]
    feature_dim: int | None
    features_dtype: str | None

    @property
    def magnifications(self) -> tuple[str, ...]:
        """Magnification names, coarse to fine."""
        return tuple(self.counts)

    @property
    def has_features(self) -> bool:
        """Whether the file holds features (False for a coordinate-only file)."""
        return self.feature_dim is not None


def _unreadable(path: Path) -> InputError:
    return InputError(f"{path} is not a readable feature file (truncated?); delete it and re-run extraction")


@contextmanager
def _open(path: Path) -> Iterator[Any]:
    """The file's root group (h5py.File or zarr.Group); read failures become one-line InputErrors."""
    if not path.exists():
        raise InputError(f"{path} does not exist")
    fmt = storage_format(path)
    try:
        if fmt == "h5":
            import h5py

            root = h5py.File(path, "r")
        else:
            import zarr

            root = zarr.open_group(path, mode="r")
    except _READ_ERRORS as exc:
        raise _unreadable(path) from exc
    try:
        yield root
    except InputError:
        raise
    except _READ_ERRORS as exc:
        raise _unreadable(path) from exc
    finally:
        if fmt == "h5":
            root.close()


def _child(node: Any, key: str) -> Any:
    """`node[key]`, or None when absent (or a dangling HDF5 link)."""
    return node.get(key)


def _layout(
    root: Any, path: Path, bag_id: str | None, foreign_magnification: str | None
) -> tuple[BagInfo, dict[str, dict[str, str | None]]]:
    """The file's BagInfo and, per magnification, the keys of its features, coords and parent arrays."""
    attrs = decode_attrs(root.attrs)
    if attrs.get("format") == FORMAT:
        if int(attrs["format_version"]) > FORMAT_VERSION:
            raise InputError(
                f"{path} has format_version {attrs['format_version']}, newer than this cmamil reads "
                f"({FORMAT_VERSION}); upgrade cmamil"
            )
        mags = magnification_order(k for k in root.keys() if _is_group(root[k]))
        keys = {
            m: {
                "features": f"{m}/features" if _child(root[m], "features") is not None else None,
                "coords": f"{m}/coords",
                "parent": f"{m}/parent",
            }
            for m in mags
        }
        bag_id = bag_id or attrs["bag_id"]
    else:
        feature_key = next((k for k in FEATURE_KEYS if _child(root, k) is not None), None)
        if feature_key is None:
            raise unknown_layout(path, root)
        coords = _child(root, "coords")
        name = foreign_magnification or stated_magnification(coords) or FOREIGN_MAGNIFICATION
        keys = {name: {"features": feature_key, "coords": "coords" if coords is not None else None, "parent": None}}
        bag_id = bag_id or bag_id_from_path(path)
    counts, coords_attrs, dims, dtypes = {}, {}, set(), set()
    for mag, k in keys.items():
        features = root[k["features"]] if k["features"] else None
        coords = root[k["coords"]] if k["coords"] else None
        shape = _feature_shape(features, path) if features is not None else None
        counts[mag] = int(coords.shape[0]) if coords is not None else shape[0]
        coords_attrs[mag] = decode_attrs(coords.attrs) if coords is not None else {}
        if shape is not None:
            if shape[0] != counts[mag]:
                raise InputError(f"{path}: {mag} has {shape[0]} feature rows but {counts[mag]} coords")
            dims.add(shape[1])
            dtypes.add(str(features.dtype))
    info = BagInfo(
        path=path,
        bag_id=str(bag_id),
        native=attrs.get("format") == FORMAT,
        attrs=attrs,
        counts=counts,
        coords_attrs=coords_attrs,
        feature_dim=dims.pop() if len(dims) == 1 else None,
        features_dtype=dtypes.pop() if len(dtypes) == 1 else None,
    )
    return info, keys


def _is_group(node: Any) -> bool:
    return not hasattr(node, "shape")


def _feature_shape(array: Any, path: Path) -> tuple[int, int]:
    """(N, D) of a features array; a leading batch axis of 1 (N, D) → (1, N, D) is accepted."""
    shape = tuple(array.shape)
    if len(shape) == 3 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 2:
        raise InputError(f"{path}: features have shape {tuple(array.shape)}, expected (N, D)")
    return shape  # type: ignore[return-value]


def bag_info(path: str | Path, *, foreign_magnification: str | None = None) -> BagInfo:
    """Attributes, magnifications and row counts of a feature file (cmamil, CLAM/TRIDENT or STAMP), no features.

    Read once per process and file version (a run lists its cohort, fingerprints it and trains on it, and the
    demo trains several models on one cohort); the caller gets its own copy."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist")
    return copy.deepcopy(_cached_info(path, foreign_magnification, _version(path)))


def _version(path: Path) -> tuple[int, ...]:
    """What changes when a file is rewritten: inode, size and modification time (of a zarr folder's root
    metadata too, which holds its attributes)."""
    stats = [path.stat()] + ([path.joinpath("zarr.json").stat()] if (path / "zarr.json").exists() else [])
    return tuple(v for st in stats for v in (st.st_ino, st.st_size, st.st_mtime_ns))


@functools.lru_cache(maxsize=65536)
def _cached_info(path: Path, foreign_magnification: str | None, version: tuple[int, ...]) -> BagInfo:
    with _open(path) as root:
        return _layout(root, path, None, foreign_magnification)[0]


def read_coords(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(coords (N, 2) int64, parent (N,) int64) per magnification, coarse to fine, with or without features.

    This is how extraction reuses the coordinate files of `cmamil tile`; the attributes are in `bag_info`.
    """
    path = Path(path)
    with _open(path) as root:
        info, keys = _layout(root, path, None, None)
        out = {}
        for mag, k in keys.items():
            if k["coords"] is None:
                raise InputError(f"{path} has no coords for {mag}; it cannot be re-tiled or re-read")
            parent = _read(root, k["parent"]) if k["parent"] else np.full(info.counts[mag], -1, np.int64)
            out[mag] = (_read(root, k["coords"]).astype(np.int64, copy=False), parent.astype(np.int64, copy=False))
    return out


def read_bag(
    path: str | Path,
    magnifications: tuple[str, ...] | list[str] | None = None,
    *,
    dtype: torch.dtype | str | None = "float32",
    bag_id: str | None = None,
    foreign_magnification: str | None = None,
) -> Bag:
    """Load a feature file as a Bag of torch tensors: features (cast to `dtype`; None keeps the stored one),
    coords and parent links, for `magnifications` (all by default).

    Parent links skip over magnifications that are not loaded: loading 5x and 20x of a 5/10/20x file links each
    20x row to its 5x ancestor. A foreign single-magnification file (root `features` or `feats`, optional `coords`)
    becomes one magnification named `foreign_magnification`, TRIDENT's target magnification, or "all".
    """
    import torch

    from cmamil.aggregators import Bag

    path = Path(path)
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    with _open(path) as root:
        info, keys = _layout(root, path, bag_id, foreign_magnification)
        wanted = info.magnifications if magnifications is None else tuple(magnifications)
        missing = [m for m in wanted if m not in keys]
        if missing:
            raise InputError(f"{path} has no magnification {', '.join(missing)}; it has {', '.join(keys)}")
        if not info.has_features or any(keys[m]["features"] is None for m in wanted):
            raise InputError(f"{path} holds coordinates only (no features); run cmamil extract on it")
        features, coords, parents = {}, {}, {}
        links = {m: _read(root, keys[m]["parent"]) for m in info.magnifications}
        previous: str | None = None
        for mag in magnification_order(wanted):
            block = torch.from_numpy(_read(root, keys[mag]["features"]).reshape(info.counts[mag], info.feature_dim))
            features[mag] = block if torch_dtype is None else block.to(torch_dtype)
            if keys[mag]["coords"] is not None:
                coords[mag] = torch.from_numpy(_read(root, keys[mag]["coords"]).astype(np.int64, copy=False))
            parents[mag] = torch.from_numpy(_parent_link(info.magnifications, links, mag, previous, info.counts))
            previous = mag
    return Bag(features=features, coords=coords, parents=parents, bag_id=info.bag_id)


def _read(root: Any, key: str | None) -> np.ndarray | None:
    return None if key is None else np.asarray(root[key][...])


def _parent_link(
    order: tuple[str, ...],
    links: dict[str, np.ndarray | None],
    mag: str,
    coarser: str | None,
    counts: dict[str, int],
) -> np.ndarray:
    """Rows of `mag` linked to rows of the loaded magnification `coarser`, composing links through skipped ones."""
    parent = np.full(counts[mag], -1, np.int64)
    if coarser is None or links[mag] is None:
        return parent
    parent = links[mag].astype(np.int64)
    for step in reversed(order[order.index(coarser) + 1 : order.index(mag)]):
        parent = np.where(parent >= 0, links[step][np.maximum(parent, 0)], -1)
    return parent
