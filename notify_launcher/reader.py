"""The resident notify_fifo_script: FIFO line -> parsed event -> journal -> doorbell.

(`notify-launcher serve` runs the same reader as a service of its own: it follows the FIFO across
keepalived restarts and reloads instead of exiting.)

It must never stall (keepalived drops events when the pipe is full), survive any byte sequence,
and leave well inside keepalived's one-second SIGTERM->SIGKILL window -- but only after catching
the STOP lines keepalived writes *after* its SIGTERM.  Heavy imports (python-daemon, filelock,
psutil) belong to the worker; the reader only forks.
"""

from __future__ import annotations

import os
import select
import signal
import stat
import time
from collections import deque

from notify_launcher.config import Settings
from notify_launcher.events import MAX_LINE, READER_TYPE, Event, Rejected, parse_line
from notify_launcher.handoff import Doorbell, WorkerWatch
from notify_launcher.journal import JournalWriter
from notify_launcher.log import Log
from notify_launcher.statedir import StatePaths

FINAL_STATES = frozenset({"STOP", "DELETED"})
BACKLOG_MAX = 100_000  # events held in memory while the journal cannot be written
RETRY_INTERVAL = 1.0
KICK_MIN, KICK_MAX = 0.1, 60.0
FIFO_RECHECK = 1.0  # service mode, while keepalived is silent: how often to look for a new FIFO


class FifoError(Exception):
    """The FIFO keepalived gave us cannot be read; the message says why."""


