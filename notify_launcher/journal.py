"""The durable ordered queue: one append-only file of events, one line each.

    SEQ <tab> TIME <tab> READER_PID <tab> TYPE <tab> NAME <tab> STATE <tab> PRIORITY <tab> VS <tab> SETTINGS <tab> CRC

SETTINGS names the version of the settings the event was journaled under (settingsfile.py: the
worker runs it with those); CRC is the CRC-32 of everything before its tab, 8 hex digits.  A line
is intact only when it ends with its newline (the newline is the last byte of the line's one
write: a line without it is torn) and its CRC matches, so a line cut short or changed ("100" cut
to "10") never passes for an event.  Lines of 8 fields, without SETTINGS and CRC, are what older
versions wrote: they are read (under the newest settings) while no checksummed line came before
them in the file, which is where an upgrade leaves them; after a checksummed line an 8-field line
is damage.

Appending is cheap (no fsync, never waits on a worker: keepalived drops events when its pipe is
full) and numbers events across processes: two readers live at once during a keepalived reload,
so the next sequence number is read from the file's tail under a short `flock`, and the line is
written under the same lock.  A follower therefore never sees #12 before #11.  A torn last line
(a writer or the machine died mid-write) is cut off by the next appender, which holds the lock,
and reported with what it held.  Numbering never goes back: the next number is above the highest
of the journal's last intact entry plus one per line appended after it that is damaged or torn
(appends are in order, so each took a number above it, whatever its damaged digits read; a
changed newline joins two), such a line's number (when it can be read),
the last number this writer gave, and the floor (the progress and history files' highest seq: progress.py),
which is read once per opened journal file and again when damage is found, not per append.

Nobody waits long for the lock: the worker's compaction writes the new file (and fsyncs it)
without the lock and holds the lock only to check that nothing was appended meanwhile and to
rename; and a writer waits at most LOCK_WAIT for it.  When it stays busy (a holder stopped, frozen
or on a disk that stalls), the event goes into the writer's own spill file (`spill/START-PID`, its
ticket: turn.py; same line format, SEQ 0), durably and at once, and is numbered into the journal,
in order, by the writer's next append that gets the lock -- or by the worker, which adopts every
spill file it can lock each time it reads the journal (it is rung after every append, spilled or
not), also those of writers that died since, in the order their writers started.  A writer's later
events wait behind its spilled ones, so its order holds; and every append first numbers the spill
files of writers started before it that it can lock: a reader that left during a reload with
events spilled read them before the next one read its own (turn.py).  The spill directory is
removed once empty, so that look costs an append one access() while nothing waits.  A
leaving reader also numbers its own spilled events itself if the lock comes free within
keepalived's window (`unspill`).

A spill file is numbered at most once whatever dies when: under both locks, its numberer first
appends (and syncs) a claim line to it -- the journal file and offset its events go to -- then
appends them to the journal, syncs it and removes the file.  Whoever finds the file again reads the
journal at the claim's offset and numbers only the events not there (the numberer died before its
write, or its write failed); and the worker does not compact the journal while a spill file holds a
claim, so the claimed bytes are still there to look at.

The worker compacts the journal when everything in it is done: it replaces the file (atomically)
with one holding only the last entry (so numbering goes on), and removes the settings versions
nothing names any more; writers notice the new inode after taking the lock and move to it.  A
journal someone removed is created again by the next append, numbered above everything seen
before, and the worker follows it.
"""

from __future__ import annotations

TYPE_CHECKING = False

import errno
import fcntl
import os
import stat
import time
import zlib

from notify_launcher import identity, settingsfile
from notify_launcher.locks import lock_holder
from notify_launcher.events import Event
from notify_launcher.progress import last_seq as recorded_seq
from notify_launcher.statedir import FILE_MODE, StatePaths, discard, ensure_dir, open_mode, write_temp

