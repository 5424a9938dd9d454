"""The detached worker: take the lock, run journaled events strictly in sequence order, one at a time.

Order comes from the journal, never from the lock (filelock polls and is not fair).  A worker
lingers after the queue is empty, waiting on the doorbell, so an event that arrives while it lives
costs no fork: this is what keeps the launcher's own latency under a millisecond.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable

import psutil
from filelock import Timeout

from notify_launcher import actions, metrics, pidfile, settingsfile
from notify_launcher.config import Settings
from notify_launcher.events import READER_TYPE
from notify_launcher.identity import ProcessId, me
from notify_launcher.handoff import TAKEOVER_WAIT, DoorbellListener, release_standby, say_hello
from notify_launcher.journal import Entry, JournalFollower, read_all
from notify_launcher.locks import file_lock
from notify_launcher.log import Log, Troubles
from notify_launcher.progress import EndRecord, ProgressLog, Record, Snapshot, StartRecord, TryRecord, replay
from notify_launcher.process import drain
from notify_launcher.statedir import StatePaths
from notify_launcher.totals import Totals, outcome, read_rejected

PR_SET_CHILD_SUBREAPER = 36
JOURNAL_MAX = 64 * 1024  # compact when idle and larger than this (the state dir is usually tmpfs: RAM)
PROGRESS_MAX = 512 * 1024
PID_REUSE_GUARD = 2.0  # s: an orphan's create time must be this close to the recorded spawn time
KEEP_HISTORY = 1000  # end records kept by a compaction, for `status` and history
MAX_TRIES = 3  # workers that may die on one event before it is recorded as skipped
RECORD_RETRY_MIN, RECORD_RETRY_MAX = 0.05, 1.0  # s between attempts to record an event's end
OUTPUT_TAIL, OUTPUT_TAIL_CHARS = 20, 16384  # the action's last output lines given to on_failure (NL_OUTPUT)
METRICS_EVERY, METRICS_INTERVAL = 100, 1.0  # during a burst: write the metrics file this often (events, s)
#: After a reader journaled its RELOAD: how long we stand by for the next reader, whatever `linger`
#: says (keepalived starts it ~20 ms after the SIGTERM, then Python's start-up: 50-150 ms seen).
RELOAD_WAIT = 10.0
LONGEST_WAIT = 86400.0  # s: the longest single wait for a ring (a far linger deadline is waited for in days)


def run_forked_worker(settings: Settings, standby_fd: int, hello_fd: int, reader: ProcessId) -> int:
    """Inside the daemonized child: `standby_fd` holds standby.lock, `hello_fd` tells the reader our
    pid once we hold worker.lock (see handoff.py); we stand by while `reader` (pid, start time) lives."""

    def handed_over() -> None:
        say_hello(hello_fd)
        release_standby(standby_fd)

    return _serve(settings, f"detached: own session {os.getsid(0)}, double fork", handed_over, reader)


def run_unit_worker(state_dir: str, unit: str, reader: ProcessId) -> int:
    """Inside a transient systemd unit (systemd_unit.py): queue on standby.lock ourselves."""
    paths = StatePaths(state_dir)
    settings = settingsfile.read(paths)  # what fails before this line is in the unit's journal
    try:
        standby = file_lock(paths.standby_lock)
        try:
            standby.acquire(timeout=TAKEOVER_WAIT)
        except Timeout:
            Log(settings.log_file, "worker", settings.log_level).debug(
                None, None, f"unit {unit}: another worker is queued already; exiting")
            return 0
        return _serve(settings, f"detached: systemd unit {unit}.service, out of keepalived's cgroup",
                      standby.release, reader)
    except Exception as exc:  # as detach.spawn_worker's report: the log is where anyone looks
        Log(settings.log_file, "worker", settings.log_level).exception(None, None, "worker failed", exc)
        raise


def _serve(settings: Settings, how: str, handed_over: Callable[[], None], reader: ProcessId) -> int:
    """Take worker.lock, start, tell whoever spawned us (`handed_over`), run until idle: until no
    reader we know of (`reader`, who spawned us, and all that ring) lives and `linger` is over."""
    log = Log(settings.log_file, "worker", settings.log_level)
    paths = StatePaths(settings.state_dir)
    lock = file_lock(paths.worker_lock)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = pidfile.read(paths)
        log.info(None, None, f"waiting for the worker lock (held by {f'pid {holder.pid}' if holder else 'another worker'})")
        lock.acquire()
    worker = Worker(settings, paths, log, how, reader)
    try:
        worker.start()
        handed_over()
        return worker.run()
    finally:  # what raises is logged by the caller (run_unit_worker, detach.spawn_worker's report)
        lock.release()


class Worker:
    """Holds worker.lock for its whole life.  Building one only stores state; `start()` does what a
    worker owes the state directory before its first event, `run()` serves events until idle.

    One event can never stop the queue: whatever goes wrong while preparing, running or recording
    it is that event's failure (logged with its traceback, recorded, and the next event runs), and
    a worker that dies on it outright is counted by the `try` record it wrote first, so after
    MAX_TRIES workers the event is recorded as skipped and the queue goes on (progress.py)."""

    def __init__(self, settings: Settings, paths: StatePaths, log: Log, how: str,
                 reader: ProcessId) -> None:
        self.settings, self.paths, self.log, self.how = settings, paths, log, how
        self.reader = reader
        self.environ = dict(os.environ)  # each action's environment starts from it (decoded once)
        self.pid = os.getpid()
        self.done_seq = 0
        self._stopping = False
        self._wakeup = -1
        self._lock_id: tuple[int, int] | None = None
        self._settings_id: tuple[int, int] | None = None
        self.troubles = Troubles(log)  # the metrics file, records
        self.totals = Totals()
        self._published = False  # the metrics file written since start
        self._failed: tuple[Entry, EndRecord, Iterable[str]] | None = None  # on_failure is due for it
        self._published_at = 0.0  # monotonic time of the last write
        self._unpublished = 0  # events finished since
        self._reload_at = -RELOAD_WAIT  # when we ran the last READER RELOAD event (monotonic)

    def start(self) -> None:
        """The steps, in the order handoff.py needs them: signals, the doorbell (before the first
        journal read), subreaper, the pid file, then the state files and recovery."""
        self.init_signals()
        self.doorbell = DoorbellListener(self.paths, self._wakeup)
        self.doorbell.open()
        self.doorbell.know(dict([self.reader]))  # the start time checked: it may be gone, its pid reused
        _become_subreaper()
        self.name_self()
        self.open_state()

    def name_self(self) -> None:
        """worker.pid, and what tells our lock and our process from later ones."""
        self._lock_id = _file_id(self.paths.worker_lock)
        self.start_ticks = me().start
        try:
            pidfile.write(self.paths)
        except OSError as exc:  # a full disk: the pid file only helps the reader find us, not the queue
            self.log.warn(None, None, f"cannot write {self.paths.worker_pid} ({exc.strerror}); going on without it")
            try:
                os.unlink(self.paths.worker_pid)  # it must never name a dead worker, whose pid may come back
            except FileNotFoundError:
                pass

    def open_state(self) -> None:
        """The journal and the progress file; replaying the latter says where the queue stands and
        whether a dead worker left an event half-done."""
        self.journal = JournalFollower(self.paths.journal)
        self.progress = ProgressLog(self.paths.progress)
        self._settings_id = _file_id(self.paths.settings)
        snap = replay(self.paths.progress, totals=self.totals)
        self.done_seq = snap.done_seq
        self.log.info(None, None, f"worker started ({self.how}; lock taken); last finished event #{self.done_seq}")
        if snap.trying or snap.running is not None:
            self._recover(snap)

    def init_signals(self) -> None:
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
        self._run_on_failure()  # of an event recovery skipped: after start(), not to hold up the handover
        while self._drain():
            self._compact()
            if self._linger():
                continue
            self.doorbell.close()
            # Reopen only while worker.lock is ours: after a removed state directory, doorbell.sock
            # is the new worker's, and open() would unlink it (its readers' rings would reach nobody).
            if self._owner() and self.journal.pending():
                self.doorbell.open()
                continue
            break
        if self._stopping:
            self.log.info(None, None, "SIGTERM: queue drained, exiting")
        else:
            self.log.debug(None, None, f"no reader left and idle for {self.settings.linger:g}s; exiting")
        self.doorbell.close()
        pidfile.remove(self.paths, self.pid)
        return 0

    def _linger(self) -> bool:
        """Wait for a ring (True).  While a reader that rang lives we stand by without limit: its next
        event must not wait for a fork and imports; once none does, for `linger` s at most (at least
        RELOAD_WAIT after a reload, for the next reader).  Orphans are reaped on SIGCHLD meanwhile."""
        deadline = None
        while not self._stopping:
            if self.doorbell.readers:
                deadline = None
            elif deadline is None:
                deadline = max(time.monotonic() + self.settings.linger, self._reload_at + RELOAD_WAIT)
            # select() takes no timeout past ~292 years, nor inf (linger = inf is allowed): wake
            # once a day until a far deadline instead of crashing on it.
            left = None if deadline is None else min(LONGEST_WAIT, max(0.0, deadline - time.monotonic()))
            woke = self.doorbell.wait(left)
            if woke == "ring":
                return True
            if woke == "timeout" and deadline is not None and time.monotonic() >= deadline:
                return False
            if woke == "signal":
                drain(self._wakeup)
                actions.reap_zombies()
        return False

    def _owner(self) -> bool:
        """False once worker.lock at its path is not the file we locked: someone removed the state
        directory, a new worker owns the new one, and two workers must never run actions at once."""
        if _file_id(self.paths.worker_lock) == self._lock_id:
            return True
        self.log.warn(None, None, f"{self.paths.worker_lock} was removed or replaced; leaving the new "
                                  f"state directory to the worker that owns it")
        return False

    def _compact(self) -> None:
        """Keep the state directory small: it usually lives in /run, which is RAM."""
        try:
            if _size(self.paths.journal) > JOURNAL_MAX and self.journal.compact():
                self.log.info(None, None, f"journal compacted (everything up to #{self.done_seq} is done)")
            if self.progress.size() > PROGRESS_MAX:
                self.progress.compact(KEEP_HISTORY)
                self.log.info(None, None, f"progress compacted to the last {KEEP_HISTORY} results")
        except OSError as exc:
            self.log.warn(None, None, f"cannot compact the state directory ({exc.strerror}); will try again")

    def _drain(self) -> bool:
        """Run everything journaled; False if we must leave (the state directory was replaced)."""
        while True:
            if not self._owner():
                return False
            entries, damaged = self.journal.read_new()
            for line in damaged:
                self.log.error(None, None, f"damaged journal line skipped: {line[:200]!r}")
            if not entries:
                if not self._published:
                    self._publish([])  # at start, with nothing to do
                return True
            self._follow_state_files(entries[0])
            entries = [e for e in entries if e.seq > self.done_seq]
            if not self._published:
                self._publish(entries)  # at start: the counts, and the queue this worker found
            newest = {e.event.key: e.seq for e in entries} if self.settings.coalesce else {}
            for n, entry in enumerate(entries, 1):
                if entry.seq != self.done_seq + 1 and self.done_seq:
                    self.log.error(entry.seq, entry.event,
                                   f"events #{self.done_seq + 1}..#{entry.seq - 1} are missing from the journal")
                self._take_up(entry, newest.get(entry.event.key, entry.seq))
                self.done_seq = entry.seq
                if entry.event.type == READER_TYPE and entry.event.state == "RELOAD":
                    self._reload_at = time.monotonic()  # the next reader is starting: stand by for it
                self._publish(entries[n:])
                self._run_on_failure()

    def _publish(self, waiting: list[Entry]) -> None:
        """Rewrite the metrics file (if configured), after the end record: the counts, and the
        events `waiting` behind the one just finished.  A write costs ~0.3 ms, as much as the rest
        of our own work per event, so during a burst it is coalesced: written when the queue is
        empty, else at least every METRICS_EVERY events or METRICS_INTERVAL seconds.  A failure is
        logged once (and again only when it changes); the next write tries again."""
        path = self.settings.metrics_file
        if path is None:
            return
        now = time.monotonic()
        self._unpublished += 1
        if (waiting and self._published and self._unpublished < METRICS_EVERY
                and now < self._published_at + METRICS_INTERVAL):
            return
        self._published, self._published_at, self._unpublished = True, now, 0
        age = time.time() - waiting[0].time if waiting else 0.0
        text = metrics.render(self.totals, len(waiting), max(0.0, age), read_rejected(self.paths.rejected))
        try:
            metrics.write(path, text, self.settings.metrics_mode)
        except OSError as exc:
            self.troubles.report("metrics", None, None, f"cannot write the metrics file {path} ({exc.strerror}); "
                                 f"will try again after the next event")
            return
        self.troubles.recovered("metrics", f"metrics file {path} written again")

    def _follow_state_files(self, first: Entry) -> None:
        """Before a batch: the newest settings, and state files someone removed (journal, progress)."""
        self._reload_settings()
        if self.progress.follow():
            self.log.warn(None, None, f"{self.paths.progress} was removed; recording into a new one")
        if self.journal.replaced:
            self.journal.replaced = False
            self.log.warn(first.seq, first.event, f"{self.paths.journal} was removed and created anew; following it")
            if first.seq <= self.done_seq:
                self.log.error(first.seq, first.event, f"numbering restarted at #{first.seq}, below the last "
                                                       f"finished #{self.done_seq} (journal and progress removed); "
                                                       f"running the new events")
                self.done_seq = first.seq - 1

    def _take_up(self, entry: Entry, newest: int) -> None:
        """One event, whatever happens: `try` first (so a death here is counted), then its action;
        an exception is this event's failure, never the queue's."""
        self._record(TryRecord(op="try", seq=entry.seq, worker=self.pid), entry.event)
        try:
            if newest != entry.seq and entry.event.type != READER_TYPE:
                self.log.info(entry.seq, entry.event, f"skipped: superseded by #{newest} (coalesce = yes)")
                self._finish(self._end(entry, f"superseded by #{newest}", ok=True), entry.event)
            else:
                self._run(entry)
        except Exception as exc:
            self.log.exception(entry.seq, entry.event, "FAILED inside the launcher (the next event runs)", exc)
            end = self._end(entry, f"failed: {type(exc).__name__}: {exc}"[:200], ok=False)
            self._finish(end, entry.event)
            self._failed = (entry, end, ())

    def _reload_settings(self) -> None:
        """Follow the newest reader's settings (the administrator may have changed the config),
        the log file and level included."""
        ident = _file_id(self.paths.settings)
        if ident == self._settings_id or ident is None:
            return
        self._settings_id = ident
        try:
            new = settingsfile.read(self.paths)
        except (OSError, settingsfile.SettingsFileError) as exc:
            self.log.error(None, None, f"cannot follow the settings ({exc}); keeping the old ones")
            return
        if (new.log_file, new.log_level) != (self.settings.log_file, self.settings.log_level):
            self.log.info(None, None, f"settings changed: logging to {new.log_file} at {new.log_level} from now on")
            self.log.close()
            self.log = self.troubles.log = Log(new.log_file, "worker", new.log_level)
        self.settings = new

    def _run(self, entry: Entry) -> None:
        seq, event = entry.seq, entry.event
        delay = time.time() - entry.time
        prefix, timeout = self.settings.action_for(event)
        if not prefix:
            quiet = " (a quiet state: name it in a [match] rule to run something)" \
                if event.state in self.settings.quiet_states else ""
            self.log.info(seq, event, f"no action configured for this event{quiet}")
            self._finish(self._end(entry, "no action", ok=True), event)
            return
        argv = list(prefix) + event.fields()
        env = _event_env(entry, self.environ)
        tail: deque[str] = deque(maxlen=OUTPUT_TAIL)  # for on_failure

        def output(stream: str, text: str) -> None:
            self.log.info(seq, event, f"{stream}: {text}")
            tail.append(text)

        def started(pid: int) -> None:
            """Recorded and logged after the spawn, so nothing of ours delays the action.  The spawn
            time stands for the action's create time (reading that from /proc while the child is in
            exec() waits ~1.5 ms); it tells the action from a later process with the same pid."""
            self._record(StartRecord(op="start", seq=seq, t=time.time(), key=event.key, event=str(event),
                                     state=event.state, pid=pid, worker=self.pid, worker_start=self.start_ticks), event)
            self.log.info(seq, event, f"action started: {' '.join(argv)} (pid {pid}, timeout {timeout:g}s, "
                                      f"queued {delay * 1000:.1f} ms)")

        result = actions.run_action(
            argv, env, timeout, self.settings.kill_grace,
            output=output, note=lambda text: self.log.warn(seq, event, text), started=started)
        level = "INFO" if result.ok else "ERROR"
        self.log.line(level, seq, event, f"action ended: {result.describe()} after {result.duration:.3f}s")
        end = self._end(entry, result.describe(), ok=result.ok)
        end["duration"], end["exit"], end["signal"] = round(result.duration, 6), result.exit_code, result.signal
        end["timed_out"] = result.timed_out
        self._finish(end, event)
        self._failed = (entry, end, tail)

    def _run_on_failure(self) -> None:
        """Run the on_failure command if the event just finished failed, timed out or was skipped
        (not when coalescing superseded it: that is by design).  It runs after the end record and
        the metrics file, so nothing -- a crash of ours included -- ever runs it twice; detached
        and with its own timeout (its SIGKILL at on_failure_timeout), so it delays the next event
        by at most that.  Its own failure is logged, never retried."""
        if self._failed is None:
            return
        entry, end, output = self._failed
        self._failed = None
        command = self.settings.on_failure_for(entry.event)
        result = outcome(end)
        if not command or end["ok"] or result is None:
            return
        seq, event = entry.seq, entry.event
        argv = [*command, *event.fields()]
        exit_code = end.get("exit")
        env = dict(_event_env(entry, self.environ), NL_RESULT=result, NL_EXIT="" if exit_code is None else str(exit_code),
                   NL_DETAIL=end["result"], NL_OUTPUT="\n".join(output)[-OUTPUT_TAIL_CHARS:])
        timeout = self.settings.on_failure_timeout
        grace = min(self.settings.kill_grace, timeout / 10)
        try:
            hook = actions.run_action(
                argv, env, timeout - grace, grace,
                output=lambda stream, text: self.log.info(seq, event, f"on_failure {stream}: {text}"),
                note=lambda text: self.log.warn(seq, event, f"on_failure: {text}"),
                started=lambda pid: self.log.info(seq, event, f"on_failure started ({result}): {' '.join(argv)} "
                                                              f"(pid {pid}, timeout {timeout:g}s)"))
        except Exception as exc:
            self.log.exception(seq, event, "on_failure failed inside the launcher (not retried)", exc)
            return
        if hook.ok:
            self.log.info(seq, event, f"on_failure ended: {hook.describe()} after {hook.duration:.3f}s")
        else:
            self.log.error(seq, event, f"on_failure FAILED: {hook.describe()} after {hook.duration:.3f}s (not retried)")

    def _end(self, entry: Entry, result: str, ok: bool) -> EndRecord:
        e = entry.event
        return EndRecord(op="end", seq=entry.seq, t=time.time(), key=e.key, event=str(e), state=e.state,
                         result=result, ok=ok, worker=self.pid)

    def _finish(self, end: EndRecord, subject: object) -> None:
        """Record the end.  It is what makes an event never run again: until it is on disk (a full
        state file system), the queue waits, so a crash re-runs at most the one event it interrupted."""
        pause = RECORD_RETRY_MIN
        while not self._record(end, subject):
            time.sleep(pause)
            pause = min(RECORD_RETRY_MAX, pause * 2)
            self.progress.follow()
        if pause > RECORD_RETRY_MIN:
            self.log.info(end["seq"], subject, f"recorded the end in {self.paths.progress} at last; the queue goes on")

    def _record(self, rec: Record, subject: object) -> bool:
        """Append one record; on failure log it (once per event and op) and return False."""
        failed = self.progress.record(rec)
        if failed is None:
            self.totals.fold(rec)
            return True
        seq, op = rec["seq"], rec["op"]
        self.troubles.report("progress", seq, subject, f"cannot record {op!r} in {self.paths.progress} ({failed}); "
                             + ("the queue waits until it can (retrying)" if op == "end" else "going on without it"))
        return False

    def _recover(self, snap: Snapshot) -> None:
        """Workers died on an event: end what the last one left running, then re-run the event, or
        skip it -- by policy after an action was killed, and always once MAX_TRIES workers died on it."""
        running = snap.running
        seq = snap.trying or (running["seq"] if running else 0)
        tries = snap.tries or 1
        entry = self._journaled(seq)
        subject: object = entry.event if entry else (running["event"] if running else None)
        if running is not None and running["seq"] == seq:
            self.log.error(seq, subject, f"worker pid {running['worker']} died while this event's action "
                                         f"(pid {running['pid']}) ran; policy on_crash={self.settings.on_crash}")
            _end_orphan(running, lambda text: self.log.warn(seq, subject, text))
        else:
            running = None
            self.log.error(seq, subject, f"a worker died while preparing this event (attempt {tries} of {MAX_TRIES})")
        if tries >= MAX_TRIES:
            why = f"skipped: {tries} workers died on this event"
        elif running is not None and self.settings.on_crash == "skip":
            why = "skipped after worker crash"
        else:
            self.done_seq = seq - 1
            return
        self.log.error(seq, subject, f"{why}; the queue goes on")
        if entry is not None:
            end = self._end(entry, why, ok=False)
        else:  # the journal lost it (removed): name it as the start record did, if any
            end = EndRecord(op="end", seq=seq, t=time.time(), key=running["key"] if running else "?",
                            event=str(subject), state=running["state"] if running else "?", result=why, ok=False,
                            worker=self.pid)
        self._finish(end, subject)
        self.done_seq = seq
        if entry is not None:  # (without the journal entry, there are no event arguments to give it)
            self._failed = (entry, end, ())

    def _journaled(self, seq: int) -> Entry | None:
        """The journal entry of `seq`, if the journal still has it."""
        return next((e for e in read_all(self.paths.journal) if e.seq == seq), None)


def _event_env(entry: Entry, base: dict[str, str]) -> dict[str, str]:
    """The environment of an action (and of on_failure): `base` (ours), plus the event's fields."""
    e = entry.event
    return dict(base, NL_TYPE=e.type, NL_NAME=e.name, NL_STATE=e.state, NL_PRIORITY=str(e.priority),
                NL_SEQ=str(entry.seq), NL_VS=e.vs)


def _end_orphan(running: StartRecord, note: Callable[[str], None]) -> None:
    """Kill the process group of an action whose worker died, unless its pid now names another process."""
    try:
        orphan = psutil.Process(running["pid"])
        if abs(orphan.create_time() - running["t"]) < PID_REUSE_GUARD:
            note(f"ending the dead worker's action pid {orphan.pid}")
            os.killpg(orphan.pid, signal.SIGKILL)
    except (psutil.Error, ProcessLookupError, PermissionError):
        pass


def _ignore(signum: int, frame: object) -> None:
    """A Python-level handler, so the signal reaches the wakeup fd (SIG_IGN would not)."""


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _size(path: str) -> int:
    """0 for a file not made yet (the journal, before the reader's first event)."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _become_subreaper() -> None:
    """Orphans of an action (setsid, double fork) are re-parented to us, so a timeout can find them."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
