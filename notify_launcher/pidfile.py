"""worker.pid: which process holds worker.lock, as `PID START` (identity.py: the start time is
what makes a pid safe to act on later).  One writer (the worker, when it holds the lock), one
reader function.  worker.died: the last worker found dead by its successor with worker.pid still
naming it -- the successor rewrites worker.pid at once, and a reader that looks only then (a busy
machine) must still tell that death from a normal exit.
"""

from __future__ import annotations

import os
import select

from notify_launcher.identity import ProcessId, lives, me

#: How long a worker that took worker.lock gives the one worker.pid still names to end its exit (s).
EXITING = 0.1
from notify_launcher.statedir import StatePaths, write_atomic


def write(paths: StatePaths) -> None:
    """Name this process (the worker that took worker.lock), and, if worker.pid named a worker that
    no longer runs (one that ends normally removes it first: that one died), that one in
    worker.died.  Raises OSError (a full disk).  Not fsync'ed (~0.3 ms of a worker's start where the
    state directory is on a disk): the file names a live process, and only a machine crash would
    lose it, which ends that process too."""
    pid, start = me()
    before = read(paths)
    if before is not None and before.pid != pid and _gone(before):
        write_atomic(paths.worker_died, f"{before.pid} {before.start}\n".encode(), sync=False)
    write_atomic(paths.worker_pid, f"{pid} {start}\n".encode(), sync=False)


def _gone(worker: ProcessId) -> bool:
    """`worker` (named in worker.pid, whose lock we took) no longer runs, or ends within EXITING: a
    killed worker lets go of the lock where the kernel closes its files, and the rest of its exit
    follows within milliseconds; one that runs on holds a worker.lock removed under it (the worker
    waits for it later, Worker._wait_for_live_workers)."""
    if not lives(*worker):
        return True
    try:
        pidfd = os.pidfd_open(worker.pid)
    except OSError:
        return True
    try:
        select.select([pidfd], [], [], EXITING)  # (readable once it has exited)
    finally:
        os.close(pidfd)
    return not lives(*worker)


def read(paths: StatePaths, path: str | None = None) -> ProcessId | None:
    """What worker.pid (or `path`: worker.died) says (None: no file, or damaged)."""
    try:
        with open(path or paths.worker_pid, "rb") as fh:
            pid, start = fh.read().split()[:2]
        return ProcessId(int(pid), int(start))
    except (OSError, ValueError):
        return None


def names(paths: StatePaths, pid: int) -> bool:
    """worker.pid names `pid` (alive or not: a worker that ends normally removes the file first)."""
    named = read(paths)
    return named is not None and named.pid == pid


def died(paths: StatePaths, worker: ProcessId) -> bool:
    """`worker`'s successor found it dead, named in worker.pid."""
    return read(paths, paths.worker_died) == worker


def remove(paths: StatePaths, pid: int) -> None:
    """Remove worker.pid if it names `pid` (after a removed state directory it may name another)."""
    if names(paths, pid):
        try:
            os.unlink(paths.worker_pid)
        except FileNotFoundError:
            pass