_TAIL = 8192
LOCK_WAIT = 0.05  # s a writer waits for the journal's lock before it spills (keepalived kills at 1 s)
_FIELDS, _LEGACY_FIELDS = 10, 8

if TYPE_CHECKING:
    from collections.abc import Callable

    #: (level, seq, event, message), as Log.line: what the log must hear from a writer (a torn line cut,
    #: an event spilled, spilled events journaled).
    Report = Callable[[str, int | None, object, str], None]


class Entry:
    """One journaled event; `settings` is the version ID it was journaled under ("" for none)."""

    __slots__ = ("seq", "time", "reader_pid", "event", "settings")

    def __init__(self, seq: int, time: float, reader_pid: int, event: Event, settings: str = "") -> None:
        self.seq, self.time, self.reader_pid, self.event, self.settings = seq, time, reader_pid, event, settings

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Entry) and (self.seq, self.time, self.reader_pid, self.event, self.settings) == (
            other.seq, other.time, other.reader_pid, other.event, other.settings)


def format_entry(entry: Entry, seq: int | None = None) -> bytes:
    """The line of `entry`, numbered `seq` if given (a spilled entry being journaled)."""
    e = entry.event
    body = (f"{entry.seq if seq is None else seq}\t{entry.time:.6f}\t{entry.reader_pid}\t{e.type}\t{e.name}\t"
            f"{e.state}\t{e.priority}\t{e.vs}\t{entry.settings}").encode("utf-8")
    return b"%s\t%08x\n" % (body, zlib.crc32(body))


def _parse(line: bytes) -> tuple[Entry | None, bool]:
    """(the entry, or None if the line is damaged; whether it is a checksummed line)."""
    parts = line.split(b"\t")
    checksummed = len(parts) == _FIELDS
    if checksummed:
        body = line[:line.rfind(b"\t")]
        if parts[9] != b"%08x" % zlib.crc32(body):
            return None, True
        settings = parts[8].decode("ascii", "replace")
        if settings and not settingsfile.is_id(settings):
            return None, True
    elif len(parts) == _LEGACY_FIELDS:
        settings = ""
    else:
        return None, False
    fields = [p.decode("utf-8", "replace") for p in parts[:8]]
    try:
        return Entry(int(fields[0]), float(fields[1]), int(fields[2]),
                     Event(fields[3], fields[4], fields[5], int(fields[6]), fields[7]), settings), checksummed
    except ValueError:
        return None, checksummed


def parse_entry(line: bytes) -> Entry | None:
    """An entry from one line without its newline; None if the line is damaged."""
    return _parse(line)[0]


def damaged_seq(line: bytes) -> int | None:
    """The number a damaged or torn line seems to carry: its first field, when a tab ends it (0, a
    spilled event's, is no number)."""
    first, tab, _ = line.partition(b"\t")
    return int(first) or None if tab and first.isdigit() and len(first) < 20 else None


