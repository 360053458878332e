"""Plain-text tables aligned in columns, as the command line prints them (summaries, splits)."""

from __future__ import annotations

from typing import Sequence

__all__ = ["align"]


def align(rows: Sequence[Sequence[str]]) -> list[str]:
    """Each row as one line, cells left-aligned in columns two spaces apart, trailing blanks removed."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
