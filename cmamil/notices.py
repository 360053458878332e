"""One-line notices a user should see before a run starts: how splits are grouped, random weights, protocol notes.

Library code calls `notice(message)`; the message goes to the `cmamil.notice` logger at INFO level, which the
command line shows on stderr as `note: <message>` (library users see it with their own logging set-up).
"""

from __future__ import annotations

import logging

__all__ = ["NOTICE_LOGGER", "notice"]

NOTICE_LOGGER = "cmamil.notice"

_log = logging.getLogger(NOTICE_LOGGER)


def notice(message: str) -> None:
    """Tell the user one line about a choice made for them (and how to change it)."""
    _log.info(message)