def _entries_in(line: bytes) -> int:
    """How many appended lines a damaged line holds: one, or more when a changed newline joined
    them (a line has 9 tabs; a changed byte adds or removes at most one)."""
    return max(1, (line.count(b"\t") + 4) // 9)


def describe(line: bytes) -> str:
    """What a damaged or torn line held, for the log: its number if readable, its bytes."""
    seq = damaged_seq(line)
    what = f"event #{seq}" if seq is not None else "an event whose number cannot be read"
    return f"{what} ({len(line)} bytes: {line[:200]!r})"


def _flock_within(fd: int, seconds: float | None, pause: Callable[[float], None] = time.sleep) -> bool:
    """flock(LOCK_EX), waiting at most `seconds` (0: not at all; None: as long as it takes) in
    `pause`s; False if it stayed busy."""
    if seconds is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    deadline, step = 0.0, 0.0005
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            now = time.monotonic()
            deadline = deadline or now + seconds
            if now >= deadline:
                return False
            pause(min(step, deadline - now))
            step = min(step * 2, 0.005)


def _ignore(level: str, seq: int | None, event: object, text: str) -> None:
    """The default Report: a writer without a log (tests, the worker's adoption)."""


class JournalWriter:
    """The readers' side: number and append events.

    `floor()` is the highest seq recorded elsewhere (default: the progress and history files beside
    the journal: a removed progress file must not restart numbering below the history's);
    `version` the settings version the events are journaled under (written into settings.d when a
    journal file is opened); `report` says what the log must hear.  A removed journal is created
    again on the next append; `created` then says so, so the reader knows the worker it rang before
    may be following a file that no longer exists.  `pause(s)` is how it waits for a lock (the
    reader's StopWindow.pause: the window may close there, before anything is written).

    Why it is larger than the package's other classes (~350 lines): numbering, appending and
    spilling share one lock, one open file and one floor, and each append must decide between them
    in one bounded step (keepalived's window); the spill files (their names, claims and adoption)
    and the settings versions are the parts to move into classes of their own next.
    """

    def __init__(self, path: str, floor: Callable[[], int] | None = None,
                 version: settingsfile.Version | None = None, report: Report = _ignore,
                 pause: Callable[[float], None] = time.sleep) -> None:
        self.path, self.pause = path, pause
        self.paths = StatePaths(os.path.dirname(path) or ".")
        self.floor = floor or (lambda: max(recorded_seq(self.paths.progress), recorded_seq(self.paths.history)))
        self.version, self.report = version, report
        self._fd = -1  # opened by the first append: a full disk at start-up must not stop the reader
        self._size = -1
        self._last = 0
        self._floor_seen = 0
        self._spill_fd = -1  # our spill file, while it holds events not journaled yet
        self._spill_key: tuple[int, int] | None = None  # our ticket (start, pid): names our spill file, read once
        self._strays: set[str] = set()  # entries of spill/ that are no spill file, said once
        self.created = False

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _open(self) -> None:
        self.close()
        if self.version is not None:  # before any entry names it (a compaction may have removed it)
            settingsfile.ensure(self.paths, self.version)
        existed = os.path.exists(self.path)
        self._fd = open_mode(self.path, os.O_RDWR | os.O_APPEND, FILE_MODE)
        self._size = -1
        self._floor_seen = self.floor()
        self.created = self.created or not existed

    def _lock(self, wait: float | None) -> bool:
        """Take the journal lock on the current file within `wait` s (None: no limit), following a compaction (or a
        removal) that replaced it; False if it stayed busy."""
        if self._fd < 0:
            self._open()
        while True:
            if not _flock_within(self._fd, wait, self.pause):
                return False
            try:
                if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                    return True
            except FileNotFoundError:
                pass
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._open()

    def append(self, event: Event, now: float, pid: int) -> int | None:
        """Append `event` and return its sequence number; None when the journal's lock stayed busy
        and the event went into our spill file instead (numbered later, in order: see above).
        Raises OSError (e.g. ENOSPC, a removed state directory) with nothing written."""
        entry = Entry(0, now, pid, event, self.version.id if self.version else "")
        if not self._lock(0.0 if self._spill_fd >= 0 else LOCK_WAIT):  # spilling: no wait per event
            self._spill(entry)
            return None
        seq = self._after_own_spill(entry)
        if seq is None:  # (cannot happen: only an adopter holding the journal lock locks it)
            self._spill(entry)
        return seq

    @property
    def spilling(self) -> bool:
        """Events of ours wait in our spill file, not numbered yet."""
        return self._spill_fd >= 0

    def unspill(self) -> bool:
        """Number the events waiting in our spill file, if the journal's lock is free now (a reader
        leaving: the next one must not number its own before ours); True once none waits."""
        if self._spill_fd < 0:
            return True
        return self._lock(0.0) and self._after_own_spill(None) is not None

    def _after_own_spill(self, entry: Entry | None) -> int | None:
        """Under the journal's lock (let go here): the events in spill files of writers started before
        us, then those in ours, then `entry`; the last number (0: nothing written), None if our spill
        file was busy.  Without a spill directory (none waits) that costs one access()."""
        try:
            spilled = self._own_spill()
            if spilled is None:
                return None
            if os.access(self.paths.spill, os.F_OK):  # (one syscall, no exception: none waits, most often)
                for line in self.adopt(held=True, before=self._key()):
                    self.report("ERROR", None, None, f"{self.paths.spill}: damaged line dropped: {describe(line)}")
            size = self._synced()
            if self._spill_fd < 0:
                return self._write([entry], size) if entry is not None else 0
            seq = self._journal_spill(self._spill_fd, self._spill_path(), spilled, size, entry)
            self._drop_spill()
            for n, late in enumerate(spilled, seq - len(spilled) + (entry is None)):
                self.report("INFO", n, late.event, "received (journaled late: spilled while the journal's lock was busy)")
            return seq
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            if self._spill_fd >= 0:
                fcntl.flock(self._spill_fd, fcntl.LOCK_UN)

    def _journal_spill(self, fd: int, path: str, spilled: list[Entry], size: int, entry: Entry | None = None) -> int:
        """Under both locks: number `spilled` (the spill file `fd`'s events not journaled yet) and
        `entry` after them into the journal, at most once whatever dies when: a claim line saying where
        they go is written (and synced) to the spill file first, the journal synced before the file is
        removed; whoever finds the file again looks there (`_unnumbered`).  The last number given."""
        if spilled:
            _write_all(fd, _claim(os.fstat(self._fd).st_ino, size, len(spilled)))
            os.fdatasync(fd)
        entries = spilled if entry is None else [*spilled, entry]
        seq = self._write(entries, size) if entries else 0
        if spilled:
            os.fdatasync(self._fd)
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                os.unlink(path)
                os.rmdir(self.paths.spill)  # when empty: so an append finds no spill directory at one syscall
        except OSError:  # (gone already; or others wait in the directory)
            pass
        return seq

    def _unnumbered(self, data: bytes) -> tuple[list[Entry], list[bytes]]:
        """Under the journal's lock: (the events of spill file content `data` not journaled yet, in
        order; its damaged lines).  A claim line covers the events before it not journaled by an
        earlier claim: those of them found where it says in the journal were numbered then (the
        writer died, or was killed, before it removed the file); the rest were not (it died before its
        write, or the write failed)."""
        end = data.rfind(b"\n") + 1
        pending: list[Entry] = []
        damaged = [data[end:]] if data[end:] else []
        for line in data[:end].split(b"\n")[:-1]:
            entry = parse_entry(line)
            claim = None if entry is not None else _parse_claim(line)
            if entry is not None:
                pending.append(entry)
            elif claim is None:
                damaged.append(line)
            else:
                pending = pending[self._found(pending[:claim[2]], claim[0], claim[1]):]
        return pending, damaged

    def _found(self, claimed: list[Entry], ino: int, offset: int) -> int:
        """How many of `claimed`, in order, the journal holds from byte `offset` on (0 when the journal
        is no longer the file `ino`: removed, as a compaction waits while a claim is left)."""
        if not claimed or os.fstat(self._fd).st_ino != ino:
            return 0
        data = os.pread(self._fd, sum(len(format_entry(e)) + 20 for e in claimed), offset)
        found = 0
        for line, want in zip(data.split(b"\n"), claimed):
            got = parse_entry(line)
            if got is None or (got.time, got.reader_pid, got.event, got.settings) != \
                    (want.time, want.reader_pid, want.event, want.settings):
                break
            found += 1
        return found

    def _synced(self) -> int:
        """Under the lock: the clean size of the file, our numbering up to date with it."""
        size = os.fstat(self._fd).st_size
        return size if size == self._size else self._resync(size)

    def _write(self, entries: list[Entry], size: int) -> int:
        """Number `entries` on from the last seq and write them in one write; the last seq given."""
        data = b"".join(format_entry(e, self._last + n) for n, e in enumerate(entries, 1))
        try:
            written = os.write(self._fd, data)
        except OSError:
            os.ftruncate(self._fd, size)
            raise
        if written != len(data):
            os.ftruncate(self._fd, size)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._size, self._last = size + written, self._last + len(entries)
        return self._last

    def _resync(self, size: int) -> int:
        """Another process appended (or a write was torn, or the file is new): learn the highest
        seq on disk; return the clean size (a torn last line is cut off, and reported)."""
        start = max(0, size - _TAIL)
        tail = os.pread(self._fd, size - start, start)
        end = tail.rfind(b"\n") + 1
        highest, damaged = 0, False
        if start + end != size:  # torn last line: cut it (we hold the lock, nobody is writing)
            torn = tail[end:]
            os.ftruncate(self._fd, start + end)
            size = start + end
            highest, damaged = damaged_seq(torn) or 0, True
            self.report("ERROR", None, None, f"{self.path}: its last line was torn (a writer or the machine died while "
                                 f"writing it) and is cut off: {describe(torn)}; numbering goes on above it")
        lines = tail[:end].split(b"\n")[:-1]
        after = int(damaged)  # damaged lines after the last intact one: each took a number above it
        for line in reversed(lines[1:] if start else lines):  # (the first may be cut by the window)
            entry = parse_entry(line)
            if entry is not None:
                highest = max(highest, entry.seq + after)
                break
            damaged, after = True, after + _entries_in(line)  # reported by the worker, which reads it
            highest = max(highest, damaged_seq(line) or 0)
        if damaged:
            self._floor_seen = max(self._floor_seen, self.floor())
        self._last = max(self._last, highest, self._floor_seen)
        self._size = size
        return size

    # -- the spill file: where events go while the journal's lock stays busy -------------------

    def _spill(self, entry: Entry) -> None:
        """Write `entry` to our spill file (raises OSError if that fails too: the caller holds it
        in memory)."""
        first = self._spill_fd < 0
        while True:
            if self._spill_fd < 0:
                try:
                    ensure_dir(self.paths.spill)
                    self._spill_fd = open_mode(self._spill_path(), os.O_RDWR | os.O_APPEND, FILE_MODE)
                except FileNotFoundError:  # (an adopter removed the empty directory meanwhile)
                    continue
            if not _flock_within(self._spill_fd, LOCK_WAIT, self.pause):
                raise OSError(errno.EAGAIN, "the journal's lock and the spill file's both stayed busy")
            if os.fstat(self._spill_fd).st_nlink:
                break
            os.close(self._spill_fd)  # the worker adopted it meanwhile: a new one
            self._spill_fd = -1
        try:
            data = format_entry(entry)
            size = os.fstat(self._spill_fd).st_size
            written = os.write(self._spill_fd, data)
            if written != len(data):
                os.ftruncate(self._spill_fd, size)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        finally:
            fcntl.flock(self._spill_fd, fcntl.LOCK_UN)
        if first:
            holder = lock_holder(self.path)
            self.report("WARN", None, entry.event, f"the journal's lock stayed busy for {LOCK_WAIT:g}s (held by "
                                f"{f'pid {holder.pid}' if holder else 'another process'}): events go into "
                                f"{self._spill_path()} meanwhile, in order; they are numbered and run "
                                f"once the lock is free")

    def _own_spill(self) -> list[Entry] | None:
        """Under the journal lock: the events of ours still in our spill file, to journal first
        ([] if none, or the worker adopted them already); None if it is locked."""
        if self._spill_fd < 0:
            return []
        if not _flock_within(self._spill_fd, 0):
            return None
        st = os.fstat(self._spill_fd)
        if not st.st_nlink:
            self._drop_spill()
            return []
        entries, damaged = self._unnumbered(os.pread(self._spill_fd, st.st_size, 0))
        for line in damaged:
            self.report("ERROR", None, None, f"{self._spill_path()}: damaged line dropped: {describe(line)}")
        return entries

    def _key(self) -> tuple[int, int]:
        """Our ticket: the kernel's start time of this process, then its pid (turn.py's order)."""
        if self._spill_key is None:
            me = identity.me()
            self._spill_key = (me.start, me.pid)
        return self._spill_key

    def _spill_path(self) -> str:
        return os.path.join(self.paths.spill, spill_name(*self._key()))

    def _drop_spill(self) -> None:
        """Our spilled events are journaled (or the worker took them): close our spill file."""
        os.close(self._spill_fd)
        self._spill_fd = -1

    def adopt(self, held: bool = False, before: tuple[int, int] | None = None) -> list[bytes]:
        """Journal, numbered and in order, the events in every spill file we can lock but our own, in
        the order their writers started (the worker calls this before reading the journal; a writer,
        `held` the journal's lock, before each append, for those started `before` it: a reader before
        it that left with events spilled read them first, turn.py); returns the damaged lines found
        in them.  A spill file being written is left for the next call (its writer rings once it is
        written).  The worker waits for the journal's lock here as long as it takes: spilled events
        mean a holder stalled, nothing can be journaled before it lets go, and nobody would ring
        again after."""
        try:
            names = sorted(os.listdir(self.paths.spill), key=_spill_key)
        except FileNotFoundError:
            return []
        except OSError as exc:
            self._stray("", f"cannot be listed ({exc.strerror})")
            return []
        if before is not None:
            names = [name for name in names if _spill_key(name) < before]
        damaged: list[bytes] = []
        for name in names:
            if _spill_key(name) == self._key():
                continue  # (ours: the caller's, numbered by it)
            path = os.path.join(self.paths.spill, name)
            try:  # (read-write: a claim goes into it before its events are numbered)
                fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            except OSError as exc:
                self._stray(name, "is a symbolic link" if exc.errno == errno.ELOOP else
                            "is a directory, not a spill file" if exc.errno == errno.EISDIR
                            else f"cannot be opened ({exc.strerror})")
                continue
            try:
                mode = os.fstat(fd).st_mode
                if not stat.S_ISREG(mode):
                    self._stray(name, f"is {_kind(mode)}, not a spill file")
                    continue
                if not held:
                    self._lock(None)
                try:
                    damaged += self._adopt_one(fd, path)
                except OSError as exc:  # (EIO, a file system gone read-only): the queue goes on without it
                    self._stray(name, f"cannot be read or removed ({exc.strerror})")
                finally:
                    if not held:
                        fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)  # and its lock
        return damaged

    def _stray(self, name: str, what: str) -> None:
        """Say once per name that an entry of spill/ is left alone (its events, if any, are not run)."""
        if name not in self._strays:
            self._strays.add(name)
            self.report("ERROR", None, None, f"{os.path.join(self.paths.spill, name)} {what}: left alone, not "
                                             f"adopted; events in it are not run (move it away once you have "
                                             f"looked at it)")

    def _adopt_one(self, fd: int, path: str) -> list[bytes]:
        if not _flock_within(fd, 0) or not os.fstat(fd).st_nlink:
            return []
        fresh, damaged = self._unnumbered(os.pread(fd, os.fstat(fd).st_size, 0))
        last = self._journal_spill(fd, path, fresh, self._synced())
        for n, entry in enumerate(fresh, last - len(fresh) + 1):
            self.report("INFO", n, entry.event, f"received (journaled late: spilled by pid {entry.reader_pid} "
                                                f"while the journal's lock was busy)")
        return damaged


