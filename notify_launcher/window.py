"""keepalived's stop window: it SIGKILLs the reader's process group 1 s after its SIGTERM.

From the SIGTERM on, no wait of the reader may outlast the window: the journal's lock (another
reader, a worker compacting through a slow fsync, a stopped process can hold it), the rejected
count's lock, a /proc read, a sleep.  One interval timer bounds them all: at `deadline` SIGALRM
raises `WindowClosed` in whatever call waits, and the reader uses what is left (`RESERVE`) to say
in the log what it could not journal.  A wait the kernel does not interrupt (a write stuck in
uninterruptible disk I/O) is beyond any signal's reach.

What is said lost must be exactly what was taken and not journaled, so WindowClosed never falls
between an effect and the record of it (bytes read from the FIFO and not yet among the lines the
reader holds; an event written to the journal and still in the backlog; a lock taken and not
known taken): such a step runs `held()`, and SIGALRM inside it raises at its end.  The waits
inside such a step come before its effects (`pause`), and raise there.
"""

from __future__ import annotations

import os
import signal
import time
from types import FrameType, TracebackType

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
    """`open(term_at)` arms the timer; `held()` is a step WindowClosed does not cut in two;
    `last_words()` re-arms it for the reserve, so the lines that say what was lost are bounded too;
    `close()` disarms it."""

    def __init__(self) -> None:
        self.deadline: float | None = None
        self._held = 0  # held() steps under way (nested)
        self._waiting = False  # inside such a step, in a pause(): nothing of it done yet
        self._closed: str | None = None  # the window closed inside a held step: where (raised at its end)

    def open(self, term_at: float) -> None:
        """Arm the timer (the earliest SIGTERM counts)."""
        if self.deadline is None or term_at + DEADLINE < self.deadline:
            self.deadline = term_at + DEADLINE
            signal.signal(signal.SIGALRM, self._alarm)
            _arm(self.deadline)

    def held(self) -> _Held:
        """A step from an effect to its record, as one: WindowClosed is raised before or after it."""
        return _Held(self)

    def pause(self, seconds: float) -> None:
        """A wait inside a held step, before any of its effects: WindowClosed may be raised here."""
        if self._closed is not None:
            self._raise()
        self._waiting = True
        try:
            time.sleep(seconds)
        finally:
            self._waiting = False

    def last_words(self) -> None:
        """After WindowClosed: the reserve, for the log lines that say what was lost."""
        self._closed = None
        if self.deadline is not None:
            _arm(self.deadline + RESERVE)

    def close(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)

    def _alarm(self, signum: int, frame: FrameType | None) -> None:
        """The message names where the reader was (file:line function)."""
        where = "?" if frame is None else \
            f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno} {frame.f_code.co_name}"
        if self._held and not self._waiting:
            self._closed = f"{where}, raised at the end of that step"
            return
        raise WindowClosed(where)

    def _raise(self) -> None:
        where, self._closed = self._closed, None
        raise WindowClosed(where)


class _Held:
    """StopWindow.held's context: counts the steps under way; at the last one's end, raises the
    WindowClosed its SIGALRM left waiting (unless one is on its way already)."""

    def __init__(self, window: StopWindow) -> None:
        self.window = window

    def __enter__(self) -> None:
        self.window._held += 1

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        window = self.window
        window._held -= 1
        if window._held == 0 and window._closed is not None and not isinstance(exc, WindowClosed):
            window._raise()


def _arm(at: float) -> None:
    signal.setitimer(signal.ITIMER_REAL, max(0.001, at - time.monotonic()))
