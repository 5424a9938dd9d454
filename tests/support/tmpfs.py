"""A small tmpfs as a state directory, for the tests of a full disk (root only: it mounts).

`mounted(path, size)` mounts it for a `with` block and unmounts it after, whatever the block did;
`fill_file_system` fills it.  The unmount is lazy (`umount -l`): a process still holding a file
there does not keep the mount, and the tests end theirs first (`before_unmount`).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def mounted(path: Path, size: str, before_unmount: Callable[[], None] = lambda: None) -> Iterator[Path]:
    """A tmpfs of `size` (mount's syntax: "64k", "4m") on `path`, made 0700 if missing;
    `before_unmount` runs first on the way out (a setup's `end_processes`)."""
    path.mkdir(mode=0o700, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        try:
            before_unmount()
        finally:
            subprocess.run(["umount", "-l", str(path)], check=False)


def fill_file_system(filler: Path) -> None:
    """Write zeros into `filler` until its file system is full (ENOSPC), in small pieces so that
    little room is left."""
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while os.write(fd, b"\0" * 512):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
