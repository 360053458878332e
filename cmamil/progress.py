"""Progress of long work that a user sees both on a terminal and in a log file.

On a terminal a tqdm bar; otherwise (output redirected to a file, a batch job) plain lines: one per finished
item when the caller gives a note, and at most one every `interval` seconds in between, each with the count,
the rate and the time left.

    bags = Progress("extract", total=len(jobs), unit="bag")
    bags.advance(note="slide_1: done, 471 tiles, 9.4 tiles/s")   # log: extract: 1/12 bags (…); 1 min 40 s left
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

__all__ = ["Progress", "duration"]


def duration(seconds: float) -> str:
    """'45 s', '12 min 5 s', '3 h 20 min': a time span as a person reads it."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


class Progress:
    """Count `total` units of work: a tqdm bar on a terminal, else lines at most every `interval` s and per note.

    The rate and time left count only the time spent on units advanced with `worked=True`, so bags skipped on a
    rerun do not make the estimate optimistic.
    """

    def __init__(
        self, desc: str, total: int, unit: str, *, interval: float = 30.0, leave: bool = True,
        stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from tqdm import tqdm

        self.desc, self.total, self.unit, self.interval = desc, total, unit, interval
        self.stream = stream or sys.stderr
        self.terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar = tqdm(total=total, desc=desc, unit=unit, leave=leave, file=self.stream, disable=not self.terminal)
        self.clock = clock
        self.done = self.worked = 0
        self.work_seconds = 0.0
        self._last_step = self._last_line = clock()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def advance(self, n: int = 1, *, note: str = "", worked: bool = True) -> None:
        """Count `n` more units; print a line for a note, or when `interval` seconds passed since the last line."""
        now = self.clock()
        self.done += n
        if worked:
            self.worked += n
            self.work_seconds += now - self._last_step
        self._last_step = now
        if self.terminal:
            self.bar.update(n)
        elif note or now - self._last_line >= self.interval:
            self._last_line = now
            print(self.line(note), file=self.stream, flush=True)

    def write(self, text: str) -> None:
        """Print a message line without breaking the bar."""
        if self.terminal:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def line(self, note: str = "") -> str:
        """'extract: 3/10 bags (note), 2.1 bags/s, 3 s left'."""
        text = f"{self.desc}: {self.done}/{self.total} {self.unit}s"
        if note:
            text += f" ({note})"
        if self.worked and self.work_seconds > 0:
            rate = self.worked / self.work_seconds
            per = f"{rate:.1f} {self.unit}s/s" if rate >= 1 else f"{1 / rate:.1f} s/{self.unit}"
            text += f", {per}, {duration((self.total - self.done) / rate)} left"
        return text

    def close(self) -> None:
        self.bar.close()
