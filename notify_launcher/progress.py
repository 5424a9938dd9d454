"""What the workers did with each event: an append-only file of JSON records, one per line.

    {"op": "try",   "seq": 7, ...}   a worker took up the event (before anything that could fail)
    {"op": "start", "seq": 7, ...}   an action process was started (its pid and create time, the worker's)
    {"op": "end",   "seq": 7, ...}   the event is finished: action result, or why nothing ran
    {"op": "totals", "seq": 7, ...}  first in a compacted file: the counters over every record up to 7 (totals.py)

Events run strictly in order, so "done" is a high-water mark: the largest seq with an `end`.  A
`try` with no `end` after it is an event whose worker died; the next worker recovers it.  The
`try` records are what bound a crash loop: every worker that takes up the event writes one first,
so the number of workers that died on it is on disk, whatever killed them (segfault, OOM, SIGKILL).
Replaying this file is how `status`, `wait` and a new worker learn the state.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass, field
from typing import Literal, TypedDict, Union

from notify_launcher.statedir import FILE_MODE, open_mode, write_atomic
from notify_launcher.totals import Totals


class TryRecord(TypedDict):
    """A worker took up event `seq` (written before anything that could fail)."""

    op: Literal["try"]
    seq: int
    worker: int


class StartRecord(TypedDict):
    """The event's action was spawned: `pid` (at `t`) by `worker`, whose start time (identity.py) is
    `worker_start`."""

    op: Literal["start"]
    seq: int
    t: float
    key: str
    event: str
    state: str
    pid: int
    worker: int
    worker_start: int


class _EndFields(TypedDict):
    """What every end record holds (NotRequired is Python 3.11+: the optional keys are a subclass)."""

    op: Literal["end"]
    seq: int
    t: float
    key: str
    event: str
    state: str
    result: str
    ok: bool


class EndRecord(_EndFields, total=False):
    """The event is finished: `result` says how (an action's exit, or why nothing ran); the keys
    below are there when they apply (an action that ran, the worker that ran it)."""

    duration: float
    exit: int | None
    signal: int | None
    timed_out: bool
    worker: int


class TotalsRecord(TypedDict):
    """First in a compacted file: the counters over every record up to `seq` (totals.py)."""

    op: Literal["totals"]
    seq: int
    counts: dict[str, object]


Record = Union[TryRecord, StartRecord, EndRecord]  # not `|`: Python 3.9 evaluates this line


class ProgressLog:
    """The worker's writer."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = open_mode(path, os.O_WRONLY | os.O_APPEND, FILE_MODE)

    def follow(self) -> bool:
        """Write to the file at the path again if someone removed or replaced it (records written
        into a removed file are seen by nobody); True if it had to."""
        try:
            if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                return False
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = open_mode(self.path, os.O_WRONLY | os.O_APPEND, FILE_MODE)
        return True

    def record(self, rec: Record) -> str | None:
        """Append one record; the error text if it could not be written (a full disk: the action ran
        all the same, and the worker logs it)."""
        data = (json.dumps(rec) + "\n").encode()
        try:
            written = os.write(self._fd, data)
        except OSError as exc:
            return exc.strerror
        if written != len(data):
            os.ftruncate(self._fd, os.fstat(self._fd).st_size - written)
            return os.strerror(errno.ENOSPC)
        return None

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def compact(self, keep_ends: int) -> None:
        """Rewrite the file with the last `keep_ends` end records and each instance's last one (all a
        replay needs when nothing runs), after the totals of every record read, so the counters do
        not go back (totals.py).  Only the worker holding worker.lock writes this file; it compacts
        only when the queue is idle."""
        totals = Totals()
        snap = replay(self.path, keep_ends, totals)
        records: dict[int, Record] = {r["seq"]: r for r in [*snap.last.values(), *snap.ends]}
        summary = TotalsRecord(op="totals", seq=max([totals.seq, snap.done_seq, *records]), counts=totals.record())
        write_atomic(self.path, b"".join((json.dumps(rec) + "\n").encode()
                                         for rec in [summary, *(records[seq] for seq in sorted(records))]))
        os.close(self._fd)
        self._fd = open_mode(self.path, os.O_WRONLY | os.O_APPEND, FILE_MODE)


@dataclass
class Snapshot:
    """The state a replay of the progress file arrives at."""

    done_seq: int = 0
    running: StartRecord | None = None
    #: The unfinished event workers took up (0: none), and how many workers took it up.
    trying: int = 0
    tries: int = 0
    last: dict[str, EndRecord] = field(default_factory=dict)
    ends: list[EndRecord] = field(default_factory=list)


_NUMBER = (int, float)
#: What each record must hold, with its type, for anyone reading a Snapshot (status, history, the
#: recovering worker) to use it without a KeyError or a TypeError; optional keys are typed when present.
_REQUIRED: dict[str, dict[str, type | tuple[type, ...]]] = {
    "try": {"seq": int, "worker": int},
    "start": {"seq": int, "t": _NUMBER, "key": str, "event": str, "state": str, "pid": int, "worker": int,
              "worker_start": int},
    "end": {"seq": int, "t": _NUMBER, "key": str, "event": str, "state": str, "result": str},
    "totals": {"seq": int, "counts": dict},
}
_OPTIONAL: dict[str, type | tuple[type, ...]] = {"duration": _NUMBER, "worker": int}


def _no_constant(name: str) -> float:
    """NaN and Infinity are not JSON (json.dumps writes them, json.loads takes them): a record holding
    one is damage, and `status --json` must stay JSON."""
    raise ValueError(f"{name} in a progress record")


def _well_formed(rec: object) -> bool:
    """A record as a worker writes it: valid JSON is not enough (damage, a hand edit, another
    version), and one bad record must not stop `status` or a worker's replay."""
    if not isinstance(rec, dict) or not isinstance(rec.get("op"), str):
        return False
    required = _REQUIRED.get(rec["op"])
    if required is None:
        return False
    checks = [*required.items(), *((k, t) for k, t in _OPTIONAL.items() if k in rec)]
    return all(k in rec and isinstance(rec[k], t) and not isinstance(rec[k], bool) for k, t in checks)


def replay(path: str, keep_ends: int = 0, totals: Totals | None = None) -> Snapshot:
    """Fold the progress file into a Snapshot; keep the last `keep_ends` end records for history;
    count every record into `totals` if given (the worker's metrics, in the same pass).
    Lines that are not well-formed records are skipped (the journal still has their events)."""
    snap = Snapshot()
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return snap
    for line in data.split(b"\n"):
        try:
            rec = json.loads(line, parse_constant=_no_constant)
        except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
            continue
        if not _well_formed(rec):
            continue  # a torn last line or damage: the journal still has the event
        if totals is not None:
            totals.fold(rec)
        if rec.get("op") == "try":
            snap.tries = snap.tries + 1 if snap.trying == rec["seq"] else 1
            snap.trying = rec["seq"]
        elif rec.get("op") == "start":
            snap.running = rec
        elif rec.get("op") == "end":
            snap.done_seq = max(snap.done_seq, rec["seq"])
            if snap.running is not None and snap.running["seq"] == rec["seq"]:
                snap.running = None
            if snap.trying == rec["seq"]:
                snap.trying = snap.tries = 0
            snap.last[rec["key"]] = rec
            if keep_ends:
                snap.ends.append(rec)
                del snap.ends[:-keep_ends]
    return snap


def last_seq(path: str, op: str | None = None) -> int:
    """The largest sequence number in the file's last records (0: none), of `op` records only if
    given: the floor below which numbering must never restart when the journal was removed, and
    (with "end") how far the workers got.  Reads only the tail."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            tail = fh.read()
    except OSError:
        return 0
    best = 0
    for line in tail.split(b"\n"):
        try:
            rec = json.loads(line)
            seq = rec["seq"] if op is None or rec["op"] == op else 0
        except (ValueError, KeyError, TypeError, RecursionError):
            continue
        if isinstance(seq, int):
            best = max(best, seq)
    return best
