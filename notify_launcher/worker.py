"""The detached worker: take the lock, run journaled events strictly in sequence order, one at a time.

Order comes from the journal, never from the lock (filelock polls and is not fair).  A worker
lingers after the queue is empty, waiting on the doorbell, so an event that arrives while it lives
costs no fork: this is what keeps the launcher's own latency under a millisecond.

`Worker` composes the parts, each with one job: the settings it follows (following.py), the
progress records (ledger.py), crash recovery (recovery.py), the drain loop (drain.py), the metrics
file (publisher.py) and the on_failure command (onfailure.py).
"""

from __future__ import annotations

TYPE_CHECKING = False

import ctypes
import os
import signal
import time

from notify_launcher import actions, journal, pidfile, settingsfile
from notify_launcher.config import Settings
from notify_launcher.containment import Containment, wait_pids
from notify_launcher.drain import Drain
from notify_launcher.eventrun import EventRunner
from notify_launcher.following import Following
from notify_launcher.handoff import TAKEOVER_WAIT, DoorbellListener, say_hello
from notify_launcher.identity import ProcessId, me
from notify_launcher.ledger import Ledger
from notify_launcher.locks import WorkerLock, release_standby, wait_standby
from notify_launcher.log import Log, python_problems_to
from notify_launcher.onfailure import OnFailureRunner
from notify_launcher.process import drain
from notify_launcher.publisher import MetricsPublisher
from notify_launcher.statedir import StatePaths, sweep_temps

if TYPE_CHECKING:
    from collections.abc import Callable

PR_SET_CHILD_SUBREAPER = 36
#: After a reader journaled its RELOAD: how long we stand by for the next reader, whatever `linger`
#: says (keepalived starts it ~20 ms after the SIGTERM, then Python's start-up: 50-150 ms seen).
RELOAD_WAIT = 10.0
LONGEST_WAIT = 86400.0  # s: the longest single wait for a ring (a far linger deadline is waited for in days)


def run_forked_worker(settings: Settings, standby_fd: int, hello_fd: int, reader: ProcessId,
                      containment: Containment) -> int:
    """Inside the daemonized child: `standby_fd` holds standby.lock, `hello_fd` tells the reader our
    pid once we hold worker.lock (see handoff.py); we stand by while `reader` (pid, start time) lives.
    `containment` was started before this module's imports (detach.py)."""

    def handed_over() -> None:
        say_hello(hello_fd)
        release_standby(standby_fd)

    return _serve(settings, f"detached: own session {os.getsid(0)}, double fork", handed_over, reader, containment)


def run_unit_worker(state_dir: str, unit: str, reader: ProcessId) -> int:
    """Inside a transient systemd unit (systemd_unit.py): queue on standby.lock ourselves."""
    containment = Containment(state_dir)
    containment.start()  # first: it waits for the kernel meanwhile
    paths = StatePaths(state_dir)
    settings = settingsfile.read(paths)  # what fails before this line is in the unit's journal
    try:
        release = wait_standby(paths, TAKEOVER_WAIT)
        if release is None:
            Log(settings.log_file, "worker", settings.log_level).debug(
                None, None, f"unit {unit}: another worker is queued already; exiting")
            return 0
        return _serve(settings, f"detached: systemd unit {unit}.service, out of keepalived's cgroup",
                      release, reader, containment)
    except Exception as exc:  # as detach.spawn_worker's report: the log is where anyone looks
        Log(settings.log_file, "worker", settings.log_level).exception(None, None, "worker failed", exc)
        raise


def _serve(settings: Settings, how: str, handed_over: Callable[[], None], reader: ProcessId,
           containment: Containment) -> int:
    """Take worker.lock, start, tell whoever spawned us (`handed_over`), run until idle: until no
    reader we know of (`reader`, who spawned us, and all that ring) lives and `linger` is over."""
    log = Log(settings.log_file, "worker", settings.log_level)
    paths = StatePaths(settings.state_dir)
    lock = WorkerLock(paths)
    lock.take(lambda holder: log.info(None, None, "waiting for the worker lock (held by "
                                                  f"{f'pid {holder.pid}' if holder else 'another worker'})"))
    worker = Worker(settings, paths, log, how, reader, lock, containment)
    python_problems_to(lambda: worker.log)
    try:
        worker.start()
        handed_over()
        return worker.run()
    finally:  # what raises is logged by the caller (run_unit_worker, detach.spawn_worker's report)
        lock.release()


