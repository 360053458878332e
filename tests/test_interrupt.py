"""Signals as exceptions: a signal whose exception Python swallows is still raised at the loop's next safe point."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from cmamil.interrupt import Interrupted, handle_signals, raise_if_interrupted


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
