"""The readers of one FIFO path read one at a time, in the order keepalived started them.

For a moment two or three readers of one FIFO path live together: during a reload (keepalived
SIGTERMs the old reader and starts the next 17-34 ms later, on the same FIFO or a new one at the
same path), two reloads in a row, and a keepalived child started again after a crash.  Each
journals what it reads under the journal's lock, but reading and journaling are two steps: an old
reader that read lines, then lost the CPU, journaled them after lines the next reader read later
(seen: a busy 2-core CI run, six lines ~5 ms late); and a reader stopped while it starts, which
waits 0.1 s for the next one before it reads the rest of its own FIFO, was overtaken by that next
reader.  The lines of one FIFO path are journaled in the order keepalived wrote them only if a
reader reads nothing while a reader started before it still holds lines it has not journaled.

So every reader takes a *ticket* first thing at start, before its imports (cli.py): a POSIX record
lock on one byte of a file named for its FIFO path (in the registry, registry.py; another user's
reader, which cannot write there, in its state directory, once it knows it), at an offset that
orders readers by their start time (the kernel's, in clock ticks, then the pid).  Before its first
read it waits until no lock is held below its own offset (F_GETLK), and it lets its ticket go once
the last thing it read is journaled.  Record locks belong to the process: a fork (a worker) holds
none, and the kernel drops them when the reader dies.  Nothing wakes a process when a record lock
is let go, so the waiter tries again every RETRY, for at most HANDOVER_WAIT: a reader before it
still there then is no reader being replaced (keepalived started two readers on one FIFO, which
check-config flags, or it is stopped), and the log says so; then it reads beside it.
"""

from __future__ import annotations

import fcntl
import os
import select
import stat
import struct
import time

from notify_launcher import identity
from notify_launcher.process import drain
from notify_launcher.registry import REGISTRY, entry_path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from notify_launcher.log import Log

#: How long a reader waits for the ones started before it (s).  keepalived SIGKILLs a replaced
#: reader 1 s after its SIGTERM (2.2.7 and later), ours leaves at its stop_grace (at most 0.9 s) or
#: as soon as it sees the next reader, and the next reader starts 17 ms or more after that SIGTERM.
HANDOVER_WAIT = 1.5
#: How often it looks meanwhile (s): one system call; lines wait in the pipe meanwhile.
RETRY = 0.002
#: Appended to the FIFO's registry name; an escaped path never holds '%' but as "%25" or "%2F".
SUFFIX = "%reading"
#: A ticket's offset: the start time in clock ticks, then the pid below it (pid_max is at most 2**22).
PID_BITS = 22
#: struct flock as the C library lays it out, off_t 64-bit: l_type, l_whence, l_start, l_len, l_pid.
_FLOCK = "@hhqqi"


def lock_path(fifo: str, paths_root: str) -> str:
    """The ticket file of `fifo`: in the registry for root; in the state directory `paths_root` for
    another user, who cannot write the registry."""
    return entry_path(fifo, REGISTRY if os.geteuid() == 0 else paths_root) + SUFFIX


def early(argv: list[str]) -> ReadTurn | None:
    """A root reader's ticket, taken first thing at start (the FIFO is keepalived's last argument),
    before the imports: so that a reader started before another holds its ticket before that one
    looks.  (Another user's lives in its state directory, known only later.)"""
    fifo = argv[-1] if len(argv) > 1 else ""
    try:
        if os.geteuid() != 0 or not stat.S_ISFIFO(os.stat(fifo).st_mode):
            return None
    except OSError:
        return None
    turn = ReadTurn(fifo, lock_path(fifo, REGISTRY))
    turn.register()
    return turn


class ReadTurn:
    """`register()` takes the ticket, `take(log, wake_fd, until)` waits for the turn to read,
    `release()` gives it to the next reader.  Building one only stores state."""

    def __init__(self, fifo: str, path: str) -> None:
        self.fifo, self.path = fifo, path
        self.fd = -1
        self.ticket = 0
        self.trouble: str | None = None  # why there is no ticket (said in the log by take())
        self.taken = False  # take() ran (once is enough: it returns holding the turn, or reading beside)

    def register(self) -> None:
        """Take our ticket (again: nothing)."""
        if self.fd >= 0 or self.trouble is not None:
            return
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            self.ticket = identity.me().start << PID_BITS | os.getpid()
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, self.ticket)
        except OSError as exc:
            self.trouble = f"cannot take a ticket in {self.path} ({exc.strerror or exc})"
            self.release()

    def take(self, log: Log, wake_fd: int, until: Callable[[], float]) -> None:
        """Return once no reader started before us holds its ticket, or at `until()` (a monotonic time,
        read again after every wake-up: a SIGTERM, which writes to `wake_fd`, brings it closer).  A
        ticket that could not be taken is said in the log, and the reader reads as before."""
        if self.taken:
            return
        self.taken = True
        self.register()
        if self.trouble is not None:
            log.warn(None, None, f"{self.trouble}: this reader reads {self.fifo} without waiting for the one "
                                 f"before it, so during a reload the lines of the two may be journaled out of order")
            return
        started = time.monotonic()
        first = None
        while True:
            before = self._before()
            if before is None:
                break
            first = first or before
            bound = until()
            left = min(started + HANDOVER_WAIT, bound) - time.monotonic()
            if left <= 0:
                why = "keepalived's stop window closes" if bound < started + HANDOVER_WAIT else \
                    "not a reader keepalived is replacing (two readers configured on one FIFO -- see " \
                    "check-config -- or a stopped one)"
                log.warn(None, None, f"the earlier reader pid {before} still reads {self.fifo} after "
                                     f"{time.monotonic() - started:.1f}s: {why}; reading beside it, so the order "
                                     f"of lines between the two is not kept")
                return
            if select.select([wake_fd], [], [], min(left, RETRY))[0]:
                drain(wake_fd)
        if first is not None:
            log.info(None, None, f"waited {(time.monotonic() - started) * 1000:.0f} ms for the earlier reader "
                                 f"(pid {first}) to journal what it read from {self.fifo}")

    def release(self) -> None:
        """Let our ticket go (closing the file does, for a record lock); again: nothing."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _before(self) -> int | None:
        """The pid of a reader started before us that holds its ticket, if any."""
        query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, self.ticket, 0)
        kind, _, _, _, pid = struct.unpack(_FLOCK, fcntl.fcntl(self.fd, fcntl.F_GETLK, query))
        return None if kind == fcntl.F_UNLCK else pid

