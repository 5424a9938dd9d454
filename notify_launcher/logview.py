"""`notify-launcher log`: the log lines of one event, a range of events, a period, or the failed
events, found through the `#SEQ` every line carries (log.py), across the log file and its
rotations -- logrotate's numbered names (NAME.1, NAME.2.gz, ...: a higher number is older) or
`dateext` names (NAME-20261125[.gz]) -- compressed or not, oldest first.

Lines are matched as bytes against the fixed layout log.py writes, and a time limit is compared as
text (the stamp is fixed-width local time), so reading weeks of compressed log costs little.
Lines are shown with their control characters escaped (`printable`), as log.py writes them now:
a log file written before that, or by hand, sends no terminal sequence to whoever reads it.
"""

from __future__ import annotations

import gzip
import os
import re
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from notify_launcher.errors import EXIT_UNUSABLE, EXIT_USAGE, LauncherError
from notify_launcher.log import escaped

#: `2026-11-25 15:02:17.480 worker[31438] INFO  #1 ...`: the time to the second, the level, the seq.
_LINE = re.compile(rb"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.\d{3} \S+\[\d+\] (\w+) +#(\d+|-) ")
_SINCE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Query:
    """Which lines: events `first`..`last` (None: any), lines stamped at or after `since` (local
    time as the log writes it, or None), only events with an ERROR line (`failed`)."""

    first: int | None = None
    last: int | None = None
    since: str | None = None
    failed: bool = False

    def wants_seq(self, seq: int) -> bool:
        return (self.first is None or seq >= self.first) and (self.last is None or seq <= self.last)


def parse_seqs(text: str) -> tuple[int, int]:
    """`1234`, `#1234` or `12-20` as (first, last); a LauncherError says what is wrong."""
    first, _, last = text.lstrip("#").partition("-")
    try:
        low, high = int(first), int(last.lstrip("#") or first)
    except ValueError:
        raise LauncherError(f"{text!r} is not an event number or range (e.g. 1234 or 12-20)", EXIT_USAGE) from None
    if low > high:
        raise LauncherError(f"{text!r}: the range goes backwards", EXIT_USAGE)
    return low, high


def parse_since(text: str, now: float) -> str:
    """`90s`, `30m`, `1h`, `2d` ago, or `YYYY-MM-DD HH:MM[:SS]` (local time), as the log's stamp
    text; a LauncherError says what is allowed."""
    m = _SINCE.match(text.strip())
    if m:
        t = now - float(m.group(1)) * _UNITS[m.group(2)]
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
    for layout in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M"):
        try:
            return time.strftime("%Y-%m-%d %H:%M:%S", time.strptime(text.strip(), layout))
        except ValueError:
            continue
    raise LauncherError(f"{text!r} is not a time: expected e.g. 90s, 30m, 1h, 2d or '2026-11-25 03:00'", EXIT_USAGE)


def log_files(path: str) -> list[str]:
    """The log file's rotations, oldest first, then the file itself (only those that exist)."""
    directory, base = os.path.split(path)
    try:
        names = os.listdir(directory or ".")
    except OSError as exc:
        raise LauncherError(f"{directory}: {exc.strerror}; check --log-file (or log_file in the config)",
                            EXIT_UNUSABLE) from None
    numbered = re.compile(re.escape(base) + r"\.(\d+)(\.gz)?$")
    dated = re.compile(re.escape(base) + r"-(\d[\d-]*)(\.gz)?$")
    rotated = sorted(name for name in names if dated.match(name))  # dateext: the date sorts oldest first
    rotated += sorted((name for name in names if numbered.match(name)),
                      key=lambda name: -int(name[len(base) + 1:].split(".")[0]))  # NAME.N[.gz]: higher is older
    found = [os.path.join(directory, name) for name in rotated]
    return found + [path] if base in names else found


def printable(line: bytes) -> bytes:
    """One log line (its newline dropped) as the terminal may see it: invalid UTF-8 and control
    characters as backslash escapes, then a newline."""
    return escaped(line.rstrip(b"\n").decode("utf-8", "backslashreplace")).encode() + b"\n"


@dataclass
class Span:
    """What the files held, for a "nothing found" message."""

    files: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    low: int | None = None
    high: int | None = None

    def see(self, seq: int) -> None:
        self.low = seq if self.low is None else min(self.low, seq)
        self.high = seq if self.high is None else max(self.high, seq)


def _lines(path: str, span: Span) -> Iterator[bytes]:
    """The file's lines (a .gz is decompressed).  One that cannot be read (or only in part: a
    damaged .gz) is noted in `span.errors`, and the other files are still read."""
    try:
        with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as fh:
            yield from fh
    except (OSError, EOFError, zlib.error) as exc:
        why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        todo = ("run it as the user the reader runs as (usually root: sudo)"
                if isinstance(exc, PermissionError) else "is it damaged? `gzip -t` or `file` tells")
        span.errors.append(f"{path}: cannot read: {why}; {todo}; its lines are left out")


def _matching(files: list[str], query: Query, span: Span) -> Iterator[tuple[int, bytes, bytes]]:
    """(seq, level, line) of the lines in the files that the query's seqs and time allow.  Lines
    about no event (`#- -`: a reader or worker starting, a rejected line, a worker's death) come
    with a period alone (seq 0): they are what happened then, but belong to no event asked for."""
    whole_period = query.first is None and not query.failed
    for path in files:
        span.files.append(path)
        for line in _lines(path, span):
            m = _LINE.match(line)
            if m is None or (m.group(3) == b"-" and not whole_period):
                continue
            seq = 0 if m.group(3) == b"-" else int(m.group(3))
            if seq:
                span.see(seq)
            if query.since is not None and m.group(1).decode() < query.since:
                continue
            if not seq or query.wants_seq(seq):
                yield seq, m.group(2), line


def select(path: str, query: Query) -> tuple[Iterator[bytes], Span]:
    """The lines the query asks for, oldest first, and the Span they were found in (complete once
    the lines are consumed).  With `failed`, the files are read twice: first to learn which events
    have an ERROR line, then for all their lines."""
    files = log_files(path)
    if not files:
        raise LauncherError(f"{path}: no such file (nor rotated copies of it); check --log-file "
                            f"(or log_file in the config)", EXIT_UNUSABLE)
    span = Span()

    def lines() -> Iterator[bytes]:
        failed: set[int] | None = None
        if query.failed:
            failed = {seq for seq, level, _ in _matching(files, query, Span()) if level == b"ERROR"}
        for seq, _, line in _matching(files, query, span):
            if failed is None or seq in failed:
                yield line

    return lines(), span
