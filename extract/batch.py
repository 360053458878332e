"""Batches of slides: gather them from files, folders and CSV tables; shard them across processes; record each
slide's outcome in a manifest.

A slide that fails (missing, corrupt, no resolution, no tissue) becomes one failed row with a one-line reason,
printed as `failed: <id>: <reason>`; the batch goes on. The manifest is a CSV keyed by slide id: every run
merges its rows into it (under a lock, written atomically), so a rerun of one slide keeps the others' rows and
a skipped slide keeps the timing of the run that made it.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence, TypeVar

from cmamil.atomic import write_csv
from cmamil.errors import InputError
from cmamil.extract.reader import SLIDE_SUFFIXES

__all__ = [
    "SlideResult",
    "SlideSource",
    "collect_slides",
    "parse_shard",
    "report_failure",
    "resolve_shard",
    "shard_items",
    "summarize",
    "write_manifest",
]

T = TypeVar("T")


@dataclass(frozen=True)
class SlideSource:
    """A slide to process: its path, the id that names its output files, and its level-0 µm/px when the slide
    table gives one (overriding the slide's metadata and --mpp)."""

    path: Path
    slide_id: str
    mpp: float | None = None


@dataclass
class SlideResult:
    """What happened to one slide: status 'done', 'skipped' (output existed), 'busy' (another process holds it)
    or 'failed', with counts and timing."""

    slide_id: str
    path: Path
    status: str
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    error: str = ""

    def describe(self) -> str:
        """'slide_1: done, 471 tiles in 50 s (9.4 tiles/s)': the outcome in a few words, for progress lines."""
        tiles = sum(self.counts.values())
        if self.status != "done":
            return f"{self.slide_id}: {self.status}" + (f", {tiles} tiles" if tiles else "")
        rate = f" ({tiles / self.seconds:.1f} tiles/s)" if self.seconds > 0 else ""
        return f"{self.slide_id}: done, {tiles} tiles in {self.seconds:.0f} s{rate}"


def collect_slides(inputs: Iterable[str | Path], *, exclude: Path | None = None) -> list[SlideSource]:
    """Slides named by `inputs`: slide files, folders (searched recursively for whole-slide suffixes) and CSV
    tables with a `path` column (optional `slide_id`; relative paths are relative to the table's folder).

    Paths that do not exist are returned too, so that the batch reports each as a failed slide. Files under
    `exclude` (the output folder) are skipped when searching folders.
    """
    slides: list[SlideSource] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.suffix.lower() in SLIDE_SUFFIXES and p.is_file())
            skip = exclude.resolve() if exclude else None
            slides += [SlideSource(p, p.stem) for p in found if not (skip and p.resolve().is_relative_to(skip))]
        elif item.suffix.lower() == ".csv" and item.is_file():
            slides += _from_table(item)
        else:
            slides.append(SlideSource(item, item.stem))
    return slides


def _from_table(table: Path) -> list[SlideSource]:
    """Slides listed in a CSV with a `path` column and optional `slide_id` and `mpp` (level-0 µm/px) columns."""
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "path" not in rows[0]:
        raise InputError(f"{table} has no 'path' column; a slide table needs a header with path[,slide_id][,mpp]")
    slides = []
    for line, row in enumerate(rows, start=2):
        path = Path(row["path"].strip())
        path = path if path.is_absolute() else table.parent / path
        slides.append(SlideSource(path, (row.get("slide_id") or "").strip() or path.stem,
                                  _table_mpp(row.get("mpp"), table, line)))
    return slides


def _table_mpp(text: str | None, table: Path, line: int) -> float | None:
    """A slide table's `mpp` cell as a positive float (blank: None, use the slide's metadata)."""
    if not (text or "").strip():
        return None
    try:
        mpp = float(text)  # type: ignore[arg-type]
    except ValueError:
        mpp = -1.0
    if not mpp > 0:
        raise InputError(f"{table} line {line}: mpp '{text}' is not a positive number of µm/px; fix or blank it")
    return mpp


MANIFEST_FIXED = ("slide_id", "path", "status")


