"""The resident notify_fifo_script: FIFO line -> parsed event -> journal -> doorbell.

(`notify-launcher serve` runs the same reader as a service of its own: it follows the FIFO across
keepalived restarts and reloads instead of exiting.)

It must never stall (keepalived drops events when the pipe is full), survive any byte sequence,
and leave well inside keepalived's one-second SIGTERM->SIGKILL window -- but only after catching
the STOP lines keepalived writes *after* its SIGTERM.  It dies only by keepalived's hand: every
error it meets after start-up (a full or read-only disk, a removed state directory or journal, a
fork refused at the pid limit, an exception nobody foresaw) is logged once, retried with back-off,
and repaired (the state directory and settings.json are made again with their modes), while
events wait in memory in order.  Heavy imports (python-daemon, filelock, psutil) belong to the
worker; the reader only forks.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import time
from collections import deque
from collections.abc import Callable

from notify_launcher import identity, settingsfile
from notify_launcher.config import Settings
from notify_launcher.detach import Way, spawn_worker
from notify_launcher.events import MAX_LINE, READER_TYPE, Event, Rejected, parse_line, unforeseen
from notify_launcher.fifo import Fifo
from notify_launcher.handoff import Doorbell, WorkerWatch
from notify_launcher.journal import JournalWriter
from notify_launcher.lines import LineSplitter
from notify_launcher.log import Log, Troubles
from notify_launcher.process import drain
from notify_launcher.progress import last_seq as last_recorded
from notify_launcher.statedir import StateDirError, StatePaths, ensure_state_dir
from notify_launcher.totals import bump_rejected

FINAL_STATES = frozenset({"STOP", "DELETED"})
BACKLOG_MAX = 100_000  # events held in memory while the journal cannot be written
RETRY_INTERVAL = 1.0
KICK_MIN, KICK_MAX = 0.1, 60.0
#: After a SIGTERM that came while we started: how long keepalived may take to start the next reader
#: if it is reloading (17-34 ms seen, docs/keepalived.md "Reload"); its STOP lines wait in the pipe.
SIBLING_WAIT = 0.1
#: After SIGTERM, once every instance/group we know has reported STOP: how long the FIFO must stay
#: quiet before we leave, so a STOP line of one we never saw, written in the same burst, is caught.
STOP_QUIET = 0.03
#: After SIGTERM: how often to look for the next reader keepalived starts when it reloads (a scan of
#: /proc), so that we leave it the FIFO at once instead of reading beside it until the grace is over.
SIBLING_CHECK = 0.02


def later_sibling(pid: int) -> int | None:
    """A process started after `pid` by the same parent with the same command line, if any: the
    script keepalived starts again when it reloads (docs/keepalived.md, "Reload").

    This, not the FIFO, tells a reload from a stop after a SIGTERM without EOF: keepalived may
    reuse the very same FIFO on reload, and a FIFO's timestamps move with every write."""
    me = identity.stat(pid)
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
    except OSError:
        return None
    if me is None:
        return None
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == pid:
            continue
        other = identity.stat(int(name))
        if other is None or other[0] != me[0] or (other[1], int(name) > pid) < (me[1], True):
            continue  # another parent, or started before us (a clock tick is 10 ms: pids break ties)
        try:
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                if fh.read() == cmdline:
                    return int(name)
        except OSError:
            continue
    return None


