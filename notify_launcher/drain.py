"""The drain: run every journaled event after the last finished one, strictly in sequence order.

One event can never stop the queue: whatever goes wrong while preparing, running or recording it is
that event's failure (logged with its traceback, recorded, and the next event runs), and a worker
that dies on it outright is counted by the `try` record written first, which the queue waits for
(recovery.py).
"""

from __future__ import annotations

TYPE_CHECKING = False

import os
import time

from notify_launcher.events import READER_TYPE
from notify_launcher.eventrun import EventRunner
from notify_launcher.following import Following
from notify_launcher.journal import Entry, JournalFollower, damaged_seq, describe
from notify_launcher.ledger import Ledger, end_of
from notify_launcher.onfailure import Ended, OnFailureRunner
from notify_launcher.publisher import MetricsPublisher
from notify_launcher.statedir import Superseded

if TYPE_CHECKING:
    from collections.abc import Callable

    from notify_launcher.records import EndRecord

JOURNAL_MAX = 64 * 1024  # compact when idle and larger than this (the state dir is usually tmpfs: RAM)


class Drain:
    """`done_seq`: the last finished event; `reload_at`: when the last READER RELOAD event ran
    (monotonic; the worker stands by for the next reader after it)."""

    def __init__(self, following: Following, ledger: Ledger, publisher: MetricsPublisher,
                 on_failure: OnFailureRunner, runner: EventRunner, worker: int) -> None:
        self.following, self.ledger, self.publisher, self.on_failure = following, ledger, publisher, on_failure
        self.runner, self.worker = runner, worker
        self.done_seq = 0
        self.reload_at = float("-inf")
        #: TYPE NAME -> the state its last completed action ran for (ended ok, or nothing to run): `repeat = skip`
        self.completed: dict[str, str] = {}

    def start(self, done_seq: int, last: dict[str, EndRecord]) -> None:
        """Follow the journal from here on; `done_seq` is where the progress file says we are, `last`
        each TYPE NAME's last end record there."""
        self.journal = JournalFollower(self.following.paths.journal,
                                       report=lambda *said: self.following.log.line(*said))
        self.done_seq = done_seq
        self.completed = {key: end["state"] for key, end in last.items()
                          if end.get("ok") and not end.get("result", "").startswith("superseded")}

    def pending(self) -> bool:
        """The journal grew since the last read."""
        return self.journal.pending()

    def drain(self, owner: Callable[[], bool]) -> bool:
        """Run everything journaled; False if we must leave (`owner()` said the state directory is
        no longer ours)."""
        while True:
            if not owner():
                return False
            entries, damaged = self.journal.read_new()
            for line in damaged:
                self.following.log.error(damaged_seq(line), None, f"damaged journal line skipped: {describe(line)}")
            if not entries:
                if not self.publisher.published:
                    self.publisher.publish([])  # at start, with nothing to do
                return True
            self._follow_state_files(entries[0])
            entries = [e for e in entries if e.seq > self.done_seq]
            if not self.publisher.published:
                self.publisher.publish(entries)  # at start: the counts, and the queue this worker found
            newest = {e.event.key: e.seq for e in entries}
            for n, entry in enumerate(entries, 1):
                if entry.seq != self.done_seq + 1 and self.done_seq:
                    self.following.log.error(entry.seq, entry.event, f"events #{self.done_seq + 1}..#{entry.seq - 1} "
                                                                     f"are missing from the journal")
                self._take_up(entry, newest.get(entry.event.key, entry.seq))
                self.done_seq = entry.seq
                if entry.event.type == READER_TYPE and entry.event.state == "RELOAD":
                    self.reload_at = time.monotonic()  # the next reader is starting: stand by for it
                self.publisher.publish(entries[n:])
                self.on_failure.run()

    def compact(self, still_ours: Callable[[], bool]) -> None:
        """Keep the state directory small when the queue is idle: it usually lives in /run, which is RAM.
        `still_ours` (the worker's lock check) is asked right before each file is replaced: a worker
        whose worker.lock was removed while it compacted (a slow fsync) must not put its old copy
        over the files of the worker that owns them now; it leaves at its next drain."""
        log = self.following.log
        try:
            if _size(self.following.paths.journal) > JOURNAL_MAX and self.journal.compact(still_ours):
                log.info(None, None, f"journal compacted (everything up to #{self.done_seq} is done)")
            self.ledger.compact(still_ours)
        except Superseded:
            pass
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            log.warn(None, None, f"cannot compact the state directory ({where}{exc.strerror}); will try again")

    def _follow_state_files(self, first: Entry) -> None:
        """Before a batch: the newest settings, and state files someone removed (journal, progress)."""
        self.following.follow()
        paths, log = self.following.paths, self.following.log
        if self.ledger.follow():
            log.warn(None, None, f"{paths.progress} was removed; recording into a new one")
        if self.journal.replaced:
            self.journal.replaced = False
            log.warn(first.seq, first.event, f"{paths.journal} was removed and created anew; following it")
            if first.seq <= self.done_seq:
                log.error(first.seq, first.event, f"numbering restarted at #{first.seq}, below the last finished "
                                                  f"#{self.done_seq} (journal and progress removed); running the new events")
                self.done_seq = first.seq - 1

    def _take_up(self, entry: Entry, newest: int) -> None:
        """One event, whatever happens: `try` first (so a death here is counted), then its action,
        with the settings it was journaled under (a reload changes what comes after it, never what
        came before); an exception is this event's failure, never the queue's."""
        self.ledger.insist({"op": "try", "seq": entry.seq, "worker": self.worker}, entry.event)
        settings = self.following.settings
        try:
            settings = self.following.for_entry(entry)
            event = entry.event
            if newest != entry.seq and event.type != READER_TYPE and settings.coalesce:
                self.following.log.info(entry.seq, event, f"skipped: superseded by #{newest} (coalesce = yes)")
                self.ledger.finish(end_of(entry, f"superseded by #{newest}", ok=True, worker=self.worker), event)
            elif self.completed.get(event.key) == event.state and settings.repeat_for(event) == "skip":
                self.following.log.info(entry.seq, event, f"skipped: {event.key} is {event.state} already, as after "
                                                          f"its last completed action (repeat = skip)")
                self.ledger.finish(end_of(entry, f"skipped: {event.state} repeated (repeat = skip)", ok=True,
                                          worker=self.worker), event)
            else:
                self.completed.pop(event.key, None)  # until this event's end says otherwise
                if self.runner.run(entry, settings):
                    self.completed[event.key] = event.state
        except Exception as exc:
            self.following.log.exception(entry.seq, entry.event, "FAILED inside the launcher (the next event runs)", exc)
            end = end_of(entry, f"failed: {type(exc).__name__}: {exc}"[:200], ok=False, worker=self.worker)
            self.ledger.finish(end, entry.event)
            self.on_failure.due(Ended(entry, end, (), settings))


def _size(path: str) -> int:
    """0 for a file not made yet (the journal, before the reader's first event)."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
