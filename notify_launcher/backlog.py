"""Events the reader accepted but has not journaled yet: held in memory, in order, while the journal
cannot be written (a full or read-only disk, a removed state directory), journaled oldest first
as soon as it can be.  Nothing is dropped without an ERROR line naming it.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable

from notify_launcher.events import Event
from notify_launcher.journal import JournalWriter
from notify_launcher.log import Log, Troubles

BACKLOG_MAX = 100_000  # events held in memory while the journal cannot be written
RETRY_INTERVAL = 1.0  # how often the reader tries again while events wait


class Backlog:
    """A FIFO queue of (event, time received) in front of the journal."""

    def __init__(self, journal: JournalWriter, log: Log, limit: int = BACKLOG_MAX) -> None:
        self.journal, self.log, self.limit = journal, log, limit
        self.troubles = Troubles(log)
        self._held: deque[tuple[Event, float]] = deque()

    def __len__(self) -> int:
        return len(self._held)

    def events(self) -> list[Event]:
        """What waits, oldest first."""
        return [event for event, _ in self._held]

    def add(self, event: Event) -> None:
        """Hold `event` (received now); when `limit` events wait already, the oldest is dropped, and said."""
        if len(self._held) >= self.limit:
            lost, _ = self._held.popleft()
            self.log.error(None, lost, f"DROPPED: more than {self.limit} events wait for the journal")
        self._held.append((event, time.time()))

    def flush(self, journaled: Callable[[int | None, Event], None]) -> OSError | None:
        """Journal what waits, oldest first, calling `journaled(seq, event)` after each (before its
        "received" line: the reader rings there, so the worker starts while the line is written;
        seq None: spilled, the journal's lock was busy, see journal.py).
        Returns the error that stopped it (logged once while it lasts), None once all is journaled."""
        while self._held:
            event, received = self._held[0]
            try:
                seq = self.journal.append(event, received, os.getpid())
            except OSError as exc:
                self.troubles.report("journal", None, None, f"cannot write the journal {self.journal.path} "
                                     f"({exc.strerror}); events wait in memory, in order; retrying every "
                                     f"{RETRY_INTERVAL:g}s")
                return exc
            self._held.popleft()
            journaled(seq, event)
            self.troubles.recovered("journal")
            late = time.time() - received
            if seq is None:
                self.log.info(seq, event, "received; the journal's lock is busy: kept in the spill file, numbered "
                                          "once the lock is free")
            elif late > RETRY_INTERVAL / 2:
                self.log.info(seq, event, f"received (journaled late, after {late:.1f}s)")
            else:
                self.log.info(seq, event, "received")
        return None
