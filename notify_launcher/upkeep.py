"""The reader's self-repair: a back-off for retries, and the state directory made again.

The reader dies only by keepalived's hand (keepalived never restarts it), so what fails after
start-up is retried: a crashed or unstartable worker with a growing delay (a crash loop must not
become a fork loop), a removed state directory by making it again with its modes.
"""

from __future__ import annotations

import os

from notify_launcher import settingsfile
from notify_launcher.config import Settings
from notify_launcher.errors import LauncherError
from notify_launcher.handoff import Doorbell
from notify_launcher.log import Troubles
from notify_launcher.statedir import StatePaths, ensure_state_dir

KICK_MIN, KICK_MAX = 0.1, 60.0


class BackOff:
    """One pending retry at a time, each further one `factor` later, up to `high`; `reset` when
    things work again.  Times are the caller's monotonic seconds."""

    def __init__(self, low: float = KICK_MIN, high: float = KICK_MAX, factor: float = 2.0) -> None:
        self.low, self.high, self.factor = low, high, factor
        self.delay = low
        self.due_at: float | None = None

    def later(self, now: float) -> None:
        """Schedule a retry (unless one is scheduled) after the current delay, and grow the delay."""
        if self.due_at is None:
            self.due_at = now + self.delay
            self.delay = min(self.high, self.delay * self.factor)

    def reset(self) -> None:
        """It worked: the next retry comes soon again."""
        self.delay = self.low

    def due(self, now: float) -> bool:
        """True (once) when the scheduled retry is due."""
        if self.due_at is None or now < self.due_at:
            return False
        self.due_at = None
        return True


class StateRepair:
    """Make again what someone removed or never could be made: the state directory (0700) and
    settings.json (a systemd unit's worker reads the reader's settings there)."""

    def __init__(self, paths: StatePaths, settings: Settings, doorbell: Doorbell, troubles: Troubles) -> None:
        self.paths, self.settings, self.doorbell, self.troubles = paths, settings, doorbell, troubles
        self.published = False  # settings.json written for this reader's settings

    def repair(self) -> bool:
        """True when both are in place (said once when they were not)."""
        try:
            existed = os.path.isdir(self.paths.root)
            os.makedirs(self.paths.root, mode=0o700, exist_ok=True)
            ensure_state_dir(self.paths.root)
            if not existed:
                self.doorbell.reset()
                self.published = False
            if not self.published:
                settingsfile.publish(self.paths, self.settings)
                self.published = True
        except (OSError, LauncherError) as exc:
            from notify_launcher.backlog import RETRY_INTERVAL  # (the journal's modules: not before the first spawn)
            self.troubles.report("state directory", None, None, f"cannot prepare the state directory {self.paths.root}: "
                                 f"{getattr(exc, 'strerror', None) or exc}; events wait in memory, "
                                 f"retrying every {RETRY_INTERVAL:g}s")
            return False
        self.troubles.recovered("state directory")
        return True
