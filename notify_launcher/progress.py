"""What the workers did with each event: an append-only file of JSON records, one per line.

    {"op": "try",   "seq": 7, ...}   a worker took up the event (before anything that could fail)
    {"op": "start", "seq": 7, ...}   an action process was started (its pid and start time, the worker's)
    {"op": "end",   "seq": 7, ...}   the event is finished: action result, or why nothing ran
    {"op": "totals", "seq": 7, ...}  first in a compacted file: the counters over every record up to 7 (totals.py),
                                     `kept`, the bytes of the records the compaction kept after it, and
                                     `history`, the history file's size after its last trim (history.py)

Events run strictly in order, so "done" is a high-water mark: the largest seq with an `end`.  A
`try` with no `end` after it is an event whose worker died; the next worker recovers it.  The
`try` records are what bound a crash loop: every worker that takes up the event writes one first,
so the number of workers that died on it is on disk, whatever killed them (segfault, OOM, SIGKILL).
Replaying this file is how `status`, `wait` and a new worker learn the state; `Follower` reads it
from where it stopped, so a `wait` poll costs what was appended since the last one, not the history.

A compaction moves the end records to the history file (history.py: `history` reads them there)
and keeps each name's last end record: with thousands of names that alone is megabytes.  So the
worker compacts when the file is at least twice the size it had right after the last compaction
(and above a floor): each compaction reads at most twice what was appended since the one before,
O(1) per event however many names there are; and `status`, which replays this file whole, reads
the same bytes after 100 events as after millions.

Each record detects its own damage: its last key is `"crc"`, the CRC-32 of the record as written
without it (8 hex digits), and a record is complete only with its newline.  A record that fails
either is skipped and reported (`Snapshot.damaged`), never counted: a torn `end` makes its event
run again, never makes an event look done.  Records without `"crc"` are what older versions
wrote; they are read while no checksummed record came before them in the file (an upgrade leaves
them at its start).
"""

from __future__ import annotations

TYPE_CHECKING = False

import errno
import json
import os
import re
import zlib

from notify_launcher.statedir import FILE_MODE, open_mode, write_atomic
from notify_launcher.totals import Totals

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from notify_launcher.history import History
    from notify_launcher.records import EndRecord, Record, StartRecord, TotalsRecord


_CRC_KEY = b', "crc": "'
_CRC_SUFFIX = len(_CRC_KEY) + 8 + 2  # , "crc": "12345678"}
_SEQ = re.compile(rb'"seq": (\d{1,18})[,}]')


def encode(rec: Record | TotalsRecord) -> bytes:
    """One line: the record's JSON with its CRC as the last key, and the newline."""
    body = json.dumps(rec).encode()
    return b'%s%s%08x"}\n' % (body[:-1], _CRC_KEY, zlib.crc32(body))


def _decode(line: bytes) -> tuple[Any, bool]:
    """(the record, None if the line is damaged; whether it carries a CRC)."""
    checksummed = line[-_CRC_SUFFIX:].startswith(_CRC_KEY) and line.endswith(b'"}')
    if checksummed:
        body = line[:-_CRC_SUFFIX] + b"}"
        if line[-10:-2] != b"%08x" % zlib.crc32(body):
            return None, True
        line = body
    try:
        return json.loads(line, parse_constant=_no_constant), checksummed
    except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        return None, checksummed


def parse_end(line: bytes) -> EndRecord | None:
    """The end record a line of the history file holds (it is written only with CRCs); None if it
    holds none intact."""
    rec, crc = _decode(line)
    return rec if crc and _well_formed(rec) and rec["op"] == "end" else None


def damaged_seq(line: bytes) -> int | None:
    """The number a damaged or torn record seems to be about, if it can be read."""
    match = _SEQ.search(line)
    return int(match.group(1)) if match else None


def open_appending(path: str) -> tuple[int, bytes]:
    """Open a file of records for appending (made if missing), cutting off a torn last record (a
    writer died in it; only the caller writes the file): the descriptor and the bytes cut."""
    fd = open_mode(path, os.O_RDWR | os.O_APPEND, FILE_MODE)
    size = os.fstat(fd).st_size
    start = max(0, size - 8192)
    tail = os.pread(fd, size - start, start)
    end = start + tail.rfind(b"\n") + 1
    if tail and end != size:
        cut = os.pread(fd, size - end, end)
        os.ftruncate(fd, end)
        return fd, cut
    return fd, b""


