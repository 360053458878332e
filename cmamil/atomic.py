"""Atomic file output: write under a temporary name in the same folder, then rename.

A file that exists under its final name is complete; an interrupted write leaves only a temporary
file (dot-prefixed, ending in `.tmp`), which readers ignore and the next run overwrites. A write the system
refuses (disk full, read-only place, a file where a folder should be) is an `OutputError` of one line.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import yaml

from cmamil.errors import OutputError

__all__ = ["atomic_path", "output_error", "output_errors", "writable_folder", "write_csv", "write_json", "write_text",
           "write_yaml"]

# errors of writing that the user resolves by freeing space or choosing another place
_WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.EACCES,
                 errno.EPERM}


def output_error(path: str | Path, exc: OSError, hint: str | None = None) -> OutputError:
    """One line for a write the system refused: where, why, and what to do (`hint`, else by the error)."""
    reason = exc.strerror or type(exc).__name__
    hint = hint or {
        errno.ENOSPC: "free some space and rerun (finished work is kept)",
        errno.EDQUOT: "free some space and rerun (finished work is kept)",
        errno.EFBIG: "the file-size limit (ulimit -f) was reached; raise it and rerun (finished work is kept)",
        errno.EROFS: "choose a writable --out",
        errno.EACCES: "choose a writable --out",
        errno.EPERM: "choose a writable --out",
        errno.ENOTDIR: "a file stands where a folder should be; choose another --out",
        errno.EEXIST: "a file stands where a folder should be; choose another --out",
    }.get(exc.errno or 0, "check the output place and rerun")
    error = OutputError(f"cannot write {path}: {reason}; {hint}")
    error.path = path
    return error


@contextlib.contextmanager
def output_errors(where: str | Path, hint: str | None = None) -> Iterator[None]:
    """Turn a failure to write under `where` (full disk, file too large, read-only, a file in the way) into one
    OutputError line, with `hint` as what to do when given; torch reports a failed save as a RuntimeError, which
    `save_checkpoint` makes an OSError."""
    try:
        yield
    except OutputError as exc:
        if hint is None or not isinstance(exc.__cause__, OSError):
            raise
        raise output_error(getattr(exc, "path", where), exc.__cause__, hint) from exc.__cause__
    except OSError as exc:
        if exc.errno not in _WRITE_ERRNOS:
            raise
        raise output_error(exc.filename or where, exc, hint) from exc


def writable_folder(path: str | Path) -> Path:
    """Create the folder `path` and prove it writable (a probe file made and removed), before any work is done."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe.{os.getpid()}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise output_error(path, exc) from exc
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds.

    The temporary file is removed whatever happens (an error, an interrupt); an OSError becomes an OutputError.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        raise output_error(path, exc) from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Write a CSV table (header row, then rows; fields quoted where needed) atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def write_json(path: str | Path, data: Any) -> None:
    """Write `data` as indented JSON atomically (numpy scalars become Python numbers)."""
    write_text(path, json.dumps(data, indent=2, default=_plain) + "\n")


def write_yaml(path: str | Path, data: Any) -> None:
    """Write `data` as YAML atomically, keys in insertion order."""
    write_text(path, yaml.safe_dump(json.loads(json.dumps(data, default=_plain)), sort_keys=False))


def _plain(value: Any) -> Any:
    """JSON fallback for numpy scalars/arrays and paths."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")