class Worker:
    """Holds worker.lock for its whole life.  Building one only stores state; `start()` does what a
    worker owes the state directory before its first event, `run()` serves events until idle.
    Its ~160 lines are the composition (the parts below are built here and handed to each other)
    and the linger loop; each job is a class of its own (drain, recovery, ledger, publisher, ...)."""

    def __init__(self, settings: Settings, paths: StatePaths, log: Log, how: str,
                 reader: ProcessId, lock: WorkerLock, containment: Containment) -> None:
        self.paths, self.how, self.reader, self.lock = paths, how, reader, lock
        self.following = Following(paths, settings, log)
        self.pid = os.getpid()
        environ = dict(os.environ)  # each action's environment starts from it (decoded once)
        self.containment = containment  # started: it picks its way meanwhile
        self.ledger = Ledger(self.following)
        self.on_failure = OnFailureRunner(self.following, self.containment, environ)
        self.publisher = MetricsPublisher(self.following, self.ledger.totals)
        self.runner = EventRunner(self.following, self.ledger, self.on_failure, self.containment, self.pid, environ)
        self.drain = Drain(self.following, self.ledger, self.publisher, self.on_failure, self.runner, self.pid)
        self._stopping = False
        self._wakeup = -1

    @property
    def log(self) -> Log:
        return self.following.log

    def start(self) -> None:
        """The steps, in the order handoff.py needs them: signals, the doorbell (before the first
        journal read), subreaper, the pid file, then the state files and recovery."""
        self._init_signals()
        self.doorbell = DoorbellListener(self.paths, self._wakeup, note=lambda text: self.log.warn(None, None, text))
        self.doorbell.open()
        self.doorbell.know(dict([self.reader]))  # the start time checked: it may be gone, its pid reused
        _become_subreaper()
        self._name_self()
        self.open_state()

    def _progress_missing(self) -> None:
        """Without the progress file nothing says which journaled events finished: they run again.
        Said at ERROR, with their numbers (the journal is read whole, only in this case)."""
        seqs = [e.seq for e in journal.read_all(self.paths.journal)]
        if seqs:
            self.log.error(None, None, f"progress file missing: events #{seqs[0]}..#{seqs[-1]} journaled before it "
                                       f"will run again ({self.paths.progress} was removed; nothing else records "
                                       f"which of them finished)")

    def _name_self(self) -> None:
        """worker.pid, and what tells our process from a later one."""
        self.runner.worker_start = me().start
        try:
            pidfile.write(self.paths)
        except OSError as exc:  # a full disk: the pid file only helps the reader find us, not the queue
            self.log.warn(None, None, f"cannot write {self.paths.worker_pid} ({exc.strerror}); going on without it")
            try:
                os.unlink(self.paths.worker_pid)  # it must never name a dead worker, whose pid may come back
            except FileNotFoundError:
                pass

    def open_state(self) -> None:
        """The settings we follow, the journal and the progress file; replaying the latter says where
        the queue stands and whether a dead worker left an event half-done (recovered here).  What
        dead workers left running in their action cgroups is ended first, recorded or not; a live
        worker of this state directory's path (its worker.lock removed under it) is waited for."""
        self._wait_for_live_workers()
        self._sweep_temps()
        self.following.start()
        missing = not os.path.exists(self.paths.progress)
        snap = self.ledger.start()
        done_seq = snap.done_seq
        self.log.info(None, None, f"worker started ({self.how}; lock taken); last finished event #{done_seq}")
        if missing and not done_seq:
            self._progress_missing()
        self.containment.end_orphaned(lambda text: self.log.warn(None, None, text))  # before anything runs
        if snap.trying or snap.running is not None:
            from notify_launcher.recovery import Recovery  # only after a worker died with work in hand
            done_seq, skipped = Recovery(self.following, self.ledger, self.containment, self.pid).recover(snap)
            if skipped is not None:
                self.on_failure.due(skipped)
        self.drain.start(done_seq, snap.last)

    def _sweep_temps(self) -> None:
        """What workers killed in a compaction (or readers killed in a write) left behind."""
        try:
            removed = sweep_temps(self.paths.root)
        except OSError as exc:
            self.log.warn(None, None, f"cannot list {self.paths.root} for temporary files dead processes "
                                      f"left ({exc.strerror}); going on")
            return
        if removed:
            left = ", ".join(f"{name} ({size} bytes)" for name, size in sorted(removed.items()))
            self.log.info(None, None, f"removed the temporary files processes killed in a write left in "
                                      f"{self.paths.root}: {left}")

    def _wait_for_live_workers(self) -> None:
        """Until no other worker of this path runs (Containment.live_workers): one whose worker.lock
        or state directory was removed under it still runs its action, and records it."""
        others = self.containment.live_workers()
        if not others:
            return
        self.log.warn(None, None, f"worker pid {', '.join(map(str, sorted(others)))} of {self.paths.root} still runs "
                                  f"(its worker.lock was removed or replaced); waiting for it to leave before "
                                  f"running anything")
        while others:
            wait_pids(others, 1.0)  # or its action ended (it leaves then)
            others = self.containment.live_workers()
        self.log.info(None, None, "the other worker left; going on")

    def _init_signals(self) -> None:
        """SIGTERM: finish the queue, then leave.  SIGCHLD: wake the lingering wait, so orphans an
        action left (re-parented to us, the subreaper) are reaped at once, not at the next event."""
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wakeup = rfd
        signal.set_wakeup_fd(wfd)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGCHLD, _ignore)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def _on_term(self, signum: int, frame: object) -> None:
        self._stopping = True

    def run(self) -> int:
        """Drain, linger on the doorbell, drain again; leave only after a final re-read, done once the
        doorbell is closed, finds nothing (handoff.py: a ring may have come just before the close)."""
        self.log.info(None, None, self.containment.way())  # after the handover: it may still wait for the kernel
        self.on_failure.run()  # of an event recovery skipped: after start(), not to hold up the handover
        while self.drain.drain(self._owner):
            self.containment.idle()  # nothing to run: the worker's move into its action cgroup, off the path
            self.drain.compact(self._owner)
            if self._linger():
                continue
            self.doorbell.close()
            # Reopen only while worker.lock is ours: after a removed state directory, doorbell.sock
            # is the new worker's, and open() would unlink it (its readers' rings would reach nobody).
            if self._owner() and self.drain.pending():
                self.doorbell.open()
                continue
            break
        if self._stopping:
            self.log.info(None, None, "SIGTERM: queue drained, exiting")
        else:
            self.log.debug(None, None, f"no reader left and idle for {self.following.settings.linger:g}s; exiting")
        self.doorbell.close()
        self.containment.close()
        pidfile.remove(self.paths, self.pid)
        return 0

    def _linger(self) -> bool:
        """Wait for a ring (True).  While a reader that rang lives we stand by without limit: its next
        event must not wait for a fork and imports; once none does, for `linger` s at most (at least
        RELOAD_WAIT after a reload, for the next reader).  A reader that dies may have journaled an event
        it never rang for (killed between the append and the ring): the journal is looked at then
        (True if it grew).  Orphans are reaped on SIGCHLD meanwhile."""
        deadline = None
        while not self._stopping:
            if self.doorbell.readers:
                deadline = None
            elif deadline is None:
                deadline = max(time.monotonic() + self.following.settings.linger, self.drain.reload_at + RELOAD_WAIT)
            # select() takes no timeout past ~292 years, nor inf (linger = inf is allowed): wake
            # once a day until a far deadline instead of crashing on it.
            left = None if deadline is None else min(LONGEST_WAIT, max(0.0, deadline - time.monotonic()))
            woke = self.doorbell.wait(left)
            if woke == "ring" or (woke == "reader gone" and self.drain.pending()):
                return True  # a reader may die between its journal append and its ring
            if woke == "timeout" and deadline is not None and time.monotonic() >= deadline:
                return False
            if woke == "signal":
                drain(self._wakeup)
                actions.reap_zombies()
        return False

    def _owner(self) -> bool:
        """False once worker.lock at its path is not the file we locked: someone removed the state
        directory, a new worker owns the new one, and two workers must never run actions at once."""
        if self.lock.ours():
            return True
        self.log.warn(None, None, f"{self.paths.worker_lock} was removed or replaced; leaving the new "
                                  f"state directory to the worker that owns it")
        return False


def _ignore(signum: int, frame: object) -> None:
    """A Python-level handler, so the signal reaches the wakeup fd (SIG_IGN would not)."""


def _become_subreaper() -> None:
    """Orphans of an action (setsid, double fork) are re-parented to us, so a timeout can find them."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
