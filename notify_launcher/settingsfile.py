"""settings.json in the state directory: the newest reader's settings, so a lingering worker, a
worker in a systemd unit and `send` act on the configuration keepalived's reader runs with.

One writer (the reader, at start and whenever it remakes the state directory), one way to read
it, one error: whoever reads decides what a missing or damaged file means for it.
"""

from __future__ import annotations

import os

from notify_launcher.config import Settings
from notify_launcher.statedir import StatePaths, write_atomic


class SettingsFileError(Exception):
    """settings.json cannot be read or makes no sense; the message names the file and why."""


def publish(paths: StatePaths, settings: Settings) -> bool:
    """Write settings.json atomically, only when it changed (a rewrite makes workers reread it);
    True if it was written.  Raises OSError (a full disk, a removed state directory)."""
    text = settings.to_json()
    try:
        with open(paths.settings) as fh:
            if fh.read() == text:
                return False
    except (OSError, UnicodeDecodeError):
        pass
    write_atomic(paths.settings, text.encode())
    return True


def read(paths: StatePaths) -> Settings:
    """The published settings.  OSError (missing, unreadable) is left to the caller, which knows
    what it means there; content that is not settings is a SettingsFileError."""
    fd = os.open(paths.settings, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with open(fd, encoding="utf-8", errors="strict") as fh:
        try:
            return Settings.from_json(fh.read())
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise SettingsFileError(f"{paths.settings} is damaged ({type(exc).__name__}: {exc})") from None
