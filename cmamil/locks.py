"""Per-item lock files, so that several processes (or machines on a shared filesystem) share one output folder.

    lock = try_lock(out / ".slide1.lock")
    if lock is None:            # another live process works on slide1
        ...
    with lock:                  # released (file removed) when the block ends
        ...

A lock is a small file created atomically (O_CREAT | O_EXCL: of two processes, exactly one creates it) holding
the owner's pid, host and start time. While held, a daemon thread touches it every `stale_after / 4` seconds.
A lock is stale, and is taken over, when its owner is a dead process on this host, or when it has not been
touched for `stale_after` seconds (an owner on another host that died, or lost the filesystem). Taking over
is itself guarded by a `<lock>.break` file made with O_EXCL, so two processes never both take one stale lock.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from cmamil.errors import LockError

__all__ = ["STALE_AFTER", "Lock", "LockOwner", "hold_lock", "lock_owner", "try_lock"]

STALE_AFTER = 1800.0  # seconds without a heartbeat after which a lock of another host is taken over
HOST = socket.gethostname()


@dataclass(frozen=True)
class LockOwner:
    """Who holds a lock: process id, host name and the UTC time it was taken (seconds since the epoch)."""

    pid: int
    host: str
    time: float

    def describe(self) -> str:
        """'pid 123 on host node7 since 10:02:03 UTC'."""
        since = time.strftime("%H:%M:%S", time.gmtime(self.time))
        return f"pid {self.pid} on host {self.host} since {since} UTC"


class Lock:
    """A held lock file; `release()` (or leaving a `with` block) stops its heartbeat and removes it."""

    def __init__(self, path: Path, owner: LockOwner, stale_after: float) -> None:
        self.path = path
        self.owner = owner
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, args=(stale_after / 4,), daemon=True)
        self._heartbeat.start()

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        """Remove the lock file if it is still this lock's (a taken-over lock is left to its new owner)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if lock_owner(self.path) == self.owner:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def lock_owner(path: str | Path) -> LockOwner | None:
    """The owner recorded in lock file `path`, or None when there is none (or it is being written)."""
    try:
        data: dict[str, Any] = json.loads(Path(path).read_text())
        return LockOwner(int(data["pid"]), str(data["host"]), float(data["time"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def try_lock(path: str | Path, *, stale_after: float = STALE_AFTER) -> Lock | None:
    """Take the lock file `path` (taking over a stale one), or return None when a live owner holds it."""
    path = Path(path)
    for _ in range(3):
        owner = _create(path)
        if owner is not None:
            return Lock(path, owner, stale_after)
        if not _break_if_stale(path, stale_after):
            return None
    return None


def hold_lock(path: str | Path, *, timeout: float = 120.0, stale_after: float = STALE_AFTER) -> Lock:
    """Wait (polling) until the lock file `path` is taken; for short critical sections such as a manifest merge."""
    deadline = time.monotonic() + timeout
    while True:
        lock = try_lock(path, stale_after=stale_after)
        if lock is not None:
            return lock
        if time.monotonic() > deadline:
            owner = lock_owner(path)
            held = f" by {owner.describe()}" if owner else ""
            raise LockError(f"{path} is held{held} for over {timeout:.0f} s; if no such process runs, delete it")
        time.sleep(0.05)


def _create(path: Path) -> LockOwner | None:
    """Create `path` exclusively with this process as owner; None when it exists."""
    owner = LockOwner(os.getpid(), HOST, time.time())
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None
    with os.fdopen(fd, "w") as handle:
        json.dump({"pid": owner.pid, "host": owner.host, "time": owner.time}, handle)
    return owner


def _is_stale(path: Path, stale_after: float) -> bool:
    """Whether the lock's owner is a dead process of this host, or the lock has not been touched for long."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True
    owner = lock_owner(path)
    if owner is None:  # being written right now, unless it has stayed empty for long
        return age > max(stale_after, 60.0)
    if owner.host == HOST and not _alive(owner.pid):
        return True
    return age > stale_after


def _break_if_stale(path: Path, stale_after: float) -> bool:
    """Remove a stale lock under a `.break` guard file; True when the lock is gone (and may be tried again)."""
    if not _is_stale(path, stale_after):
        return False
    guard = path.with_name(path.name + ".break")
    try:
        fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:  # a breaker that died mid-way leaves its guard: old guards are removed
            if time.time() - guard.stat().st_mtime > 60.0:
                guard.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        return False
    os.close(fd)
    try:
        if _is_stale(path, stale_after):  # checked again under the guard: another breaker may have been quicker
            path.unlink(missing_ok=True)
            return True
        return False
    finally:
        guard.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    """Whether process `pid` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
