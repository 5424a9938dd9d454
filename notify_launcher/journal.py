"""The durable ordered queue: one append-only file of events, one line each.

    SEQ <tab> TIME <tab> READER_PID <tab> TYPE <tab> NAME <tab> STATE <tab> PRIORITY <tab> VS

Appending is cheap (no fsync, never waits on a worker: keepalived drops events when its pipe is
full) and numbers events across processes: two readers live at once during a keepalived reload,
so the next sequence number is read from the file's tail under a short `flock`, and the line is
written under the same lock.  A follower therefore never sees #12 before #11.  A torn last line
(a writer killed mid-write, a full disk) is cut off by the next appender, which holds the lock.

The worker compacts the journal when everything in it is done: under the same lock it replaces
the file (atomically) with one holding only the last entry (so numbering goes on); writers notice
the new inode after taking the lock and move to it.  A journal someone removed is created again by
the next append, numbered above everything seen before (JournalWriter), and the worker follows it.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable
from dataclasses import dataclass

from notify_launcher.events import Event
from notify_launcher.statedir import FILE_MODE, open_mode, write_atomic

_TAIL = 8192


@dataclass(frozen=True)
class Entry:
    """One journaled event."""

    seq: int
    time: float
    reader_pid: int
    event: Event


def format_entry(entry: Entry) -> bytes:
    e = entry.event
    return (f"{entry.seq}\t{entry.time:.6f}\t{entry.reader_pid}\t{e.type}\t{e.name}\t{e.state}\t"
            f"{e.priority}\t{e.vs}\n").encode("utf-8")


def parse_entry(line: bytes) -> Entry | None:
    """An entry from one line without its newline; None if the line is damaged."""
    parts = line.decode("utf-8", "replace").split("\t")
    if len(parts) != 8:
        return None
    try:
        return Entry(int(parts[0]), float(parts[1]), int(parts[2]),
                     Event(parts[3], parts[4], parts[5], int(parts[6]), parts[7]))
    except ValueError:
        return None


class JournalWriter:
    """The readers' side: number and append events.

    Sequence numbers never go backwards, whatever was deleted: the next number is one above the
    largest of the journal's last entry, the last number this writer gave, and `floor()` (the
    progress file's last record, consulted only when the journal holds no entry -- it was removed
    or is new).  A removed journal is created again on the next append; `created` then says so,
    so the reader knows the worker it rang before may be following a file that no longer exists.
    """

    def __init__(self, path: str, floor: Callable[[], int] = lambda: 0) -> None:
        self.path = path
        self.floor = floor
        self._fd = -1  # opened by the first append: a full disk at start-up must not stop the reader
        self._size = -1
        self._last = 0
        self.created = False

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _open(self) -> None:
        self.close()
        existed = os.path.exists(self.path)
        self._fd = open_mode(self.path, os.O_RDWR | os.O_APPEND, FILE_MODE)
        self._size = -1
        self.created = self.created or not existed

    def _lock(self) -> None:
        """Take the journal lock on the current file, following a compaction (or a removal) that
        replaced it."""
        if self._fd < 0:
            self._open()
        while True:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                    return
            except FileNotFoundError:
                pass
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._open()

    def append(self, event: Event, now: float, pid: int) -> int:
        """Append `event`, return its sequence number.  Raises OSError (e.g. ENOSPC, a removed state
        directory) with nothing written."""
        self._lock()
        try:
            size = os.fstat(self._fd).st_size
            if size != self._size:
                size = self._resync(size)
            seq = self._last + 1
            data = format_entry(Entry(seq, now, pid, event))
            try:
                written = os.write(self._fd, data)
            except OSError:
                os.ftruncate(self._fd, size)
                raise
            if written != len(data):
                os.ftruncate(self._fd, size)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self._size, self._last = size + written, seq
            return seq
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _resync(self, size: int) -> int:
        """Another process appended (or a write was torn, or the file is new): learn the last seq;
        return the clean size."""
        start = max(0, size - _TAIL)
        tail = os.pread(self._fd, size - start, start)
        end = tail.rfind(b"\n") + 1
        if start + end != size:  # torn last line: cut it (we hold the lock, nobody is writing)
            os.ftruncate(self._fd, start + end)
            size = start + end
        last = 0
        for line in reversed(tail[:end].split(b"\n")[:-1]):
            entry = parse_entry(line)
            if entry is not None:
                last = entry.seq
                break
        self._last = max(self._last, last if last else self.floor())
        self._size = size
        return size


class JournalFollower:
    """The worker's side: read entries appended since the last call, complete lines only.

    The journal may not exist yet: the reader creates it with its first event, and the standby
    worker it spawns at start may be listening before that."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = -1
        self.offset = 0
        #: Set by read_new when the journal was removed and created anew (not by our compaction).
        self.replaced = False

    def _opened(self) -> bool:
        if self._fd < 0:
            try:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return False
        return True

    def pending(self) -> bool:
        """Bytes appended since the last read, or a new journal at the path (a stat and an fstat)."""
        if self._fd < 0:
            return os.path.exists(self.path)
        return os.fstat(self._fd).st_size > self.offset or self._path_replaced()

    def _path_replaced(self) -> bool:
        try:
            return os.stat(self.path).st_ino != os.fstat(self._fd).st_ino
        except FileNotFoundError:
            return False  # removed: the next append creates it, and we follow then

    def compact(self) -> bool:
        """If everything was read, replace the journal by its last entry (a new file); False if
        a writer appended meanwhile.  Only the worker holding worker.lock calls this."""
        if self._fd < 0:
            return False
        fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_ino != os.fstat(self._fd).st_ino or os.fstat(fd).st_size != self.offset:
                return False
            start = max(0, self.offset - _TAIL)
            tail = os.pread(fd, self.offset - start, start)
            write_atomic(self.path, tail[tail.rfind(b"\n", 0, len(tail) - 1) + 1:])
        finally:
            os.close(fd)  # releases the lock: writers now see the new inode
        self._reopen()
        return True

    def _reopen(self) -> None:
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        self.offset = 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)

    def read_new(self) -> tuple[list[Entry], list[bytes]]:
        """(entries, damaged lines) that became complete since the last call.  Once the old file is
        read to its end, a journal created anew at the path is followed from its start."""
        if not self._opened():
            return [], []
        entries, damaged = self._read()
        if not entries and self._path_replaced():
            self._reopen()
            self.replaced = True
            entries, damaged = self._read()
        return entries, damaged

    def _read(self) -> tuple[list[Entry], list[bytes]]:
        chunks = []
        offset = self.offset
        while True:
            chunk = os.pread(self._fd, 1 << 16, offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
        data = b"".join(chunks)
        end = data.rfind(b"\n") + 1
        self.offset += end
        entries: list[Entry] = []
        damaged: list[bytes] = []
        for line in data[:end].split(b"\n")[:-1]:
            entry = parse_entry(line)
            if entry is None:
                damaged.append(line)
            else:
                entries.append(entry)
        return entries, damaged


def last_seq(path: str) -> int:
    """The sequence number of the journal's last intact entry (0: none); reads only the tail."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - _TAIL))
            tail = fh.read()
    except OSError:
        return 0
    for line in reversed(tail.split(b"\n")):
        entry = parse_entry(line)
        if entry is not None:
            return entry.seq
    return 0


def read_all(path: str) -> list[Entry]:
    """Every intact entry (for status and wait)."""
    follower = JournalFollower(path)
    try:
        return follower.read_new()[0]
    finally:
        follower.close()
