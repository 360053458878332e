"""Per-bag feature files: one HDF5 file (or zarr directory store) per slide or patient.

Layout, format "cmamil.features" version 1 (docs/feature-files.md):

    attrs               format, format_version, bag_id, finest, has_features, cmamil_version, created, provenance
    /<mag>/features     (N, D) float32 or float16 (absent in a coordinate-only file)
    /<mag>/coords       (N, 2) int64 level-0 top-left x, y; attrs magnification, mpp, tile_size_level0, read_level …
    /<mag>/parent       (N,) int64 row in the next coarser magnification, -1 where there is none
    /features, /coords  HDF5 soft links to the finest magnification (zarr has no links: read attr `finest`)

Files are written under a unique hidden temporary name and renamed when complete, so a file that exists under its
final name is finished. Attribute values that are not str/int/float/bool are stored as JSON strings and their
names listed in the attribute `json_attrs`; reading decodes them back.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from cmamil import __version__
from cmamil.aggregators import magnification_order
from cmamil.errors import InputError

if TYPE_CHECKING:
    import torch

    from cmamil.aggregators import Bag

__all__ = [
    "FOREIGN_MAGNIFICATION",
    "FORMAT",
    "FORMAT_VERSION",
    "BagInfo",
    "BagWriter",
    "bag_info",
    "bag_path",
    "is_complete",
    "list_bags",
    "read_bag",
    "read_coords",
    "storage_format",
]

FORMAT = "cmamil.features"
FORMAT_VERSION = 1
FOREIGN_MAGNIFICATION = "all"
StorageFormat = Literal["h5", "zarr"]
_SUFFIXES: dict[str, StorageFormat] = {".h5": "h5", ".hdf5": "h5", ".zarr": "zarr"}
_FEATURE_KEYS = ("features", "feats")
_RESERVED = frozenset({"format", "format_version", "bag_id", "finest", "has_features", "json_attrs"})
_FEATURE_DTYPES = ("float32", "float16")
_CHUNK_BYTES = 1 << 20
_READ_ERRORS = (OSError, KeyError, ValueError, RuntimeError)


def storage_format(path: str | Path) -> StorageFormat:
    """'h5' or 'zarr', from the file name's suffix (.h5/.hdf5 or .zarr)."""
    fmt = _SUFFIXES.get(Path(path).suffix.lower())
    if fmt is None:
        raise InputError(f"{path}: unknown feature file type '{Path(path).suffix}'; name it <bag_id>.h5 or .zarr")
    return fmt


def bag_path(folder: str | Path, bag_id: str, format: StorageFormat = "h5") -> Path:
    """The final path of bag `bag_id` in `folder`: `<folder>/<bag_id>.h5` or `.zarr`."""
    if not bag_id or bag_id.startswith(".") or "/" in bag_id or os.sep in bag_id:
        raise InputError(f"bag id '{bag_id}' cannot name a file; use a non-empty id without '/' or a leading '.'")
    if format not in ("h5", "zarr"):
        raise InputError(f"feature file format '{format}' is not one of h5, zarr")
    return Path(folder) / f"{bag_id}.{format}"


def list_bags(folder: str | Path) -> list[Path]:
    """Finished feature files in `folder`, sorted by name; temporary files of running writers are ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if not p.name.startswith(".")
        and p.suffix.lower() in _SUFFIXES
        and (p.is_dir() if _SUFFIXES[p.suffix.lower()] == "zarr" else p.is_file())
    )


def is_complete(path: str | Path, *, with_features: bool = True) -> bool:
    """Whether a finished feature file exists at `path` (holding features, unless `with_features` is False)."""
    path = Path(path)
    if path.name.startswith(".") or not path.exists():
        return False
    return bag_info(path).has_features if with_features else True


def _encode_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes ready for HDF5/zarr: scalars as they are, anything else as a JSON string listed in json_attrs."""
    out: dict[str, Any] = {}
    as_json: list[str] = []
    for key, value in attrs.items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, Path):
            value = str(value)
        if isinstance(value, (str, bool, int, float)):
            out[key] = value
        else:
            try:
                out[key] = json.dumps(value)
            except TypeError as exc:
                raise TypeError(f"attribute '{key}' is not JSON-serialisable: {exc}") from exc
            as_json.append(key)
    if as_json:
        out["json_attrs"] = json.dumps(as_json)
    return out