def spill_name(start: int, pid: int) -> str:
    """The spill file of the writer `pid` started at `start` (clock ticks since boot): its ticket."""
    return f"{start}-{pid}"


def _spill_key(name: str) -> tuple[int, int]:
    """The ticket a spill file's name gives (start, pid): writers are adopted in the order they started
    (a name of another form, a bare pid as older versions wrote, first)."""
    start, _, pid = name.rpartition("-")
    try:
        return int(start or 0), int(pid)
    except ValueError:
        return 0, 0


def _claim(ino: int, offset: int, count: int) -> bytes:
    """The line saying that the `count` events before it are being numbered into journal file `ino`
    at byte `offset`."""
    body = b"numbering\t%d\t%d\t%d" % (ino, offset, count)
    return b"%s\t%08x\n" % (body, zlib.crc32(body))


def _parse_claim(line: bytes) -> tuple[int, int, int] | None:
    """(ino, offset, count) of a claim line; None if it is none (or damaged)."""
    parts = line.split(b"\t")
    if len(parts) != 5 or parts[0] != b"numbering" or parts[4] != b"%08x" % zlib.crc32(line[:line.rfind(b"\t")]):
        return None
    try:
        return int(parts[1]), int(parts[2]), int(parts[3])
    except ValueError:
        return None


