"""One reader of a FIFO reads at a time: the next one starts reading once the one before it left.

For a moment two readers of one FIFO path live together: during a reload (keepalived SIGTERMs the
old reader and starts the next 17-34 ms later, on the same FIFO or a new one at the same path) and
when a keepalived child is started again after a crash.  Each journals what it reads under the
journal's lock, but reading and journaling are two steps: an old reader that read lines, then lost
the CPU, journaled them after lines the next reader read later (seen: a busy 2-core CI run,
`test_lvs` reload during a burst, six lines ~5 ms late).  The lines of one FIFO are journaled in
the order keepalived wrote them only if a reader reads nothing while an earlier one still holds
lines it has not journaled.

So every reader holds a `flock` on a file named for its FIFO path (in the registry of
predecessor.py for root, else in the state directory) while it reads, and releases it once the
last thing it read is journaled.  The next reader tries that lock before its first read, every
RETRY for at most HANDOVER_WAIT; the log names the holder (/proc/locks, locks.lock_holder).  A holder still there then is no
reader being replaced (keepalived started two readers on one FIFO, which check-config flags, or
it is stopped): the reader says so in the log and reads beside it, as keepalived asked.
"""

from __future__ import annotations

import fcntl
import os
import select
import time

from notify_launcher.locks import lock_holder
from notify_launcher.log import Log
from notify_launcher.predecessor import REGISTRY, entry_path
from notify_launcher.process import drain
from notify_launcher.statedir import FILE_MODE, ensure_dir, open_mode

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

#: How long the next reader waits for the one before it (s).  keepalived SIGKILLs a replaced reader
#: 1 s after its SIGTERM (2.2.7 and later), ours leaves at its stop_grace (at most 0.9 s) or as soon
#: as it sees the next reader, and the next reader starts 17 ms or more after that SIGTERM.
HANDOVER_WAIT = 1.5
#: How often the next reader tries the lock meanwhile (s).  Nothing wakes a process when a flock is
#: released (a pidfd says when the holder has exited, which is later: Python's own exit, 5-10 ms), and
#: lines wait in the pipe meanwhile; a try is one system call, and this lasts a hand-over at most.
RETRY = 0.002
#: Appended to the FIFO's registry name; an escaped path never holds '%' but as "%25" or "%2F".
SUFFIX = "%reading"


def lock_path(fifo: str, paths_root: str, registry: str = REGISTRY) -> str:
    """The lock file of `fifo`: in the host-wide registry for root, in the state directory for another
    user (who cannot write the registry)."""
    return entry_path(fifo, registry if os.geteuid() == 0 else paths_root) + SUFFIX


class ReadTurn:
    """`take(wake_fd, until)` waits for the turn to read, `release()` gives it to the next reader."""

    def __init__(self, fifo: str, path: str, log: Log) -> None:
        self.fifo, self.path, self.log = fifo, path, log
        self.fd = -1
        self.held = False
        self.taken = False  # take() ran (once is enough: it returns holding the turn, or reading beside)

    def take(self, wake_fd: int, until: Callable[[], float]) -> None:
        """Return once no earlier reader of the FIFO reads it, or at `until()` (a monotonic time, read
        again after every wake-up: a SIGTERM, which writes to `wake_fd`, brings it closer).  A lock
        file that cannot be made is said in the log, and the reader reads as before."""
        if self.taken:
            return
        self.taken = True
        if not self._open():
            return
        started = time.monotonic()
        holder = None
        while not self._try_lock():
            holder = holder or lock_holder(self.path)
            left = min(started + HANDOVER_WAIT, until()) - time.monotonic()
            if left <= 0:
                self.log.warn(None, None, f"the reader pid {holder.pid if holder else '?'} still reads {self.fifo} after "
                                          f"{time.monotonic() - started:.1f}s: not a reader keepalived is replacing "
                                          f"(two readers configured on one FIFO -- see check-config -- or a stopped "
                                          f"one); reading beside it, so the order of lines between the two is "
                                          f"not kept")
                return
            if select.select([wake_fd], [], [], min(left, RETRY))[0]:
                drain(wake_fd)
        if holder is not None:
            self.log.info(None, None, f"waited {(time.monotonic() - started) * 1000:.0f} ms for the reader before "
                                      f"us (pid {holder.pid}) to journal what it read from {self.fifo}")

    def release(self) -> None:
        """Unlock (for the forks that share the lock's open file too) and close; again: nothing."""
        if self.fd >= 0:
            if self.held:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd, self.held = -1, False

    def _open(self) -> bool:
        try:
            ensure_dir(os.path.dirname(self.path))
            self.fd = open_mode(self.path, os.O_RDONLY, FILE_MODE)
        except OSError as exc:
            self.log.warn(None, None, f"cannot open {self.path} ({exc.strerror}): this reader reads {self.fifo} "
                                      f"without waiting for one before it, so during a reload the lines of the "
                                      f"two readers may be journaled out of order")
            return False
        return True

    def _try_lock(self) -> bool:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self.held = True
        return True
