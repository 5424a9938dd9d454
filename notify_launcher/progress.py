"""What the workers did with each event: an append-only file of JSON records, one per line.

    {"op": "start", "seq": 7, ...}   an action process was started (its pid and create time, the worker's)
    {"op": "end",   "seq": 7, ...}   the event is finished: action result, or why nothing ran

Events run strictly in order, so "done" is a high-water mark: the largest seq with an `end`.  A
`start` with no `end` after it is an event whose worker died; the next worker recovers it.
Replaying this file is how `status`, `wait` and a new worker learn the state.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass, field
from typing import Any

from notify_launcher.log import open_mode
from notify_launcher.statedir import FILE_MODE

Record = dict[str, Any]


class ProgressLog:
    """The worker's writer."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = open_mode(path, os.O_WRONLY | os.O_APPEND, FILE_MODE)

    def record(self, op: str, seq: int, **fields: Any) -> str | None:
        """Append one record; the error text if it could not be written (a full disk: the action ran
        all the same, and the worker logs it)."""
        data = (json.dumps({"op": op, "seq": seq, **fields}) + "\n").encode()
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
        replay needs when nothing runs).  Only the worker holding worker.lock writes this file."""
        snap = replay(self.path, keep_ends)
        records = {r["seq"]: r for r in [*snap.last.values(), *snap.ends]}
        tmp = f"{self.path}.new"
        fd = open_mode(tmp, os.O_WRONLY | os.O_TRUNC, FILE_MODE)
        try:
            os.write(fd, b"".join((json.dumps(records[seq]) + "\n").encode() for seq in sorted(records)))
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        os.close(self._fd)
        self._fd = open_mode(self.path, os.O_WRONLY | os.O_APPEND, FILE_MODE)


@dataclass
class Snapshot:
    """The state a replay of the progress file arrives at."""

    done_seq: int = 0
    running: Record | None = None
    last: dict[str, Record] = field(default_factory=dict)
    ends: list[Record] = field(default_factory=list)


def replay(path: str, keep_ends: int = 0) -> Snapshot:
    """Fold the progress file into a Snapshot; keep the last `keep_ends` end records for history."""
    snap = Snapshot()
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return snap
    for line in data.split(b"\n"):
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a torn last line or damage: the journal still has the event
        if rec.get("op") == "start":
            snap.running = rec
        elif rec.get("op") == "end":
            snap.done_seq = max(snap.done_seq, rec["seq"])
            if snap.running is not None and snap.running["seq"] == rec["seq"]:
                snap.running = None
            snap.last[rec["key"]] = rec
            if keep_ends:
                snap.ends.append(rec)
                del snap.ends[:-keep_ends]
    return snap
