"""SIGTERM and SIGINT as an exception, so that an interrupted command cleans up like a failing one.

A scheduler's time limit sends SIGTERM; Ctrl-C sends SIGINT. Under `handle_signals()` both raise `Interrupted`
(a KeyboardInterrupt), which unwinds through every `finally`: temporary files are removed, locks released and
manifests written; the command line then exits 128 + the signal number (143, 130). Code that must not be
unwound half-way (a call into libhdf5, whose state an exception raised from one of its I/O callbacks would
corrupt) runs under `deferred_signals()`: a signal arriving there is raised when the block ends.

An exception raised where Python ignores exceptions (a weakref callback, `__del__`, garbage collection) is
printed and dropped; long loops therefore call `raise_if_interrupted()` once per step, which raises a signal that
was received but swallowed.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

__all__ = ["Interrupted", "deferred_signals", "handle_signals", "raise_if_interrupted"]

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop by `signum`; the command line exits with `exit_code` (128 + signum)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {self.name}")


_state = threading.local()
_received: list[int] = []  # signals received under handle_signals(), in order


def _raise(signum: int, frame: Any) -> None:
    _received.append(signum)
    if getattr(_state, "depth", 0):
        _state.pending = signum
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def handle_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into `Interrupted` inside the block (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise) for s in SIGNALS}
    _received.clear()
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _received.clear()


def raise_if_interrupted() -> None:
    """Raise `Interrupted` for a signal received earlier under `handle_signals()` (outside `deferred_signals()`,
    where the block's end raises it): a loop's safe point for a signal whose exception was swallowed."""
    if _received and not getattr(_state, "depth", 0):
        raise Interrupted(_received[0])


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold back `Interrupted` until the block ends (blocks nest; the outermost raises)."""
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1
        pending = getattr(_state, "pending", None)
        if pending is not None and _state.depth == 0:
            _state.pending = None
            raise Interrupted(pending)
