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
from collections.abc import Sequence

from notify_launcher import settingsfile
from notify_launcher.backlog import RETRY_INTERVAL, Backlog
from notify_launcher.config import Settings
from notify_launcher.events import READER_TYPE, Event
from notify_launcher.fifo import EOF, Fifo
from notify_launcher.intake import Intake
from notify_launcher.journal import JournalWriter
from notify_launcher.log import Log, Troubles
from notify_launcher.owner import Seen, Starter
from notify_launcher.predecessor import Predecessor
from notify_launcher.progress import last_states
from notify_launcher.process import drain
from notify_launcher.statedir import StatePaths
from notify_launcher.stopping import SIBLING_CHECK_IN_READ, StopClassifier, Verdict, later_sibling
from notify_launcher.turn import ReadTurn, lock_path
from notify_launcher.window import DEADLINE, StopWindow, WindowClosed
from notify_launcher.workerlink import WorkerLink


#: The pause between tries to journal what waits once keepalived's stop window is open (s).
STOP_RETRY = 0.02
#: What is kept of the stop window after waiting for the readers before us: to read what the pipe
#: holds and journal it with our READER event (s).
TURN_RESERVE = 0.1
#: Bytes read from the FIFO between two looks at the stop, once stopping (~100 lines).
STOPPING_READ = 4096
#: Kept of keepalived's window for our READER event once the grace is over while keepalived's
#: lines still wait in the pipe (s): read on until then, and say what is left LOST.
FINISH_RESERVE = 0.2


