"""The one log format every process writes: the file an administrator debugs from.

    2026-11-25 14:55:01.123 worker[4242] INFO  #17 INSTANCE "VI_1" MASTER 100 | action started ...

Every line carries time (ms), role and pid, level, the event's sequence number and the event
(`#- -` when a line concerns no event).  Each line is one `write()` on an O_APPEND descriptor, so
the reader, the worker and a second reader during a keepalived reload interleave whole lines.
The file is reopened when logrotate moved it: before every line, the path's identity (device,
inode) is compared with the open file's, as logging's WatchedFileHandler does.  A stat costs about
a microsecond; a timer between checks would put lines written after a rotation into the rotated
file, which `compress` without `delaycompress` then loses, and a timer on the wall clock stops
checking for as long as the clock was stepped back.  The logging module is not used: the reader
must start fast and stay small.

A message is text from anywhere (a process's command line, an action's output): its control
characters are written as backslash escapes (`escaped`), so one call is one line -- a newline in it
cannot forge the lines `log`, `log --failed` and the invariants read -- and no terminal sequence
reaches the administrator reading the log.
"""

from __future__ import annotations

TYPE_CHECKING = False

import os
import sys
import time

from notify_launcher.security import insecure_reason
from notify_launcher.statedir import open_mode

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

LOG_MODE = 0o640
_LEVELS = {"DEBUG": 10, "INFO": 20, "WARN": 30, "ERROR": 40}


