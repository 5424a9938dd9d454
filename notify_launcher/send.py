"""`notify-launcher send`: inject an event as keepalived would, to test actions without a failover.

Through the FIFO (`--fifo`): one non-blocking write, exactly as keepalived writes; it fails when no
reader has the FIFO open.  Into the state directory (`--state-dir`): journaled and handed to a
worker directly, with the settings of the newest reader -- works while keepalived is down.
"""

from __future__ import annotations

import os

from notify_launcher.config import Settings
from notify_launcher.events import Rejected, parse_line
from notify_launcher.handoff import Doorbell
from notify_launcher.journal import JournalWriter
from notify_launcher.statedir import StatePaths


class SendError(Exception):
    """The event could not be delivered; the message says why."""


def send_fifo(path: str, line: str) -> str:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        hint = " (no reader has it open: is keepalived with notify_fifo_script running?)" if exc.errno == 6 else ""
        raise SendError(f"cannot open FIFO {path}: {exc.strerror}{hint}") from None
    try:
        os.write(fd, line.encode() + b"\n")
    except BlockingIOError:
        raise SendError(f"FIFO {path} is full: the line was dropped, as keepalived would drop it") from None
    finally:
        os.close(fd)
    return f"written to {path}"


def send_state(state_dir: str, line: str) -> str:
    parsed = parse_line(line.encode())
    if isinstance(parsed, Rejected):
        raise SendError(f"not an event keepalived writes: {parsed.reason}")
    paths = StatePaths(state_dir)
    try:
        with open(paths.settings) as fh:
            settings = Settings.from_json(fh.read())
    except OSError as exc:
        raise SendError(f"{paths.settings}: {exc.strerror} (has a reader ever run with this state dir?)") from None
    import time

    seq = JournalWriter(paths.journal).append(parsed, time.time(), os.getpid())
    doorbell = Doorbell(paths)

    def spawn(standby_fd: int) -> None:
        from notify_launcher.detach import choose, spawn_worker
        r, w = os.pipe()
        os.close(r)  # nobody watches this worker: its hello goes nowhere
        try:
            spawn_worker(choose(settings)[0], settings, standby_fd, w)
        finally:
            os.close(w)

    doorbell.ring(spawn, spawning=False)
    return f"journaled as #{seq}"
