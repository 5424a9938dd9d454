"""keepalived's stop window: it SIGKILLs the reader's process group 1 s after its SIGTERM.

From the SIGTERM on, no wait of the reader may outlast the window: the journal's lock (another
reader, a worker compacting through a slow fsync, a stopped process can hold it), the rejected
count's lock, a /proc read, a sleep.  One interval timer bounds them all: at `deadline` SIGALRM
raises `WindowClosed` in whatever call waits, and the reader uses what is left (`RESERVE`) to say
in the log what it could not journal.  A wait the kernel does not interrupt (a write stuck in
uninterruptible disk I/O) is beyond any signal's reach.
"""

from __future__ import annotations

import os
import signal
import time
from types import FrameType

#: keepalived's SIGTERM -> SIGKILL (docs/keepalived.md, "Shutdown").
WINDOW = 1.0
#: What is kept of the window, after the deadline, for the log lines that say what was lost.
RESERVE = 0.04
#: The deadline, after SIGTERM: `stop_grace` (at most 0.9 s, config.py) plus time to journal.
DEADLINE = WINDOW - RESERVE - 0.01


class WindowClosed(BaseException):
    """Raised by SIGALRM at the deadline, in whatever call was waiting.  A BaseException: the reader's
    "never die of our own bug" handlers must not take it for one."""


class StopWindow:
    """`open(term_at)` arms the timer; `last_words()` re-arms it for the reserve, so the lines that
    say what was lost are bounded too; `close()` disarms it."""

    def __init__(self) -> None:
        self.deadline: float | None = None

    def open(self, term_at: float) -> None:
        """Arm the timer (the earliest SIGTERM counts)."""
        if self.deadline is None or term_at + DEADLINE < self.deadline:
            self.deadline = term_at + DEADLINE
            signal.signal(signal.SIGALRM, _closed)
            _arm(self.deadline)

    def last_words(self) -> None:
        """After WindowClosed: the reserve, for the log lines that say what was lost."""
        if self.deadline is not None:
            _arm(self.deadline + RESERVE)

    def close(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _arm(at: float) -> None:
    signal.setitimer(signal.ITIMER_REAL, max(0.001, at - time.monotonic()))


def _closed(signum: int, frame: FrameType | None) -> None:
    """The message names where the reader was waiting (file:line function)."""
    where = "?" if frame is None else \
        f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno} {frame.f_code.co_name}"
    raise WindowClosed(where)
