"""HDF5 and zarr sinks: where `BagWriter` puts groups and arrays.

A full disk must never crash the process. libhdf5 does not survive a failed write (after errno 28 its state is
inconsistent and closing or freeing the file can segfault), so the HDF5 sink hands libhdf5 a Python file
object that never fails: the first OS error is recorded, later writes are dropped, and `close()` raises that
error once libhdf5 has closed the file. Calls into libhdf5 hold SIGTERM/SIGINT back until they return (an
exception raised inside one of its I/O callbacks would leave it just as inconsistent).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cmamil.interrupt import deferred_signals

__all__ = ["H5Sink", "ZarrSink"]


class _GuardedFile(io.RawIOBase):
    """A binary file for libhdf5 whose writes never fail: the first OSError is kept in `error`, later writes are
    dropped (the file is garbage by then and will be removed)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.error: OSError | None = None
        self._file = open(path, "w+b", buffering=0)  # noqa: SIM115 (closed by close())

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._file.readinto(buffer) or 0

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if self.error is None:
            start, done = self._file.tell(), 0
            try:
                while done < len(view):  # a short write is retried, to learn the system's reason
                    written = self._file.write(view[done:])
                    if not written:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    done += written
            except OSError as exc:
                self.error = exc
                self._file.seek(start + len(view))
        return len(view)

    def truncate(self, size: int | None = None) -> int:
        if self.error is None:
            try:
                return self._file.truncate(size)
            except OSError as exc:
                self.error = exc
        return self._file.tell() if size is None else size

    def flush(self) -> None:
        """Nothing is buffered here (the file is unbuffered)."""

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._file.close()


class H5Sink:
    """Writes groups and arrays into one HDF5 file, through a `_GuardedFile`."""

    def __init__(self, path: Path):
        import h5py

        self._h5py = h5py
        self.guard = _GuardedFile(path)
        self.file: Any = None
        try:
            with deferred_signals():
                self.file = h5py.File(self.guard, "w")
        except BaseException:  # a signal held back while the file opened is raised here, after it opened
            with contextlib.suppress(OSError):
                self.close()
            raise

    def group(self, name: str) -> Any:
        return self.file.create_group(name)

    def array(self, group: Any, name: str, data: np.ndarray, attrs: Mapping[str, Any] | None = None) -> None:
        group.create_dataset(name, data=data).attrs.update(attrs or {})

    def empty(self, group: Any, name: str, rows: int, dim: int, dtype: str, chunk_rows: int) -> Any:
        return group.create_dataset(
            name, shape=(rows, dim), maxshape=(None, dim), dtype=dtype, chunks=(chunk_rows, dim)
        )

    def link(self, group: Any, name: str, source: Path, dataset: str) -> Any:
        """An external link `name` to `dataset` of the HDF5 file `source`, and a zero-memory array of that
        dataset's shape and type (read from `source` itself: this file's driver cannot open other files)."""
        group[name] = self._h5py.ExternalLink(str(source), dataset)
        with self._h5py.File(source, "r") as linked:
            return np.broadcast_to(np.zeros((), linked[dataset].dtype), linked[dataset].shape)

    def finish(self, attrs: Mapping[str, Any], finest: str, has_features: bool) -> None:
        self.file.attrs.update(attrs)
        self.file["coords"] = self._h5py.SoftLink(f"/{finest}/coords")
        if has_features:
            self.file["features"] = self._h5py.SoftLink(f"/{finest}/features")

    def close(self) -> None:
        """Close the file; raise the first write error libhdf5 was shielded from, as an OutputError."""
        try:
            if self.file is not None:
                with deferred_signals():
                    self.file.close()
        finally:
            self.guard.close()
        if self.guard.error is not None:
            raise self.guard.error


class ZarrSink:
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