class ProgressLog:
    """The worker's writer.  Opening it cuts a torn last record (the worker holding worker.lock is
    its only writer): `cut` then holds those bytes, for the worker to log."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.cut = b""
        #: The file's size right after the last compaction (0: unknown; a replay's Snapshot.compacted).
        self.baseline = 0
        self._fd = self._open()

    def _open(self) -> int:
        fd, cut = open_appending(self.path)
        self.cut += cut
        return fd

    def follow(self) -> bool:
        """Write to the file at the path again if someone removed or replaced it (records written
        into a removed file are seen by nobody); True if it had to."""
        try:
            if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                return False
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = self._open()
        return True

    def record(self, rec: Record) -> str | None:
        """Append one record; the error text if it could not be written (a full disk: the action ran
        all the same, and the worker logs it)."""
        data = encode(rec)
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

    def due(self, floor: int) -> bool:
        """Whether a compaction pays: the file is above `floor` and at least twice its compacted size."""
        return self.size() > max(floor, 2 * self.baseline)

    def compact(self, history: History, still_ours: Callable[[], bool] | None = None) -> None:
        """Move the end records to the history file (which keeps the last `history.keep` of them) and
        rewrite this file with each instance's last end record (all a replay needs when nothing
        runs), after the totals of every record read, so the counters do not go back (totals.py).
        Only the worker holding worker.lock writes these files; it compacts only when the queue is
        idle.  Crash-safe at every step: the ends are in the history file, fsync'ed, before this
        file is replaced (atomically) without them; ends in both are appended once (history.py).
        A history file that cannot be written loses its ends, not this compaction (`history.trouble`).
        `still_ours`: statedir.write_atomic (raises Superseded: another worker owns the files now)."""
        totals = Totals()
        snap = replay(self.path, 1 << 62, totals)  # every end: the file is at most twice its compacted size
        history.move(snap.ends, still_ours)
        records = sorted(snap.last.values(), key=lambda r: r["seq"])
        kept = b"".join(encode(r) for r in records)
        seq = max([totals.seq, snap.done_seq, *(r["seq"] for r in records)])
        summary: TotalsRecord = {"op": "totals", "seq": seq, "counts": totals.record(), "kept": len(kept),
                                 "history": history.kept}
        write_atomic(self.path, encode(summary) + kept, still_ours=still_ours)
        os.close(self._fd)
        self._fd = self._open()
        self.baseline = self.size()


class Snapshot:
    """The state a replay of the progress file arrives at."""

    __slots__ = ("done_seq", "running", "trying", "tries", "trying_worker", "last", "ends", "damaged", "compacted",
                 "history_kept")

    def __init__(self) -> None:
        self.done_seq = 0
        self.running: StartRecord | None = None
        #: The unfinished event workers took up (0: none), how many workers took it up, and the last one.
        self.trying = self.tries = self.trying_worker = 0
        self.last: dict[str, EndRecord] = {}
        self.ends: list[EndRecord] = []
        #: Lines that are no intact record (damaged, torn, or not a record this version writes).
        self.damaged: list[bytes] = []
        #: The file's size right after its last compaction, from its totals record (0: not known).
        self.compacted = 0
        #: The history file's size right after its last trim, from the totals record (0: not known).
        self.history_kept = 0


_NUMBER = (int, float)
#: What each record must hold, with its type, for anyone reading a Snapshot (status, history, the
#: recovering worker) to use it without a KeyError or a TypeError; optional keys are typed when present.
#: Public so that a test holds it against the record TypedDicts (a renamed field cannot leave it behind).
REQUIRED: dict[str, dict[str, type | tuple[type, ...]]] = {
    "try": {"seq": int, "worker": int},
    "start": {"seq": int, "t": _NUMBER, "key": str, "event": str, "state": str, "pid": int,
              "pid_start_min": int, "pid_start_max": int, "worker": int, "worker_start": int},
    "end": {"seq": int, "t": _NUMBER, "key": str, "event": str, "state": str, "result": str},
    "totals": {"seq": int, "counts": dict},
}
_OPTIONAL: dict[str, type | tuple[type, ...]] = {"duration": _NUMBER, "worker": int, "cgroup": str, "stalled": _NUMBER,
                                                  "kept": int, "history": int}


def _no_constant(name: str) -> float:
    """NaN and Infinity are not JSON (json.dumps writes them, json.loads takes them): a record holding
    one is damage, and `status --json` must stay JSON."""
    raise ValueError(f"{name} in a progress record")


def _well_formed(rec: object) -> bool:
    """A record as a worker writes it: valid JSON is not enough (damage, a hand edit, another
    version), and one bad record must not stop `status` or a worker's replay."""
    if not isinstance(rec, dict) or not isinstance(rec.get("op"), str):
        return False
    required = REQUIRED.get(rec["op"])
    if required is None:
        return False
    checks = [*required.items(), *((k, t) for k, t in _OPTIONAL.items() if k in rec)]
    return all(k in rec and isinstance(rec[k], t) and not isinstance(rec[k], bool) for k, t in checks)


_TAIL_CHECK = 256


