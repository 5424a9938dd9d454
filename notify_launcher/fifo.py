"""keepalived's FIFO as the reader sees it: opened once (the notify_fifo_script keepalived starts
with the FIFO as its last argument), or followed across keepalived's restarts and reloads (service
mode, `notify-launcher serve`: keepalived makes a new FIFO, a new inode, each time).

Opened non-blocking, so opening never waits for a writer and a SIGTERM is never missed.
"""

from __future__ import annotations

import os
import select
import stat
import time

from notify_launcher.errors import EXIT_UNUSABLE, EXIT_USAGE, LauncherError
from notify_launcher.log import Log, Troubles
from notify_launcher.security import fifo_refusal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

RECHECK = 1.0  # service mode, while keepalived is silent: how often to look for a new FIFO


def open_fifo(path: str) -> int:
    """Open keepalived's FIFO for reading without waiting for a writer (so SIGTERM is never missed),
    once the trust rule passed it (security.fifo_refusal): its lines decide what root runs."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise LauncherError(f"FIFO {path}: {exc.strerror} (keepalived creates it from notify_fifo; "
                            f"the FIFO must be the last argument)", EXIT_UNUSABLE) from None
    if not stat.S_ISFIFO(st.st_mode):
        raise LauncherError(f"{path} is not a FIFO (keepalived passes its notify_fifo path as the last argument)",
                            EXIT_UNUSABLE)
    refused = fifo_refusal(path, os.geteuid())
    if refused:
        raise LauncherError(refused, EXIT_USAGE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise LauncherError(f"FIFO {path}: cannot open for reading: {exc.strerror} "
                            f"(keepalived makes it 0600, owned by the script user)", EXIT_UNUSABLE) from None
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):  # swapped since it was judged
        os.close(fd)
        raise LauncherError(f"FIFO {path} was replaced while it was being opened; try again", EXIT_UNUSABLE)
    return fd


class Fifo:
    """The FIFO the reader polls.  `fd` is -1 while there is none (service mode, between two
    keepalived runs); `recheck_at` is when to look at the path again (None: not following)."""

    def __init__(self, path: str, fd: int, follow: bool, poller: select.poll, log: Log) -> None:
        self.path, self.fd, self.follow, self.poller, self.log = path, fd, follow, poller, log
        self.troubles = Troubles(log)  # a wrong file at the path is looked at every RECHECK: say it once
        self.recheck_at: float | None = time.monotonic() if follow else None

    def watch(self) -> None:
        """Have the reader's poll() wake when the FIFO has data."""
        if self.fd >= 0:
            self.poller.register(self.fd, select.POLLIN)

    def read(self, feed: Callable[[bytes], None]) -> bool:
        """Hand `feed` what the FIFO holds, as it comes; False at EOF (keepalived closed it)."""
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return True
            if not data:
                return False
            self.recheck_at = None  # keepalived writes to this FIFO: it is the right one
            feed(data)

    def writer_gone(self) -> None:
        """Service mode: keepalived closed the FIFO (restart, reload, exit); follow it to the new one."""
        self.log.info(None, None, f"keepalived closed {self.path}; following it (restart or reload)")
        self.close()
        self.recheck_at = time.monotonic()

    def close(self) -> None:
        if self.fd >= 0:
            self.poller.unregister(self.fd)
            os.close(self.fd)
            self.fd = -1

    def recheck(self) -> None:
        """Service mode, until keepalived writes again: (re)open the FIFO at its path when it is missing
        or was replaced (keepalived makes a new one, a new inode, on reload and restart)."""
        self.recheck_at = time.monotonic() + RECHECK
        try:
            current = os.stat(self.path).st_ino
        except OSError:
            self.close()
            return
        if self.fd >= 0 and os.fstat(self.fd).st_ino == current:
            return
        self.close()
        try:
            self.fd = open_fifo(self.path)
        except LauncherError as exc:
            self.troubles.report("FIFO", None, None, f"{exc}; looking at it again every {RECHECK:g}s")
            return
        self.watch()
        reading = f"reading {self.path} (inode {current})"
        if not self.troubles.recovered("FIFO", reading):
            self.log.info(None, None, reading)

    def replaced(self) -> bool:
        """The path names another inode than ours: keepalived made a new FIFO (a reload)."""
        try:
            return os.stat(self.path).st_ino != os.fstat(self.fd).st_ino
        except OSError:
            return False  # removed: a stopping keepalived may clean up its FIFO
