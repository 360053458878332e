"""Progress lines in a log file: per finished item, at most every interval in between, rate and time left."""

from __future__ import annotations

import io

from cmamil.progress import Progress, duration


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lines_per_note_and_per_interval_with_rate_and_time_left():
    stream, clock = io.StringIO(), Clock()
    progress = Progress("extract", total=4, unit="bag", interval=30, stream=stream, clock=clock)
    progress.advance(note="a: skipped", worked=False)           # instant, not counted in the rate
    clock.now = 20.0
    progress.advance(note="b: done")                            # 1 worked bag in 20 s, 2 left: 40 s
    clock.now = 30.0
    progress.advance()                                          # 10 s after the last line: no line
    clock.now = 60.0
    progress.write("failed: c")
    progress.close()
    assert stream.getvalue().splitlines() == [
        "extract: 1/4 bags (a: skipped)",
        "extract: 2/4 bags (b: done), 20.0 s/bag, 40 s left",
        "failed: c",
    ]
    tiles = Progress("s1", total=1000, unit="tile", interval=30, stream=stream, clock=clock)
    clock.now = 100.0
    tiles.advance(400)                                          # 40 s since the start: a line
    assert stream.getvalue().splitlines()[-1] == "s1: 400/1000 tiles, 10.0 tiles/s, 1 min 0 s left"


def test_durations_read_like_a_person_writes_them():
    assert [duration(s) for s in (0.4, 59, 61, 3599, 7260)] == ["0 s", "59 s", "1 min 1 s", "59 min 59 s", "2 h 1 min"]
