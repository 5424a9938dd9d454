"""keepalived's FIFO as the reader sees it: opened once (the notify_fifo_script keepalived starts
with the FIFO as its last argument), or followed across keepalived's restarts and reloads (service
mode, `notify-launcher serve`: keepalived makes a new FIFO, a new inode, each time).

Opened non-blocking, so opening never waits for a writer and a SIGTERM is never missed.
"""

from __future__ import annotations

import fcntl
import os
import select
import stat
import sys
import time
from contextlib import AbstractContextManager, nullcontext

from notify_launcher.errors import EXIT_UNUSABLE, EXIT_USAGE, LauncherError
from notify_launcher.log import Log, Troubles
from notify_launcher.security import fifo_refusal
from notify_launcher.window import WINDOW

#: ioctl(2) FIONREAD (asm-generic; termios has it, at an import the reader's start would pay for).
FIONREAD = 0x541B
#: A file time's precision (s): the kernel stamps it from a clock that moves once a tick.
TICK = 0.01

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

RECHECK = 1.0  # service mode, while keepalived is silent: how often to look for a new FIFO
#: ... and for SOON s after keepalived closed it (or we started): keepalived makes the new FIFO
#: within milliseconds of a reload and writes into it at once; 64 KiB unread, and it drops lines.
RECHECK_SOON, SOON = 0.01, 5.0
#: What `Fifo.read` returns once the pipe is empty, and at its end (else the last chunk's size).
EMPTY, EOF = -1, 0
CHUNK = 1 << 16  # bytes a read takes at most: a pipe's default capacity
#: fcntl's name for it from Python 3.10 on; the number is Linux's.
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)


def open_fifo(path: str, pinned: int = -1) -> int:
    """Open keepalived's FIFO for reading without waiting for a writer (so SIGTERM is never missed),
    once the trust rule passed it (security.fifo_refusal): its lines decide what root runs.
    `pinned`: the FIFO opened at start (cli.py), used if the path still names it; if keepalived
    replaced it since (a reload), it is ours all the same when the trust rule passes its
    directory and it is root's (or the script user's) alone."""
    if pinned >= 0:
        ours = os.fstat(pinned)
        try:
            st = os.stat(path)
        except OSError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != (ours.st_dev, ours.st_ino):
            refused = _replaced_refusal(path, ours)
            if refused:
                os.close(pinned)
                raise LauncherError(refused, EXIT_USAGE)
            return pinned
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
    if pinned >= 0:
        return pinned  # (the path names it: judged just now)
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


def _changed_ago(st: os.stat_result) -> float:
    """Seconds since the file's status last changed (its ctime, on the wall clock: a clock step
    moves it)."""
    return time.time() - st.st_ctime_ns / 1e9


def _writers_gone(fd: int) -> bool:
    """The FIFO `fd` reads from has had a writer and has none now (POLLHUP, pending bytes or not)."""
    probe = select.poll()
    probe.register(fd, select.POLLIN)
    return any(events & select.POLLHUP for _, events in probe.poll(0))


def _replaced_refusal(path: str, ours: os.stat_result) -> str | None:
    """For root, a FIFO keepalived replaced after we opened it: its directory judged as any path root
    trusts, and the FIFO (fstat: the path names another file now) root's alone."""
    if os.geteuid() != 0:
        return None
    why = fifo_refusal(os.path.join(os.path.dirname(os.path.abspath(path)), ""), 0)
    if why is None and (ours.st_uid != 0 or ours.st_mode & 0o066):
        why = (f"notify_fifo {path} (replaced since the reader started) is not root's alone: owner uid "
               f"{ours.st_uid}, mode {stat.S_IMODE(ours.st_mode):04o}")
    return why


