"""The one error type, and the exit codes (README "Operating").

A LauncherError is a problem foreseen where it is known -- the INI file, the state directory, the
FIFO, a `send`, a log file: its message is one line that says what is wrong and what to do, and it
carries the exit code a command ends with.  cli.py turns it into that exit in one place per audience
(the reader: stderr, syslog and the log; operator commands: one line on stderr); nothing else maps
errors to codes.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_TIMEOUT = 1  # `wait` timed out: the launcher is still busy
EXIT_NOTHING = 1  # `log` found no matching line (as grep)
EXIT_USAGE = 2  # usage or configuration error; an insecure file as root; a line `send` would not journal
EXIT_UNUSABLE = 3  # the FIFO or the state directory cannot be used; `send` not delivered; a log file unreadable
EXIT_PARTIAL = 4  # `import`: some directives could not be converted (listed; they stay in keepalived.conf)
EXIT_SOFTWARE = 70  # sysexits.h EX_SOFTWARE: an error nobody foresaw (a bug)
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C): 128 + 2, as a shell reports it
EXIT_TERMINATED = 143  # SIGTERM: 128 + 15, as a shell reports it


class LauncherError(Exception):
    """What went wrong (`str()`: one line, what to do included) and the exit code it ends a command with."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code
