"""The settings a worker follows and the log they name, in one object every part of the worker reads.

The newest reader publishes settings.json (settingsfile.py); a lingering worker follows it, so an
administrator's change reaches the next events without a restart.  The log file and level, the
metrics file and `linger` always follow the newest settings; an event's action, timeouts and
policies follow the settings it was journaled under (`for_entry`).  Because every part (the drain, recovery, the metrics publisher, the
on_failure runner) reads `settings` and `log` here, a reload reaches all of them at once.
"""

from __future__ import annotations

import os

from notify_launcher import settingsfile
from notify_launcher.config import Settings
from notify_launcher.errors import LauncherError
from notify_launcher.journal import Entry
from notify_launcher.log import Log, Troubles
from notify_launcher.statedir import StatePaths


def file_id(path: str) -> tuple[int, int] | None:
    """What tells a file from the one that replaced it at its path (None: there is none)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


class Following:
    """`settings`, `log` and `troubles` (its log-once helper) as of the last `follow()`."""

    def __init__(self, paths: StatePaths, settings: Settings, log: Log) -> None:
        self.paths, self.settings, self.log = paths, settings, log
        self.troubles = Troubles(log)
        self._seen: tuple[int, int] | None = None

    def start(self) -> None:
        """Remember which settings.json our settings came from (a rewrite is a reload)."""
        self._seen = file_id(self.paths.settings)

    def follow(self) -> None:
        """Take the newest reader's settings if settings.json changed since; a damaged file is
        logged and the settings in use stay."""
        ident = file_id(self.paths.settings)
        if ident == self._seen or ident is None:
            return
        self._seen = ident
        try:
            new = settingsfile.read(self.paths)
        except (OSError, LauncherError) as exc:
            self.log.error(None, None, f"cannot follow the settings ({exc}); keeping the old ones")
            return
        if (new.log_file, new.log_level) != (self.settings.log_file, self.settings.log_level):
            self.log.info(None, None, f"settings changed: logging to {new.log_file} at {new.log_level} from now on")
            self.log.close()
            self.log = self.troubles.log = Log(new.log_file, "worker", new.log_level)
        self.settings = new

    def for_entry(self, entry: Entry) -> Settings:
        """The settings `entry` was journaled under: a reload changes what comes after it, never what
        came before.  The newest where it names none (journaled by `send` or an older launcher) or
        where its version cannot be read (logged with the event)."""
        if not entry.settings:
            return self.settings
        try:
            return settingsfile.for_entry(self.paths, entry)
        except (OSError, LauncherError) as exc:
            self.log.error(entry.seq, entry.event, f"{exc}; running it with the newest settings")
            return self.settings
