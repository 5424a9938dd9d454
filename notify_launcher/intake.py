"""FIFO bytes -> the events to journal, with a log line for every line that is not one.

The input policy itself is events.py's (pure); this applies it to what the FIFO delivers: lines
cut by lines.py, a rejected line logged with its number and counted for the metrics file, a word
nobody foresaw warned about once.
"""

from __future__ import annotations

from notify_launcher.events import MAX_LINE, Event, Rejected, parse_line, unforeseen
from notify_launcher.lines import LineSplitter
from notify_launcher.log import Log, Troubles
from notify_launcher.statedir import StatePaths
from notify_launcher.totals import bump_rejected


class Intake:
    """`split(bytes)` gives the lines those bytes complete, `line(raw)` the event of one (None: rejected,
    and logged); `lines` counts every line."""

    def __init__(self, paths: StatePaths, log: Log) -> None:
        self.paths, self.log = paths, log
        self.troubles = Troubles(log)
        self.splitter = LineSplitter(MAX_LINE)
        self.lines = 0
        self.warned: set[str] = set()  # unforeseen words (events.unforeseen) already logged once

    def split(self, data: bytes) -> list[bytes]:
        """The lines `data` completes (handled one by one, so one line's trouble spares the others)."""
        return self.splitter.feed(data)

    def line(self, raw: bytes) -> Event | None:
        """One line (without its newline): its event, or None when it is rejected (said in the log)."""
        self.lines += 1
        parsed = parse_line(raw)
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
        """For the metrics file: rare (keepalived writes no such line), so a locked write is fine here."""
        try:
            bump_rejected(self.paths.rejected)
        except OSError as exc:
            self.troubles.report("rejected count", None, None, f"cannot count the rejected line in "
                                 f"{self.paths.rejected} ({exc.strerror}); the metrics file will show fewer")
            return
        self.troubles.recovered("rejected count")
