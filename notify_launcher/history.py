"""The history file: finished events' end records, oldest first, for `notify-launcher history`.

The progress file is what `status` and `wait` replay, whole; were the history in it, they would
read more the longer the history.  So a compaction moves the progress file's end records here
(ProgressLog.compact), and the progress file keeps each name's last end and what came since.
The worker holding worker.lock is the only writer, at a compaction: it appends the ends, fsync'ed,
before the progress file is replaced without them.  A crash in between leaves ends in both files:
ends rise, so an append skips those at or below the file's last seq, and a reader takes the
progress file's ends only above it.  Nothing promised is lost, nothing shown twice.

The file is trimmed to the last `keep` ends when it grew past twice its size after the last trim
(`kept`, carried in the progress file's totals record), so a trim's cost is paid by what was
appended since the one before: amortized O(1) per event.  Records are the progress file's, with
their CRC; a damaged one is skipped.
"""

from __future__ import annotations

TYPE_CHECKING = False

import errno
import os

from notify_launcher.progress import encode, open_appending, parse_end, replay
from notify_launcher.statedir import write_atomic

if TYPE_CHECKING:
    from collections.abc import Callable

    from notify_launcher.records import EndRecord

TRIM_FLOOR = 64 * 1024  # bytes: below this the file is never trimmed (before a trim says its size)


class History:
    """The worker's writer: `kept` is the file's size after its last trim (0: not known); `trouble`
    what kept the last `move` from writing the file (None: nothing), for the worker's log."""

    def __init__(self, path: str, keep: int) -> None:
        self.path = path
        self.keep = keep
        self.kept = 0
        self.trouble: str | None = None

    def move(self, ends: list[EndRecord], still_ours: Callable[[], bool] | None = None) -> None:
        """Append the ends, then trim; never raises.  The history only serves `history N`, while the
        compaction that calls this keeps the progress file -- in RAM, replayed whole by `status` and
        `wait` -- small: a history file that cannot be written (a full disk, EIO, a symlink or a
        directory at its path) costs the ends it would have got, never the compaction.  What failed
        is in `trouble`, worded to stay the same while it lasts (the worker logs it once)."""
        try:
            self.append(ends)
        except OSError as exc:
            self.trouble = (f"cannot append to {self.path} ({exc.strerror}): compactions of the progress file go on, "
                            f"and the results they move out are left out of the history (`history` does not show them; "
                            f"what is done stays done); make {self.path} a regular file the worker can write, or free "
                            f"space on its file system")
            return
        try:
            self.trim(still_ours)
        except OSError as exc:
            self.trouble = (f"cannot trim {self.path} ({exc.strerror}): it grows until it can be trimmed; compactions "
                            f"of the progress file go on and no result is lost")
            return
        self.trouble = None

    def append(self, ends: list[EndRecord]) -> None:
        """Append the ends above the file's last one, and fsync: only then may the progress file
        drop them.  A torn last record (a crash in an earlier append, its end still in the progress
        file) is cut first.  Raises OSError."""
        fd, _ = open_appending(self.path)
        try:
            after = _last_seq(fd)
            data = b"".join(encode(e) for e in ends if e["seq"] > after)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                if written <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.path)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)

    def trim(self, still_ours: Callable[[], bool] | None = None) -> None:
        """Keep the last `keep` ends when the file is at least twice its size after the last trim
        (`still_ours`: statedir.write_atomic)."""
        size = os.path.getsize(self.path)
        if size <= max(TRIM_FLOOR, 2 * self.kept):
            return
        with open(self.path, "rb") as fh:
            lines = [line + b"\n" for line in fh.read().split(b"\n")[:-1] if parse_end(line) is not None]
        data = b"".join(lines[-self.keep:])
        write_atomic(self.path, data, still_ours=still_ours)
        self.kept = len(data)


def _last_seq(fd: int) -> int:
    """The seq of the file's last intact record (0: none)."""
    size = os.fstat(fd).st_size
    start = max(0, size - 65536)
    for line in reversed(os.pread(fd, size - start, start).split(b"\n")[:-1]):
        rec = parse_end(line)
        if rec is not None:
            return rec["seq"]
    return 0


def read(path: str) -> list[EndRecord]:
    """Every intact end record in the history file (none if there is no file)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return []
    return [rec for rec in map(parse_end, data.split(b"\n")[:-1]) if rec is not None]


def last(history_path: str, progress_path: str, n: int) -> list[EndRecord]:
    """The last `n` ends: the history file's, then the progress file's above them.

    The progress file is read first.  A compaction appends to the history file before it replaces
    the progress file, and a trim keeps the newest ends: so the history file read after holds every
    end the progress file read before held and moved since.  Read the other way round, a compaction
    between the two reads moves ends into the history file already read, out of the progress file
    not read yet: they would be in neither."""
    recent = replay(progress_path, keep_ends=n).ends
    ends = read(history_path)
    after = ends[-1]["seq"] if ends else 0
    return [*ends, *(e for e in recent if e["seq"] > after)][-n:]
