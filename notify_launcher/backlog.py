"""Events the reader accepted but has not journaled yet: held in memory, in order, while the journal
cannot be written (a full or read-only disk, a removed state directory), journaled oldest first
as soon as it can be.  Nothing is dropped without an ERROR line naming it.
"""

from __future__ import annotations

TYPE_CHECKING = False

import os
import time
from collections import deque
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext

from notify_launcher.events import Event, Rejected
from notify_launcher.journal import JournalWriter
from notify_launcher.log import Log, Troubles

if TYPE_CHECKING:
    from collections.abc import Callable

BACKLOG_MAX = 100_000  # events held in memory while the journal cannot be written
RETRY_INTERVAL = 1.0  # how often the reader tries again while events wait
LOST_SHOWN = 20  # events named one by one when the reader exits with events not journaled


class Backlog:
    """A FIFO queue of (event, time received) in front of the journal.  `held()`: the reader's
    StopWindow.held, so an event journaled is never also an event said lost."""

    def __init__(self, journal: JournalWriter, log: Log, limit: int = BACKLOG_MAX,
                 held: Callable[[], AbstractContextManager[None]] = nullcontext) -> None:
        self.journal, self.log, self.limit, self.held = journal, log, limit, held
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

    def flush(self, journaled: Callable[[int | None, Event], None], into: JournalWriter | None = None) -> OSError | None:
        """Journal what waits, oldest first, calling `journaled(seq, event)` after each (before its
        "received" line: the reader rings there, so the worker starts while the line is written;
        seq None: spilled, the journal's lock was busy, see journal.py).  `into`: another state
        directory's journal than ours (predecessor.py), named in the "received" line.
        Returns the error that stopped it (logged once while it lasts), None once all is journaled."""
        journal = into or self.journal
        where = "" if into is None else f"; journaled into {os.path.dirname(into.path)}, behind its work"
        while self._held:
            event, received = self._held[0]
            with self.held():  # (its waits for the lock come before the write: journal.pause)
                try:
                    seq = journal.append(event, received, os.getpid())
                except OSError as exc:
                    failed: OSError | None = exc
                else:
                    failed = None
                    self._held.popleft()
                    journaled(seq, event)
            if failed is not None:
                self.troubles.report("journal", None, None, f"cannot write the journal {journal.path} "
                                     f"({failed.strerror}); events wait in memory, in order; retrying every "
                                     f"{RETRY_INTERVAL:g}s")
                return failed
            self.troubles.recovered("journal")
            late = time.time() - received
            if seq is None:
                self.log.info(seq, event, "received; the journal's lock is busy: kept in the spill file, numbered "
                                          f"once the lock is free{where}")
            elif late > RETRY_INTERVAL / 2:
                self.log.info(seq, event, f"received (journaled late, after {late:.1f}s{where})")
            else:
                self.log.info(seq, event, f"received ({where[2:]})" if where else "received")
        return None

    def lost(self, why: str, end: str | None, unseen: Sequence[bytes] = (), held: bool = True) -> None:
        """The reader exits with events not journaled: say how many, why, whether `stop_action` will
        run (`end`: the state of the reader's own READER event among them; None: not known yet,
        not among them; "": not in question), and each event (the first LOST_SHOWN).  `unseen`:
        lines read from the FIFO after those, not even parsed (each counted as an event, and shown
        as it came).  `held`: the events held in memory count (else only `unseen`: the held ones
        are still to be journaled)."""
        lost = self.events() if held else []
        after = {"STOP": "; stop_action will not run", None: "; nor is the reader's own end (READER reader STOP "
                 "or RELOAD): if keepalived is stopping, stop_action will not run"}.get(end, "")
        unparsed = f"; {len(unseen)} of them lines read from the FIFO, not yet parsed" if unseen else ""
        self.log.error(None, None, f"LOST: {len(lost) + len(unseen)} events not journaled ({why}{unparsed}){after}")
        for event in lost[:LOST_SHOWN]:
            self.log.error(None, event, "LOST: not journaled")
        for raw in unseen[:max(0, LOST_SHOWN - len(lost))]:
            self.log.error(None, None, f"LOST: not journaled (read, not parsed): {Rejected(raw, '').shown()}")
