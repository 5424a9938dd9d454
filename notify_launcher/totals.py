"""The counters behind the metrics file, derived from durable records, never from a process's memory.

A worker folds every progress record into `Totals` (replay at start, then each record it writes),
so the counts are the same whichever worker computes them, after any number of worker restarts.
A progress compaction drops old records; it writes the totals of everything it read as the
compacted file's first record (`{"op": "totals", "seq": N, "counts": {...}}`), and a fold skips the
records at or below N that the compaction kept for `status` and `history`: nothing counted twice,
nothing lost.  (Compaction runs only when the queue is idle, so no later record has a seq <= N.)

What only the reader knows is kept where the reader writes it: a rejected line bumps the count in
`STATE/rejected` (rare: a lock, a read and a write, no fsync, like the journal); reader exits are
the `READER reader STOP|RELOAD|EOF` events the reader journals anyway.  Neither touches the
reader's path for an accepted line.
"""

from __future__ import annotations

TYPE_CHECKING = False

import fcntl
import os

from notify_launcher.events import VRRP_NOTICES
from notify_launcher.statedir import FILE_MODE, open_mode

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, Final

RESULTS: Final = ("ok", "failed", "timed_out", "skipped")
EXIT_KINDS: Final = ("stop", "reload", "eof")
#: Histogram bounds (s): actions from a few milliseconds to many minutes.
BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
TRACKED_TYPES: Final = ("INSTANCE", "GROUP")  # what instance_state and the transitions are kept for
_READER_KEY = "READER reader"


def outcome(end: Mapping[str, Any]) -> str | None:
    """An end record's result as the metrics and on_failure name it (one of RESULTS), or None when
    no action was due (nothing configured, a quiet state, a reader's own event)."""
    if end.get("timed_out"):
        return "timed_out"
    if "duration" in end:  # an action ran (or could not be started)
        return "ok" if end.get("ok") else "failed"
    result = str(end["result"])
    if result.startswith(("superseded", "skipped")):
        return "skipped"
    if result == "no action":
        return None
    return "ok" if end.get("ok") else "failed"  # "failed: ..." inside the launcher


class Totals:
    """Counts over all progress records, carried across compactions (see the module docstring)."""

    __slots__ = ("seq", "actions", "buckets", "duration_sum", "transitions", "last", "crashes", "exits", "last_event",
                 "_trying")

    def __init__(self) -> None:
        self.seq = 0  # records up to this seq are in the counts already (a compaction's summary)
        self.actions = dict.fromkeys(RESULTS, 0)
        self.buckets = [0] * (len(BUCKETS) + 1)  # per bucket, +Inf last
        self.duration_sum = 0.0
        self.transitions: dict[str, int] = {}  # "TYPE NAME\tSTATE" -> count
        self.last: dict[str, list[Any]] = {}  # "TYPE NAME" -> [state, t] (notices left out)
        self.crashes = 0
        self.exits = dict.fromkeys(EXIT_KINDS, 0)
        self.last_event = 0.0
        self._trying = (0, 0)  # (seq, worker) of the last try with no end yet

    def fold(self, rec: Mapping[str, Any]) -> None:
        """Count one well-formed progress record (progress.replay checked its fields)."""
        op, seq = rec["op"], rec["seq"]
        if op == "totals":
            self._load(rec)
            return
        if seq <= self.seq:
            return
        if op == "try":
            if self._trying[0] == seq and self._trying[1] != rec["worker"]:
                self.crashes += 1  # an earlier worker took this event up and never ended it
            self._trying = (seq, rec["worker"])
        elif op == "end":
            if self._trying[0] == seq and rec.get("worker", self._trying[1]) != self._trying[1]:
                self.crashes += 1  # ended by a recovering worker: the one that took it up died
            self._trying = (0, 0)
            self._end(rec)

    def _end(self, end: Mapping[str, Any]) -> None:
        self.last_event = max(self.last_event, float(end["t"]))
        result = outcome(end)
        if result is not None:
            self.actions[result] += 1
        duration = end.get("duration")
        if isinstance(duration, (int, float)):
            self.buckets[next((i for i, bound in enumerate(BUCKETS) if duration <= bound), len(BUCKETS))] += 1
            self.duration_sum += duration
        key, state = str(end["key"]), str(end["state"])
        if key == _READER_KEY:
            kind = state.lower()
            if kind in self.exits:
                self.exits[kind] += 1
        elif key.split(" ", 1)[0] in TRACKED_TYPES:
            name = f"{key}\t{state}"
            self.transitions[name] = self.transitions.get(name, 0) + 1
            if state not in VRRP_NOTICES:  # MASTER_RX_LOWER_PRI: still MASTER
                self.last[key] = [state, float(end["t"])]

    def record(self) -> dict[str, Any]:
        """The summary a compaction writes first (progress.TotalsRecord's `counts`)."""
        return {"actions": self.actions, "buckets": self.buckets, "duration_sum": self.duration_sum,
                "transitions": self.transitions, "last": self.last, "crashes": self.crashes,
                "exits": self.exits, "last_event": self.last_event}

    def _load(self, rec: Mapping[str, Any]) -> None:
        """Take a compaction's summary over; a damaged one is ignored (the counts restart, which
        Prometheus reads as a counter reset, not as a wrong rate)."""
        c = rec["counts"]
        try:
            actions = {k: int(c["actions"][k]) for k in RESULTS}
            buckets = [int(n) for n in c["buckets"]]
            duration_sum = float(c["duration_sum"])
            transitions = {str(k): int(v) for k, v in c["transitions"].items()}
            last = {str(k): [str(v[0]), float(v[1])] for k, v in c["last"].items()}
            crashes = int(c["crashes"])
            exits = {k: int(c["exits"][k]) for k in EXIT_KINDS}
            last_event = float(c["last_event"])
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            return
        if len(buckets) == len(BUCKETS) + 1:
            self.seq, self.actions, self.buckets, self.duration_sum, self.transitions = (
                rec["seq"], actions, buckets, duration_sum, transitions)
            self.last, self.crashes, self.exits, self.last_event = last, crashes, exits, last_event
            self._trying = (0, 0)


def bump_rejected(path: str, lines: int = 1) -> None:
    """Add `lines` to the count in `path` (the reader, for rejected lines).  Two readers live at once
    during a reload: the flock makes their read-add-write one step, and it is never waited for (the
    other reader may be stopped while it holds it): BlockingIOError then.  Raises OSError."""
    fd = open_mode(path, os.O_RDWR, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        count = _parse(os.pread(fd, 64, 0)) + lines
        data = f"{count}\n".encode()
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)  # releases the lock


def read_rejected(path: str) -> int:
    """The count `bump_rejected` keeps (0: no file yet)."""
    try:
        with open(path, "rb") as fh:
            return _parse(fh.read(64))
    except OSError:
        return 0


def _parse(data: bytes) -> int:
    try:
        return max(0, int(data.strip() or b"0"))
    except ValueError:
        return 0