def escaped(text: str) -> str:
    """`text` with every character that is not printable (C0 and C1 controls, DEL, ESC, line and
    format separators) written as `\\xNN`, `\\uNNNN` or `\\UNNNNNNNN`: one printable line whatever it holds."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


class Log:
    """Appends formatted lines to one file; falls back to stderr when the file cannot be written."""

    def __init__(self, path: str | None, role: str, level: str = "INFO") -> None:
        self.path = path
        self.role = role
        self.threshold = _LEVELS[level]
        self._fd = -1
        self._ident: tuple[int, int] | None = None
        self._failed: str | None = None
        self._second, self._stamp = -1, ""
        self._open()

    def _open(self) -> None:
        """Open (or reopen after a rotation) the file; as root, only where no one else could have put
        something in its place (security.py), so a worker reopening after a rotation is covered too."""
        if self.path is None:
            return
        why = insecure_reason(self.path, created=True) if os.geteuid() == 0 else None
        if why:
            self._report_failure(f"log file {self.path} is not safe for root: {why}")
            return
        try:
            fd = open_mode(self.path, os.O_WRONLY | os.O_APPEND, LOG_MODE)
        except OSError as exc:
            self._report_failure(f"cannot open log file {self.path}: {exc.strerror}")
            return
        st = os.fstat(fd)
        self._fd, self._ident = fd, (st.st_dev, st.st_ino)

    def _report_failure(self, why: str) -> None:
        """Say once that the log is lost: on stderr (which is /dev/null under keepalived) and syslog;
        until the file works again, lines go to syslog."""
        if self._failed != why:
            self._failed = why
            sys.stderr.write(f"notify-launcher: {why}; actions still run\n")
            _syslog(f"{why}; actions still run; log lines go to syslog until it works again")

    def _fallback(self, text: str) -> None:
        sys.stderr.write(text)
        if self._failed is not None:
            _syslog(text.rstrip("\n"))

    def _reopen_if_rotated(self) -> None:
        assert self.path is not None
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._ident:
                return
        except OSError:
            pass
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._open()

    def line(self, level: str, seq: int | None, event: object, message: str) -> None:
        """Write one line; `event` is anything whose str() names it (an Event, or None)."""
        if _LEVELS[level] < self.threshold:
            return
        now = time.time()
        second = int(now)
        if second != self._second:  # strftime once a second, not once a line
            self._second, self._stamp = second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        stamp = self._stamp
        ms = int(now * 1000) % 1000
        text = (f"{stamp}.{ms:03d} {self.role}[{os.getpid()}] {level:<5} "
                f"#{'-' if seq is None else seq} {event if event is not None else '-'} | {escaped(message)}\n")
        if self.path is None:
            sys.stderr.write(text)
            return
        self._reopen_if_rotated()
        if self._fd < 0:
            self._fallback(text)
            return
        try:
            os.write(self._fd, text.encode("utf-8", "backslashreplace"))
        except OSError as exc:
            self._report_failure(f"cannot write log file {self.path}: {exc.strerror}")
            self._fallback(text)
            return
        if self._failed is not None:
            self._failed = None
            self.info(None, None, f"log file {self.path} writable again")

    def debug(self, seq: int | None, event: object, message: str) -> None:
        self.line("DEBUG", seq, event, message)

    def info(self, seq: int | None, event: object, message: str) -> None:
        self.line("INFO", seq, event, message)

    def warn(self, seq: int | None, event: object, message: str) -> None:
        self.line("WARN", seq, event, message)

    def error(self, seq: int | None, event: object, message: str) -> None:
        self.line("ERROR", seq, event, message)

    def exception(self, seq: int | None, event: object, message: str, exc: BaseException) -> None:
        """`message` and the traceback, one ERROR line each, so grep on `#SEQ` finds all of it."""
        import traceback  # only on the failure path

        self.error(seq, event, f"{message}: {type(exc).__name__}: {exc}")
        for block in traceback.format_exception(type(exc), exc, exc.__traceback__):
            for text in block.rstrip("\n").splitlines():
                self.error(seq, event, f"  {text}")

    def close(self) -> None:
        """Let go of the file (a worker whose settings name another log file or level)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Troubles:
    """Each area's recurring problem (a full disk, a removed directory, a refused fork) is logged once, again
    only when what is logged changes, and an INFO line follows when it is gone: a failing disk must not flood
    the log at every event, and the administrator must see when it works again.  (New log file: rebind `log`.)"""

    def __init__(self, log: Log) -> None:
        self.log = log
        self._last: dict[str, tuple[int | None, str]] = {}  # area -> (seq, problem) logged last

    def report(self, area: str, seq: int | None, event: object, message: str, exc: BaseException | None = None) -> None:
        """An ERROR line (with `exc`'s traceback, if given), unless it is what `area` logged last."""
        said = (seq, message if exc is None else f"{message}: {type(exc).__name__}: {exc}")
        if self._last.get(area) != said:
            self._last[area] = said
            if exc is None:
                self.log.error(seq, event, message)
            else:
                self.log.exception(seq, event, message, exc)

    def recovered(self, area: str, message: str | None = None) -> bool:
        """Forget `area`'s problem; if there was one, say so (default: "AREA: working again") and
        return True."""
        if self._last.pop(area, None) is None:
            return False
        self.log.info(None, None, message or f"{area}: working again")
        return True


def python_problems_to(log: Callable[[], Log]) -> None:
    """Send what Python itself would print on stderr -- its warnings, and the exceptions it can only
    ignore (raised in __del__, e.g. an unclosed socket under -X dev) -- to the log `log()` returns
    now: a worker's stderr is /dev/null (python-daemon's), where they would be lost."""
    import warnings

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: object = None, line: str | None = None) -> None:
        log().warn(None, None, f"Python: {category.__name__}: {message} ({filename}:{lineno})")

    def unraisable(info: Any) -> None:
        log().error(None, None, f"Python: Exception ignored in {info.object!r}: "
                                f"{getattr(info.exc_type, '__name__', info.exc_type)}: {info.exc_value}")

    warnings.showwarning = show
    sys.unraisablehook = unraisable


def _syslog(message: str) -> None:
    import syslog

    syslog.openlog("notify-launcher", syslog.LOG_PID, syslog.LOG_DAEMON)
    syslog.syslog(syslog.LOG_ERR, message)
