"""The metrics file, rewritten after events: the counts, and what waits in the queue.

A write costs ~0.3 ms, as much as the rest of the worker's own work per event, so during a burst it
is coalesced: written when the queue is empty, else at least every METRICS_EVERY events or
METRICS_INTERVAL seconds (monotonic).  A failure is logged once (and again only when it changes);
the next write tries again.
"""

from __future__ import annotations

import time

from notify_launcher.following import Following
from notify_launcher.journal import Entry
from notify_launcher.totals import Totals, read_rejected

METRICS_EVERY, METRICS_INTERVAL = 100, 1.0  # during a burst: write the metrics file this often (events, s)


class MetricsPublisher:
    """`published` is False until the first write (or the first attempt, with no file configured)."""

    def __init__(self, following: Following, totals: Totals) -> None:
        self.following, self.totals = following, totals
        self.published = False
        self._at = 0.0  # monotonic time of the last write
        self._unpublished = 0  # events finished since

    def publish(self, waiting: list[Entry]) -> None:
        """After an event's end record (or at start): the counts, and the events `waiting` behind it."""
        settings = self.following.settings
        path = settings.metrics_file
        if path is None:
            return
        from notify_launcher import metrics  # only with a metrics file (a module less at every start)
        now = time.monotonic()
        self._unpublished += 1
        if waiting and self.published and self._unpublished < METRICS_EVERY and now < self._at + METRICS_INTERVAL:
            return
        self.published, self._at, self._unpublished = True, now, 0
        # the oldest event's age, for a dashboard: the journal's wall-clock time (a display, no decision)
        age = time.time() - waiting[0].time if waiting else 0.0
        text = metrics.render(self.totals, len(waiting), max(0.0, age), read_rejected(self.following.paths.rejected))
        troubles = self.following.troubles
        try:
            metrics.write(path, text, settings.metrics_mode)
        except OSError as exc:
            troubles.report("metrics", None, None, f"cannot write the metrics file {path} ({exc.strerror}); "
                            f"will try again after the next event")
            return
        troubles.recovered("metrics", f"metrics file {path} written again")
