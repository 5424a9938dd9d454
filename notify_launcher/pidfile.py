"""worker.pid: which process holds worker.lock, as `PID START` (identity.py: the start time is
what makes a pid safe to act on later).  One writer (the worker, when it holds the lock), one
reader function.
"""

from __future__ import annotations

import os

from notify_launcher.identity import ProcessId, me
from notify_launcher.statedir import StatePaths, write_atomic


def write(paths: StatePaths) -> None:
    """Name this process (the worker that took worker.lock).  Raises OSError (a full disk).  Not
    fsync'ed (~0.3 ms of a worker's start where the state directory is on a disk): the file names a
    live process, and only a machine crash would lose it, which ends that process too."""
    pid, start = me()
    write_atomic(paths.worker_pid, f"{pid} {start}\n".encode(), sync=False)


def read(paths: StatePaths) -> ProcessId | None:
    """What worker.pid says (None: no file, or damaged)."""
    try:
        with open(paths.worker_pid, "rb") as fh:
            pid, start = fh.read().split()[:2]
        return ProcessId(int(pid), int(start))
    except (OSError, ValueError):
        return None


def names(paths: StatePaths, pid: int) -> bool:
    """worker.pid names `pid` (alive or not: a worker that ends normally removes the file first)."""
    named = read(paths)
    return named is not None and named.pid == pid


def remove(paths: StatePaths, pid: int) -> None:
    """Remove worker.pid if it names `pid` (after a removed state directory it may name another)."""
    if names(paths, pid):
        try:
            os.unlink(paths.worker_pid)
        except FileNotFoundError:
            pass