class Reader:
    """One reader per keepalived process (two for a moment during a reload): the loop that composes
    the FIFO, the intake, the backlog, the worker link and the stop classifier.

    Building one only stores state; `run()` installs the signal handlers and serves until
    keepalived stops it.  Its ~300 lines are the composition alone (18 methods: the poll loop, the
    signal handlers, and the hand-offs between the parts it holds); each job it composes is a class
    of its own in the modules above."""

    def __init__(self, settings: Settings, paths: StatePaths, fifo_fd: int, fifo_path: str, log: Log,
                 workers: WorkerLink, early_term: Sequence[float] = (), serve: bool = False,
                 starter: Seen | None = None, turn: ReadTurn | None = None) -> None:
        self.settings, self.paths, self.log = settings, paths, log
        self.serve = serve  # service mode: our own unit; follow the FIFO across keepalived restarts
        self.workers = workers  # started already (cli): the standby worker's start overlaps ours
        self.poller = workers.poller
        self.window = StopWindow()
        self.fifo = Fifo(fifo_path, fifo_fd, serve, self.poller, log, self.window.held)
        self.intake = Intake(paths, log)
        self.journal = JournalWriter(paths.journal, version=settingsfile.version(settings),
                                     report=log.line, pause=self.window.pause)
        self.backlog = Backlog(self.journal, log, held=self.window.held)
        workers.attach(self.journal)
        self.starter = Starter(starter)  # the keepalived process that started us: did it stop us, or die?
        self.early_term = early_term  # cli's early handler's SIGTERMs: read once ours is installed
        self.stop = StopClassifier(settings.stop_grace, respawn=self.starter.respawn,
                                   next_reader=lambda: later_sibling(os.getpid(), self.starter.pid,
                                                                     self.starter.main()),
                                   unlinked_at=self.fifo.unlinked_at,
                                   known=lambda: last_states(paths.progress))
        self.behind = Predecessor(settings, paths, fifo_path, log, pause=self.window.pause)
        # its ticket (turn.py), from cli's start if it could take it there: no reading beside the readers before us
        self.turn = turn or ReadTurn(fifo_path, lock_path(fifo_path, paths.root))
        self.troubles = Troubles(log)
        self._term_logged = False
        self._verdict: Verdict | None = None  # the end, once known
        self._wake_r = -1
        self._pause = 0.0  # after an unforeseen exception: a growing pause, so it cannot spin
        # lines read from the FIFO and not yet among the backlog's events (and whether each came
        # without its newline): what the LOST line names when keepalived's window closes first
        self._unseen: deque[tuple[bytes, bool]] = deque()

    def init_signals(self) -> None:
        """SIGTERM notes the time (the loop acts on it) and opens the stop window (which ends any wait
        at its deadline); the wakeup pipe ends poll() at once.  Installed first thing in `run()`: a
        SIGTERM that came before (cli's early handler noted it in `early_term`) is read only after."""
        self._wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps spawn_detached's children

    def _on_term(self, signum: int, frame: object, at: float | None = None) -> None:
        self.stop.sigterm(time.monotonic() if at is None else at)
        if not self.serve:  # service mode leaves at once: no window to keep
            self._arm_window()

    def _arm_window(self) -> None:
        """Keep to keepalived's window; with a next reader, end TURN_RESERVE early, so what it
        journals at the end of its own wait for us (its READER event) comes after all we journal."""
        assert self.stop.term_at is not None
        self.window.open(self.stop.term_at - (TURN_RESERVE if self.stop.sibling is not None else 0.0))

    def run(self) -> int:
        try:
            self.turn.register()  # (first: cli took it already, unless we run as another user than root)
            self.init_signals()
            if self.early_term:  # after our handler is in place: no SIGTERM can fall between the two
                self._on_term(signal.SIGTERM, None, self.early_term[0])
            try:
                if not self.serve:
                    self.starter.start()
            except Exception as exc:  # never die of our own bug: keepalived would not restart us
                self._unforeseen("keepalived process watch", exc)
            try:
                self.behind.start()
            except Exception as exc:
                self._unforeseen("previous state directory", exc)
            if self.stop.term_at is not None and not self.serve:  # stopped while we started
                early = self.stop.at_start(self.fifo.path)
                if early is not None:
                    self._read_what_is_ours()
                    self.finish_with(early)
                    return 0
            self._loop()
        except WindowClosed as closed:
            self.window.last_words()  # bounds the lines that say what is lost
            try:
                left = self._take_the_rest()
                if self.backlog or self._verdict is None or self._unseen:
                    self.backlog.lost(f"keepalived's SIGKILL is due and the reader still waits, at {closed}; "
                                      f"{self.intake.lines} lines read{left}",
                                      None if self._verdict is None else self._verdict.state,
                                      [raw for raw, _ in self._unseen])
            except WindowClosed:
                pass
        finally:
            self.window.close()
            self.workers.close()
            self.turn.release()  # (finish_with did, unless the window closed first)
        return 0

    def _take_the_rest(self) -> str:
        """keepalived's window closed: take what is ours to say lost.  In a FIFO keepalived replaced,
        all it holds (nobody else will ever read it); in one we share with the next reader, the rest
        of the line our last read stopped inside (so that reader starts at a line); and bytes still
        waiting for their newline, as a line.  Says what the FIFO held, for the LOST line."""
        if self.fifo.fd < 0 or self.serve:
            return ""
        before, replaced = len(self._unseen), self.fifo.replaced()
        alone = replaced or (self.stop.term_at is not None and self._ours_alone())
        if alone:
            self._take_what_waits()
        else:
            self.fifo.finish_line(self._take, self.intake.cut)
            self._flush()
        taken = len(self._unseen) - before
        if not taken:
            return ""
        if alone:
            whose = "which keepalived replaced" if replaced else "which keepalived, stopping, leaves to no other reader"
            return f"; {taken} more lines read now from our FIFO, {whose} (nobody else reads them)"
        return "; the line our last read stopped inside read to its end (the next reader starts at a line)"

    def _take_turn(self) -> None:
        """Before the first read: wait until the readers started before us have journaled what they
        read, so the lines of one FIFO are journaled in the order keepalived wrote them (turn.py).
        Once stopping, until TURN_RESERVE before the window closes: our READER event, journaled
        after, must come after their lines (keepalived's STOP lines among them)."""
        def until() -> float:
            term_at = self.stop.term_at
            return float("inf") if term_at is None or self.serve else term_at + DEADLINE - TURN_RESERVE
        try:
            self.turn.take(self.log, self._wake_r, until)
        except Exception as exc:  # never die of our own bug: read as before
            self._unforeseen("waiting for the reader before us", exc)

    def _loop(self) -> None:
        self.fifo.watch()
        self.poller.register(self._wake_r, select.POLLIN)
        if self.starter.pidfd >= 0:
            self.poller.register(self.starter.pidfd, select.POLLIN)
        elif self.starter.gone:  # it died while we started (keepalived reaped it): no pidfd will say so
            self.stop.starter_exited()
        self._take_turn()
        eof = False
        # (a step before the stop is looked at: what waits in the pipe once it is our turn is read, even
        # when stopping; a reader whose keepalived child is gone reads nothing more: _read_what_is_ours)
        while not eof and self.stop.respawned is None:
            try:
                eof = self._step()
                self._pause = 0.0
            except Exception as exc:  # never die of our own bug: keepalived would not restart us
                self._unforeseen("reader loop", exc)
                self._pause = min(1.0, max(0.05, self._pause * 2))
                time.sleep(self._pause)
            if self.stop.term_at is not None:
                leaving = self.serve or self.stop.done(time.monotonic())
                if not self.serve:
                    self._arm_window()  # (earlier once the next reader shows up, or shows our SIGTERM came earlier)
                if (leaving and not self._keepalived_still_writes()) or self._must_finish():
                    break
        if self.serve:
            if self.backlog:
                self.backlog.lost(f"the journal cannot be written, and the service exits on SIGTERM; "
                                  f"{self.intake.lines} lines read", None)
            self.log.info(None, None, f"service mode: SIGTERM, exiting ({self.intake.lines} lines read)")
            return
        if not eof:
            eof = self._read_what_is_ours()
        if not eof and self._ours_alone():
            self._say_unread()
        if not eof:  # the next reader starts at a line: the rest of one our last read stopped inside is ours
            eof = self.fifo.finish_line(self._take, self.intake.cut) == EOF
            if self.intake.cut():
                self._flush()  # (the pipe is empty, or at its end: another writer's bytes, a line of their own)
            self._handle()
        self.finish_with(self.stop.verdict(eof, self.fifo.path, self.fifo.replaced_since))

    def _ours_alone(self) -> bool:
        """Stopping, and what the pipe holds is ours alone: keepalived stops (no next reader, nor
        keepalived's child restarted) and kept our FIFO (a replaced one is `_read_what_is_ours`')."""
        return (not self.serve and self.stop.sibling is None and self.stop.respawned is None
                and not self.fifo.replaced())

    def _keepalived_still_writes(self) -> bool:
        """Our grace is over, keepalived is stopping and its lines still wait in the pipe: read on
        while FINISH_RESERVE of its window is left for our READER event (a slow disk, a busy
        machine: a busy CI run lost 810 lines so)."""
        assert self.stop.term_at is not None
        return (self._ours_alone() and self.fifo.unread() > 0
                and time.monotonic() < self.stop.term_at + DEADLINE - FINISH_RESERVE)

    def _must_finish(self) -> bool:
        """Keepalived is stopping, our grace is over and only FINISH_RESERVE of its window is left:
        journal nothing more but our READER event (looked at between lines too: one read may hold
        ~100 lines, and a slow disk takes milliseconds for each)."""
        term_at = self.stop.term_at  # (the clock first: this is asked after every line, the FIFO's stat last)
        return (term_at is not None
                and time.monotonic() >= term_at + max(self.settings.stop_grace, DEADLINE - FINISH_RESERVE)
                and self._ours_alone())

    def _say_unread(self) -> None:
        """keepalived's lines read and not handled, or still in the pipe, as we leave it: said LOST by
        name, not journaled (what is left of its window is our READER event's, which runs
        stop_action)."""
        if self.fifo.unread() > 0:
            self._take_what_waits()
        left = [raw for raw, _ in self._unseen]
        self._unseen.clear()
        if left:
            self.backlog.lost(f"keepalived is stopping, the reader's stop_grace is over and the rest of its window "
                              f"is kept for the reader's own end; {len(left)} lines were still in the FIFO",
                              "", left, held=False)

    def _read_what_is_ours(self) -> bool:
        """Leaving before EOF: what the pipe holds now is ours when keepalived's child that started us
        died (later lines wait for the next reader) or keepalived made a new FIFO at our path for the
        next reader (nobody else will ever read this one: what keepalived wrote before its reload is
        in it, a last line without its newline too).  Read it, or leave it (a FIFO we share with the
        next reader is its to read); True at EOF."""
        if self.stop.respawned is None and not self.fifo.replaced():
            return False
        self._take_turn()
        got = self.fifo.read(self._take)
        if got <= 0:
            self._flush()  # (else a writer goes on: the line cut short is finished before we leave)
        self._handle()
        return got == EOF

    def _step(self) -> bool:
        """One poll and what it brought; True at the FIFO's EOF (not in service mode)."""
        eof = False
        for fd, _ in self.poller.poll(self._poll_timeout()):
            if fd == self._wake_r:
                drain(self._wake_r)
            elif fd == self.fifo.fd:  # (once stopping, a little at a time: what we read must be journaled in time)
                got = self.fifo.read(self._take, None if self.stop.term_at is None else STOPPING_READ)
                if got <= 0:  # the pipe is empty (or at EOF): what is pending is a line of its own
                    self._flush()
                self._handle()
                if got == EOF:
                    eof = not self.serve
                    if self.serve:
                        self.fifo.writer_gone()
            elif self.workers.owns(fd):
                self.workers.watched(fd, stopping=self.stop.term_at is not None)
            elif fd == self.starter.pidfd:
                self.poller.unregister(fd)  # readable for good now
                self.stop.starter_exited()
        self.workers.tick()
        if self.fifo.recheck_at is not None and time.monotonic() >= self.fifo.recheck_at:
            self.fifo.recheck()
        if self.backlog:
            self.submit(None)
        if self.stop.term_at is not None and not self._term_logged and not self.serve:
            self._term_logged = True
            self.log.info(None, None, f"SIGTERM: catching STOP lines for up to {self.settings.stop_grace:g}s")
        return eof

    def _poll_timeout(self) -> int | None:
        """Milliseconds poll() may sleep: forever when idle (no polling loops), else the nearest deadline."""
        now = time.monotonic()
        waits = [at - now for at in (self.workers.wake_at, self.fifo.recheck_at) if at is not None]
        stopping = self.stop.wake_in(now)
        if stopping is not None:
            waits.append(stopping)
        if self.backlog:
            waits.append(RETRY_INTERVAL)
        if not waits:
            return None
        return max(0, int(min(waits) * 1000) + 1)

    def _take(self, data: bytes | None) -> None:
        """Inside a held step (Fifo._chunk's): the lines `data` completes wait in `_unseen`, to be
        handled; None: the pipe is empty, so bytes pending without a newline are a line."""
        self._unseen.extend((raw, data is None) for raw in self.intake.split(data))

    def _take_what_waits(self) -> None:
        """All the pipe holds now, as lines in `_unseen` (a last one without its newline too)."""
        self.fifo.read(self._take)
        self._flush()

    def _flush(self) -> None:
        """The pipe is empty (or at its end): bytes pending without a newline are a line."""
        with self.window.held():
            self._take(None)

    def _handle(self) -> None:
        """Each line read and not handled yet: its events into the backlog (in one held step with
        leaving `_unseen`: a line is in one of the two, never both nor neither), then journaled."""
        while self._unseen:
            with self.window.held():
                raw, unterminated = self._unseen[0]
                try:
                    events = self.intake.line(raw, unterminated)
                    self.stop.saw(events, time.monotonic())
                    for event in events:
                        self.backlog.add(event)
                except Exception as exc:
                    self._unforeseen("line handling", exc)
                self._unseen.popleft()
            if self._must_finish():
                return  # (what is left of `_unseen` is said LOST: _say_unread)
            try:
                if self.stop.term_at is not None and not self.serve:  # stopping: one read may hold ~100 lines
                    self.stop.look_for_next_reader(time.monotonic(), SIBLING_CHECK_IN_READ)
                    self._arm_window()  # (earlier, once it shows up: its READER event must come after ours)
                self.submit(None)
            except Exception as exc:
                self._unforeseen("line handling", exc)

    def submit(self, event: Event | None) -> None:
        """Journal `event` after those that wait (None: only those), or hold it in memory until the
        journal takes it."""
        if event is not None:
            self.backlog.add(event)
        behind = self.behind.journal()  # (a file read per event only while we queue behind another)
        failed = self.backlog.flush(self.workers.journaled if behind is None else self.behind.journaled, behind)
        if failed is not None and failed.errno in (errno.ENOENT, errno.ENOTDIR):
            self.workers.repair.repair()

    def _unspilled(self) -> bool:
        """Nothing of ours waits in our spill file (numbered now, if the journal's lock is free)."""
        try:
            with self.window.held():  # (numbered and the spill file removed, or neither)
                return self.journal.unspill()
        except OSError:
            return True  # (it cannot be numbered now: the worker adopts it, said when it does)

    def _unforeseen(self, area: str, exc: Exception) -> None:
        """An exception nobody planned for: its traceback once, then carry on."""
        self.troubles.report(area, None, None, f"{area}: unexpected error (the reader carries on)", exc)

    def finish_with(self, verdict: Verdict) -> None:
        """Journal `READER reader STATE` (so `stop_action` runs after the STOP lines; held in memory until
        the journal takes it) and log the exit."""
        with self.window.held():  # (known as the end, and in the backlog: said LOST with it if need be)
            self._verdict = verdict
            self.backlog.add(Event(READER_TYPE, "reader", verdict.state))
        self.submit(None)
        # keepalived's window: try again until it closes (WindowClosed); a full disk may take writes
        # again meanwhile, and a journal's lock come free for what we spilled (spilled is durable, but
        # numbered only later, maybe after what the next reader appends: turn.py's order needs it now)
        while (self.backlog or not self._unspilled()) and self.window.deadline is not None:
            time.sleep(STOP_RETRY)
            self.submit(None)
        if self.backlog:
            self.backlog.lost(f"the journal cannot be written, and the reader exits; {self.intake.lines} lines read",
                              verdict.state)
        self.turn.release()  # all we read is journaled, or said lost: the next reader may read now
        term_at = self.stop.term_at
        since = "" if term_at is None else f", {(time.monotonic() - term_at) * 1000:.0f} ms after SIGTERM"
        self.log.info(None, None, f"reader exiting ({verdict.why}; {self.intake.lines} lines read{since})")
