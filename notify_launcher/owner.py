"""The keepalived process that started this reader (its *starter*), and keepalived itself: tells a
SIGTERM that is keepalived stopping or reloading us from the death of the keepalived child that
started us, which keepalived's main process starts again, and that child the next reader.

keepalived runs the `notify_fifo_script` from one child process: the VRRP child, or the checker
child for the global `notify_fifo` whenever a checker runs (docs/keepalived.md, "LVS sites").  When
that child crashes, keepalived respawns it and the new child starts a new reader on the same FIFO,
which the other child keeps open: the old reader sees no EOF and no STOP line, only, when keepalived
exec'd it directly, the SIGTERM of its parent-death signal.  That is no stop of keepalived, so no
`READER STOP` and no `stop_action`.  keepalived starts a script in one of two shapes:

- *direct* (`execve`; the script leads its own process group, with PR_SET_PDEATHSIG SIGTERM): the
  starter is our parent.  A SIGTERM after the starter exited is its parent-death signal.
- *through `sh -c`* (`system()`; the checker with `--all` and no `virtual_server`): the starter is
  the parent of our process group's leader (keepalived's fork that calls system()).  No signal
  comes when the starter dies; its pidfd tells us.  A SIGTERM here always comes from keepalived
  killing the group (a stop or a reload), even if the starter exits a moment later.

A starter counts only when it runs the same executable as its parent, as a keepalived child and
keepalived's main process do: a reader started from a shell, or in service mode, has none, and
nothing changes for it.
"""

from __future__ import annotations

import os
import select

from notify_launcher import identity
from notify_launcher.identity import ProcessId
from notify_launcher.value import Value


def starter_of(pid: int) -> int | None:
    """The process that started `pid` the way keepalived starts a script: its parent when `pid` leads
    its own process group (exec'd directly), else the parent of its process group's leader (under
    `sh -c`).  None if /proc cannot say (the leader is gone)."""
    st = identity.stat(pid)
    leader = st if st is None or st.pgrp == pid else identity.stat(st.pgrp)
    return None if leader is None else leader.ppid


def _same_program(a: int, b: int) -> bool:
    """Both processes run the same executable, as keepalived's children and its main process do."""
    try:
        return os.readlink(f"/proc/{a}/exe") == os.readlink(f"/proc/{b}/exe")
    except OSError:
        return False


def _exited(pidfd: int) -> bool:
    """The process behind `pidfd` has exited (a zombie counts: it is gone for us); -1: it was gone
    before we could open one."""
    return pidfd < 0 or bool(select.select([pidfd], [], [], 0)[0])


class Seen(Value):
    """What `early()` found: our starter and keepalived's main process above it, each with its start
    time, so the decision holds even if both are gone (and their pids reused) by the time we look."""

    __slots__ = ("starter", "keepalived")

    def __init__(self, starter: ProcessId, keepalived: ProcessId) -> None:
        self.starter, self.keepalived = starter, keepalived


def early() -> Seen | None:
    """Our starter and keepalived's main process, looked up at once (before any heavy import): under
    `sh -c` keepalived's SIGTERM kills our process group's leader, and with it the way from us to
    the starter, and a starter that crashes while we start is reaped by keepalived, which then starts
    it again: a restart we can tell only if we knew both before.  None: no keepalived child (a fork
    of a process running the same executable) started us."""
    pid = starter_of(os.getpid())
    st = None if pid is None else identity.stat(pid)
    if pid is None or st is None or not _same_program(pid, st.ppid):
        return None
    main = identity.of(st.ppid)
    return None if main is None else Seen(ProcessId(pid, st.start), main)


def _watch(ident: ProcessId) -> int:
    """A pidfd on `ident` if it still runs, else -1 (gone, or its pid is another process's now).
    Any other failure (no pidfd_open, no fd left) is raised: that says nothing of the process."""
    try:
        fd = os.pidfd_open(ident.pid)
    except ProcessLookupError:
        return -1
    if not identity.is_running(ident):  # checked after the open: the fd cannot name a later process
        os.close(fd)
        return -1
    return fd


class Starter:
    """Watch the process that started us and keepalived's main process above it.

    Building one only stores state (`seen`: what `early()` found, if it was called); `start()` opens
    their pidfds.  A starter already gone then still counts: keepalived reaped and restarts it."""

    def __init__(self, seen: Seen | None = None) -> None:
        self.seen = seen
        self.direct = False
        self.starter: ProcessId | None = None
        self.keepalived: ProcessId | None = None
        self.pidfd = -1  # the starter's: readable once it exited; -1 once known: gone before we looked
        self._main_fd = -1

    def start(self) -> None:
        self.direct = os.getpgrp() == os.getpid()
        seen = self.seen or early()
        if seen is None:
            return  # no keepalived child (a fork of keepalived's main process) started us
        try:
            self.pidfd, self._main_fd = _watch(seen.starter), -1
            self._main_fd = _watch(seen.keepalived)
        except OSError:
            self.close()
            return  # nothing watched: every end is taken as keepalived's, as for a reader nobody started
        self.starter, self.keepalived = seen.starter, seen.keepalived

    @property
    def gone(self) -> bool:
        """Our starter had exited before `start()` could watch it."""
        return self.starter is not None and self.pidfd < 0

    @property
    def pid(self) -> int | None:
        """The starter's pid, as seen at start (None: no keepalived process started us)."""
        return None if self.starter is None else self.starter.pid

    def main(self) -> ProcessId | None:
        """keepalived's main process while it runs (None: not known, or gone): the next reader may be
        started by another of its children -- the one it started in place of ours that died, or its
        other child when a reload moves the script between the VRRP and checker children."""
        if self.keepalived is None or not identity.is_running(self.keepalived):
            return None
        return self.keepalived

    def close(self) -> None:
        for fd in (self.pidfd, self._main_fd):
            if fd >= 0:
                os.close(fd)
        self.pidfd = self._main_fd = -1

    def respawn(self, term: bool) -> str | None:
        """Why this reader's end is not keepalived stopping, or None if it may be.

        `term`: keepalived's SIGTERM came.  Then only a parent-death signal counts (the direct
        shape); without one, only the starter's exit (its pidfd became readable)."""
        if self.starter is None or self.keepalived is None or (term and not self.direct):
            return None
        # (directly started, our parent is the starter: the kernel re-parents us before it sends the
        # parent-death SIGTERM, but makes the starter's pidfd readable only after -- a moment a
        # SIGTERM that comes as we start our loop can fall in)
        gone = _exited(self.pidfd) or (self.direct and os.getppid() != self.starter.pid)
        if not gone or _exited(self._main_fd) or not identity.is_running(self.keepalived):
            return None
        return (f"keepalived's process {self.starter.pid}, which started this reader, is gone while keepalived "
                f"(pid {self.keepalived.pid}) runs on: it starts that process again, and it the next reader")