def _decode_attrs(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes as plain Python values, JSON-encoded ones decoded."""
    attrs = {}
    for key, value in raw.items():
        if isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, np.generic):
            value = value.item()
        attrs[key] = value.decode() if isinstance(value, bytes) else value
    for key in json.loads(attrs.pop("json_attrs", "[]")):
        attrs[key] = json.loads(attrs[key])
    return attrs


class _H5Sink:
    """Writes groups and arrays into one HDF5 file."""

    def __init__(self, path: Path):
        import h5py

        self._h5py = h5py
        self.file = h5py.File(path, "w")

    def group(self, name: str) -> Any:
        return self.file.create_group(name)

    def array(self, group: Any, name: str, data: np.ndarray, attrs: Mapping[str, Any] | None = None) -> None:
        group.create_dataset(name, data=data).attrs.update(attrs or {})

    def empty(self, group: Any, name: str, rows: int, dim: int, dtype: str, chunk_rows: int) -> Any:
        return group.create_dataset(
            name, shape=(rows, dim), maxshape=(None, dim), dtype=dtype, chunks=(chunk_rows, dim)
        )

    def finish(self, attrs: Mapping[str, Any], finest: str, has_features: bool) -> None:
        self.file.attrs.update(attrs)
        self.file["coords"] = self._h5py.SoftLink(f"/{finest}/coords")
        if has_features:
            self.file["features"] = self._h5py.SoftLink(f"/{finest}/features")

    def close(self) -> None:
        self.file.close()


class _ZarrSink:
    """Writes groups and arrays into one zarr v3 directory store."""

    def __init__(self, path: Path):
        import zarr

        self.root = zarr.open_group(path, mode="w", zarr_format=3)

    def group(self, name: str) -> Any:
        return self.root.create_group(name)

    def array(self, group: Any, name: str, data: np.ndarray, attrs: Mapping[str, Any] | None = None) -> None:
        group.create_array(name, data=data, attributes=dict(attrs or {}))

    def empty(self, group: Any, name: str, rows: int, dim: int, dtype: str, chunk_rows: int) -> Any:
        return group.create_array(name, shape=(rows, dim), dtype=dtype, chunks=(chunk_rows, dim), fill_value=0)

    def finish(self, attrs: Mapping[str, Any], finest: str, has_features: bool) -> None:
        self.root.attrs.update(dict(attrs))

    def close(self) -> None:
        """Nothing to close: a directory store is complete once its arrays are written."""


@dataclass
class _Level:
    """One magnification being written: its group, parent links and feature cursor."""

    group: Any
    rows: int
    parent: np.ndarray
    features: Any = None
    chunk_rows: int = 0
    written: int = 0
    pending: list[np.ndarray] | None = None
    pending_rows: int = 0


class BagWriter:
    """Write one bag's feature file under a temporary name; rename it into place when the block exits cleanly.

    >>> with BagWriter(bag_path(out, "slide1"), attrs={"encoder": "deit_small"}) as writer:
    ...     writer.add_magnification("20x", coords, parent, {"mpp": 0.5})
    ...     for batch in batches:
    ...         writer.append_features("20x", batch)

    Features are appended in coords row order, batch by batch; at most one chunk (~1 MiB) per magnification is
    held in memory. `coords_only=True` writes a file without features (the tiling stage). On an exception the
    temporary file is removed and no file appears under the final name.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        attrs: Mapping[str, Any] | None = None,
        features_dtype: Literal["float32", "float16"] = "float32",
        coords_only: bool = False,
        overwrite: bool = False,
    ):
        self.path = Path(path)
        self.format = storage_format(self.path)
        self.bag_id = self.path.stem
        if features_dtype not in _FEATURE_DTYPES:
            raise ValueError(f"features_dtype '{features_dtype}' is not one of {', '.join(_FEATURE_DTYPES)}")
        reserved = _RESERVED.intersection(attrs or {})
        if reserved:
            raise ValueError(f"attributes {sorted(reserved)} are set by BagWriter itself")
        self.features_dtype = features_dtype
        self.coords_only = coords_only
        self.overwrite = overwrite
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._attrs = _encode_attrs({"cmamil_version": __version__, "created": created, **(attrs or {})})
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        self._sink: _H5Sink | _ZarrSink | None = None
        self._levels: dict[str, _Level] = {}

    def __enter__(self) -> BagWriter:
        if self.path.exists() and not self.overwrite:
            raise InputError(f"{self.path} already exists; delete it or write with overwrite")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._sink = _H5Sink(self._tmp) if self.format == "h5" else _ZarrSink(self._tmp)
        except BaseException:
            self._remove_tmp()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc_type is None:
                self._commit()
        finally:
            if self._sink is not None:
                self._sink.close()
                self._sink = None
            self._remove_tmp()

    def add_magnification(
        self,
        mag: str,
        coords: Any,
        parent: Any = None,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        """Declare `mag` with its (N, 2) level-0 coords, (N,) parent rows (-1: none) and attributes for coords."""
        sink = self._open_sink()
        if not mag or "/" in mag or mag in ("features", "coords", "feats") or mag in self._levels:
            raise ValueError(f"magnification name '{mag}' is empty, reserved, contains '/', or was already added")
        magnification_order([mag, "1x"])  # raises for a name that is neither '<power>x' nor '<mpp>um'
        coords = np.asarray(coords, dtype=np.int64)
        if coords.ndim != 2 or coords.shape[1] != 2:
            raise ValueError(f"{mag}: coords must have shape (N, 2), got {coords.shape}")
        rows = len(coords)
        parent = np.full(rows, -1, np.int64) if parent is None else np.asarray(parent, dtype=np.int64)
        if parent.shape != (rows,) or (rows and parent.min() < -1):
            raise ValueError(f"{mag}: parent must have shape ({rows},) with values >= -1, got {parent.shape}")
        attrs = dict(attrs or {})
        if attrs.setdefault("magnification", mag) != mag:
            raise ValueError(f"{mag}: attribute magnification={attrs['magnification']!r} contradicts the name")
        group = sink.group(mag)
        sink.array(group, "coords", coords, _encode_attrs(attrs))
        sink.array(group, "parent", parent)
        self._levels[mag] = _Level(group, rows, parent)

    def append_features(self, mag: str, features: Any) -> None:
        """Append a (B, D) batch of features (numpy or torch) to `mag`, in coords row order."""
        self._open_sink()
        if self.coords_only:
            raise ValueError(f"{self.path}: writer was opened with coords_only=True")
        if mag not in self._levels:
            raise ValueError(f"magnification '{mag}' was not added; call add_magnification first")
        if hasattr(features, "detach"):
            features = features.detach().cpu()
            features = features.float() if str(features.dtype) == "torch.bfloat16" else features
        block = np.asarray(features, dtype=self.features_dtype)
        level = self._levels[mag]
        if block.ndim != 2:
            raise ValueError(f"{mag}: features must have shape (B, D), got {block.shape}")
        if level.features is None:
            self._create_features(level, block.shape[1])
        if block.shape[1] != level.features.shape[1]:
            raise ValueError(f"{mag}: features have dimension {block.shape[1]}, expected {level.features.shape[1]}")
        if level.written + level.pending_rows + len(block) > level.rows:
            raise ValueError(f"{mag}: more than {level.rows} feature rows appended (one per coords row)")
        level.pending.append(block)
        level.pending_rows += len(block)
        if level.pending_rows >= level.chunk_rows:
            self._flush(level, whole_chunks=True)

    def _open_sink(self) -> _H5Sink | _ZarrSink:
        if self._sink is None:
            raise RuntimeError("BagWriter is used as a context manager: `with BagWriter(path) as writer:`")
        return self._sink

    def _create_features(self, level: _Level, dim: int) -> None:
        row_bytes = dim * np.dtype(self.features_dtype).itemsize
        level.chunk_rows = max(1, min(_CHUNK_BYTES // max(row_bytes, 1), level.rows))
        level.features = self._open_sink().empty(
            level.group, "features", level.rows, dim, self.features_dtype, level.chunk_rows
        )
        level.pending = []

    def _flush(self, level: _Level, whole_chunks: bool) -> None:
        """Write pending rows; with `whole_chunks`, only whole chunks and keep the rest pending."""
        block = np.concatenate(level.pending) if len(level.pending) > 1 else level.pending[0]
        take = (len(block) // level.chunk_rows) * level.chunk_rows if whole_chunks else len(block)
        level.features[level.written : level.written + take] = block[:take]
        level.written += take
        level.pending = [block[take:]] if take < len(block) else []
        level.pending_rows = len(block) - take

    def _commit(self) -> None:
        """Check completeness and parent links, write root attributes and links, then rename into place."""
        sink = self._open_sink()
        if not self._levels:
            raise ValueError(f"{self.path}: no magnification was added")
        order = magnification_order(self._levels)
        if not self.coords_only:
            dims = {lv.features.shape[1] for lv in self._levels.values() if lv.features is not None}
            if len(dims) != 1:
                raise ValueError(f"{self.path}: no features were appended (or mixed dimensions {sorted(dims)})")
            for mag, level in self._levels.items():
                if level.features is None:
                    self._create_features(level, next(iter(dims)))
                if level.pending_rows:
                    self._flush(level, whole_chunks=False)
                if level.written != level.rows:
                    raise ValueError(f"{self.path}: {mag} has {level.written} of {level.rows} feature rows")
        for coarse, fine in zip(order, order[1:]):
            bound = self._levels[coarse].rows
            parent = self._levels[fine].parent
            if len(parent) and parent.max() >= bound:
                raise ValueError(f"{self.path}: {fine} parent index {parent.max()} >= {bound} rows of {coarse}")
        if len(self._levels[order[0]].parent) and self._levels[order[0]].parent.max() >= 0:
            raise ValueError(f"{self.path}: coarsest magnification {order[0]} has parent links; use -1")
        root = {"format": FORMAT, "format_version": FORMAT_VERSION, "bag_id": self.bag_id, "finest": order[-1]}
        sink.finish({**root, "has_features": not self.coords_only, **self._attrs}, order[-1], not self.coords_only)
        sink.close()
        self._sink = None
        self._publish()

    def _publish(self) -> None:
        """Make the finished temporary file durable and rename it to its final name (the commit point)."""
        if self.format == "h5":
            fd = os.open(self._tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self._tmp, self.path)
            return
        if self.path.exists():
            old = self._tmp.with_suffix(".old")
            os.rename(self.path, old)
            os.rename(self._tmp, self.path)
            shutil.rmtree(old)
        else:
            os.rename(self._tmp, self.path)

    def _remove_tmp(self) -> None:
        if self._tmp.is_dir():
            shutil.rmtree(self._tmp, ignore_errors=True)
        elif self._tmp.exists():
            self._tmp.unlink()


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
    attrs = _decode_attrs(root.attrs)
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
        feature_key = next((k for k in _FEATURE_KEYS if _child(root, k) is not None), None)
        if feature_key is None:
            raise InputError(f"{path} has neither a cmamil layout nor a 'features'/'feats' dataset")
        coords = _child(root, "coords")
        name = foreign_magnification or _trident_magnification(coords) or FOREIGN_MAGNIFICATION
        keys = {name: {"features": feature_key, "coords": "coords" if coords is not None else None, "parent": None}}
        bag_id = bag_id or (path.parent.name if path.stem == "features" else path.stem)
    counts, coords_attrs, dims, dtypes = {}, {}, set(), set()
    for mag, k in keys.items():
        features = root[k["features"]] if k["features"] else None
        coords = root[k["coords"]] if k["coords"] else None
        shape = _feature_shape(features, path) if features is not None else None
        counts[mag] = int(coords.shape[0]) if coords is not None else shape[0]
        coords_attrs[mag] = _decode_attrs(coords.attrs) if coords is not None else {}
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


def _trident_magnification(coords: Any) -> str | None:
    """'20x' from a TRIDENT coords attribute target_magnification, when present."""
    value = coords.attrs.get("target_magnification") if coords is not None else None
    return f"{float(value):g}x" if value is not None else None


def bag_info(path: str | Path, *, foreign_magnification: str | None = None) -> BagInfo:
    """Attributes, magnifications and row counts of a feature file (cmamil, CLAM/TRIDENT or STAMP), no features."""
    path = Path(path)
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
