"""Signals as exceptions: a signal whose exception Python swallows is still raised at the loop's next safe point."""

from __future__ import annotations

import gc
import os
import signal
import sys

import pytest

from cmamil.interrupt import Interrupted, handle_signals, raise_if_interrupted
from cmamil.store import BagWriter
from cmamil.store._sinks import _GuardedFile


class _SignalsOnCollection:
    """An object whose finaliser receives a real SIGTERM: the exception raised there is printed and dropped."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)


def test_a_signal_swallowed_in_a_finaliser_is_raised_at_the_next_safe_point(monkeypatch):
    swallowed = []
    monkeypatch.setattr(sys, "unraisablehook", lambda report: swallowed.append(report.exc_type))
    with handle_signals():
        raise_if_interrupted()  # nothing received yet
        _SignalsOnCollection()  # collected at once: SIGTERM arrives inside __del__
        assert swallowed == [Interrupted]  # Python dropped the exception and went on
        with pytest.raises(Interrupted) as caught:
            raise_if_interrupted()
        assert caught.value.exit_code == 143
    raise_if_interrupted()  # outside the block the record is cleared


def test_a_signal_held_back_while_an_hdf5_file_opens_closes_it_before_raising(tmp_path, monkeypatch):
    """libhdf5 holds the signal until the file is open; the file must then be closed, not left to the collector
    (which would flush it into an already closed file object at exit)."""
    swallowed = []
    monkeypatch.setattr(sys, "unraisablehook", lambda report: swallowed.append(report.exc_value))
    tell = _GuardedFile.tell

    def tell_then_signal(self):
        os.kill(os.getpid(), signal.SIGINT)  # delivered inside libhdf5's open, which asks the file's size
        return tell(self)

    monkeypatch.setattr(_GuardedFile, "tell", tell_then_signal)
    with handle_signals(), pytest.raises(Interrupted) as caught:
        with BagWriter(tmp_path / "a.h5"):
            pass
    assert caught.value.exit_code == 130
    del caught  # its traceback holds the half-made writer; collect that now
    gc.collect()
    assert swallowed == []
    assert list(tmp_path.iterdir()) == []  # the temporary file is removed