class Reader:
    """One reader per keepalived process (two for a moment during a reload).

    Building one only stores state; `run()` installs the signal handlers and serves until
    keepalived stops it, so the line handling, back-off and recovery can be driven in a test."""

    def __init__(self, settings: Settings, paths: StatePaths, fifo_fd: int, fifo_path: str, log: Log,
                 detach: Way, term_at: float | None = None, serve: bool = False) -> None:
        self.settings, self.paths, self.log = settings, paths, log
        self.detach = detach
        self.serve = serve  # service mode: our own unit; follow the FIFO across keepalived restarts
        self.poller = select.poll()
        self.fifo = Fifo(fifo_path, fifo_fd, serve, self.poller, log)
        self.journal = JournalWriter(paths.journal, floor=lambda: last_recorded(paths.progress))
        self.doorbell = Doorbell(paths)
        self.watch = WorkerWatch(paths, self.poller)
        self._kick_at: float | None = None  # when to ring again for a crashed or unstartable worker
        self._kick_delay = KICK_MIN
        self.backlog: deque[tuple[Event, float]] = deque()
        self.states: dict[str, str] = {}  # INSTANCE/GROUP key -> last state, to know when all have STOPped
        self.lines = 0
        self._last_line_at = 0.0
        self.splitter = LineSplitter(MAX_LINE)
        self.warned: set[str] = set()  # unforeseen words (events.unforeseen) already logged once
        self.troubles = Troubles(log)
        self.published = False  # settings.json written for this reader's settings
        self.term_at = term_at  # a SIGTERM that came while we were starting
        self._term_logged = False
        self._sibling: int | None = None  # the next reader, once seen after SIGTERM (a reload)
        self._sibling_check = 0.0  # when to look for it next (monotonic)
        self._wake_r = -1
        self._pause = 0.0  # after an unforeseen exception: a growing pause, so it cannot spin

    # -- start-up -----------------------------------------------------------------------------

    def init_signals(self) -> None:
        """SIGTERM only notes the time (the loop acts on it); the wakeup pipe ends poll() at once."""
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
        self.init_signals()
        self.fifo.watch()
        self.poller.register(self._wake_r, select.POLLIN)
        self._repair()
        self._guarded("worker watch", self._follow_named)  # a worker that crashed while no reader ran
        # Announce us to the worker, or spawn the standby that our events will find ready; it also
        # does any work left behind.
        self._guarded("worker start", self._ring)
        eof = False
        while not eof:
            if self.term_at is not None and (self.serve or self._stop_complete()):
                break
            try:
                eof = self._step()
                self._pause = 0.0
            except Exception as exc:  # never die of our own bug: keepalived would not restart us
                self._unforeseen("reader loop", exc)
                self._pause = min(1.0, max(0.05, self._pause * 2))
                time.sleep(self._pause)
        self._finish(eof)
        return 0

    # -- the loop -------------------------------------------------------------------------------

    def _step(self) -> bool:
        """One poll and what it brought; True at the FIFO's EOF (not in service mode)."""
        eof = False
        for fd, _ in self.poller.poll(self._poll_timeout()):
            if fd == self._wake_r:
                drain(self._wake_r)
            elif fd == self.fifo.fd:
                if not self._read():
                    eof = not self.serve
                    if self.serve:
                        self.fifo.writer_gone()
            elif self.watch.owns(fd):
                self._watched(fd)
        if self._kick_at is not None and time.monotonic() >= self._kick_at:
            self._kick()
        if self.fifo.recheck_at is not None and time.monotonic() >= self.fifo.recheck_at:
            self.fifo.recheck()
        if self.backlog:
            self._flush_backlog()
        if self.term_at is not None and not self._term_logged and not self.serve:
            self._term_logged = True
            self.log.info(None, None, f"SIGTERM: catching STOP lines for up to {self.settings.stop_grace:g}s")
        return eof

    def _poll_timeout(self) -> int | None:
        """Milliseconds poll() may sleep: forever when idle (no polling loops), else the nearest deadline."""
        waits = []
        if self.term_at is not None:
            now = time.monotonic()
            waits.append(self.term_at + self.settings.stop_grace - now)
            quiet_at = self._last_line_at + STOP_QUIET
            waits.append(quiet_at - now if quiet_at > now else self._sibling_check - now)
        if self.backlog:
            waits.append(RETRY_INTERVAL)
        if self._kick_at is not None:
            waits.append(self._kick_at - time.monotonic())
        if self.fifo.recheck_at is not None:
            waits.append(self.fifo.recheck_at - time.monotonic())
        if not waits:
            return None
        return max(0, int(min(waits) * 1000) + 1)

    def _stop_complete(self) -> bool:
        """After SIGTERM: the grace is over; or, once the FIFO is quiet, every known instance/group
        reported STOP (a stop), or keepalived started the next reader (a reload, which writes no STOP
        lines and may hand it this very FIFO: reading beside it could journal lines out of order)."""
        assert self.term_at is not None
        now = time.monotonic()
        if now >= self.term_at + self.settings.stop_grace:
            return True
        # keepalived writes its STOP lines in one burst; a line of an instance or group we have not
        # seen yet may follow the last one we know by a moment: leave once the burst is over.
        if now < self._last_line_at + STOP_QUIET:
            return False
        if self.states and all(s in FINAL_STATES for s in self.states.values()):
            return True
        if self._sibling is None and now >= self._sibling_check:
            self._sibling_check = now + SIBLING_CHECK
            self._sibling = later_sibling(os.getpid())
        return self._sibling is not None

    # -- trouble: logged once, retried, repaired -----------------------------------------------

    def _unforeseen(self, area: str, exc: Exception) -> None:
        """An exception nobody planned for: its traceback once, then carry on."""
        self.troubles.report(area, None, None, f"{area}: unexpected error (the reader carries on)", exc)

    def _guarded(self, area: str, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception as exc:
            self._unforeseen(area, exc)

    def _repair(self) -> bool:
        """Make again what someone removed or never could be made: the state directory (0700) and
        settings.json.  True when both are in place."""
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
        except (OSError, StateDirError) as exc:
            self.troubles.report("state directory", None, None, f"cannot prepare the state directory {self.paths.root}: "
                                 f"{getattr(exc, 'strerror', None) or exc}; events wait in memory, "
                                 f"retrying every {RETRY_INTERVAL:g}s")
            return False
        self.troubles.recovered("state directory")
        return True

    # -- FIFO -----------------------------------------------------------------------------------

    def _read(self) -> bool:
        """Read what the FIFO holds, line by line; False at EOF (keepalived closed it)."""
        return self.fifo.read(self._feed)

    def _feed(self, data: bytes) -> None:
        for raw in self.splitter.feed(data):
            try:
                self._line(raw)
            except Exception as exc:
                self._unforeseen("line handling", exc)

    # -- events ---------------------------------------------------------------------------------

    def _line(self, raw: bytes) -> None:
        self.lines += 1
        self._last_line_at = time.monotonic()
        parsed = parse_line(raw)
        if isinstance(parsed, Rejected):
            self.log.warn(None, None, f"line {self.lines} rejected ({parsed.reason}): {parsed.shown()}")
            self._count_rejected()
            return
        news = unforeseen(parsed)
        if news is not None and news not in self.warned:
            self.warned.add(news)
            self.log.warn(None, parsed, f"{news}: not seen before (a newer keepalived?); its action runs as usual")
        if parsed.type in ("INSTANCE", "GROUP"):
            self.states[parsed.key] = parsed.state
        self._submit(parsed)

    def _count_rejected(self) -> None:
        """For the metrics file: rare (keepalived writes no such line), so a locked write is fine here."""
        try:
            bump_rejected(self.paths.rejected)
        except OSError as exc:
            self.troubles.report("rejected count", None, None, f"cannot count the rejected line in "
                                 f"{self.paths.rejected} ({exc.strerror}); the metrics file will show fewer")
            return
        self.troubles.recovered("rejected count")

    def _submit(self, event: Event) -> None:
        self._hold(event)
        self._flush_backlog()

    def _hold(self, event: Event) -> None:
        if len(self.backlog) >= BACKLOG_MAX:
            lost, _ = self.backlog.popleft()
            self.log.error(None, lost, f"DROPPED: more than {BACKLOG_MAX} events wait for the journal")
        self.backlog.append((event, time.time()))

    def _flush_backlog(self) -> None:
        """Journal what waits, oldest first, ringing after each."""
        while self.backlog:
            event, received = self.backlog[0]
            try:
                seq = self.journal.append(event, received, os.getpid())
            except OSError as exc:
                self._journal_failed(event, exc)
                break
            self.backlog.popleft()
            if self.journal.created:  # the journal was made anew: find the worker again by path
                self.journal.created = False
                self.doorbell.reset()
            self._kick_delay = KICK_MIN  # new work: a worker that crashed before may be retried promptly
            self._ring()  # before logging: the worker can start while we write the log line
            self.troubles.recovered("journal")
            late = time.time() - received
            if late > RETRY_INTERVAL / 2:
                self.log.info(seq, event, f"received (journaled late, after {late:.1f}s)")
            else:
                self.log.info(seq, event, "received")

    def _journal_failed(self, event: Event, exc: OSError) -> None:
        self.troubles.report("journal", None, None, f"cannot write the journal {self.journal.path} ({exc.strerror}); "
                             f"events wait in memory, in order; retrying every {RETRY_INTERVAL:g}s")
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            self._repair()

    # -- workers --------------------------------------------------------------------------------

    def _ring(self) -> None:
        try:
            if not self.published:
                self._repair()  # a systemd unit worker reads its settings from the state directory
            rang = self.doorbell.ring(self._spawn, spawning=bool(self.watch.hellos))
        except OSError as exc:  # fork refused (pid limit, memory), standby.lock not creatable
            self.troubles.report("worker start", None, None, f"cannot start a worker: {exc}; events are journaled "
                                 f"and wait; retrying with back-off")
            self._retry_later()
            return
        self.troubles.recovered("worker start")
        if rang == "spawned":
            self.log.debug(None, None, "no worker listening or queued: spawned one")
            return
        self._follow_named()
        if rang == "queued":  # it stands by only for readers it heard: ring again until it listens
            self._retry_later()

    def _follow_named(self) -> None:
        self._worker_news(self.watch.follow_named())

    def _watched(self, fd: int) -> None:
        """A hello pipe or the worker's pidfd became readable."""
        hello = fd in self.watch.hellos
        news = self.watch.ready(fd)
        if news is not None:
            self._worker_news(news)
        elif hello:
            self._kick_delay = KICK_MIN  # a worker took over: back-off is for crash loops only
        elif self.term_at is None:
            self.log.debug(None, None, f"worker pid {self.watch.pid} left; starting a standby")
            self._retry_later()

    def _worker_news(self, crash: str | None) -> None:
        """Ring again after a worker crash, with a growing delay so a crash loop is no fork loop."""
        if crash is None:
            return
        self.log.warn(None, None, f"{crash}; starting another in {self._kick_delay:g}s to recover")
        self._retry_later()

    def _retry_later(self) -> None:
        if self._kick_at is None:
            self._kick_at = time.monotonic() + self._kick_delay
            self._kick_delay = min(KICK_MAX, self._kick_delay * 2)

    def _kick(self) -> None:
        self._kick_at = None
        self._ring()

    def _spawn(self, standby_fd: int) -> None:
        hello = self.watch.new_child()
        try:
            spawn_worker(self.detach, self.settings, standby_fd, hello)
        finally:
            os.close(hello)

    # -- the end --------------------------------------------------------------------------------

    def _finish(self, eof: bool) -> None:
        """Journal the reader's own end, so the stop action runs after the STOP lines, then say when."""
        if self.serve:
            self.log.info(None, None, f"service mode: SIGTERM, exiting ({self.lines} lines read)")
            return
        if self.term_at is None:
            state, why = "EOF", "keepalived closed the FIFO"
        elif eof:
            state, why = "RELOAD", "SIGTERM then EOF: keepalived is reloading"
        elif (sibling := self._sibling or later_sibling(os.getpid())) is not None:
            state, why = "RELOAD", (f"SIGTERM, and keepalived started the next reader (pid {sibling}): "
                                    f"a reload; leaving the FIFO to it")
        elif self.fifo.replaced():
            state, why = "RELOAD", f"SIGTERM, and {self.fifo.path} is a new FIFO: keepalived is reloading"
        else:
            state, why = "STOP", "SIGTERM: keepalived is stopping"
        self.finish_with(state, why)

    def finish_with(self, state: str, why: str) -> None:
        """Journal `READER reader STATE` (held in memory until the journal takes it) and log the exit."""
        self._submit(Event(READER_TYPE, "reader", state))
        if self.backlog:
            self.log.error(None, None, f"LOST: {len(self.backlog)} events could not be journaled before exit")
        since = "" if self.term_at is None else f", {(time.monotonic() - self.term_at) * 1000:.0f} ms after SIGTERM"
        self.log.info(None, None, f"reader exiting ({why}; {self.lines} lines read{since})")