def write_manifest(path: str | Path, results: Sequence[SlideResult], magnifications: Sequence[str]) -> Path:
    """Merge one row per slide (id, path, status, tiles per magnification, seconds, error) into the manifest at
    `path`, keyed by slide id, atomically and under a lock (several processes may share one folder).

    A 'skipped' slide keeps the row of the run that made it; 'busy' slides are another process's to record."""
    from cmamil.locks import hold_lock
    from cmamil.store import remove_temporaries

    path = Path(path)
    with hold_lock(path.with_name(f".{path.name}.lock")):
        remove_temporaries(path)  # a killed writer's: only the lock holder writes the manifest
        header, rows = _read_manifest(path)
        counts = [f"tiles_{m}" for m in magnifications]
        header = [*MANIFEST_FIXED, *dict.fromkeys([*header[len(MANIFEST_FIXED):-2], *counts]), "seconds", "error"]
        for r in results:
            earlier = rows.get(r.slide_id)
            if r.status == "busy" or (r.status == "skipped" and earlier and earlier.get("status") == "done"):
                continue
            rows[r.slide_id] = {
                "slide_id": r.slide_id, "path": str(r.path), "status": r.status, "seconds": f"{r.seconds:.2f}",
                "error": r.error, **{f"tiles_{m}": r.counts.get(m, "") for m in magnifications},
            }
        write_csv(path, header, ([row.get(column, "") for column in header] for row in rows.values()))
    return path


def _read_manifest(path: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    """An existing manifest's header and rows by slide id (none when it is absent or unreadable)."""
    empty = [*MANIFEST_FIXED, "seconds", "error"]
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            rows = {row["slide_id"]: row for row in reader}
            header = list(reader.fieldnames or empty)
    except (OSError, KeyError, csv.Error):
        return empty, {}
    if header[: len(MANIFEST_FIXED)] != list(MANIFEST_FIXED) or header[-2:] != ["seconds", "error"]:
        return empty, {}
    return header, rows


def report_failure(result: SlideResult) -> None:
    """Say on stderr, in the same words for every command, that a slide failed and why (one line)."""
    from tqdm import tqdm

    tqdm.write(f"failed: {result.slide_id}: {result.error}", file=sys.stderr)


def summarize(results: Sequence[SlideResult], noun: str, verb: str, magnifications: Sequence[str],
              manifest: Path) -> str:
    """'3 slides: 2 tiled, 1 skipped (already tiled), 0 failed; tiles 5x: 4, 10x: 16; manifest …' (and busy ones)."""
    status = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "busy", "failed")}
    tiles = {m: sum(r.counts.get(m, 0) for r in results if r.status == "done") for m in magnifications}
    busy = f", {status['busy']} left to another process" if status["busy"] else ""
    return (
        f"{len(results)} {noun}: {status['done']} {verb}, {status['skipped']} skipped (already {verb}){busy}, "
        f"{status['failed']} failed; tiles {', '.join(f'{m}: {n}' for m, n in tiles.items())}; manifest {manifest}"
    )


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' (0-based shard I of N) as (I, N)."""
    index, sep, count = text.partition("/")
    try:
        shard = (int(index), int(count))
    except ValueError:
        shard = (-1, 0)
    if not sep or not 0 <= shard[0] < shard[1]:
        raise InputError(f"shard '{text}' is not I/N with 0 <= I < N (e.g. 0/4 … 3/4)")
    return shard


def resolve_shard(shard: tuple[int, int] | None = None) -> tuple[int, int]:
    """`shard` when given, else this process's rank among the launcher's processes (torchrun, srun), else (0, 1):
    everything."""
    if shard is None:
        from cmamil.distributed import detect_world

        world = detect_world()
        shard = (world.rank, world.size)
    if not 0 <= shard[0] < shard[1]:
        raise InputError(f"shard {shard[0]}/{shard[1]} is not I/N with 0 <= I < N")
    return shard


def shard_items(items: Sequence[T], shard: tuple[int, int]) -> list[T]:
    """Every N-th item starting at I: shards 0/N … N-1/N together take each item exactly once."""
    return list(items[shard[0] :: shard[1]])
