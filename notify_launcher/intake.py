"""FIFO bytes -> the events to journal, with a log line for every line that is not one.

The input policy itself is events.py's (pure); this applies it to what the FIFO delivers: lines
cut by lines.py, a rejected line logged with its number and counted for the metrics file, a word
nobody foresaw warned about once.

Bytes without a final newline are never dropped silently, and never glue onto another writer's
line.  keepalived writes each line with one write() of less than PIPE_BUF bytes, newline included,
which the kernel never splits: when a read finds the pipe empty, every keepalived line read so far
is whole, so bytes still pending came from another writer (an administrator's `echo -n`) and are a
line of their own (`unterminated`): logged with their bytes, then journaled or rejected like any
line.  Such bytes written while no reader read sit in the pipe before keepalived's next line and
arrive glued to it: a rejected line that ends with a whole line keepalived writes is cut there
(`pieces`), so keepalived's line (a STOP, say) is journaled and the bytes before it said.
"""

from __future__ import annotations

from notify_launcher.events import MAX_LINE, Event, Rejected, parse_line, unforeseen
from notify_launcher.lines import LineSplitter
from notify_launcher.log import Log, Troubles
from notify_launcher.statedir import StatePaths
from notify_launcher.totals import bump_rejected

_LINE_STARTS = (b'INSTANCE "', b'GROUP "', b"VS ", b"RS ")


def pieces(raw: bytes) -> list[bytes]:
    """A rejected line as the lines it holds: itself, or, when it ends with a line keepalived writes,
    the bytes before that line and the line (the longest such ending)."""
    at = 1
    while True:
        starts = [found for found in (raw.find(start, at) for start in _LINE_STARTS) if found >= 0]
        if not starts:
            return [raw]
        at = min(starts)
        if isinstance(parse_line(raw[at:]), Event):
            return [raw[:at], raw[at:]]
        at += 1


class Intake:
    """`split(bytes)` gives the lines those bytes complete, `line(raw)` the events of one (rejected lines
    are logged); `lines` counts every line."""

    def __init__(self, paths: StatePaths, log: Log) -> None:
        self.paths, self.log = paths, log
        self.troubles = Troubles(log)
        self.splitter = LineSplitter(MAX_LINE)
        self.lines = 0
        self.uncounted = 0  # rejected lines not in the count yet (its lock was busy)
        self.warned: set[str] = set()  # unforeseen words (events.unforeseen) already logged once

    def split(self, data: bytes | None) -> list[bytes]:
        """The lines `data` completes, to hand to `line` one by one (so one line's trouble spares the
        others).  None: the pipe is empty (or at EOF), so the bytes pending without a newline are a
        line (for `line(raw, unterminated=True)`)."""
        if data is None:
            pending = self.splitter.flush()
            return [] if pending is None else [pending]
        return self.splitter.feed(data)

    def cut(self) -> bool:
        """The bytes split so far end inside a line (Fifo.finish_line reads its rest)."""
        return self.splitter.cut

    def line(self, raw: bytes, unterminated: bool = False) -> list[Event]:
        """One line (without its newline): its events (none when it is rejected: said in the log; two
        when it was glued to a line keepalived writes)."""
        parsed = parse_line(raw)
        parts = [raw] if isinstance(parsed, Event) else pieces(raw)
        if unterminated:
            self.log.warn(None, None, f"line {self.lines + 1} has no newline at its end ({len(parts[0])} bytes, "
                                      f"and nothing followed them): {_shown(parts[0])}; taken as a line of its own")
        elif len(parts) == 2:
            self.log.warn(None, None, f"line {self.lines + 1} has no newline at its end ({len(parts[0])} bytes, "
                                      f"and a line keepalived writes came right after them): {_shown(parts[0])}; "
                                      f"taken as a line of its own")
        events = [self._one(part, parsed if len(parts) == 1 else parse_line(part)) for part in parts]
        return [event for event in events if event is not None]

    def _one(self, raw: bytes, parsed: Event | Rejected) -> Event | None:
        self.lines += 1
        if isinstance(parsed, Rejected):
            self.log.warn(None, None, f"line {self.lines} rejected ({parsed.reason}): {parsed.shown()}")
            self._count_rejected()
            return None
        news = unforeseen(parsed)
        if news is not None and news not in self.warned:
            self.warned.add(news)
            self.log.warn(None, parsed, f"{news}: not seen before (a newer keepalived?); its action runs as usual")
        return parsed

    def _count_rejected(self) -> None:
        """For the metrics file: rare (keepalived writes no such line), so a locked write is fine here,
        but never a wait: while the lock is busy, the lines are counted with the next one."""
        self.uncounted += 1
        try:
            bump_rejected(self.paths.rejected, self.uncounted)
        except BlockingIOError:
            return
        except OSError as exc:
            self.troubles.report("rejected count", None, None, f"cannot count the rejected line in "
                                 f"{self.paths.rejected} ({exc.strerror}); the metrics file shows fewer until it can be written")
            return
        self.uncounted = 0
        self.troubles.recovered("rejected count")


def _shown(raw: bytes) -> str:
    return Rejected(raw, "").shown()