class Fifo:
    """The FIFO the reader polls.  `fd` is -1 while there is none (service mode, between two
    keepalived runs); `recheck_at` is when to look at the path again (None: not following).
    `held()` is the reader's StopWindow.held: a read and the hand-off of its bytes are one step
    (what left the pipe is always the reader's to journal or to say lost)."""

    def __init__(self, path: str, fd: int, follow: bool, poller: select.poll, log: Log,
                 held: Callable[[], AbstractContextManager[None]] = nullcontext) -> None:
        self.path, self.fd, self.follow, self.poller, self.log = path, fd, follow, poller, log
        self.held = held
        self.troubles = Troubles(log)  # a wrong file at the path is looked at every RECHECK: say it once
        self.recheck_at: float | None = time.monotonic() if follow else None
        self.gone_at = time.monotonic()  # when keepalived closed the FIFO we followed (service mode)

    def watch(self) -> None:
        """Have the reader's poll() wake when the FIFO has data."""
        if self.fd >= 0:
            self.poller.register(self.fd, select.POLLIN)

    def read(self, feed: Callable[[bytes], None], budget: int | None = None) -> int:
        """Hand `feed` what the FIFO holds now, to its end: EMPTY (all read) or EOF (keepalived closed
        it); or, when a writer goes on meanwhile, `budget` bytes (default: as much as the pipe can
        hold, F_GETPIPE_SZ) and the size of the last chunk: the reader looks at its stop before it
        reads on (poll() says at once that more is there), so a writer that never pauses cannot keep
        it from leaving."""
        left = fcntl.fcntl(self.fd, F_GETPIPE_SZ) if budget is None else budget
        while True:
            got = self._chunk(feed, min(CHUNK, left))
            left -= max(got, 0)
            if got <= 0 or left <= 0:
                return got

    def finish_line(self, feed: Callable[[bytes], None], cut: Callable[[], bool]) -> int:
        """Before a reader leaves a FIFO it shares: the rest of the line its last read stopped inside
        (`cut()` says so), a byte at a time, so the next reader starts at a line.  keepalived writes a
        line with one write of less than PIPE_BUF bytes, so the rest is in the pipe already (another
        writer's unterminated bytes end at EMPTY).  Returns as `read` does."""
        got = EMPTY
        while cut():
            got = self._chunk(feed, 1)
            if got <= 0:
                break
        return got

    def _chunk(self, feed: Callable[[bytes], None], size: int) -> int:
        with self.held():
            try:
                data = os.read(self.fd, size)
            except BlockingIOError:
                return EMPTY
            if not data:
                return EOF
            self.recheck_at = None  # keepalived writes to this FIFO: it is the right one
            feed(data)
        return len(data)

    def writer_gone(self) -> None:
        """Service mode: keepalived closed the FIFO (restart, reload, exit); follow it to the new one."""
        self.log.info(None, None, f"keepalived closed {self.path}; following it (restart or reload)")
        self.close()
        self.recheck_at = self.gone_at = time.monotonic()

    def close(self) -> None:
        if self.fd >= 0:
            self.poller.unregister(self.fd)
            os.close(self.fd)
            self.fd = -1

    def recheck(self) -> None:
        """Service mode, until keepalived writes again: (re)open the FIFO at its path when it is missing
        or was replaced (keepalived makes a new one, a new inode, on reload and restart)."""
        now = time.monotonic()
        self.recheck_at = now + (RECHECK_SOON if now < self.gone_at + SOON else RECHECK)
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

    def unread(self) -> int:
        """Bytes in the pipe no reader has taken yet (FIONREAD); 0 if it cannot be asked."""
        try:
            return int.from_bytes(fcntl.ioctl(self.fd, FIONREAD, b"\0\0\0\0"), sys.byteorder)
        except OSError:
            return 0

    def unlinked_at(self) -> float | None:
        """When keepalived unlinked our FIFO and closed it (monotonic seconds, from its ctime: a tick's
        precision), if it did, less than keepalived's window ago: on a reload it does both right after
        its SIGTERM to us (docs/keepalived.md "Reload"), so this dates a SIGTERM whose handler ran
        late, before the next reader exists.  Only once no writer is left (POLLHUP): every write moves
        the ctime too, so while one holds it (a path someone removed long ago, an LVS child that
        reopened it) the ctime is only the last line's time.  None otherwise (or on a clock step
        that puts it out of that range)."""
        try:
            st = os.fstat(self.fd)
        except OSError:
            return None
        if st.st_nlink or not _writers_gone(self.fd):
            return None
        ago = _changed_ago(st)
        return time.monotonic() - ago if 0.0 <= ago <= WINDOW else None

    def replaced_since(self, since: float) -> bool:
        """`replaced()`, by a FIFO made at `since` (monotonic) or later -- as keepalived makes it at a
        reload, after its SIGTERM -- not one someone made anew while keepalived ran (rm + mkfifo, a
        tmpfiles line) and keepalived then stopped.  Its ctime dates it (a tick's precision: 10 ms
        are allowed; writes and chown only move it later)."""
        if not self.replaced():
            return False
        try:
            made_ago = _changed_ago(os.stat(self.path))
        except OSError:
            return False
        return time.monotonic() - made_ago >= since - TICK

    def replaced(self) -> bool:
        """The path names another inode than ours: keepalived made a new FIFO (a reload)."""
        try:
            return os.stat(self.path).st_ino != os.fstat(self.fd).st_ino
        except OSError:
            return False  # removed: a stopping keepalived may clean up its FIFO
