"""Atomic file output: write under a temporary name in the same folder, then rename.

A file that exists under its final name is complete; an interrupted write leaves only a temporary
file (dot-prefixed, ending in `.tmp`), which readers ignore and the next run overwrites.
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

__all__ = ["atomic_path", "output_errors", "write_csv", "write_json", "write_text", "write_yaml"]

# errors of writing that the user resolves by freeing space or choosing another place
_WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.EACCES,
                 errno.EPERM}


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        exc.filename = str(path)  # the file the user knows (a failed write() names none, open() the temporary one)
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def output_errors(where: str | Path, hint: str = "free space or pass --out a writable folder") -> Iterator[None]:
    """Turn a failure to write under `where` (full disk, file too large, read-only, a file in the way) into one
    OutputError line; torch reports a failed save as a RuntimeError, which `save_checkpoint` makes an OSError."""
    from cmamil.errors import OutputError

    try:
        yield
    except OSError as exc:
        if exc.errno not in _WRITE_ERRNOS:
            raise
        place = exc.filename or where
        raise OutputError(f"cannot write {place}: {exc.strerror}; {hint}") from exc


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
