"""`notify-launcher send`: inject an event as keepalived would, to test actions without a failover.

Through the FIFO (`--fifo`): one non-blocking write, exactly as keepalived writes; it fails when no
reader has the FIFO open.  Into the state directory (`--state-dir`): journaled and handed to a
worker directly, with the settings of the newest reader -- works while keepalived is down.

Errors are LauncherErrors: a line keepalived would not write is a usage error, an event not
delivered says why and what to do; an OSError on the state directory propagates for the command line
to explain.
"""

from __future__ import annotations

import errno
import os
import stat
import time

from notify_launcher import settingsfile
from notify_launcher.config import Settings
from notify_launcher.errors import EXIT_UNUSABLE, EXIT_USAGE, LauncherError
from notify_launcher.events import Rejected, parse_line
from notify_launcher.handoff import Doorbell
from notify_launcher.journal import JournalWriter
from notify_launcher.security import fifo_refusal
from notify_launcher.statedir import StatePaths

#: Pauses between rings (s) while a worker holds worker.lock but nobody listens ("queued"): one
#: starting reads the journal anyway, but one leaving may be past its last look at it (the SIGCHLD
#: the ring woke it with came too late) -- the next ring then finds no worker and spawns one; the
#: last spawns one to queue behind the holder (a leaving worker stalled by a slow disk or SIGSTOP).
RING_AGAIN = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)


def send_fifo(path: str, line: str) -> str:
    """Write `line` (the argument's bytes as given, see os.fsencode) and a newline into the FIFO,
    once the trust rule passed it (security.fifo_refusal): root writes no event where someone
    else reads it or made it."""
    refused = fifo_refusal(path)
    if refused:
        raise LauncherError(refused, EXIT_USAGE)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        hint = "no reader has it open: is keepalived with notify_fifo_script running?" \
            if exc.errno == errno.ENXIO else "give keepalived's notify_fifo path"
        raise LauncherError(f"cannot open FIFO {path}: {exc.strerror}; {hint}", EXIT_UNUSABLE) from None
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):  # never append a line to a regular file by mistake
            raise LauncherError(f"{path} is not a FIFO; give keepalived's notify_fifo path", EXIT_UNUSABLE)
        os.write(fd, os.fsencode(line) + b"\n")
    except BlockingIOError:
        raise LauncherError(f"FIFO {path} is full: the line was dropped, as keepalived would drop it; "
                            f"try again when the reader has caught up", EXIT_UNUSABLE) from None
    except OSError as exc:  # EPIPE: the reader closed it since we opened it
        raise LauncherError(f"cannot write to FIFO {path}: {exc.strerror}; is the reader still running?",
                            EXIT_UNUSABLE) from None
    finally:
        os.close(fd)
    return f"written to {path}"


def _settings(paths: StatePaths) -> Settings:
    """The newest reader's settings (an OSError propagates: the command line explains it)."""
    try:
        return settingsfile.read(paths)
    except LauncherError as exc:
        raise LauncherError(f"{exc}; restart or reload keepalived so that a reader writes it again",
                            EXIT_UNUSABLE) from None


def send_state(state_dir: str, line: str) -> str:
    parsed = parse_line(os.fsencode(line))
    if isinstance(parsed, Rejected):
        raise LauncherError(f"not an event keepalived writes: {parsed.reason}; write the line as keepalived "
                            f"does, e.g. 'INSTANCE \"VI_1\" MASTER 100'", EXIT_USAGE)
    paths = StatePaths(state_dir)
    settings = _settings(paths)
    journal = JournalWriter(paths.journal, version=settingsfile.version(settings))  # as the reader numbers
    try:
        seq = journal.append(parsed, time.time(), os.getpid())
    finally:
        journal.close()
    doorbell = Doorbell(paths)

    def spawn(standby_fd: int) -> None:
        from notify_launcher.detach import choose, spawn_worker
        r, w = os.pipe()
        os.close(r)  # nobody watches this worker: its hello goes nowhere
        try:
            spawn_worker(choose(settings)[0], settings, standby_fd, w)
        finally:
            os.close(w)

    try:
        for pause in (*RING_AGAIN, None):
            if doorbell.ring(spawn, spawning=False, behind=pause is None) != "queued" or pause is None:
                break
            time.sleep(pause)
    except OSError as exc:  # e.g. fork failing at the pid limit: the event is safe in the journal
        raise LauncherError(f"{_where(seq)}, but no worker could be started ({exc.strerror}); the next "
                            f"event or `send` starts one, and it runs it first", EXIT_UNUSABLE) from None
    finally:
        doorbell.close()
    return _where(seq)


def _where(seq: int | None) -> str:
    if seq is None:
        return "spilled: the journal's lock stayed busy; the worker journals and runs it once the lock is free"
    return f"journaled as #{seq}"