def _write_all(fd: int, data: bytes) -> None:
    """One write of `data`, or OSError (a short write is a full disk)."""
    if os.write(fd, data) != len(data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _lines(data: bytes) -> tuple[list[Entry], list[bytes]]:
    """(entries, damaged lines) of the complete lines in `data`, and what follows the last newline
    (torn) as damage."""
    end = data.rfind(b"\n") + 1
    entries: list[Entry] = []
    damaged: list[bytes] = []
    for line in data[:end].split(b"\n")[:-1]:
        entry = parse_entry(line)
        if entry is None:
            damaged.append(line)
        else:
            entries.append(entry)
    if data[end:]:
        damaged.append(data[end:])
    return entries, damaged


class JournalFollower:
    """The worker's side: read entries appended since the last call, complete lines only.

    The journal may not exist yet: the reader creates it with its first event, and the standby
    worker it spawns at start may be listening before that."""

    def __init__(self, path: str, report: Report = _ignore) -> None:
        self.path = path
        self.paths = StatePaths(os.path.dirname(path) or ".")
        self.report = report  # for the spilled events it adopts
        self._fd = -1
        self.offset = 0
        self._checksummed = False  # a checksummed line was read: an 8-field line after it is damage
        self._adopter: JournalWriter | None = None
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
        """Bytes appended since the last read, a new journal at the path, or a spill file to adopt."""
        if spill_files(self.paths):
            return True
        if self._fd < 0:
            return os.path.exists(self.path)
        return os.fstat(self._fd).st_size > self.offset or self._path_replaced()

    def _path_replaced(self) -> bool:
        try:
            return os.stat(self.path).st_ino != os.fstat(self._fd).st_ino
        except FileNotFoundError:
            return False  # removed: the next append creates it, and we follow then

    def compact(self, still_ours: Callable[[], bool] | None = None) -> bool:
        """If everything was read, replace the journal by its last entry (a new file) and remove the
        settings versions nothing names any more; False if a writer appended meanwhile, held the
        lock longer than LOCK_WAIT, or died numbering a spill file (its claim points into this file:
        the next read adopts it, then a compaction may go on).  The new file is written and fsync'ed before the lock is taken:
        the lock covers only the check that nothing was appended and the rename, so an append never
        waits for a disk.  Only the worker holding worker.lock calls this; `still_ours` (asked under
        the lock, after the fsync): False once another worker owns the state files, then nothing is
        replaced."""
        if self._fd < 0:
            return False
        ino = os.fstat(self._fd).st_ino
        if os.fstat(self._fd).st_size != self.offset or self._path_replaced():
            return False
        start = max(0, self.offset - _TAIL)
        tail = os.pread(self._fd, self.offset - start, start)
        last = tail[tail.rfind(b"\n", 0, len(tail) - 1) + 1:]
        tmp = write_temp(self.path, last)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
            try:
                if not _flock_within(fd, LOCK_WAIT) or os.fstat(fd).st_ino != ino \
                        or os.fstat(fd).st_size != self.offset or (still_ours is not None and not still_ours()):
                    return False
                versions, claimed = _spill_state(self.paths)
                if claimed:  # (a writer died numbering a spill file: whoever adopts it looks in this file)
                    return False
                kept = parse_entry(last[:-1])
                settingsfile.collect(self.paths, ({kept.settings} if kept else set()) | versions)
                os.replace(tmp, self.path)
                tmp = ""
            finally:
                os.close(fd)  # releases the lock: writers now see the new inode
        finally:
            if tmp:
                discard(tmp)
        self._reopen()
        return True

    def _reopen(self) -> None:
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        self.offset = 0
        self._checksummed = False

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        if self._adopter is not None:
            self._adopter.close()

    def read_new(self) -> tuple[list[Entry], list[bytes]]:
        """(entries, damaged lines) that became complete since the last call, after adopting the
        spill files (their damaged lines are among those returned).  Once the old file is read to
        its end, a journal created anew at the path is followed from its start."""
        damaged: list[bytes] = []
        if os.path.isdir(self.paths.spill):
            self._adopter = self._adopter or JournalWriter(self.path, report=self.report)
            damaged += self._adopter.adopt()
        if not self._opened():
            return [], damaged
        entries, more = self._read()
        if not entries and self._path_replaced():
            self._reopen()
            self.replaced = True
            entries, more = self._read()
        return entries, damaged + more

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
        end = data.rfind(b"\n") + 1  # what follows the last newline is not complete (or torn)
        self.offset += end
        entries: list[Entry] = []
        damaged: list[bytes] = []
        for line in data[:end].split(b"\n")[:-1]:
            entry, checksummed = _parse(line)
            if entry is None or (self._checksummed and not checksummed):
                damaged.append(line)
            else:
                entries.append(entry)
            self._checksummed = self._checksummed or checksummed
        return entries, damaged


def spill_files(paths: StatePaths) -> list[str]:
    """The names in spill/ that are regular files (links not followed); anything else there (a
    directory, a symlink someone put there) is no spill file: adopt() says so once and leaves it."""
    try:
        with os.scandir(paths.spill) as found:
            return sorted(item.name for item in found if _regular(item))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _regular(item: os.DirEntry[str]) -> bool:
    try:
        return item.is_file(follow_symlinks=False)
    except OSError:
        return False


def _kind(mode: int) -> str:
    """What a file that is not a regular one is, for the log."""
    for test, what in ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return what
    return "not a regular file"


def _spill_state(paths: StatePaths) -> tuple[set[str], bool]:
    """(the settings versions the spill files' events name, kept by a compaction; whether one holds
    a claim: a writer died while it numbered it, and the journal is where its adopter looks)."""
    versions, claimed = set(), False
    for name in spill_files(paths):
        try:
            with open(os.path.join(paths.spill, name), "rb") as fh:
                entries, damaged = _lines(fh.read())
        except OSError:
            continue
        versions |= {e.settings for e in entries}
        claimed = claimed or any(_parse_claim(line) for line in damaged)
    return versions, claimed


def last_seq(path: str) -> int:
    """The sequence number of the journal's last intact entry (0: none), for whoever watches the queue
    from outside (the tests' launcher driver); reads only the tail, a torn last line skipped."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - _TAIL))
            tail = fh.read()
    except OSError:
        return 0
    for line in reversed(tail.split(b"\n")[:-1]):
        entry = parse_entry(line)
        if entry is not None:
            return entry.seq
    return 0


def read_all(path: str) -> list[Entry]:
    """Every intact entry (for status and wait)."""
    follower = JournalFollower(path)
    try:
        return follower._read()[0] if follower._opened() else []
    finally:
        follower.close()
