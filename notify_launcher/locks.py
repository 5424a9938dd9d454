"""The two lock files, each owned here whatever takes it: how it is taken, waited for, found held,
and who holds it.  handoff.py argues the protocol they serve.

- worker.lock: held by the one worker that runs actions, for its whole life (WorkerLock).  Who holds
  it is read from /proc/locks (`lock_holder`), so a worker that could not write worker.pid is
  found all the same.
- standby.lock: held by the one worker queued behind it, so a burst queues one process, not
  thousands.  The reader takes it without waiting and hands the locked descriptor to the worker it
  forks (`try_standby`, `release_standby`); a worker in a systemd unit cannot inherit a descriptor
  and queues on it itself (`wait_standby`); the unit's helper watches it change hands (`standby_held`).

Both are flock(2) locks, whether taken with fcntl here or through filelock: they contend on the same
lock.  A lock file must be 0600, never reached through a symlink, and keep its identity for as long
as the state directory lives (a lingering worker's check that it still holds the lock at the path
goes by the inode).  filelock's options for that changed under us:

- 3.9 (Debian 12) takes no `mode`: its os.open would create the file with the umask's mode;
- 3.10 takes `mode` (later releases also fchmod the file to it at every acquire: to 0644 unless told);
- 3.21 to 3.29 unlink the file at every release, with no way to say no (setup.cfg excludes them);
- 3.30 takes `preserve_lock_file`, without which it unlinks too.

So the file is made here first, with exactly FILE_MODE and O_NOFOLLOW (statedir.open_mode), and
filelock gets the options its version knows.  Making it first also keeps filelock's own O_TRUNC
open away from a symlink (CVE-2025-68146) on releases older than its fix: open_mode refuses a
symlink, and filelock then opens the regular file that is there (the state directory is 0700 and
ours, so nobody else can swap it in between).
"""

from __future__ import annotations

TYPE_CHECKING = False

import fcntl
import os

from notify_launcher import identity
from notify_launcher.statedir import FILE_MODE, StatePaths, open_mode

if TYPE_CHECKING:
    from collections.abc import Callable

    from filelock import FileLock


def _version(text: str) -> tuple[int, int]:
    """(major, minor) of a version string such as "3.9.0" or "4.0.0rc1"."""
    major, minor = (text.split(".") + ["0"])[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def _file_lock(path: str) -> FileLock:
    """A FileLock on `path`, made 0600 and kept across releases whatever filelock is installed.
    filelock is imported here, not at the top: the reader imports this module and must stay light."""
    import filelock

    os.close(open_mode(path, os.O_RDWR, FILE_MODE))
    version = _version(filelock.__version__)
    if version >= (3, 30):
        return filelock.FileLock(path, mode=FILE_MODE, preserve_lock_file=True)
    if version >= (3, 10):
        return filelock.FileLock(path, mode=FILE_MODE)
    return filelock.FileLock(path)


def _file_id(fd_or_path: int | str) -> tuple[int, int]:
    st = os.stat(fd_or_path)
    return st.st_dev, st.st_ino


class WorkerLock:
    """worker.lock, held by the worker for its whole life.  Building one only stores the path.
    Taken with flock on its own descriptor, not through filelock: a worker's first action must not
    wait for filelock's import (logging, secrets, pathlib, decimal, ...: a third of a cold worker's
    start-up), and a queued worker wakes the moment the lock is free instead of at filelock's next
    50 ms poll."""

    def __init__(self, paths: StatePaths) -> None:
        self.path = paths.worker_lock
        self._pin = -1  # the locked file, kept open: its inode cannot be reused while we live

    def take(self, waiting: Callable[[identity.ProcessId | None], None]) -> None:
        """Take the lock; if another worker holds it, call `waiting(holder)` once, then wait for it."""
        self._pin = open_mode(self.path, os.O_RDONLY, FILE_MODE)
        try:
            fcntl.flock(self._pin, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            waiting(lock_holder(self.path))
            fcntl.flock(self._pin, fcntl.LOCK_EX)

    def ours(self) -> bool:
        """The file at worker.lock's path is still the one we locked (False once someone removed the
        state directory: a new worker may own the new one).  By inode alone: an older worker queued
        through filelock (Debian 12's 3.9 opens with O_TRUNC) changes the file's times at every try."""
        try:
            return _file_id(self.path) == _file_id(self._pin)
        except OSError:
            return False

    def release(self) -> None:
        if self._pin >= 0:
            os.close(self._pin)  # (closing our only descriptor of it lets the lock go)
            self._pin = -1


def lock_holder(path: str) -> identity.ProcessId | None:
    """The process holding a flock on `path`, from /proc/locks: for worker.lock the worker, found even
    when it could not write worker.pid (a full disk).  Waiters ("->") are not holders."""
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
            return identity.of(int(fields[4]))
    return None


def open_standby(paths: StatePaths) -> int:
    """The reader's descriptor of standby.lock, kept for its later tries.  Raises OSError."""
    return open_mode(paths.standby_lock, os.O_RDWR, FILE_MODE)


def try_standby(fd: int) -> bool:
    """The reader's try for standby.lock on its descriptor, without waiting; False if a worker is
    queued already.  Taken, the descriptor is for the worker it forks to inherit: then the reader
    closes its copy (the child's keeps the lock), or calls `release_standby` if the fork failed."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def release_standby(fd: int) -> None:
    """Let standby.lock go (the worker listens now, so the next unanswered ring may spawn again)."""
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def wait_standby(paths: StatePaths, timeout: float) -> Callable[[], None] | None:
    """A systemd unit's worker queues on standby.lock itself (a unit inherits no descriptor): the
    function that releases it, or None if another worker kept it for `timeout` s."""
    from filelock import Timeout

    lock = _file_lock(paths.standby_lock)
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        return None
    return lock.release


def standby_held(paths: StatePaths) -> bool:
    """Someone holds standby.lock now (looked at by taking it without waiting, and letting it go)."""
    fd = os.open(paths.standby_lock, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        return not try_standby(fd)
    finally:
        os.close(fd)  # (closing the only descriptor releases a lock we took)