def open_fifo(path: str) -> int:
    """Open keepalived's FIFO for reading without waiting for a writer (so SIGTERM is never missed)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise FifoError(f"FIFO {path}: {exc.strerror} (keepalived creates it from notify_fifo; "
                        f"the FIFO must be the last argument)") from None
    if not stat.S_ISFIFO(st.st_mode):
        raise FifoError(f"{path} is not a FIFO (keepalived passes its notify_fifo path as the last argument)")
    try:
        return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise FifoError(f"FIFO {path}: cannot open for reading: {exc.strerror} "
                        f"(keepalived makes it 0600, owned by the script user)") from None


class Reader:
    """One reader per keepalived process (two for a moment during a reload)."""

    def __init__(self, settings: Settings, paths: StatePaths, fifo_fd: int, fifo_path: str, log: Log,
                 detach: str, term_at: float | None = None, serve: bool = False) -> None:
        self.settings, self.paths, self.fifo, self.fifo_path, self.log = settings, paths, fifo_fd, fifo_path, log
        self.detach = detach
        self.serve = serve  # service mode: our own unit; follow the FIFO across keepalived restarts
        self._recheck_at: float | None = time.monotonic() if serve else None
        self.journal = JournalWriter(paths.journal)
        self.doorbell = Doorbell(paths)
        self.poller = select.poll()
        self.watch = WorkerWatch(paths, self.poller)
        self._kick_at: float | None = None  # when to ring again for a crashed worker
        self._kick_delay = KICK_MIN
        self.backlog: deque[tuple[Event, float]] = deque()
        self.states: dict[str, str] = {}  # INSTANCE/GROUP key -> last state, to know when all have STOPped
        self.lines = 0
        self.term_at = term_at  # a SIGTERM that came while we were starting
        self._term_logged = False
        self._buf = b""
        self._discarding = False
        self._wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps spawn_detached's children

    def _on_term(self, signum: int, frame: object) -> None:
        if self.term_at is None:
            self.term_at = time.monotonic()

    def run(self) -> int:
        if self.fifo >= 0:
            self.poller.register(self.fifo, select.POLLIN)
        self.poller.register(self._wake_r, select.POLLIN)
        self._follow_named()  # a worker that crashed while no reader ran is noticed now
        eof = False
        while not eof:
            if self.term_at is not None and (self.serve or self._stop_complete()):
                break
            timeout = self._poll_timeout()
            for fd, _ in self.poller.poll(timeout):
                if fd == self._wake_r:
                    _drain(self._wake_r)
                elif fd == self.fifo:
                    if not self._read():
                        eof = not self.serve
                        if self.serve:
                            self._writer_gone()
                elif self.watch.owns(fd):
                    self._worker_news(self.watch.ready(fd))
            if self._kick_at is not None and time.monotonic() >= self._kick_at:
                self._kick()
            if self._recheck_at is not None and time.monotonic() >= self._recheck_at:
                self._recheck_fifo()
            if self.backlog:
                self._flush_backlog()
            if self.term_at is not None and not self._term_logged and not self.serve:
                self._term_logged = True
                self.log.info(None, None, f"SIGTERM: catching STOP lines for up to {self.settings.stop_grace:g}s")
        self._finish(eof)
        return 0

    def _poll_timeout(self) -> int | None:
        """Milliseconds poll() may sleep: forever when idle (no polling loops), else the nearest deadline."""
        waits = []
        if self.term_at is not None:
            waits.append(self.term_at + self.settings.stop_grace - time.monotonic())
        if self.backlog:
            waits.append(RETRY_INTERVAL)
        if self._kick_at is not None:
            waits.append(self._kick_at - time.monotonic())
        if self._recheck_at is not None:
            waits.append(self._recheck_at - time.monotonic())
        if not waits:
            return None
        return max(0, int(min(waits) * 1000) + 1)

    def _stop_complete(self) -> bool:
        """After SIGTERM: every known instance/group reported STOP, or the grace is over."""
        assert self.term_at is not None
        if time.monotonic() >= self.term_at + self.settings.stop_grace:
            return True
        return bool(self.states) and all(s in FINAL_STATES for s in self.states.values())

    def _read(self) -> bool:
        """Read what the FIFO holds; False at EOF (keepalived closed it: reload or exit)."""
        while True:
            try:
                data = os.read(self.fifo, 1 << 16)
            except BlockingIOError:
                return True
            if not data:
                return False
            self._recheck_at = None  # keepalived writes to this FIFO: it is the right one
            self._feed(data)

    def _writer_gone(self) -> None:
        """Service mode: keepalived closed the FIFO (restart, reload, exit); follow it to the new one."""
        self.log.info(None, None, f"keepalived closed {self.fifo_path}; following it (restart or reload)")
        self._close_fifo()
        self._recheck_at = time.monotonic()

    def _close_fifo(self) -> None:
        if self.fifo >= 0:
            self.poller.unregister(self.fifo)
            os.close(self.fifo)
            self.fifo = -1

    def _recheck_fifo(self) -> None:
        """Service mode, until keepalived writes again: (re)open the FIFO at its path when it is missing
        or was replaced (keepalived makes a new one, a new inode, on reload and restart)."""
        self._recheck_at = time.monotonic() + FIFO_RECHECK
        try:
            current = os.stat(self.fifo_path).st_ino
        except OSError:
            self._close_fifo()
            return
        if self.fifo >= 0 and os.fstat(self.fifo).st_ino == current:
            return
        self._close_fifo()
        try:
            self.fifo = open_fifo(self.fifo_path)
        except FifoError as exc:
            self.log.warn(None, None, str(exc))
            return
        self.poller.register(self.fifo, select.POLLIN)
        self.log.info(None, None, f"reading {self.fifo_path} (inode {current})")

    def _feed(self, data: bytes) -> None:
        """Split into lines; a line longer than MAX_LINE is reported once and skipped to its newline."""
        buf, start = self._buf + data, 0
        while (nl := buf.find(b"\n", start)) >= 0:
            if self._discarding:
                self._discarding = False
            else:
                self._line(buf[start:nl])
            start = nl + 1
        rest = buf[start:]
        if len(rest) > MAX_LINE:
            if not self._discarding:
                self._line(rest)
                self._discarding = True
            rest = b""
        self._buf = rest

    def _line(self, raw: bytes) -> None:
        self.lines += 1
        parsed = parse_line(raw)
        if isinstance(parsed, Rejected):
            self.log.warn(None, None, f"line {self.lines} rejected ({parsed.reason}): {parsed.shown()}")
            return
        if parsed.type in ("INSTANCE", "GROUP"):
            self.states[parsed.key] = parsed.state
        self._submit(parsed)

    def _submit(self, event: Event) -> None:
        if self.backlog:
            self._hold(event)
            self._flush_backlog()
            return
        now = time.time()
        try:
            seq = self.journal.append(event, now, os.getpid())
        except OSError as exc:
            self.log.error(None, event, f"cannot write the journal ({exc.strerror}); holding the event "
                                        f"in memory and retrying every {RETRY_INTERVAL:g}s")
            self._hold(event, now)
            return
        self._kick_delay = KICK_MIN  # new work: a worker that crashed before may be retried promptly
        self._ring()  # before logging: the worker can start while we write the log line
        self.log.info(seq, event, "received")

    def _hold(self, event: Event, now: float | None = None) -> None:
        if len(self.backlog) >= BACKLOG_MAX:
            lost, _ = self.backlog.popleft()
            self.log.error(None, lost, f"DROPPED: more than {BACKLOG_MAX} events wait for the journal")
        self.backlog.append((event, time.time() if now is None else now))

    def _flush_backlog(self) -> None:
        while self.backlog:
            event, received = self.backlog[0]
            try:
                seq = self.journal.append(event, received, os.getpid())
            except OSError:
                return
            self.backlog.popleft()
            self.log.info(seq, event, f"received (journaled late, after {time.time() - received:.1f}s)")
        self._ring()

    def _ring(self) -> None:
        if self.doorbell.ring(self._spawn, spawning=bool(self.watch.hellos)):
            self.log.debug(None, None, "no worker listening or queued: spawned one")
        else:
            self._follow_named()

    def _follow_named(self) -> None:
        self._worker_news(self.watch.follow_named())

    def _worker_news(self, crash: str | None) -> None:
        """Ring again after a worker crash, with a growing delay so a crash loop is no fork loop."""
        if crash is None:
            return
        self.log.warn(None, None, f"{crash}; starting another in {self._kick_delay:g}s to recover")
        if self._kick_at is None:
            self._kick_at = time.monotonic() + self._kick_delay
            self._kick_delay = min(KICK_MAX, self._kick_delay * 2)

    def _kick(self) -> None:
        self._kick_at = None
        self._ring()

    def _spawn(self, standby_fd: int) -> None:
        from notify_launcher.detach import spawn_worker
        hello = self.watch.new_child()
        try:
            spawn_worker(self.detach, self.settings, standby_fd, hello)
        finally:
            os.close(hello)

    def _finish(self, eof: bool) -> None:
        """Journal the reader's own end, so the stop action runs after the STOP lines, then say when."""
        if self.serve:
            self.log.info(None, None, f"service mode: SIGTERM, exiting ({self.lines} lines read)")
            return
        if self.term_at is None:
            state, why = "EOF", "keepalived closed the FIFO"
        elif eof:
            state, why = "RELOAD", "SIGTERM then EOF: keepalived is reloading"
        else:
            state, why = "STOP", "SIGTERM: keepalived is stopping"
        self._submit(Event(READER_TYPE, "reader", state))
        if self.backlog:
            self.log.error(None, None, f"LOST: {len(self.backlog)} events could not be journaled before exit")
        since = "" if self.term_at is None else f", {(time.monotonic() - self.term_at) * 1000:.0f} ms after SIGTERM"
        self.log.info(None, None, f"reader exiting ({why}; {self.lines} lines read{since})")


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
