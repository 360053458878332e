"""Writing one bag's feature file atomically: the `BagWriter`.

A write the system refuses (a full disk, a file-size limit) ends the bag with an `OutputError`, the temporary
file removed; see `_sinks` for how libhdf5 is kept from crashing on it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np

from cmamil import __version__
from cmamil.atomic import output_error
from cmamil.errors import InputError
from cmamil.interrupt import deferred_signals
from cmamil.magnification import Magnification, magnification_order
from cmamil.store._attrs import encode_attrs
from cmamil.store._format import FORMAT, FORMAT_VERSION, bag_id_from_path, storage_format
from cmamil.store._sinks import H5Sink, ZarrSink

__all__ = ["BagWriter", "remove_temporaries"]

_RESERVED = frozenset({"format", "format_version", "bag_id", "finest", "has_features", "json_attrs"})
_FEATURE_DTYPES = ("float32", "float16")
_CHUNK_BYTES = 1 << 20


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
        self.bag_id = bag_id_from_path(self.path)
        if features_dtype not in _FEATURE_DTYPES:
            raise ValueError(f"features_dtype '{features_dtype}' is not one of {', '.join(_FEATURE_DTYPES)}")
        reserved = _RESERVED.intersection(attrs or {})
        if reserved:
            raise ValueError(f"attributes {sorted(reserved)} are set by BagWriter itself")
        self.features_dtype = features_dtype
        self.coords_only = coords_only
        self.overwrite = overwrite
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._attrs = encode_attrs({"cmamil_version": __version__, "created": created, **(attrs or {})})
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        self._sink: H5Sink | ZarrSink | None = None
        self._levels: dict[str, _Level] = {}

    def __enter__(self) -> BagWriter:
        if self.path.exists() and not self.overwrite:
            raise InputError(f"{self.path} already exists; delete it or write with overwrite")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._sink = H5Sink(self._tmp) if self.format == "h5" else ZarrSink(self._tmp)
        except OSError as exc:
            self._discard()
            raise output_error(self.path, exc) from exc
        except BaseException:
            self._discard()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc_type is None:
                with deferred_signals():
                    self._commit()
        except OSError as error:
            raise output_error(self.path, error) from error
        finally:
            self._discard()

    def _discard(self) -> None:
        """Close an unfinished file (its write error no longer matters) and remove the temporary file."""
        sink, self._sink = self._sink, None
        try:
            if sink is not None:
                with contextlib.suppress(OSError):
                    sink.close()
        finally:
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
        canonical = Magnification.parse(mag).name
        if canonical != mag:
            raise InputError(f"magnification name '{mag}' is not canonical; name the group '{canonical}'")
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
        with deferred_signals():
            group = sink.group(mag)
            sink.array(group, "coords", coords, encode_attrs(attrs))
            sink.array(group, "parent", parent)
        self._levels[mag] = _Level(group, rows, parent)
        self._check()

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
            with deferred_signals():
                self._create_features(level, block.shape[1])
        if block.shape[1] != level.features.shape[1]:
            raise ValueError(f"{mag}: features have dimension {block.shape[1]}, expected {level.features.shape[1]}")
        if level.written + level.pending_rows + len(block) > level.rows:
            raise ValueError(f"{mag}: more than {level.rows} feature rows appended (one per coords row)")
        level.pending.append(block)
        level.pending_rows += len(block)
        if level.pending_rows >= level.chunk_rows:
            try:
                with deferred_signals():
                    self._flush(level, whole_chunks=True)
            except OSError as error:  # zarr writes chunk files from Python and raises directly
                raise output_error(self.path, error) from error
            self._check()

    def link_features(self, mag: str, source: str | Path, dataset: str) -> None:
        """Point `mag`'s features at an (N, D) `dataset` of another HDF5 file (an external link) instead of copying."""
        sink = self._open_sink()
        if not isinstance(sink, H5Sink):
            raise InputError(f"{self.path}: feature links need an HDF5 file; write .h5, or copy the features")
        level = self._levels.get(mag)
        if level is None or level.features is not None or self.coords_only:
            raise ValueError(f"{mag}: add the magnification first, and link or append its features once")
        with deferred_signals():
            linked = sink.link(level.group, "features", Path(source).resolve(), dataset)
        if linked.ndim != 2 or linked.shape[0] != level.rows:
            raise InputError(f"{source}: {dataset} has shape {linked.shape}, expected ({level.rows}, D); copy instead")
        level.features, level.written = linked, level.rows

    def _check(self) -> None:
        """Stop at the first write the system refused (a full disk), rather than when the file is closed."""
        error = getattr(self._sink, "guard", None) and self._sink.guard.error  # type: ignore[union-attr]
        if error is not None:
            raise output_error(self.path, error) from error

    def _open_sink(self) -> H5Sink | ZarrSink:
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
        else:
            with contextlib.suppress(OSError):
                self._tmp.unlink()


def remove_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporary files a killed writer of `path` left beside it (call it while holding `path`'s lock,
    so that no live writer's file is taken); returns what was removed."""
    path = Path(path)
    removed = sorted(path.parent.glob(f".{path.name}.*.tmp"))
    for tmp in removed:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
    return removed