class Follower:
    """Folds the progress file into a Snapshot from where the last `read` stopped: only what was
    appended since is read.  A compaction (or a removal) replaces the file; the open descriptor
    keeps the old inode from being reused, so a new inode at the path means "start again", and so
    does a file shorter than what was read or whose last bytes read changed (cut and rewritten in place).
    `totals`, if given, counts every record read (meant for one read: a worker's replay)."""

    def __init__(self, path: str, keep_ends: int = 0, totals: Totals | None = None) -> None:
        self.path = path
        self.keep_ends = keep_ends
        self.totals = totals
        self.snap = Snapshot()
        #: Bytes read from the current file so far (a measure of the work done, for tests too).
        self.bytes_read = 0
        self._fd: int | None = None
        self._partial = b""
        self._checksummed = False
        #: The last bytes read, checked again at the next read: a file cut and written again in
        #: place (a torn record cut off by a new worker, then records appended) starts over too.
        self._tail = b""

    def read(self) -> Snapshot:
        """The state after every complete record in the file now (a record still being written, with
        no newline yet, waits for the next read).  Raises OSError but FileNotFoundError (no file: an
        empty Snapshot)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self.close()
            self.snap = Snapshot()
            return self.snap
        if self._fd is None or not os.path.samestat(st, os.fstat(self._fd)) or st.st_size < self.bytes_read \
                or os.pread(self._fd, len(self._tail), self.bytes_read - len(self._tail)) != self._tail:
            self.close()
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            self.snap, self._partial, self._checksummed, self.bytes_read, self._tail = Snapshot(), b"", False, 0, b""
        while True:
            chunk = os.pread(self._fd, 1 << 20, self.bytes_read)
            if not chunk:
                return self.snap
            self.bytes_read += len(chunk)
            self._tail = (self._tail + chunk)[-_TAIL_CHECK:]
            lines = (self._partial + chunk).split(b"\n")
            self._partial = lines.pop()
            for line in lines:
                if line:
                    self._fold(line)

    @property
    def partial(self) -> bytes:
        """The bytes after the last newline: a record being written, or a torn one."""
        return self._partial

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _fold(self, line: bytes) -> None:
        snap = self.snap
        rec, crc = _decode(line)
        if rec is None or (self._checksummed and not crc) or not _well_formed(rec):
            snap.damaged.append(line)  # the journal still has the event: it is run, not lost
            return
        self._checksummed = self._checksummed or crc
        if self.totals is not None:
            self.totals.fold(rec)
        if rec["op"] == "try":
            snap.tries = snap.tries + 1 if snap.trying == rec["seq"] else 1
            snap.trying, snap.trying_worker = rec["seq"], rec["worker"]
        elif rec["op"] == "start":
            snap.running = rec
        elif rec["op"] == "end":
            snap.done_seq = max(snap.done_seq, rec["seq"])
            if snap.running is not None and snap.running["seq"] == rec["seq"]:
                snap.running = None
            if snap.trying == rec["seq"]:
                snap.trying = snap.tries = 0
            snap.last[rec["key"]] = rec
            if self.keep_ends:
                snap.ends.append(rec)
                del snap.ends[:-self.keep_ends]
        elif rec["op"] == "totals":
            snap.compacted = len(line) + 1 + rec.get("kept", 0)
            snap.history_kept = rec.get("history", 0)


def replay(path: str, keep_ends: int = 0, totals: Totals | None = None) -> Snapshot:
    """Fold the progress file into a Snapshot; keep the last `keep_ends` end records for history;
    count every record into `totals` if given (the worker's metrics, in the same pass).
    Lines that are not well-formed records are skipped (the journal still has their events); so is
    a torn last one (a record is complete only with its newline), which is counted as damaged."""
    follower = Follower(path, keep_ends, totals)
    try:
        snap = follower.read()
    finally:
        follower.close()
    if follower.partial:
        snap.damaged.append(follower.partial)
    return snap


#: The largest progress file `last_states` replays (~800 names): a reader reads it in keepalived's
#: stop window, where a replay of a large site's file (tens of thousands of names) would take the
#: time the lines in the pipe need.
LAST_STATES_MAX = 256 * 1024


def last_states(path: str) -> dict[str, str]:
    """Each name's last state whose event a worker finished (`Event.key` -> state): the names
    keepalived spoke of before (stopping.py waits for their STOP lines).  Empty without a file, or
    with one larger than LAST_STATES_MAX."""
    try:
        if os.stat(path).st_size > LAST_STATES_MAX:
            return {}
    except OSError:
        return {}
    return {key: rec["state"] for key, rec in replay(path).last.items()}


def last_seq(path: str) -> int:
    """The highest sequence number the file's first and last records name, damaged ones included
    (0: none): the floor below which numbering must never restart (journal.py).  The first record
    is a compaction's totals, which carries the highest seq counted; the last ones are the newest.
    Reads only the head and the tail."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8192)
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            tail = fh.read()
    except OSError:
        return 0
    return max([0, *(int(m) for m in _SEQ.findall(head.split(b"\n", 1)[0] + b"\n" + tail))])
