"""worker.pid: which process holds worker.lock, as `PID START` (START: the process's start time
in clock ticks since boot, field 22 of /proc/PID/stat).

The start time is what makes a pid safe to act on later: pids are reused, and a reader that
watches, or a worker that reports, "the worker" must never take another process for it.  One
writer (the worker, when it holds the lock), one reader function, one identity check.  Read from
/proc, not psutil: the reader uses this and must stay light.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from notify_launcher.statedir import StatePaths, write_atomic


class Named(NamedTuple):
    """The worker worker.pid names."""

    pid: int
    start: int


def start_ticks(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot); None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return int(fh.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def write(paths: StatePaths) -> None:
    """Name this process (the worker that took worker.lock).  Raises OSError (a full disk)."""
    pid = os.getpid()
    write_atomic(paths.worker_pid, f"{pid} {start_ticks(pid)}\n".encode())


def read(paths: StatePaths) -> Named | None:
    """What worker.pid says (None: no file, or damaged)."""
    try:
        with open(paths.worker_pid, "rb") as fh:
            pid, start = fh.read().split()[:2]
        return Named(int(pid), int(start))
    except (OSError, ValueError):
        return None


def names(paths: StatePaths, pid: int) -> bool:
    """worker.pid names `pid` (alive or not: a worker that ends normally removes the file first)."""
    named = read(paths)
    return named is not None and named.pid == pid


def is_running(named: Named) -> bool:
    """The named worker is the process now running under that pid (not a later one that reuses it)."""
    return start_ticks(named.pid) == named.start


def lock_holder(path: str) -> Named | None:
    """The process holding the flock on `path`, from /proc/locks: the worker that took worker.lock,
    found even when it could not write worker.pid (a full disk).  Waiters ("->") are not holders."""
    try:
        st = os.stat(path)
        with open("/proc/locks") as fh:
            rows = fh.read().splitlines()
    except OSError:
        return None
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for row in rows:
        fields = row.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == where:
            start = start_ticks(int(fields[4]))
            return None if start is None else Named(int(fields[4]), start)
    return None


def remove(paths: StatePaths, pid: int) -> None:
    """Remove worker.pid if it names `pid` (after a removed state directory it may name another)."""
    if names(paths, pid):
        try:
            os.unlink(paths.worker_pid)
        except FileNotFoundError:
            pass
