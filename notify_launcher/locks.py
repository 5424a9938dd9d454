"""worker.lock and standby.lock as filelock objects, the same on every filelock the launcher meets.

A lock file here must be 0600, never reached through a symlink, and keep its identity for as long
as the state directory lives (pidfile.lock_holder and a lingering worker's check of its lock both go
by its inode).  filelock's options for that changed under us:

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

import os

import filelock
from filelock import FileLock

from notify_launcher.statedir import FILE_MODE, open_mode


def _version(text: str) -> tuple[int, int]:
    """(major, minor) of a version string such as "3.9.0" or "4.0.0rc1"."""
    major, minor = (text.split(".") + ["0"])[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


FILELOCK_VERSION = _version(filelock.__version__)


def file_lock(path: str) -> FileLock:
    """A FileLock on `path`, made 0600 and kept across releases whatever filelock is installed."""
    os.close(open_mode(path, os.O_RDWR, FILE_MODE))
    if FILELOCK_VERSION >= (3, 30):
        return FileLock(path, mode=FILE_MODE, preserve_lock_file=True)
    if FILELOCK_VERSION >= (3, 10):
        return FileLock(path, mode=FILE_MODE)
    return FileLock(path)
