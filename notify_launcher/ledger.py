"""The worker's side of the progress file: every record it writes, and what a failed write means.

A `try` record comes before anything that could fail, so a worker that dies on an event is counted
and its successor recovers it; an `end` record is what makes an event never run again.  So until
either is on disk (a full state file system) the queue waits for it.  The counters the metrics file shows are folded in as records are
written (totals.py).
"""

from __future__ import annotations

TYPE_CHECKING = False

import time

from notify_launcher.following import Following
from notify_launcher.history import History
from notify_launcher.journal import Entry
from notify_launcher.progress import ProgressLog, Snapshot, damaged_seq, replay
from notify_launcher.totals import Totals

if TYPE_CHECKING:
    from collections.abc import Callable

    from notify_launcher.records import EndRecord, Record

RECORD_RETRY_MIN, RECORD_RETRY_MAX = 0.05, 1.0  # s between attempts to record an event's end
KEEP_HISTORY = 1000  # end records the history file keeps at least (history.py)
WAITED_FOR = ("try", "end")  # the records the queue waits for (Ledger.insist)
#: Compact when idle, above this and twice the compacted size (progress.py; /run is RAM).  Small: it
#: bounds what `status` reads with few names, whatever the history's length.
PROGRESS_FLOOR = 64 * 1024


def end_of(entry: Entry, result: str, ok: bool, worker: int) -> EndRecord:
    """The end record of `entry`: `result` says how it ended (an action's exit, or why nothing ran)."""
    e = entry.event
    return {"op": "end", "seq": entry.seq, "t": time.time(), "key": e.key, "event": str(e), "state": e.state,
            "result": result, "ok": ok, "worker": worker}


class Ledger:
    """Appends the worker's records; `totals` counts every record written (and those replayed)."""

    def __init__(self, following: Following) -> None:
        self.following = following
        self.totals = Totals()

    def start(self) -> Snapshot:
        """Open the progress file and replay it: where the queue stands, whether a worker died."""
        paths = self.following.paths
        self._progress = ProgressLog(paths.progress)
        snap = replay(paths.progress, totals=self.totals)
        self._progress.baseline = snap.compacted
        self._history = History(paths.history, KEEP_HISTORY)
        self._history.kept = snap.history_kept
        log = self.following.log
        if self._progress.cut:  # (cut before the replay: it is not among snap.damaged)
            cut = self._progress.cut
            log.error(damaged_seq(cut), None, f"{paths.progress}: its last record was torn (a worker or the machine "
                                              f"died while writing it) and is cut off ({len(cut)} bytes: {cut[:200]!r}); "
                                              f"an event whose end it was runs again")
        for line in snap.damaged:
            log.error(damaged_seq(line), None, f"{paths.progress}: damaged record skipped ({len(line)} bytes: "
                                               f"{line[:200]!r}); an event whose end it was runs again")
        return snap

    def follow(self) -> bool:
        """Record into the file at the path again if someone removed it; True if they had."""
        return self._progress.follow()

    def record(self, rec: Record, subject: object) -> bool:
        """Append one record; on failure log it (once per event and op) and return False."""
        failed = self._progress.record(rec)
        if failed is None:
            self.totals.fold(rec)
            return True
        seq, op, path = rec["seq"], rec["op"], self._progress.path
        self.following.troubles.report(
            "progress", seq, subject, f"cannot record {op!r} in {path} ({failed}); "
            + ("the queue waits until it can (retrying)" if op in WAITED_FOR else "going on without it"))
        return False

    def finish(self, end: EndRecord, subject: object) -> None:
        """Record the end, retrying until it is on disk: a crash then re-runs at most the one event
        it interrupted, never one that ended."""
        self.insist(end, subject)

    def insist(self, rec: Record, subject: object) -> None:
        """Append `rec`, retrying until it is on disk (the queue waits meanwhile, logged once): a
        `try` so that a worker dying on the event is always recovered, an `end` (`finish`)."""
        pause = RECORD_RETRY_MIN
        while not self.record(rec, subject):
            time.sleep(pause)
            pause = min(RECORD_RETRY_MAX, pause * 2)
            self._progress.follow()
        if pause > RECORD_RETRY_MIN:
            self.following.log.info(rec["seq"], subject,
                                    f"recorded {rec['op']!r} in {self._progress.path} at last; the queue goes on")

    def compact(self, still_ours: Callable[[], bool]) -> None:
        """Keep the file small when it grew past PROGRESS_FLOOR and twice its compacted size (only when
        the queue is idle: the caller's part; `still_ours`: statedir.write_atomic).  Raises OSError,
        Superseded."""
        if self._progress.due(PROGRESS_FLOOR):
            log, history, was = self.following.log, self._history, self._history.trouble
            self._progress.compact(history, still_ours)
            if history.trouble is None:
                if was is not None:
                    log.info(None, None, f"{history.path} can be written again: compactions move results to it")
                log.info(None, None, f"progress compacted (results moved to {history.path}, "
                                     f"which keeps the last {KEEP_HISTORY} or more)")
                return
            if history.trouble != was:
                log.warn(None, None, history.trouble)
            log.info(None, None, f"progress compacted (see the warning about {history.path})")
